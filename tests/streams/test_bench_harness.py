"""The bench's reading of the worker's batch metrics (streams.bench.harness.batch_profile),
on the text a real :class:`streams.metrics.Metrics` registry exposes."""

from __future__ import annotations

from streams.bench.harness import batch_profile
from streams.metrics import BATCH_STEPS, Metrics


def test_batch_profile_gives_the_means_between_two_scrapes() -> None:
    m = Metrics()
    empty = m.render().decode()
    # Before the phase: one batch of 1 000 records that must not count.
    m.batch_records.observe(1000)
    for step in BATCH_STEPS:
        m.batch_steps.labels(step).observe(1.0)
    before = m.render().decode()
    # The phase: two batches (3 and 5 records); the second never reached its changelog
    # and write steps (ownership lost after the outputs).
    for records, seconds in ((3, 0.010), (5, 0.030)):
        m.batch_records.observe(records)
        for step in ("plan", "settle", "outputs"):
            m.batch_steps.labels(step).observe(seconds)
    m.batch_steps.labels("changelog").observe(0.004)
    m.batch_steps.labels("write").observe(0.002)
    after = m.render().decode()

    got = batch_profile(before, after)
    assert got["batches"] == 2 and got["records_per_batch"] == 4.0
    assert got["ms_per_batch"] == {"plan": 20.0, "settle": 20.0, "outputs": 20.0,
                                   "changelog": 4.0, "write": 2.0}
    # From an empty scrape (a fresh worker): everything counts; a step never taken is None.
    assert batch_profile("", before)["records_per_batch"] == 1000.0
    assert batch_profile(empty, empty) == {
        "batches": 0, "records_per_batch": None,
        "ms_per_batch": {step: None for step in BATCH_STEPS}}
