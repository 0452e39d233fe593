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

CHECK_DOC = """Validate the models on a holdout period (Fader, Hardie & Lee 2005).

  loyalty clv check FILE --calibration-end INSTANT --holdout-end INSTANT
                    [--out-dir DIR] [--policy FILE] [--min-customers N]
                    [--format auto|events|cdnow] [--shop ID]

FILE holds contract-v1 events (JSON lines) or the CDNOW log (customer id,
YYYYMMDD, CDs, dollars; --shop names its shop, default cdnow); --format auto
tells them apart by the first lines. The models are fitted as of the
calibration end by the same rules as `clv fit`; each shop's served model then
predicts its calibration cohort's repeat purchase days up to the holdout end.

Writes per shop DIR/<shop>-tracking.png (weekly cumulative repeat purchase
days, actual vs predicted) and DIR/<shop>-frequency.png (mean holdout repeat
purchase days by calibration frequency 0..6, 7+) and prints a JSON summary
with the numbers behind both plots: {"calibration_end", "holdout_end",
"shops": {SHOP: {"model", "reason", "customers", "calibration", "holdout",
"by_frequency", "weekly", "plots"}}}. A shop without a served model is listed
with its reason and no plots. The fold summary goes to stderr as JSON. Exit 0,
or 2 for an unreadable file, a bad option or an unrecognised format.
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


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
    fit.add_argument("--min-customers", type=_positive_int, default=MIN_CUSTOMERS, metavar="N",
                     help=f"buyers a shop needs for its own model (default {MIN_CUSTOMERS})")
    chk = sub.add_parser("check", help="calibration/holdout validation per shop, with PNG plots",
                         description=CHECK_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    chk.add_argument("file", help="JSON-lines events or the CDNOW log, or - for stdin")
    chk.add_argument("--calibration-end", required=True, metavar="INSTANT", help="RFC 3339")
    chk.add_argument("--holdout-end", required=True, metavar="INSTANT", help="RFC 3339")
    chk.add_argument("--out-dir", default="clv-check", metavar="DIR",
                     help="where the PNG plots go (created; default ./clv-check)")
    chk.add_argument("--policy", metavar="FILE", help="shop policy overrides (JSON)")
    chk.add_argument("--min-customers", type=_positive_int, default=MIN_CUSTOMERS, metavar="N",
                     help=f"buyers a shop needs for its own model (default {MIN_CUSTOMERS})")
    chk.add_argument("--format", choices=("auto", "events", "cdnow"), default="auto",
                     help="input format (default: auto)")
    chk.add_argument("--shop", default="cdnow", metavar="ID", help="shop id for CDNOW input (cdnow)")


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
    if args.clv_command == "check":
        return run_check(args)
    return run_fit(args)


def run_fit(args: argparse.Namespace) -> int:
    from schemas.codec import dumps, dumps_pretty
    from scoring.clock import to_us
    from scoring.replay import fit_clv_as_of, fold_lines
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
    unit_days = 7 if args.unit == "weeks" else 1
    fits = None
    if as_of_us is not None:
        fits = fit_clv_as_of(res.states, as_of_us, policies, args.min_customers, unit_days)
    sys.stdout.buffer.write(dumps_pretty(_fit_report(fits, as_of_us, unit_days, args.min_customers)) + b"\n")
    sys.stderr.buffer.write(dumps({"command": "clv fit", **res.summary()}) + b"\n")
    return 0


def _instant(name: str, text: str) -> int | None:
    from scoring.clock import parse_instant, to_us

    try:
        return to_us(parse_instant(text))
    except ValueError as exc:
        print(f"loyalty clv check: --{name} {text!r}: {exc}", file=sys.stderr)
        return None


def _file_stem(shop: str) -> str:
    """A file-name-safe stem for a shop id (a hash keeps rewritten ids apart)."""
    import hashlib
    import re

    safe = re.sub(r"[^A-Za-z0-9._-]", "_", shop)[:80].lstrip(".") or "shop"
    if safe != shop:
        safe += "-" + hashlib.blake2b(shop.encode(), digest_size=4).hexdigest()
    return safe


def _event_source(args: argparse.Namespace) -> Any:
    """A function yielding the event lines (read once per fold), or None after an error."""
    from scoring.cdnow import cdnow_events, looks_like_cdnow

    if args.file == "-":
        data = sys.stdin.buffer.read().splitlines()  # several passes: keep stdin in memory

        def raw() -> Any:
            return iter(data)
    else:
        try:
            with open(args.file, "rb"):
                pass
        except OSError as exc:
            print(f"loyalty clv check: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
            return None

        def raw() -> Any:
            with open(args.file, "rb") as fh:
                yield from fh
    fmt = args.format
    if fmt == "auto":
        head = []
        for line in raw():
            head.append(line.decode("utf-8", "replace"))
            if len(head) >= 5:
                break
        first = next((h for h in head if h.strip()), "")
        fmt = "events" if first.lstrip().startswith("{") else "cdnow" if looks_like_cdnow(head) else ""
        if not fmt:
            print("loyalty clv check: unrecognised input format (neither JSON-lines events nor "
                  "CDNOW rows); see --format", file=sys.stderr)
            return None
    if fmt == "events":
        return raw
    return lambda: cdnow_events(raw(), args.shop)


def _plot(shop: str, result: dict[str, Any], out_dir: Any, model_kind: str) -> dict[str, str]:
    """Draw both validation plots (matplotlib, Agg backend); returns their paths."""
    from datetime import date, timedelta

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epoch = date(1970, 1, 1)
    weekly = result["weekly"]
    weeks = list(range(1, len(weekly["week_end_day"]) + 1))
    cal_day = weekly["calibration_end_day"]
    cal_week = next((i + 1 for i, d in enumerate(weekly["week_end_day"]) if d >= cal_day), weeks[-1])
    stem = _file_stem(shop)
    paths = {"tracking": str(out_dir / f"{stem}-tracking.png"),
             "frequency": str(out_dir / f"{stem}-frequency.png")}

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(weeks, weekly["actual_cumulative"], color="black", label="actual")
    ax.plot(weeks, weekly["predicted_cumulative"], color="tab:blue", linestyle="--",
            label=f"BG/NBD ({model_kind} model)")
    ax.axvline(cal_week, color="grey", linestyle=":", linewidth=1)
    ax.annotate(f"calibration end\n{epoch + timedelta(days=cal_day)}", (cal_week, 0),
                xytext=(4, 6), textcoords="offset points", fontsize=8, color="grey")
    ax.set_xlabel(f"week (week 1 ends {epoch + timedelta(days=weekly['week_end_day'][0])})")
    ax.set_xticks([w for w in weeks if w % 10 == 0 or w == 1])
    ax.set_ylabel("cumulative repeat purchase days")
    ax.set_title(f"{shop}: tracking cumulative repeat purchases ({result['customers']} customers)")
    ax.set_xlim(1, weeks[-1])
    _finish(plt, fig, ax, paths["tracking"])

    freq = result["by_frequency"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    # customers per bucket under each label: small buckets are noisy, the reader must see it
    labels = [f"{b['x']}\n(n={b['customers']})" for b in freq]
    xs = range(len(labels))
    nan = float("nan")  # an empty bucket is a gap, not a zero
    ax.plot(xs, [nan if b["actual_mean"] is None else b["actual_mean"] for b in freq],
            color="black", marker="o", label="actual")
    ax.plot(xs, [nan if b["predicted_mean"] is None else b["predicted_mean"] for b in freq],
            color="tab:blue", marker="s", linestyle="--", label=f"BG/NBD ({model_kind} model)")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_xlabel("repeat purchase days in the calibration period")
    ax.set_ylabel("mean repeat purchase days in the holdout")
    ax.set_title(f"{shop}: conditional expectations, holdout "
                 f"({result['holdout']['actual_repeat']} actual, "
                 f"{result['holdout']['predicted_repeat']:.0f} predicted)")
    _finish(plt, fig, ax, paths["frequency"])
    return paths


def _finish(plt: Any, fig: Any, ax: Any, path: str) -> None:
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from schemas.codec import dumps, dumps_pretty
    from scoring.clock import rfc3339
    from scoring.clv_check import check_shop, gather, served_models
    from streams.commands._inputs import load_policies

    policies = load_policies("clv check", args.policy)
    cal = _instant("calibration-end", args.calibration_end)
    hold = _instant("holdout-end", args.holdout_end)
    if policies is None or cal is None or hold is None:
        return 2
    if cal >= hold:
        print("loyalty clv check: --calibration-end must be before --holdout-end", file=sys.stderr)
        return 2
    try:
        from pydantic import TypeAdapter

        from schemas.events import ShopId

        TypeAdapter(ShopId).validate_python(args.shop)
    except ValueError:
        print(f"loyalty clv check: --shop {args.shop!r} is not a valid shop id "
              "(1-64 of A-Z a-z 0-9 . _ -)", file=sys.stderr)
        return 2
    lines = _event_source(args)
    if lines is None:
        return 2
    out_dir = Path(args.out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        cohorts, res = gather(lines, policies, cal, hold)
    except OSError as exc:
        print(f"loyalty clv check: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a malformed CDNOW row
        print(f"loyalty clv check: {args.file}: {exc}", file=sys.stderr)
        return 2
    fits = served_models(cohorts, policies, args.min_customers, cal)
    shops: dict[str, Any] = {}
    for shop in sorted(cohorts):
        info = fits.describe(shop)
        model = fits.select(shop)
        entry: dict[str, Any] = {"model": info["model"], "reason": info["reason"],
                                 "parameters": info["parameters"]}
        if model is not None:
            result = check_shop(model, cohorts[shop], cal, hold)
            entry.update(result)
            entry["plots"] = _plot(shop, result, out_dir, model.kind)
        else:
            entry["customers"] = len(cohorts[shop])
        shops[shop] = entry
    sys.stdout.buffer.write(dumps_pretty({
        "calibration_end": rfc3339(cal), "holdout_end": rfc3339(hold), "shops": shops}) + b"\n")
    sys.stderr.buffer.write(dumps({"command": "clv check", **res.summary()}) + b"\n")
    return 0
