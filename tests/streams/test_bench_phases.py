"""The latency phase's reading of its samples (streams.bench.phases.latency_split)."""

from __future__ import annotations

from streams.bench.phases import latency_split


def test_latency_split_cuts_each_latency_at_the_snapshot_s_creation() -> None:
    # 100 events sent at t = i; the worker made each snapshot 20 ms later and
    # it took 5 ms to arrive, but for the last event: 300 ms in the worker.
    # The broker acknowledged each send after 2 ms, the last one's after 250 ms;
    # one acknowledgement came after the snapshot (the worker read it first).
    sent = [float(i) for i in range(100)]
    made = [s + 0.020 for s in sent[:-1]] + [sent[-1] + 0.300]
    acked = [s + 0.002 for s in sent[:-2]] + [sent[-2] + 0.030, sent[-1] + 0.250]
    lat = [m - s + 0.005 for s, m in zip(sent, made, strict=True)]
    got = latency_split(sent, made, acked, lat, threshold_s=0.300)
    assert got["produce"] == {"p50_ms": 2.0, "p99_ms": 20.0, "slow_p50_ms": 250.0}
    assert got["to_snapshot"] == {"p50_ms": 20.0, "p99_ms": 20.0, "slow_p50_ms": 300.0}
    assert got["delivery"] == {"p50_ms": 5.0, "p99_ms": 5.0, "slow_p50_ms": 5.0}
    # Nothing at or above the threshold: no slow events to describe.
    assert latency_split(sent, made, acked, lat, 1.0)["delivery"]["slow_p50_ms"] is None
