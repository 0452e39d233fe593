"""The event loop's lag and stall reports (streams.loop_watch), on a real event loop."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from streams.loop_watch import PROBE_INTERVAL_S, LoopWatch
from streams.metrics import Metrics


def _count(metrics: Metrics, le: str) -> float:
    value = metrics.registry.get_sample_value("loyalty_event_loop_lag_seconds_bucket",
                                              {"le": le})
    return 0.0 if value is None else value


def hold_the_loop(seconds: float) -> None:
    """Blocks the event loop the way a long synchronous step would."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sum(range(1000))


async def _watch_while(watch: LoopWatch, block_s: float) -> None:
    task = asyncio.ensure_future(watch.probe())
    await asyncio.sleep(3 * PROBE_INTERVAL_S)  # a few quiet turns first
    hold_the_loop(block_s)
    await asyncio.sleep(3 * PROBE_INTERVAL_S)  # the probe wakes up late, then on time
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_blocked_loop_is_measured_and_reported_with_its_stack(caplog) -> None:
    metrics = Metrics()
    watch = LoopWatch(metrics, stall_report_s=0.2)
    with caplog.at_level(logging.WARNING, logger="streams.loop_watch"):
        await _watch_while(watch, 0.6)
    total = metrics.registry.get_sample_value("loyalty_event_loop_lag_seconds_count")
    assert total is not None and total >= 4
    # one wake-up at least 0.25 s late (the block), the quiet ones well under it
    assert total - _count(metrics, "0.25") >= 1
    assert _count(metrics, "0.05") >= 3
    stalls = [r.getMessage() for r in caplog.records if "no turn for" in r.getMessage()]
    assert len(stalls) == 1, caplog.text
    assert "hold_the_loop" in stalls[0]
    backs = [r.getMessage() for r in caplog.records if "back after" in r.getMessage()]
    assert len(backs) == 1 and float(backs[0].split()[-2]) >= 0.6


async def test_short_stalls_and_a_zero_threshold_log_nothing(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="streams.loop_watch"):
        await _watch_while(LoopWatch(Metrics(), stall_report_s=1.0), 0.3)
        await _watch_while(LoopWatch(Metrics(), stall_report_s=0), 0.6)
    assert caplog.records == []
