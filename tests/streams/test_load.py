"""The agent's busy share (streams/load.py): a decayed share of recent wall time."""

from __future__ import annotations

import math

import pytest

from streams.load import BusyShare


def test_a_steady_duty_cycle_converges_to_its_share() -> None:
    for busy in (0.0, 0.1, 0.5, 0.9, 1.0):
        load = BusyShare(window_s=2.0)
        t = 0.0
        for _ in range(2000):  # batches of 10 ms, one every 10 ms of wall time
            load.add(t, t + 0.01 * busy)
            t += 0.01
        assert load.share(t) == pytest.approx(busy, abs=0.01)


def test_an_idle_agent_decays_by_e_per_window_and_never_goes_negative() -> None:
    load = BusyShare(window_s=1.0)
    load.add(0.0, 1.0)
    at_end = load.share(1.0)
    assert at_end == pytest.approx(1.0)
    assert load.share(2.0) == pytest.approx(at_end / math.e)
    assert load.share(60.0) < 1e-20
    assert load.share(0.5) == at_end  # asked before the last report: not grown


def test_a_backwards_interval_counts_nothing_and_a_bad_window_is_refused() -> None:
    load = BusyShare(window_s=1.0)
    load.add(5.0, 4.0)
    assert load.share(5.0) == 0.0
    with pytest.raises(ValueError):
        BusyShare(window_s=0)
