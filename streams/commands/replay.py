"""Fold a JSON-lines event file offline with the same core as the service.

Input: one event per line, in arrival order (FILE, or - for stdin).
Output (stdout): one JSON object per customer, sorted by shop_id then
customer_id, with every snapshot field of docs/domain.md. Invalid lines and
rejected events are counted by reason in a summary on stderr; the exit code
is 0 unless the input cannot be read or an option is invalid.

Examples:
  loyalty replay events.jsonl > customers.jsonl
  loyalty replay events.jsonl --as-of 2024-06-30T23:59:59Z --shops-out shops.json
  cat events.jsonl | loyalty replay - --policy policy.json
"""

from __future__ import annotations

import argparse
import sys


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", default="-", help="JSON-lines events in arrival order, or - for stdin (default)")
    p.add_argument("--as-of", metavar="INSTANT", help="RFC 3339 instant; only events at or before it count "
                   "(default: the newest occurred_at in the input)")
    p.add_argument("--policy", metavar="FILE", help="shop policy overrides (JSON); default: the built-in defaults of docs/domain.md")
    p.add_argument("--shops-out", metavar="FILE", help="also write per-shop figures (NPS, funnel) as JSON")
    p.add_argument("--no-clv", action="store_true", help="skip fitting the predictive CLV models")


def run(args: argparse.Namespace) -> int:
    from schemas.codec import dumps, dumps_pretty
    from scoring.clock import day_of
    from scoring.replay import fold_lines, snapshots
    from streams.commands._inputs import load_policies, open_events, parse_as_of

    policies = load_policies("replay", args.policy)
    as_of = parse_as_of("replay", args.as_of)
    if policies is None or as_of is False:
        return 2
    src = open_events("replay", args.file)
    if src is None:
        return 2
    with src:
        res = fold_lines(src, policies=policies, as_of=as_of)
    as_of_us, snaps, tallies = snapshots(res, policies, as_of, with_clv=not args.no_clv)
    out = sys.stdout.buffer
    for snap in snaps:
        out.write(dumps(snap) + b"\n")
    out.flush()
    if args.shops_out:
        figures = {shop: t.figures(shop, day_of(as_of_us), policies.for_shop(shop))
                   for shop, t in sorted(tallies.items())} if as_of_us is not None else {}
        with open(args.shops_out, "wb") as fh:
            fh.write(dumps_pretty({"shops": figures}))
    print("loyalty replay: " + dumps(res.summary()).decode(), file=sys.stderr)
    return 0
