"""``loyalty bench`` end to end on the real broker, at a tiny size.

The figures of a tiny run mean nothing as performance numbers; what is checked
is that every phase runs, every figure is present and sane, the run cleans up
after itself (worker processes, topics) and fails clearly without a broker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from streams.ports import free_port

REPO = Path(__file__).resolve().parents[2]
KEYS = {"events_per_cpu_s", "baseline_events_per_cpu_s", "cpu_ratio", "wall_ratio",
        "events_per_s", "baseline_events_per_s", "cold_start_s", "latency_p50_ms",
        "latency_p99_ms", "latency_p99_ms_at_1000", "rss_mb", "customers",
        "recovery_customers_per_s", "population", "machine", "params"}


def _bench(*args: str, broker: str, timeout: float) -> subprocess.CompletedProcess[str]:
    # A sweep every 5 s instead of 30: the population phase waits for the
    # first full sweep, and a tiny run needs no more time than that.
    env = {**os.environ, "LOYALTY_BROKER": broker, "LOYALTY_SWEEP_INTERVAL_S": "5"}
    return subprocess.run([sys.executable, "-m", "streams.cli", "bench", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


def _is_our_worker(pid: int) -> bool:
    """True if ``pid`` is (still) a `loyalty worker` process (pids can be reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"streams.cli" in cmdline and b"worker" in cmdline


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_bench_tiny_run_reports_every_figure_and_cleans_up(bootstrap: str) -> None:
    # Two latency phases (half the max rate, then 1000/s) of 2.5 s: as long as one was.
    proc = _bench("--events", "3000", "--customers", "300", "--partitions", "2",
                  "--latency-seconds", "2.5", "--population", "2000", "--json",
                  broker=f"kafka://{bootstrap}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert set(result) == KEYS

    assert result["events_per_s"] > 0
    assert result["baseline_events_per_s"] > 0
    # The headline: per CPU-second, and both ratios to the baseline.
    assert result["events_per_cpu_s"] > 0 and result["baseline_events_per_cpu_s"] > 0
    assert result["cpu_ratio"] == pytest.approx(
        result["events_per_cpu_s"] / result["baseline_events_per_cpu_s"], rel=2e-3)
    assert result["wall_ratio"] == pytest.approx(
        result["events_per_s"] / result["baseline_events_per_s"], rel=2e-3)
    # The baseline's figures are the median of its passes, each over every event.
    passes = result["params"]["observed"]["baseline_passes"]
    assert len(passes) == 3 and all(p["cpu_s"] > 0 and p["seconds"] > 0 for p in passes)
    assert sorted(p["events_per_s"] for p in passes)[1] == pytest.approx(
        result["baseline_events_per_s"], abs=0.1)
    assert sorted(p["events_per_cpu_s"] for p in passes)[1] == pytest.approx(
        result["baseline_events_per_cpu_s"], abs=0.1)
    assert 0 < result["latency_p99_ms_at_1000"] < 60_000
    assert result["cold_start_s"] > 0
    assert 0 < result["latency_p50_ms"] <= result["latency_p99_ms"]
    assert result["latency_p99_ms"] < 60_000
    assert 0 < result["rss_mb"] < 24 * 1024
    assert result["customers"] == 300
    assert result["recovery_customers_per_s"] > 0
    # --population: a second run whose table was restored from one state per
    # customer; the first sweep passed over all of them.
    pop = result["population"]
    assert pop["customers"] == 2000 and pop["recovery_customers_per_s"] > 0
    assert pop["rss_swept_mb"] is not None and 0 < pop["rss_mb"] < 24 * 1024
    assert pop["first_sweep_s"] is not None and pop["first_sweep_s"] >= 0

    params = result["params"]
    assert params["events"] == 3000 and params["partitions"] == 2
    assert params["latency_linger_ms"] == 5  # the latency producer's default batching
    obs = params["observed"]
    # Every preloaded event went through the worker; nothing was lost in the latency phase.
    assert obs["statuses"]["consumed"] >= 3000
    assert obs["latency"]["matched"] == obs["latency"]["sent"] > 0
    fixed = obs["latency_at_1000"]
    assert fixed["offered_per_s"] == 1000 and fixed["matched"] == fixed["sent"] > 0
    assert fixed["p99_ms"] == result["latency_p99_ms_at_1000"]
    assert 0 < obs["worker_cpu_s"] and 0 < obs["measured_events"] <= 3000
    # What each process used while a latency phase sent: the worker folded, the
    # bench produced and consumed; the broker's share only when it is the local one.
    ncpu = os.cpu_count() or 1
    for phase in (obs["latency"], fixed):
        cores = phase["cpu_cores"]
        assert set(cores) == {"worker", "bench", "broker"}
        assert 0 < cores["worker"] <= ncpu and 0 < cores["bench"] <= ncpu
        assert cores["broker"] is None or 0 < cores["broker"] <= ncpu
        # Each latency cut at its send's acknowledgement and its snapshot's
        # CreateTime (whole milliseconds): every part is there, none is negative
        # beyond that rounding, none exceeds the slowest event.
        assert set(phase["split"]) == {"produce", "to_snapshot", "delivery"}
        for part in phase["split"].values():
            assert -1.5 <= part["p50_ms"] <= part["p99_ms"] <= phase["max_ms"] + 1.5, phase
        # The agent folded the phase's events in batches: some of the time, not more than all.
        assert 0 < phase["agent_busy"] <= 1.0 + 1e-3, phase
    # The worker's own batch timings, per phase: every step of a batch has a mean.
    for batches in (obs["batches"], obs["latency"]["batches"], fixed["batches"]):
        assert batches["batches"] > 0 and batches["records_per_batch"] >= 1, batches
        assert set(batches["ms_per_batch"]) == {"plan", "settle", "outputs", "changelog",
                                                "write"}
        assert all(ms is not None and ms >= 0 for ms in batches["ms_per_batch"].values())
    # All 3 000 preloaded events went through batches of the throughput phase.
    assert obs["batches"]["batches"] * obs["batches"]["records_per_batch"] >= 3000 * 0.99
    machine = result["machine"]
    assert machine["cores"] >= 1 and machine["python"] and machine["kafka"]
    assert datetime.fromisoformat(machine["date"].replace("Z", "+00:00")) <= datetime.now(UTC)

    # Both workers (measured and recovery) are gone, and so are the run's topics.
    assert len(obs["worker_pids"]) == 2
    assert not [pid for pid in [*obs["worker_pids"], pop["worker_pid"]] if _is_our_worker(pid)]
    from tests.conftest import run_async

    async def leftovers() -> list[str]:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return [t for t in await admin.list_topics()
                    if t.startswith((params["app_id"], pop["app_id"]))]
        finally:
            await admin.close()

    assert run_async(leftovers()) == []
    assert not Path(f"/tmp/bench_{params['app_id'].removeprefix('bench-')}").exists()


def test_bench_without_broker_says_how_to_start_it() -> None:
    port = free_port()  # nobody listens there
    proc = _bench("--events", "10", "--customers", "2", "--json",
                  broker=f"kafka://127.0.0.1:{port}", timeout=60)
    assert proc.returncode == 1
    assert "loyalty broker start" in proc.stderr
    assert proc.stdout == ""


def test_bench_refuses_a_negative_linger_before_touching_the_broker() -> None:
    port = free_port()  # nobody listens there: the check must come first
    proc = _bench("--latency-linger-ms", "-1", "--json",
                  broker=f"kafka://127.0.0.1:{port}", timeout=60)
    assert proc.returncode == 1
    assert "--latency-linger-ms must be 0 or more" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def _valid_events(triples: list[tuple[str, bytes, bytes]]) -> dict[bytes, list]:
    """Parse and fold every generated event; their parsed events by key, in stream order.

    Fails unless each one is valid, routed by its type, keyed ``shop|customer``,
    applied by the core, refunds an earlier order of the same customer (if a
    refund) and redeems no more points than the customer has (if a redemption).
    """
    from collections import defaultdict

    from schemas.events import parse_event
    from schemas.policy import PolicyBook
    from scoring import fold
    from streams.topics import message_key

    policies, now = PolicyBook.load(None), datetime.now(UTC)
    states: dict[bytes, object] = {}
    events: dict[bytes, list] = defaultdict(list)
    for typ, key, value in triples:
        ev = parse_event(value, now=now, policies=policies)  # raises if invalid
        assert ev.type == typ
        assert key == message_key(ev.shop_id, ev.customer_id)
        if typ == "refund":
            assert ev.order_id in {e.order_id for e in events[key] if e.type == "purchase"}
        out = fold.apply(states.get(key), ev, policies.for_shop(ev.shop_id))  # type: ignore[arg-type]
        assert out.status == fold.APPLIED
        assert not [e for e in out.effects if e.get("entry") == "redemption_rejected"]
        states[key] = out.state
        events[key].append(ev)
    return events


def test_fast_generator_gives_exact_counts_of_valid_events() -> None:
    from streams.bench.generator import StreamStats, fast_stream

    stats = StreamStats()
    triples = list(fast_stream(2000, 150, seed=3, stats=stats))
    assert len(triples) == stats.events == 2000
    assert stats.customers == 150
    assert len(_valid_events(triples)) == 150
    assert set(stats.by_type) == {"purchase", "visit", "feedback", "refund", "redemption"}


def test_fast_generator_spreads_the_customers_over_the_shops_asked_for() -> None:
    from streams.bench.generator import StreamStats, fast_stream

    stats = StreamStats()
    events = _valid_events(list(fast_stream(2000, 150, seed=3, stats=stats, shops=40)))
    per_shop: dict[str, int] = {}
    for key in events:
        shop = key.decode().split("|", 1)[0]
        per_shop[shop] = per_shop.get(shop, 0) + 1
    assert stats.shops == len(per_shop) == 40
    assert set(per_shop.values()) == {3, 4}  # 150 customers round robin over 40 shops


def test_bench_refuses_no_shops_before_touching_the_broker() -> None:
    port = free_port()
    proc = _bench("--shops", "0", "--json", broker=f"kafka://127.0.0.1:{port}", timeout=60)
    assert proc.returncode == 1
    assert "--shops must be at least 1" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def _hot_customers(make: Any, name: str) -> tuple[dict[str, list[Any]], list[str]]:
    """3 000 events over 300 customers from ``make`` (heavy or regulars), 5 of them hot:
    every customer's valid events, and the hot customers' keys (counts checked)."""
    from streams.bench.generator import StreamStats

    stats = StreamStats()
    triples = list(make(3000, 300, seed=3, heavy_customers=5, heavy_events=200, stats=stats))
    assert len(triples) == stats.events == 3000
    assert stats.customers == 300 and stats.generator == name
    assert (stats.heavy_customers, stats.heavy_events_each) == (5, 200)
    events = _valid_events(triples)
    assert len(events) == 300
    hot = [k for k, evs in events.items() if len(evs) == 200]
    assert len(hot) == 5 and max(len(v) for k, v in events.items() if k not in hot) < 200
    return events, hot


def test_heavy_generator_gives_hot_customers_inside_the_lateness_window() -> None:
    from schemas.policy import PolicyBook
    from streams.bench.generator import heavy_stream

    events, heavy = _hot_customers(heavy_stream, "heavy")
    lateness = PolicyBook.load(None).for_shop("fit-club").allowed_lateness_days
    for k in heavy:
        ts = [e.occurred_at for e in events[k]]
        assert ts == sorted(ts) and ts[-1] - ts[0] < timedelta(days=lateness)
    assert any({"refund", "redemption"} <= {e.type for e in events[k]} for k in heavy)


def test_regulars_generator_spreads_the_hot_customers_over_a_year() -> None:
    from streams.bench.generator import regulars_stream

    events, regulars = _hot_customers(regulars_stream, "regulars")
    for k in regulars:
        ts = [e.occurred_at for e in events[k]]
        # first seen in the first 80 % of the year, then active until its end
        assert ts == sorted(ts) and ts[-1] - ts[0] > timedelta(days=60)
        purchase_days = {e.occurred_at.date() for e in events[k] if e.type == "purchase"}
        assert len(purchase_days) > 30  # a full attached window, not a burst
    with pytest.raises(ValueError, match="span_days > 0"):
        list(regulars_stream(100, 10, span_days=0))
