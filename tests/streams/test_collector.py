"""The worker's garbage-collector policy (streams.collector), on this process's real collector."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.collector import Collector
from streams.metrics import Metrics
from tests.streams.test_sweep import Harness


class _Node:
    """A class instance (weak-referenceable) to build a reference cycle from."""

    def __init__(self) -> None:
        self.other: _Node | None = None


def _garbage_cycle() -> weakref.ref[_Node]:
    """A two-object reference cycle nothing else refers to; a weak reference to one."""
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture(autouse=True)
def _restore_collector() -> Iterator[None]:
    # The policy changes the whole process's collector: leave it as found.
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    gc.collect()


def _sample(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


def test_a_batch_keeps_what_it_left_alive_out_of_collections() -> None:
    collector = Collector(Metrics(), reclaim_interval_s=3600)
    cycle = _garbage_cycle()
    collector.batch_done()
    gc.collect()
    # Frozen before it became garbage: only a reclaim can free it.
    assert cycle() is not None


def test_a_reclaim_frees_cycles_among_frozen_objects_and_reports_them() -> None:
    metrics = Metrics()
    collector = Collector(metrics, reclaim_interval_s=3600)
    cycle = _garbage_cycle()
    collector.batch_done()
    alive = _Node()
    alive.other = _Node()
    alive.other.other = alive
    freed = collector.reclaim()
    assert cycle() is None
    assert freed >= 2
    assert _sample(metrics, "loyalty_gc_reclaimed_objects_total") >= 2
    assert _sample(metrics, "loyalty_gc_reclaim_seconds_count") == 1
    # Frozen again at the end: a cycle alive during the reclaim and dropped
    # after it is left for the next one.
    later = weakref.ref(alive)
    del alive
    gc.collect()
    assert later() is not None


def test_interval_zero_turns_the_policy_off() -> None:
    metrics = Metrics()
    collector = Collector(metrics, reclaim_interval_s=0)
    cycle = _garbage_cycle()
    collector.batch_done()
    gc.collect()
    assert cycle() is None  # nothing frozen: Python's collector freed it
    assert collector.reclaim() == 0
    assert _sample(metrics, "loyalty_gc_reclaim_seconds_count") == 0


@pytest.mark.usefixtures("leave_an_event_loop")
@pytest.mark.parametrize("interval", [0, 1234])
def test_install_tunes_the_process_and_hooks_batches_and_a_timer_when_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval: float) -> None:
    h = Harness(tmp_path, monkeypatch, recount_interval_s=3600)
    timers: list[dict[str, Any]] = []

    def timer(**kwargs: Any) -> Any:
        timers.append(kwargs)
        return lambda fun: fun

    monkeypatch.setattr(h.svc.app, "timer", timer)
    gc.set_threshold(700, 10, 10)
    Collector(Metrics(), interval).install(h.svc.app, h.svc.processor)
    assert gc.get_threshold() == (100_000, 50, 1_000)  # scoring.replay.tune_gc
    if interval:
        assert h.svc.processor.after_batch is not None
        assert [(t["interval"], t["name"]) for t in timers] == [(1234, "loyalty-gc-reclaim")]
    else:
        assert h.svc.processor.after_batch is None and timers == []
