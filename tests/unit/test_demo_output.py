"""What `loyalty demo` prints (progress count, hints, shop and CLV lines) and why its
synthetic population can show predictive CLV."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from schemas.codec import loads
from streams import synthetic
from streams.commands.demo import (
    _processed,
    broker_start_message,
    clv_line,
    customer_row,
    outputs_hint,
    population,
)
from streams.settings import Settings


@pytest.fixture
def metrics_server() -> Iterator[tuple[str, CollectorRegistry]]:
    """A real HTTP /metrics endpoint in Prometheus text format over a fresh registry."""
    registry = CollectorRegistry()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", registry
    finally:
        server.shutdown()
        server.server_close()


def test_progress_counts_a_rekeyed_record_once(metrics_server) -> None:
    base, registry = metrics_server
    # the worker's metric names (streams/metrics.py)
    latency = Histogram("loyalty_processing_seconds", "per record", registry=registry)
    rekeyed = Counter("loyalty_rekeyed", "forwarded", ["topic"], registry=registry)
    for _ in range(10):
        latency.observe(0.001)
    for _ in range(3):  # three of the ten were the forwarding hop of a misrouted record
        rekeyed.labels("loyalty.purchases").inc()
    assert _processed(base) == 7


def test_maven_is_mentioned_only_when_the_jars_are_missing() -> None:
    assert "Maven" not in broker_start_message("127.0.0.1", 9092, jars_cached=True)
    assert "Maven" in broker_start_message("127.0.0.1", 9092, jars_cached=False)


def test_outputs_hint_lists_topics_separated_by_spaces() -> None:
    settings = Settings(topic_transitions="d.t", topic_rewards="d.r", topic_scores="d.s",
                        topic_dead_letter="d.dl")
    hint = outputs_hint(settings)
    assert "|" not in hint
    assert hint.endswith("(TOPIC one of: d.t d.r d.s d.dl)")


def clv_fit(path: Path, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "clv", "fit", str(path), *args],
                          capture_output=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return loads(proc.stdout)


def test_the_demo_population_gets_a_sound_pooled_clv_model(tmp_path: Path) -> None:
    """The demo's default population (3 shops x 120 customers, 400 days): customers differ
    in purchase rate, drop-out probability and basket, so `loyalty clv fit` finds a sound
    (converged, non-degenerate) pooled model; each shop, below the production minimum of
    200 buyers, is scored by it. Fitted on their own (--min-customers 50) the shops' fits
    are sound too."""
    path = tmp_path / "events.jsonl"
    synthetic.write_jsonl(population(120, 3, datetime(2026, 1, 1, tzinfo=UTC)), path)
    report = clv_fit(path)
    pool = report["pools"]["all/USD"]
    assert pool["reason"] is None and pool["model"]["kind"] == "pooled", pool
    for fit in pool["model"]["diagnostics"].values():
        assert fit["converged"] and not fit["degenerate"], fit
    bg = pool["model"]["bgnbd"]
    assert all(1e-3 < bg[k] < 1e3 for k in ("r", "alpha", "a", "b")), bg
    assert len(report["shops"]) == 3
    for shop in report["shops"].values():
        assert shop["model"] == "pooled" and "fewer than the minimum 200" in shop["reason"], shop
    own = clv_fit(path, "--min-customers", "50")["shops"]
    assert {s["model"] for s in own.values()} == {"shop"}, own


def test_clv_line_says_which_model_scores_the_shop_and_why() -> None:
    pooled = {"model": "pooled", "pool": "all/USD", "customers": 320,
              "reason": "107 buyers, fewer than the minimum 200"}
    assert clv_line(pooled) == ("CLV model: pooled (pool all/USD, fitted on 320 buyers); "
                                "own fit not served: 107 buyers, fewer than the minimum 200")
    assert clv_line({"model": "shop", "pool": "all/USD", "customers": 250, "reason": None}) \
        == "CLV model: shop (fitted on 250 buyers)"
    assert clv_line({"model": None, "reason": "pooled model: degenerate"}) \
        == "CLV model: none (pooled model: degenerate)"
    assert clv_line(None) == "CLV model: none (not available)"


def test_customer_row_prints_served_values_and_nulls_as_dashes() -> None:
    snap = {"shop_id": "cafe-aurora", "customer_id": "c00001", "ltv_historical": 1200,
            "ltv_formula": 3400, "spend_total": 5000, "purchase_count": 3, "stage": "repeat",
            "tier": "bronze", "points_balance": 50, "clv_model": None, "p_alive": None,
            "clv_365d": None}
    cells = customer_row(snap).split()
    assert cells == ["cafe-aurora", "c00001", "1200", "3400", "5000", "3", "repeat", "bronze",
                     "50", "-", "-", "-"]
    snap.update(clv_model="pooled", p_alive=0.912345, clv_365d=777)
    assert customer_row(snap).split()[-3:] == ["pooled", "0.912345", "777"]
