"""Fit the predictive lifetime-value models per shop: BG/NBD and Gamma-Gamma.

  loyalty clv fit FILE|- [--as-of INSTANT] [--unit days|weeks] [--policy FILE]

Reads contract-v1 events (JSON lines, arrival order), folds them with the
scoring core (same rules as the service: duplicates, refunds, lateness), and
fits one model per shop by maximum likelihood on each customer's repeat
purchase days x, recency t_x, age T (in the chosen unit) and mean repeat-day
spend. Only events at or before --as-of count (default: the newest event).

Prints {"shops": {SHOP: {"bgnbd": {"r","alpha","a","b"}, "gamma_gamma":
{"p","q","gamma"} | null, "customers": N, "log_likelihood": LL}}}. A shop whose
model cannot be identified (no repeat buyer) is reported with an "error".
"""

from __future__ import annotations

import argparse
import sys


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="clv_command", metavar="SUBCOMMAND", required=True)
    fit = sub.add_parser("fit", help="fit BG/NBD + Gamma-Gamma per shop from an event file",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fit.add_argument("file", help="JSON-lines events, or - for stdin")
    fit.add_argument("--as-of", metavar="INSTANT", help="RFC 3339; default: the newest occurred_at")
    fit.add_argument("--unit", choices=("days", "weeks"), default="weeks",
                     help="time unit of t_x and T (default: weeks, as in Fader, Hardie & Lee 2005)")
    fit.add_argument("--policy", metavar="FILE", help="shop policy overrides (JSON)")


def run(args: argparse.Namespace) -> int:
    from schemas.codec import dumps_pretty
    from scoring import clv
    from scoring.clock import day_of, to_us
    from scoring.replay import fold_lines
    from scoring.snapshot import clv_inputs, head_as_of
    from streams.commands._inputs import load_policies, open_events, parse_as_of

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
    shops: dict[str, object] = {}
    if as_of_us is not None:
        by_shop: dict[str, list[tuple[int, int, int, int]]] = {}
        day = day_of(as_of_us)
        for (shop, _), state in res.states.items():
            inputs = clv_inputs(head_as_of(state, as_of_us, policies.for_shop(shop)), day)
            if inputs is not None:
                by_shop.setdefault(shop, []).append(inputs)
        unit_days = 7 if args.unit == "weeks" else 1
        for shop in sorted(by_shop):
            try:
                model = clv.fit_shop(by_shop[shop], unit_days)
            except ValueError as exc:
                shops[shop] = {"error": str(exc), "customers": len(by_shop[shop])}
                continue
            gg = model.gamma_gamma
            shops[shop] = {
                "bgnbd": {"r": model.bgnbd.r, "alpha": model.bgnbd.alpha, "a": model.bgnbd.a,
                          "b": model.bgnbd.b},
                "gamma_gamma": None if gg is None else {"p": gg.p, "q": gg.q, "gamma": gg.gamma},
                "customers": model.customers,
                "log_likelihood": model.log_likelihood,
            }
    sys.stdout.buffer.write(dumps_pretty({"shops": shops}))
    print("loyalty clv fit: " + str(res.summary()), file=sys.stderr)
    return 0
