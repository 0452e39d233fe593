"""Metrics: ``/metrics`` parses with prometheus_client's parser and the counters
match what was sent (events by topic and type, invalid by reason, duplicates)."""

from __future__ import annotations

import collections
import time
from importlib.metadata import version

import pytest

from schemas import codec
from scoring.engine import FORMAT_VERSION, READABLE_VERSIONS
from scoring.native import engine_named
from streams import synthetic
from tests.integration.service_harness import (
    AS_OF,
    LATENESS_DAYS,
    ServiceEnv,
    expected_snapshots,
    metric_samples,
    wait_equal,
)


@pytest.mark.slow
def test_service_metrics(bootstrap: str, tmp_path) -> None:
    env = ServiceEnv(bootstrap, tmp_path)
    env.create_topics()
    records = synthetic.generate(seed=61, customers_per_shop=60, lateness_days=LATENESS_DAYS,
                                 end=AS_OF)
    s = env.settings()
    topic_of = {"purchase": s.topic_purchases, "refund": s.topic_purchases,
                "visit": s.topic_visits, "feedback": s.topic_feedback,
                "redemption": s.topic_redemptions}
    sent = collections.Counter()
    for r in records:
        if r.is_invalid:
            sent[(s.topic_purchases, "invalid")] += 1
        else:
            sent[(topic_of[codec.loads(r.value)["type"]], codec.loads(r.value)["type"])] += 1
    invalid = collections.Counter(r.reason for r in records if r.is_invalid)
    duplicates = sum(1 for r in records if r.kind == "duplicate")
    rejected = collections.Counter(
        {"conflicting_duplicate": sum(1 for r in records if r.kind == "conflicting_duplicate"),
         "too_late": sum(1 for r in records if r.kind == "too_late")})

    w = env.worker().start()
    try:
        w.wait_ready()
        env.produce(records)
        wait_equal(w, expected_snapshots(env, records))
        time.sleep(2 * float(env.env["LOYALTY_SWEEP_INTERVAL_S"]))  # gauges set by the sweep
        m = metric_samples(w)

        def value(name: str, **labels: str) -> float:
            return m.get((name, tuple(sorted(labels.items()))), 0.0)

        for (topic, typ), n in sent.items():
            assert value("loyalty_events_consumed_total", topic=topic, type=typ) == n, (topic, typ)
        for reason, n in (invalid + rejected).items():
            assert value("loyalty_invalid_events_total", reason=reason) == n, reason
        assert value("loyalty_duplicates_ignored_total") == duplicates
        misrouted = sum(1 for r in records if r.kind == "misrouted"
                        and r.key != _correct_key(r.value))
        rekeyed = sum(v for (name, _), v in m.items() if name == "loyalty_rekeyed_total")
        assert rekeyed == misrouted
        assert value("loyalty_internal_errors_total") == 0
        # What the worker runs, for a rolling upgrade's state of play (README).
        assert [dict(labels) for (name, labels), v in m.items()
                if name == "loyalty_build_info" and v == 1] == [{
                    "version": version("loyalty-scorer"), "engine": engine_named("auto").name,
                    "state_format_writes": str(FORMAT_VERSION),
                    "state_formats_read": ",".join(map(str, READABLE_VERSIONS))}]
        gaps = sum(v for (name, _), v in m.items() if name == "loyalty_input_offset_gaps_total")
        if gaps == 0:  # re-read records (consumer skips, see agents.find_gap) count again
            assert value("loyalty_processing_seconds_count") == len(records) + misrouted
            # Every processed record was in exactly one committed batch.
            assert value("loyalty_batch_records_sum") == len(records) + misrouted
            assert value("loyalty_batch_records_count") <= len(records) + misrouted
        batches = value("loyalty_batch_records_count")
        assert batches > 0
        # Every batch planned, settled and published its outputs (a batch whose commit
        # fails is retried record by record, which takes the steps again); the changelog
        # and write steps are taken by the batches that changed a state (most here).
        for step in ("plan", "settle", "outputs"):
            assert value("loyalty_batch_step_seconds_count", step=step) >= batches, step
        for step in ("changelog", "write"):
            assert value("loyalty_batch_step_seconds_count", step=step) > 0, step
            assert value("loyalty_batch_step_seconds_sum", step=step) > 0, step
        # The agent thread's CPU per step: planning always costs some, and all the
        # steps together are part of the process's CPU, never more.
        step_cpu = {step: value("loyalty_batch_step_cpu_seconds_total", step=step)
                    for step in ("plan", "settle", "outputs", "changelog", "write")}
        assert step_cpu["plan"] > 0, step_cpu
        assert 0 < sum(step_cpu.values()) <= value("process_cpu_seconds_total"), step_cpu
        # The loop watch runs in the worker: ten probes a second since it started.
        assert value("loyalty_event_loop_lag_seconds_count") >= 10
        assert value("loyalty_points_total", kind="earned") > 0
        # The state cache: every customer fits the default budget, and the agent read
        # states from it (a customer's later events) and decoded others.
        assert value("loyalty_state_cache_states") > 0 and value("loyalty_state_cache_bytes") > 0
        assert value("loyalty_state_cache_bytes") <= s.state_cache_mb << 20
        assert value("loyalty_state_cache_lookups_total", result="live") > 0
        customers = sum(v for (name, _), v in m.items() if name == "loyalty_customers")
        assert customers == len(expected_snapshots(env, records))
        assert value("loyalty_table_rows", table="customers") == customers
        assert any(name == "loyalty_shop_nps" for name, _ in m)
        assert any(name == "loyalty_stage_transitions_total" for name, _ in m)
        # No customer id in any label.
        for _, labels in m:
            for _, v in labels:
                assert not v.startswith(("c0", "m0", "late-")), labels
    finally:
        env.stop_all()


def _correct_key(value: bytes) -> bytes:
    from streams.topics import message_key

    d = codec.loads(value)
    return message_key(d["shop_id"], d["customer_id"])
