"""The bench's reading of the worker's batch and loop-lag metrics
(streams.bench.harness.batch_profile, loop_lag_profile), on the text a real
:class:`streams.metrics.Metrics` registry exposes."""

from __future__ import annotations

import subprocess
import sys
import time

from streams.bench.harness import CpuMeter, batch_profile, loop_lag_profile
from streams.metrics import BATCH_STEPS, Metrics


def test_loop_lag_profile_counts_the_late_probes_between_two_scrapes() -> None:
    m = Metrics()
    m.loop_lag.observe(2.0)  # before the phase: must not count
    before = m.render().decode()
    for lag in (0.001, 0.002, 0.07, 0.3, 0.6, 1.2):
        m.loop_lag.observe(lag)
    got = loop_lag_profile(before, m.render().decode())
    assert got == {"probes": 6, "late_ms": {"50": 4, "100": 3, "250": 3, "500": 2, "1000": 1}}
    assert loop_lag_profile("", "") == {"probes": 0, "late_ms": dict.fromkeys(
        ("50", "100", "250", "500", "1000"), 0)}


def test_batch_profile_gives_the_means_between_two_scrapes() -> None:
    m = Metrics()
    empty = m.render().decode()
    # Before the phase: one batch of 1 000 records that must not count.
    m.batch_records.observe(1000)
    for step in BATCH_STEPS:
        m.batch_steps.labels(step).observe(1.0)
        m.batch_step_cpu.labels(step).inc(0.5)
    before = m.render().decode()
    # The phase: two batches (3 and 5 records); the second never reached its changelog
    # and write steps (ownership lost after the outputs).
    for records, seconds in ((3, 0.010), (5, 0.030)):
        m.batch_records.observe(records)
        for step in ("plan", "settle", "outputs"):
            m.batch_steps.labels(step).observe(seconds)
    m.batch_steps.labels("changelog").observe(0.004)
    m.batch_steps.labels("write").observe(0.002)
    # The agent thread's CPU in the phase: 8 records, so 1 ms is 125 us a record.
    for step, cpu_s in (("plan", 0.002), ("settle", 0.001), ("outputs", 0.0004)):
        m.batch_step_cpu.labels(step).inc(cpu_s)
    after = m.render().decode()

    got = batch_profile(before, after)
    assert got["batches"] == 2 and got["records_per_batch"] == 4.0
    assert got["ms_per_batch"] == {"plan": 20.0, "settle": 20.0, "outputs": 20.0,
                                   "changelog": 4.0, "write": 2.0}
    assert got["cpu_us_per_record"] == {"plan": 250.0, "settle": 125.0, "outputs": 50.0,
                                        "changelog": 0.0, "write": 0.0}
    assert got["wall_s"] == 3 * 0.040 + 0.004 + 0.002  # every step of both batches
    # From an empty scrape (a fresh worker): everything counts; a step never taken is None.
    assert batch_profile("", before)["records_per_batch"] == 1000.0
    assert batch_profile(empty, empty) == {
        "batches": 0, "records_per_batch": None,
        "ms_per_batch": {step: None for step in BATCH_STEPS},
        "cpu_us_per_record": {step: None for step in BATCH_STEPS}, "wall_s": 0.0}


def _child(code: str) -> subprocess.Popen[bytes]:
    """A Python child running ``code`` once its start-up is over (the CPU of starting
    an interpreter would otherwise count)."""
    proc = subprocess.Popen([sys.executable, "-c", f"print(flush=True)\n{code}"],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"\n"
    return proc


def test_cpu_meter_reads_the_cores_each_process_used() -> None:
    """A busy child reads as busy, a sleeping one as idle; unknown and gone processes
    read as None, never as an error."""
    busy = _child("import time\nend = time.time() + 1.5\nwhile time.time() < end: pass")
    idle = _child("import time; time.sleep(1.5)")
    try:
        busy_meter, idle_meter = CpuMeter(busy.pid, None), CpuMeter(idle.pid, None)
        time.sleep(1.0)
        on_busy, on_idle = busy_meter.cores(), idle_meter.cores()
    finally:
        busy.communicate(timeout=10)
        idle.communicate(timeout=10)
    assert set(on_busy) == {"worker", "bench", "broker"}
    assert on_busy["worker"] is not None and on_busy["worker"] > 0.1, on_busy
    assert on_idle["worker"] is not None and on_idle["worker"] < 0.05, on_idle
    assert on_busy["broker"] is None  # no local broker given
    assert on_busy["bench"] is not None and on_busy["bench"] < 0.5  # this process slept
    assert busy_meter.cores()["worker"] is None  # the child has exited and been reaped
