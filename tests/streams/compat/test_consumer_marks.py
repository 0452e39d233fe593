"""High-water marks as of the delivered records (streams.compat.consumer.track_fetches).

Faust's consumer thread and its aiokafka client are stood in for by the two
methods the function wraps and the aiokafka calls and state it reads (the
assignment, live marks and consumed positions); the app has Faust's public
``highwater`` (the live mark) and generation id. A batch is a mapping of
partition to fetched records, as aiokafka returns it.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from faust.types import TP

from streams.compat.consumer import SKIPPED_KEPT, highwater, skipped_offsets, track_fetches

A = TP("loyalty.purchases", 0)
B = TP("loyalty.visits", 0)


class Broker:
    """The consumer thread's client: its assignment and its live marks."""

    def __init__(self) -> None:
        self.marks: dict[TP, int | None] = {A: None, B: None}
        #: aiokafka's consumed position per partition (past markers, unlike records)
        self.positions: dict[TP, int] = {}
        self._isolation_level = "read_uncommitted"
        #: last stable offsets (read_committed only; -1 otherwise, as aiokafka)
        self.stable: dict[TP, int] = {}
        self._subscription = SimpleNamespace(subscription=SimpleNamespace(
            assignment=SimpleNamespace(all_consumed_offsets=lambda: {
                TopicPartition(*tp): SimpleNamespace(offset=o)
                for tp, o in self.positions.items()})))

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(*tp) for tp in self.marks}

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.marks[TP(tp.topic, tp.partition)]

    def last_stable_offset(self, tp: TopicPartition) -> int:
        return self.stable.get(TP(tp.topic, tp.partition), -1)


