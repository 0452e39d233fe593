"""High-water marks as of the delivered records (streams.compat.consumer.track_delivered_highwaters).

Faust's consumer thread and its aiokafka client are stood in for by the two
methods the function wraps and the two aiokafka calls it makes; the app has
Faust's public ``highwater`` (the live mark) and generation id.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from faust.types import TP

from streams.compat.consumer import highwater, track_delivered_highwaters

A = TP("loyalty.purchases", 0)
B = TP("loyalty.visits", 0)


class Broker:
    """The consumer thread's client: its assignment and its live marks."""

    def __init__(self) -> None:
        self.marks: dict[TP, int | None] = {A: None, B: None}

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(*tp) for tp in self.marks}

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.marks[TP(tp.topic, tp.partition)]


class Thread:
    """Faust's consumer thread: ``getmany`` asks ``_fetch_records`` for a batch."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.batches: list[Any] = []

    async def _fetch_records(self, consumer: Broker, active_partitions: Any,
                             timeout: float | None = None, max_records: int | None = None) -> Any:
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
    track_delivered_highwaters(app)  # type: ignore[arg-type]
    return app


def fetch(app: App, records: str, **marks_after: int) -> Any:
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
    assert fetch(app, "first", a=15) == "first"  # records up to 10 returned; 10-14 buffered
    assert highwater(app, A) == 15  # the first batch is not handed on yet: live mark
    fetch(app, "second")  # asking for the second batch: the first is delivered
    assert highwater(app, A) == 10  # 10-14 are not delivered: A is not caught up at 10
    fetch(app, "third")
    assert highwater(app, A) == 15


def test_a_partition_without_a_mark_stays_unknown(app: App) -> None:
    app.broker.marks[A] = 3
    fetch(app, "first")
    fetch(app, "second")
    assert highwater(app, A) == 3 and highwater(app, B) is None


def test_marks_of_an_earlier_generation_are_not_used(app: App) -> None:
    app.broker.marks[A] = 10
    fetch(app, "first", a=20)
    fetch(app, "second")
    assert highwater(app, A) == 10
    app.consumer_generation_id = 2  # a rebalance: the partition may have moved and back
    assert highwater(app, A) == 20  # Faust's live mark until a snapshot of generation 2
    fetch(app, "third")
    fetch(app, "fourth")
    assert highwater(app, A) == 20
