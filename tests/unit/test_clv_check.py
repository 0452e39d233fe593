"""`loyalty clv check`: the calibration/holdout validation of Fader, Hardie & Lee (2005),
run as a user runs it (real subprocess), its numbers checked against an independent
computation from the raw CDNOW file (tests/cdnow.py)."""

from __future__ import annotations

import struct
import subprocess
import sys
from collections import defaultdict
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from schemas.codec import dumps, loads
from scoring import clv
from tests.cdnow import CALIBRATION_END, CDNOW_PATH, calibration_stats, load_transactions

HOLDOUT_END = date(1998, 6, 30)
CAL = "1997-09-30T23:59:59Z"
HOLD = "1998-06-30T23:59:59Z"


def loyalty(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], input=stdin,
                          capture_output=True, timeout=600, check=False)


def png_size(path: str) -> tuple[int, int]:
    """(width, height) from the IHDR chunk; fails unless the file is a PNG."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def independent(transactions: list, ids: set[str] | None = None) -> dict[str, object]:
    """Calibration stats, holdout repeat days and the holdout forecast straight from the
    raw rows ($0.00 rows dropped: the event contract rejects them)."""
    rows = [t for t in transactions if t.amount_cents and (ids is None or t.customer_id in ids)]
    cal = calibration_stats(rows, CALIBRATION_END)
    hold: dict[str, set[date]] = defaultdict(set)
    for t in rows:
        if CALIBRATION_END < t.day <= HOLDOUT_END and t.customer_id in cal:
            hold[t.customer_id].add(t.day)
    return {"cal": cal, "hold": {c: len(hold.get(c, ())) for c in cal}}


@pytest.mark.slow
def test_clv_check_reproduces_the_cdnow_holdout(tmp_path: Path) -> None:
    """On the CDNOW file itself (its own format): 39-week calibration, 39-week holdout.
    The model predicts 16 876 repeat purchase days against 19 674 actual (0.858), the
    published shape (Fader, Hardie & Lee 2005, figure 4 under-forecasts the same way),
    and every number behind the plots matches an independent computation."""
    out = tmp_path / "plots"
    proc = loyalty("clv", "check", str(CDNOW_PATH), "--calibration-end", CAL,
                   "--holdout-end", HOLD, "--out-dir", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = loads(proc.stderr)
    assert summary["command"] == "clv check" and summary["invalid"] == {"out_of_range": 80}
    shop = loads(proc.stdout)["shops"]["cdnow"]
    assert shop["model"] == "shop" and shop["reason"] is None

    ind = independent(load_transactions())
    cal, hold = ind["cal"], ind["hold"]
    assert shop["customers"] == len(cal) == 23_500
    assert shop["calibration"]["actual_repeat"] == sum(s[0] for s in cal.values()) == 24_334
    assert shop["holdout"]["actual_repeat"] == sum(hold.values()) == 19_674
    model = clv.fit_shop(list(cal.values()), 7)
    ids = sorted(cal)
    arr = np.array([cal[c] for c in ids], dtype=float)
    pred = clv.expected_purchases(model.bgnbd, 39.0, arr[:, 0], arr[:, 1] / 7, arr[:, 2] / 7)
    assert shop["holdout"]["predicted_repeat"] == pytest.approx(float(pred.sum()), abs=0.1)
    assert shop["holdout"]["predicted_repeat"] == pytest.approx(16_876, abs=1)
    assert shop["holdout"]["predicted_over_actual"] == pytest.approx(0.858, abs=0.001)
    # the unconditional (tracking) forecast of the same weeks tells the same story
    assert shop["holdout"]["predicted_repeat_unconditional"] == pytest.approx(16_853, abs=1)
    assert shop["calibration"]["predicted_repeat"] == pytest.approx(24_334, rel=0.01)

    weekly = shop["weekly"]
    assert len(weekly["week_end_day"]) == 78  # 1997-01-08 .. 1998-06-30
    act = weekly["actual_cumulative"]
    assert all(b >= a for a, b in zip(act, act[1:], strict=False))
    assert act[-1] == 24_334 + 19_674
    k = weekly["week_end_day"].index(weekly["calibration_end_day"])
    assert k == 38 and act[k] == 24_334  # week 39 ends on 1997-09-30
    predc = weekly["predicted_cumulative"]
    assert predc[k] == pytest.approx(shop["calibration"]["predicted_repeat"], abs=0.1)
    assert predc[-1] - shop["calibration"]["predicted_repeat"] == pytest.approx(
        shop["holdout"]["predicted_repeat_unconditional"], abs=0.2)

    freq = shop["by_frequency"]
    assert [b["x"] for b in freq] == ["0", "1", "2", "3", "4", "5", "6", "7+"]
    for b, g in zip(freq, [arr[:, 0] == j for j in range(7)] + [arr[:, 0] >= 7], strict=True):
        assert b["customers"] == int(g.sum())
        assert b["actual_mean"] == pytest.approx(float(np.mean([hold[ids[i]] for i in np.flatnonzero(g)])))
        assert b["predicted_mean"] == pytest.approx(float(pred[g].mean()), rel=1e-9)
    for name in ("tracking", "frequency"):
        path = shop["plots"][name]
        assert Path(path).parent == out and Path(path).name == f"cdnow-{name}.png"
        assert png_size(path)[0] >= 600


@pytest.fixture(scope="module")
def two_shops() -> tuple[list[bytes], set[str]]:
    """CDNOW customers 1..1500 in shop "big", 1501..1650 in shop "small", as events."""
    lines, small = [], set()
    for i, t in enumerate(load_transactions()):
        n = int(t.customer_id)
        if n <= 1650:
            if n > 1500:
                small.add(t.customer_id)
            lines.append(dumps({
                "type": "purchase", "event_id": f"t{i}", "shop_id": "big" if n <= 1500 else "small",
                "customer_id": t.customer_id, "occurred_at": f"{t.day.isoformat()}T12:00:00Z",
                "order_id": f"t{i}", "amount": t.amount_cents, "currency": "USD"}))
    return lines, small


def test_clv_check_on_events_checks_the_pooled_model_of_a_small_shop(
        tmp_path: Path, two_shops: tuple[list[bytes], set[str]]) -> None:
    lines, small_ids = two_shops
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    proc = loyalty("clv", "check", str(path), "--calibration-end", CAL, "--holdout-end", HOLD,
                   "--out-dir", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    shops = loads(proc.stdout)["shops"]
    assert shops["big"]["model"] == "shop"
    small = shops["small"]
    assert small["model"] == "pooled" and "fewer than the minimum 200" in small["reason"]
    ind = independent(load_transactions(), small_ids)
    assert small["customers"] == len(ind["cal"])
    assert small["holdout"]["actual_repeat"] == sum(ind["hold"].values())
    assert sum(b["customers"] for b in small["by_frequency"]) == small["customers"]
    assert all(png_size(p) for p in small["plots"].values())
    # the same file from stdin gives the same answer
    again = loyalty("clv", "check", "-", "--calibration-end", CAL, "--holdout-end", HOLD,
                    "--out-dir", str(tmp_path / "out2"), stdin=path.read_bytes())
    assert again.returncode == 0 and loads(again.stdout)["shops"]["small"]["holdout"] == small["holdout"]


def test_clv_check_errors_are_clear(tmp_path: Path) -> None:
    proc = loyalty("clv", "check", str(tmp_path / "missing"), "--calibration-end", CAL,
                   "--holdout-end", HOLD)
    assert proc.returncode == 2 and b"cannot read" in proc.stderr
    odd = tmp_path / "odd.txt"
    odd.write_bytes(b"hello world\nthis is not data\n")
    proc = loyalty("clv", "check", str(odd), "--calibration-end", CAL, "--holdout-end", HOLD)
    assert proc.returncode == 2 and b"unrecognised input format" in proc.stderr
    proc = loyalty("clv", "check", str(odd), "--calibration-end", HOLD, "--holdout-end", CAL)
    assert proc.returncode == 2 and b"must be before" in proc.stderr
    proc = loyalty("clv", "check", str(odd), "--calibration-end", "soon", "--holdout-end", HOLD)
    assert proc.returncode == 2 and b"--calibration-end 'soon'" in proc.stderr
    proc = loyalty("clv", "check", str(odd), "--shop", "a|b", "--calibration-end", CAL,
                   "--holdout-end", HOLD)
    assert proc.returncode == 2 and b"not a valid shop id" in proc.stderr
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b" 00001 19970101  1   11.77\n 00002 19970112  x   12.00\n")
    proc = loyalty("clv", "check", str(bad), "--format", "cdnow", "--calibration-end", CAL,
                   "--holdout-end", HOLD, "--out-dir", str(tmp_path / "o"))
    assert proc.returncode == 2 and b"line 2" in proc.stderr and b"Traceback" not in proc.stderr


def homogeneous_shops(path: Path) -> None:
    """Three shops of 120 customers who all buy until the end and never drop out, at one
    of two fixed rates: the drop-out process is not identified (BG/NBD a and b run away)."""
    import random
    from datetime import UTC, datetime, timedelta

    rnd = random.Random(2024)
    end = datetime(2026, 1, 1, tzinfo=UTC)
    n = 0
    with open(path, "wb") as fh:
        for shop in ("cafe-aurora", "books-north", "fit-club"):
            for c in range(120):
                gap = (9.0, 30.0)[c % 2]
                t = end - timedelta(days=rnd.uniform(60, 400))
                while t <= end:
                    n += 1
                    fh.write(dumps({"type": "purchase", "event_id": f"e{n}", "shop_id": shop,
                                    "customer_id": f"c{c:03d}", "order_id": f"o{n}",
                                    "occurred_at": t.isoformat().replace("+00:00", "Z"),
                                    "amount": 2400, "currency": "USD"}) + b"\n")
                    t += timedelta(days=rnd.expovariate(1.0 / gap) + 0.2)


@pytest.mark.slow
def test_clv_fit_shows_why_a_shop_gets_no_model(tmp_path: Path) -> None:
    """Shops whose customers never drop out: the BG/NBD a and b are not identified. `clv
    fit` must say so rather than print runaway parameters: below the minimum each shop
    falls back to the pool, whose fit is refused with its reason; fitted on their own
    (--min-customers 50) the shops' fits are shown in shop_fit, flagged degenerate, and
    still not served. (The demo's synthetic population is fittable: tests/unit/test_demo_output.py.)"""
    path = tmp_path / "homogeneous.jsonl"
    homogeneous_shops(path)
    proc = loyalty("clv", "fit", str(path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = loads(proc.stdout)
    pool = report["pools"]["all/USD"]
    assert pool["model"]["kind"] == "pooled" and pool["reason"]
    for shop in report["shops"].values():
        assert shop["model"] is None and shop["parameters"] is None
        assert "fewer than the minimum 200" in shop["reason"] and "pooled model: " in shop["reason"]
    own = loads(loyalty("clv", "fit", str(path), "--min-customers", "50").stdout)["shops"]
    degenerate = [s for s in own.values() if s["shop_fit"] is not None]
    assert len(degenerate) == len(own) == 3, own
    for s in degenerate:
        fits = [s["shop_fit"]["bgnbd"], s["shop_fit"]["gamma_gamma"]]
        assert any(f is not None and not (f["converged"] and not f["degenerate"]) for f in fits)
        assert s["model"] != "shop" and s["reason"].split(":")[0] in ("BG/NBD", "Gamma-Gamma")