class Thread:
    """Faust's consumer thread: ``getmany`` asks ``_fetch_records`` for a batch."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.batches: list[Any] = []
        #: consumed positions the fetcher moves to while returning each batch (or None)
        self.moves: list[dict[TP, int] | None] = []
        #: called while a fetch is under way (a rebalance meanwhile)
        self.during: Any = None

    async def _fetch_records(self, consumer: Broker, active_partitions: Any,
                             timeout: float | None = None, max_records: int | None = None) -> Any:
        if self.during is not None:
            self.during()
        moves = self.moves.pop(0) if self.moves else None
        if moves:
            self.broker.positions.update(moves)
        return self.batches.pop(0)

    async def getmany(self, active_partitions: Any, timeout: float) -> Any:
        return await self._fetch_records(self.broker, active_partitions, timeout=timeout)


class App:
    """Faust's app: the generation id and the consumer's public live mark."""

    def __init__(self) -> None:
        self.consumer_generation_id = 1
        self.broker = broker = Broker()
        self.consumer = SimpleNamespace(_thread=Thread(broker),
                                        highwater=lambda tp: broker.marks[tp])


@pytest.fixture
def app() -> App:
    app = App()
    track_fetches(app)  # type: ignore[arg-type]
    return app


def batch(**last_offsets: int) -> dict[TopicPartition, list[Any]]:
    """A fetched batch whose last record of partition ``a``/``b`` has that offset."""
    return {TopicPartition(*{"a": A, "b": B}[name]): [SimpleNamespace(offset=offset)]
            for name, offset in last_offsets.items()}


def records(tp: TP, *offsets: int) -> dict[TopicPartition, list[Any]]:
    """A fetched batch: records of ``tp`` at ``offsets``."""
    return {TopicPartition(*tp): [SimpleNamespace(offset=o) for o in offsets]}


def fetch(app: App, records: Any, **marks_after: int) -> Any:
    """One round of Faust's fetcher: a batch is fetched (the live marks move to
    ``marks_after`` while it is returned) and handed on."""
    thread = app.consumer._thread
    thread.batches.append(records)
    loop = asyncio.new_event_loop()  # not asyncio.run: it would unset the thread's loop
    try:
        result = loop.run_until_complete(thread.getmany(None, 1.0))
    finally:
        loop.close()
    for name, mark in marks_after.items():  # a later fetch response, records still buffered
        app.broker.marks[{"a": A, "b": B}[name]] = mark
    return result


def test_the_mark_is_that_of_the_records_delivered_not_of_the_latest_response(app: App) -> None:
    app.broker.marks[A] = 10
    assert highwater(app, A) == 10  # nothing delivered yet: Faust's live mark
    assert fetch(app, batch(), a=15) == {}  # records up to 10 returned; 10-14 buffered
    assert highwater(app, A) == 15  # the first batch is not handed on yet: live mark
    fetch(app, batch())  # asking for the second batch: the first is delivered
    assert highwater(app, A) == 10  # 10-14 are not delivered: A is not caught up at 10
    fetch(app, batch())
    assert highwater(app, A) == 15


def test_a_partition_without_a_mark_stays_unknown(app: App) -> None:
    app.broker.marks[A] = 3
    fetch(app, batch())
    fetch(app, batch())
    assert highwater(app, A) == 3 and highwater(app, B) is None


def test_marks_of_an_earlier_generation_are_not_used(app: App) -> None:
    app.broker.marks[A] = 10
    fetch(app, batch(), a=20)
    fetch(app, batch())
    assert highwater(app, A) == 10
    app.consumer_generation_id = 2  # a rebalance: the partition may have moved and back
    assert highwater(app, A) == 20  # Faust's live mark until a snapshot of generation 2
    fetch(app, batch())
    fetch(app, batch())
    assert highwater(app, A) == 20


def test_a_partition_ending_in_transaction_markers_is_marked_after_its_last_record(
        app: App) -> None:
    """Offsets 0-2 are records, 3 is a commit marker: the mark 4 is never reached by a
    record, so the delivered mark becomes 3 once aiokafka has consumed past 4."""
    app.broker.marks[A] = 4
    app.broker.positions[A] = 3  # records 0-2 returned, the marker not yet passed
    fetch(app, batch(a=2))
    fetch(app, {})
    assert highwater(app, A) == 4  # the marker may still hide records: not caught up at 3
    app.broker.positions[A] = 4  # the fetcher moved past the marker
    fetch(app, {})
    fetch(app, {})
    assert highwater(app, A) == 3  # the offset after the last record: caught up at 3
    app.broker.marks[A], app.broker.positions[A] = 9, 9  # 4-7 records, 8 a marker
    fetch(app, batch(a=7))
    fetch(app, {})
    assert highwater(app, A) == 8
    app.consumer_generation_id = 2  # a rebalance: nothing fetched in this generation yet
    fetch(app, {})
    fetch(app, {})
    assert highwater(app, A) == 0  # only markers since the seek: nothing to wait for


def returned(app: App, batch: dict[TopicPartition, list[Any]], position: int) -> None:
    """aiokafka returns ``batch`` of A and its consumed position moves to ``position``."""
    app.consumer._thread.moves.append({A: position})
    fetch(app, batch)


def test_offsets_passed_over_between_before_and_after_records_are_skipped(app: App) -> None:
    app.broker.positions[A] = 10  # where the consumer was put
    returned(app, records(A, 11, 12, 15), 17)  # 10: a marker; 13-14 aborted; 16 a marker
    assert skipped_offsets(app, A, 10, 11) and skipped_offsets(app, A, 13, 15)
    assert skipped_offsets(app, A, 16, 17)
    assert not skipped_offsets(app, A, 12, 13)  # a record was returned there: a real gap
    assert not skipped_offsets(app, A, 13, 16)  # 15 was returned
    assert not skipped_offsets(app, B, 13, 15)  # another partition
    returned(app, {}, 19)  # a fetch of markers only: 17-18
    assert skipped_offsets(app, A, 16, 19)  # adjacent ranges cover together
    returned(app, records(A, 19, 20, 21), 22)  # contiguous: nothing passed over
    assert not skipped_offsets(app, A, 19, 20) and not skipped_offsets(app, A, 21, 22)


def test_skipped_offsets_are_forgotten_on_a_rebalance_and_a_fetch_across_one_teaches_nothing(
        app: App) -> None:
    app.broker.positions[A] = 0
    returned(app, records(A, 1), 2)
    assert skipped_offsets(app, A, 0, 1)
    app.consumer_generation_id = 2
    assert not skipped_offsets(app, A, 0, 1)  # unknown in this generation: read it back

    # A rebalance while a fetch waits: its seek moves the position, which says
    # nothing about offsets without records.
    app.consumer._thread.during = lambda: setattr(app, "consumer_generation_id", 3)
    returned(app, {}, 50)
    assert not skipped_offsets(app, A, 2, 50)


def test_only_the_newest_skipped_ranges_are_kept(app: App) -> None:
    app.broker.positions[A] = 0
    offsets = list(range(1, 2 * (SKIPPED_KEPT + 10), 2))  # every even offset is a marker
    returned(app, records(A, *offsets), offsets[-1] + 1)
    assert skipped_offsets(app, A, offsets[-2] + 1, offsets[-1])
    assert not skipped_offsets(app, A, 0, 1)  # forgotten: read back (harmless)


def test_reading_committed_only_the_mark_is_the_last_stable_offset(app: App) -> None:
    app.broker._isolation_level = "read_committed"
    app.broker.marks[A], app.broker.stable[A] = 30, 20  # 20-29: an open transaction
    app.broker.positions[A] = 0
    returned(app, records(A, *range(20)), 20)
    fetch(app, {})
    assert highwater(app, A) == 20  # everything fetchable was received: caught up
