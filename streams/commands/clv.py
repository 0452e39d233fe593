"""Fit and validate the predictive lifetime-value models per shop: BG/NBD and Gamma-Gamma.

  loyalty clv fit FILE|- [--as-of INSTANT] [--unit days|weeks] [--policy FILE]
                         [--min-customers N]

Reads contract-v1 events (JSON lines, arrival order), folds them with the
scoring core (same rules as the service: duplicates, refunds, lateness), and
fits the models as the service and `loyalty replay` do: each shop with at
least --min-customers buyers (20 of them repeat buyers) gets its own fit;
every shop whose own fit is missing, degenerate or not converged is scored by
the pooled model of its pool (policy key clv_pool, within its currency).
Only events at or before --as-of count (default: the newest event).

Prints JSON: {"as_of", "unit_days", "min_customers", "shops": {SHOP: {"model":
"shop"|"pooled"|null, "pool", "reason" (why the shop's own fit is not served),
"parameters", "diagnostics" (of the served model), "customers", "shop_fit"
(diagnostics of an own fit that is not served)}}, "pools": {POOL: {"model",
"reason"}}}. The fold summary goes to stderr as JSON. Exit 0, or 2 for an
unreadable file or a bad option.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def configure(p: argparse.ArgumentParser) -> None:
    from scoring.clv import MIN_CUSTOMERS

    sub = p.add_subparsers(dest="clv_command", metavar="SUBCOMMAND", required=True)
    fit = sub.add_parser("fit", help="fit BG/NBD + Gamma-Gamma per shop from an event file",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fit.add_argument("file", help="JSON-lines events, or - for stdin")
    fit.add_argument("--as-of", metavar="INSTANT", help="RFC 3339; default: the newest occurred_at")
    fit.add_argument("--unit", choices=("days", "weeks"), default="weeks",
                     help="time unit of t_x and T (default: weeks, as in Fader, Hardie & Lee 2005)")
    fit.add_argument("--policy", metavar="FILE", help="shop policy overrides (JSON)")
    fit.add_argument("--min-customers", type=int, default=MIN_CUSTOMERS, metavar="N",
                     help=f"buyers a shop needs for its own model (default {MIN_CUSTOMERS})")


def _fit_report(fits: Any, as_of_us: int | None, unit_days: int, min_customers: int) -> dict[str, Any]:
    from scoring.clock import rfc3339

    shops = {} if fits is None else {s: fits.describe(s) for s in sorted(fits.shops)}
    pools: dict[str, Any] = {}
    if fits is not None:
        for pool in sorted(fits.pooled):
            model = fits.pooled[pool]
            pools[pool] = {"model": None if model is None else model.to_dict(),
                           "reason": fits.pooled_reasons.get(pool)}
    return {"as_of": None if as_of_us is None else rfc3339(as_of_us), "unit_days": unit_days,
            "min_customers": min_customers, "shops": shops, "pools": pools}


def run(args: argparse.Namespace) -> int:
    from schemas.codec import dumps, dumps_pretty
    from scoring.clock import to_us
    from scoring.replay import fit_clv_models, fold_lines
    from scoring.snapshot import head_as_of
    from streams.commands._inputs import load_policies, open_events, parse_as_of

    if args.min_customers < 1:
        print("loyalty clv fit: --min-customers must be >= 1", file=sys.stderr)
        return 2
    policies = load_policies("clv fit", args.policy)
    as_of = parse_as_of("clv fit", args.as_of)
    if policies is None or as_of is False:
        return 2
    src = open_events("clv fit", args.file)
    if src is None:
        return 2
    with src:
        res = fold_lines(src, policies=policies, as_of=as_of)
    as_of_us = to_us(as_of) if as_of is not None else res.max_ts
    unit_days = 7 if args.unit == "weeks" else 1
    fits = None
    if as_of_us is not None:
        heads = {key: head_as_of(state, as_of_us, policies.for_shop(key[0]))
                 for key, state in res.states.items()}
        fits = fit_clv_models(heads, as_of_us, policies, args.min_customers, unit_days)
    sys.stdout.buffer.write(dumps_pretty(_fit_report(fits, as_of_us, unit_days, args.min_customers)) + b"\n")
    sys.stderr.buffer.write(dumps({"command": "clv fit", **res.summary()}) + b"\n")
    return 0
