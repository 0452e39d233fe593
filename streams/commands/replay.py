"""Fold a JSON-lines event file offline with the same core as the service.

Input: one event per line, in arrival order (FILE, or - for stdin).
Output streams: **stdout carries the data**, one JSON object per customer,
sorted by shop_id then customer_id, with every snapshot field of
docs/domain.md; **stderr carries the summary**, one JSON object on the last
line (counts by reason and the line numbers of the first rejected lines),
preceded by progress lines when stderr is a terminal or with --progress.
With --rejects FILE every rejected line is also written to FILE, with its
line number, reason, detail and value under the dead-letter topic's names.
The exit code is 0 even with rejected lines; 2 when the input, the policy
file or an option is bad.

The policy file is --policy, else LOYALTY_POLICY_FILE, else the built-in
defaults.

Examples:
  loyalty replay events.jsonl > customers.jsonl
  loyalty replay events.jsonl --as-of 2024-06-30T23:59:59Z --shops-out shops.json
  loyalty replay big.jsonl --rejects rejects.jsonl --progress > customers.jsonl
  cat events.jsonl | loyalty replay - --policy policy.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO

#: Line numbers kept per reason in the summary (all of them go to --rejects).
SUMMARY_LINES_PER_REASON = 10
#: Seconds between two progress lines.
PROGRESS_INTERVAL_S = 3.0


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", default="-", help="JSON-lines events in arrival order, or - for stdin (default)")
    p.add_argument("--as-of", metavar="INSTANT", help="RFC 3339 instant; only events at or before it count "
                   "(default: the newest occurred_at in the input)")
    p.add_argument("--policy", metavar="FILE", help="shop policy overrides (JSON); default: LOYALTY_POLICY_FILE "
                   "if set, else the built-in defaults of docs/domain.md")
    p.add_argument("--shops-out", metavar="FILE", help="also write per-shop figures (NPS, funnel) as JSON")
    p.add_argument("--no-clv", action="store_true", help="skip fitting the refit's models "
                   "(predictive CLV and RFM): their fields are null")
    p.add_argument("--rejects", metavar="FILE", help="write every rejected line to FILE as JSON lines: "
                   '{"line": N, "reason", "detail", "value", "value_encoding"} (the dead-letter '
                   'topic\'s fields for the same facts; value in base64 if it is not UTF-8)')
    p.add_argument("--progress", action="store_true", help="print progress to stderr every few seconds "
                   "(default: only when stderr is a terminal)")


class Progress:
    """Progress lines on stderr, at most one per ``interval`` seconds; silent when disabled."""

    def __init__(self, enabled: bool, interval: float = PROGRESS_INTERVAL_S) -> None:
        self.enabled = enabled
        self.interval = interval
        self.started = self.last = time.monotonic()

    def lines(self, n: int) -> None:
        now = time.monotonic()
        if self.enabled and now - self.last >= self.interval:
            self.last = now
            rate = n / (now - self.started)
            print(f"loyalty replay: {n:,} lines read ({rate:,.0f} lines/s)", file=sys.stderr, flush=True)

    def phase(self, text: str) -> None:
        if self.enabled:
            elapsed = time.monotonic() - self.started
            print(f"loyalty replay: {text} ({elapsed:.1f} s)", file=sys.stderr, flush=True)


class Rejects:
    """Collects rejected lines: first line numbers per reason, and all of them in ``out`` if given."""

    def __init__(self, out: IO[bytes] | None) -> None:
        self.out = out
        self.lines: dict[str, list[int]] = {}

    def add(self, lineno: int, raw: bytes, reason: str, detail: str) -> None:
        kept = self.lines.setdefault(reason, [])
        if len(kept) < SUMMARY_LINES_PER_REASON:
            kept.append(lineno)
        if self.out is not None:
            from schemas.codec import dumps, text_or_base64

            value, encoding = text_or_base64(raw)
            # The dead-letter topic's names for the same facts, plus the line number.
            record = {"line": lineno, "reason": reason, "detail": detail, "value": value,
                      "value_encoding": encoding}
            self.out.write(dumps(record) + b"\n")


def counted(src: Iterable[bytes], progress: Progress) -> Iterator[bytes]:
    """Every line of ``src`` (blank ones too, so line numbers stay physical), with progress."""
    for lineno, line in enumerate(src, start=1):
        if lineno % 1024 == 0:
            progress.lines(lineno)
        yield line


def run(args: argparse.Namespace) -> int:
    from schemas.codec import dumps, dumps_pretty
    from scoring.clock import day_of
    from scoring.replay import fold_lines, snapshots
    from streams.commands._inputs import load_policies, open_events, parse_as_of

    policy_path = args.policy or os.environ.get("LOYALTY_POLICY_FILE") or None
    policies = load_policies("replay", policy_path)
    as_of = parse_as_of("replay", args.as_of)
    if policies is None or as_of is False:
        return 2
    src = open_events("replay", args.file)
    if src is None:
        return 2
    try:
        rejects_out = open(args.rejects, "wb") if args.rejects else None  # noqa: SIM115 - closed below
    except OSError as exc:
        src.close()
        print(f"loyalty replay: cannot write {args.rejects}: {exc.strerror}", file=sys.stderr)
        return 2
    progress = Progress(args.progress or sys.stderr.isatty())
    rejects = Rejects(rejects_out)
    try:
        with src:
            res = fold_lines(counted(src, progress), policies=policies, as_of=as_of,
                             on_reject=rejects.add)
    finally:
        if rejects_out is not None:
            rejects_out.close()
    progress.phase(f"{res.lines:,} events folded, {len(res.states):,} customers"
                   + ("" if args.no_clv else "; fitting the CLV and RFM models"))
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
    summary = res.summary()
    summary["rejected_lines"] = {reason: rejects.lines[reason] for reason in sorted(rejects.lines)}
    if args.rejects:
        summary["rejects_file"] = args.rejects
    progress.phase("done")
    sys.stderr.buffer.write(dumps(summary) + b"\n")
    sys.stderr.flush()
    return 0
