"""`loyalty replay` and `loyalty clv fit` as a user runs them (real subprocesses)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from schemas.codec import dumps, loads
from scoring import clv
from tests.cdnow import calibration_stats, load_transactions
from tests.core.factory import at, feedback, purchase, refund, visit
from tests.core.test_cdnow_replay import cdnow_lines


def loyalty(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], input=stdin,
                          capture_output=True, timeout=300, check=False)


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    lines = [
        visit(at(0), customer="b"), purchase(at(1), 60_000, order_id="o1", customer="b"),
        purchase(at(0.5), 2_000, order_id="o1", customer="a", shop="shop-0"),
        refund(at(2), "o1", 1_000, customer="a", shop="shop-0"),
        feedback(at(3), 10, customer="b"), feedback(at(3), 2, customer="a", shop="shop-0"),
        b'{"type": "purchase", "amount": 1.5}', b"garbage", b"",
        purchase(at(9), 100, order_id="o9", customer="b"),
        purchase(at(1.5), 100, order_id="late", customer="b"),  # 7.5 days late: too_late
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_replay_prints_sorted_snapshots_and_a_summary(events_file: Path, tmp_path: Path) -> None:
    shops = tmp_path / "shops.json"
    proc = loyalty("replay", str(events_file), "--shops-out", str(shops))
    assert proc.returncode == 0, proc.stderr
    rows = [loads(line) for line in proc.stdout.splitlines()]
    assert [(r["shop_id"], r["customer_id"]) for r in rows] == [("shop-0", "a"), ("shop-1", "b")]
    assert rows[0]["spend_total"] == 1_000 and rows[0]["refund_total"] == 1_000
    assert rows[1]["tier"] == "silver" and rows[1]["as_of"] == "2024-01-10T12:00:00Z"
    assert rows[1]["p_alive"] is None  # too few customers to fit a model
    summary = loads(proc.stderr.splitlines()[-1])  # the summary is the last stderr line, JSON
    assert summary["invalid"] == {"invalid_json": 1, "missing_field": 1}
    # physical line numbers (the blank line 9 counts), so a user can find them
    assert summary["rejected_lines"] == {"invalid_json": [8], "missing_field": [7], "too_late": [11]}
    assert summary["rejected"] == {"too_late": 1} and summary["applied"] == 7
    figures = loads(shops.read_bytes())["shops"]
    assert figures["shop-0"]["nps"]["score"] == -100.0 and figures["shop-1"]["nps"]["band"] == "leader"
    assert figures["shop-1"]["funnel"]["repeat"] == 1


def test_replay_reads_stdin_and_honours_as_of(events_file: Path) -> None:
    proc = loyalty("replay", "-", "--as-of", "2024-01-02T23:00:00Z", stdin=events_file.read_bytes())
    assert proc.returncode == 0, proc.stderr
    rows = [loads(line) for line in proc.stdout.splitlines()]
    b = next(r for r in rows if r["customer_id"] == "b")
    assert b["purchase_count"] == 1 and b["nps_last"] is None and b["as_of"] == "2024-01-02T23:00:00Z"


def test_replay_errors_are_clear(tmp_path: Path) -> None:
    proc = loyalty("replay", str(tmp_path / "missing.jsonl"))
    assert proc.returncode == 2 and b"cannot read" in proc.stderr
    proc = loyalty("replay", "-", "--as-of", "last tuesday", stdin=b"")
    assert proc.returncode == 2 and b"--as-of" in proc.stderr
    bad_policy = tmp_path / "p.json"
    bad_policy.write_bytes(dumps({"defaults": {"curency": "EUR"}}))
    proc = loyalty("replay", "-", "--policy", str(bad_policy), stdin=b"")
    assert proc.returncode == 2 and b"curency" in proc.stderr
    assert b"--as-of" in loyalty("replay", "--help").stdout


@pytest.mark.slow
def test_clv_fit_on_cdnow_equals_a_fit_of_the_papers_statistics(tmp_path: Path) -> None:
    path = tmp_path / "cdnow.jsonl"
    path.write_bytes(b"\n".join(cdnow_lines()) + b"\n")
    proc = loyalty("clv", "fit", str(path), "--as-of", "1997-09-30T23:59:59Z", "--unit", "weeks")
    assert proc.returncode == 0, proc.stderr
    got = loads(proc.stdout)["shops"]["cdnow"]
    assert got["model"] == "shop" and got["reason"] is None and got["shop_fit"] is None
    assert loads(proc.stderr)["command"] == "clv fit"  # the summary is JSON too
    stats = calibration_stats([t for t in load_transactions() if t.amount_cents])
    ref = clv.fit_shop(list(stats.values()), unit_days=7, spend_floor=0.01)
    assert got["customers"] == ref.customers
    params = got["parameters"]
    for k in ("r", "alpha", "a", "b"):
        assert params["bgnbd"][k] == pytest.approx(getattr(ref.bgnbd, k), rel=1e-6)
    # Fader, Hardie & Lee (2005), 1/10 sample: r=0.243 alpha=4.414 a=0.793 b=2.426
    assert params["bgnbd"]["r"] == pytest.approx(0.243, rel=0.1)
    assert params["bgnbd"]["alpha"] == pytest.approx(4.414, rel=0.15)
    assert params["gamma_gamma"]["p"] == pytest.approx(6.25, rel=0.1)
    assert params["gamma_gamma"]["gamma"] == pytest.approx(1544, rel=0.1)  # $15.44 in cents
    diag = got["diagnostics"]["bgnbd"]
    assert diag["converged"] and not diag["degenerate"] and diag["reason"] is None
    assert diag["std_errors"]["r"] == pytest.approx(ref.bgnbd_fit.std_errors["r"], rel=1e-3)
