"""A stand-in for Faust's current event, so table access outside a stream targets a partition."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

from faust.streams import _current_event


class _Message:
    __slots__ = ("partition", "topic")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition


class _StandInEvent:
    """Stand-in for a Faust event: only ``message.partition``/``topic`` are read."""

    __slots__ = ("message", "__weakref__")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = _Message(topic, partition)


@contextlib.contextmanager
def partition_context(topic: str, partition: int) -> Iterator[None]:
    """Make Faust table reads/writes inside the block target ``partition``.

    Works around: Faust decides the store partition *and* the changelog
    partition of a table access from the event being processed
    (``current_event().message.partition``; the RocksDB store even asserts
    that an event exists), and a timer or a batch taken with ``take_events``
    has none. Sets Faust's private ``faust.streams._current_event`` context
    variable to a stand-in whose ``message.partition`` is ``partition``.

    ``topic`` must have the table's partition count (Faust verifies it); the
    rekey topic is used. Must not span an ``await``: the context variable is
    task-local, but a stand-in event must never be seen by ``Topic.send``
    (it would try to attach the message to it).
    """
    event = _StandInEvent(topic, partition)
    token = _current_event.set(weakref.ref(event))  # type: ignore[arg-type]
    try:
        yield
    finally:
        _current_event.reset(token)
