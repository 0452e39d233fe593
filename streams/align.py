"""Event-time alignment of the input topic-partitions a worker consumes.

Why: Kafka orders records only within one partition of one topic. The worker
reads four input topics and the rekey topic, and on a backlog (a history
import, a restart after downtime, a new worker) the consumer hands them over
in an interleaving of its own: a year of purchases may come before the
visits of the same customers. The fold's lateness rule (an event more than
the allowed lateness behind the customer's newest event is ``too_late``)
then rejects valid events that an offline replay of the same data accepts.

What :class:`Aligner` does, after Kafka Streams' ``PartitionGroup`` and
``max.task.idle.ms``: received records wait in one FIFO per topic-partition,
and :meth:`Aligner.pop_ready` always releases the buffered head with the
smallest event time (``occurred_at`` read from the payload; a record whose
time cannot be read sorts first, so it is dead-lettered without delay). A
topic-partition with nothing buffered holds every other one back while it is
*not caught up* (records exist in the broker that the worker has not
received yet), so that its next record, which may be older, goes first. It
holds for at most ``max_idle_s``; after that it is *idle* and ignored until
it receives a record or catches up. A caught-up topic-partition never holds
anything back, so a live feed is not delayed.

All the worker's input topic-partitions form one group, not one group per
partition number: a wrongly keyed record is forwarded through the rekey
topic to another partition number, and it must meet that partition where its
event time is. :meth:`Aligner.expect` makes the rekey partition count as not
caught up until the forwarded record has come back.

Guarantees:

* Records of one topic-partition are released in offset order (only heads
  are released), so the released records of a topic-partition are always a
  prefix of the received ones: the caller may treat the last released offset
  as contiguous progress, and nothing held is ever committed.
* Memory is bounded: :meth:`Aligner.flow` names the topic-partitions to pause
  (``max_buffered`` records or more held) and to resume (half of that or
  less); the consumer then fetches nothing more for a paused one. Held
  records are at most about ``max_buffered`` per topic-partition plus what
  the consumer had already fetched.
* Pure and synchronous: no Kafka, no clock of its own (``now`` is passed in),
  so the rules are unit-tested directly.

Where lateness still applies: records of *one* topic-partition are never
reordered, so a topic whose own records are more than the allowed lateness
out of order still yields ``too_late``; and on a live feed a caught-up topic
cannot hold back for records that have not been produced yet, so a source
that sends a whole topic after another while the worker keeps up makes the
later topic late. Both are documented in the README.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from schemas.events import parse_rfc3339
from scoring.clock import to_us

R = TypeVar("R")
#: ``(topic, partition)``
TP = tuple[str, int]
#: sort key of a record: ``(occurred_at in microseconds, event_id)``; ``(-1, "")``
#: for a record whose time cannot be read (it goes first)
TimeKey = tuple[int, str]
UNREADABLE: TimeKey = (-1, "")


def time_key_of(obj: Any) -> TimeKey:
    """The canonical-order key ``(occurred_at, event_id)`` of a parsed record value.

    Uses the contract's own timestamp rule; anything unreadable (not an
    object, no or a malformed ``occurred_at``) gives :data:`UNREADABLE`,
    which sorts first: the agent rejects such a record with its specific
    reason without holding it back.
    """
    try:
        at = to_us(parse_rfc3339(obj["occurred_at"]))
    except Exception:  # noqa: BLE001 - any unreadable value sorts first, by design
        return UNREADABLE
    event_id = obj.get("event_id")
    return at, event_id if isinstance(event_id, str) else ""


@dataclass
class _Queue(Generic[R]):
    """The records of one topic-partition waiting to be released, in offset order."""

    items: deque[tuple[TimeKey, int, R]] = field(default_factory=deque)
    #: next offset the worker has not received yet (None: nothing received)
    next_offset: int | None = None
    #: an offset that must still arrive (a record forwarded here), see ``expect``
    awaited: int | None = None


@dataclass
class AlignStats:
    """Counters for the metrics (monotonic over the aligner's life)."""

    released: int = 0
    #: records released while an idle topic-partition was being ignored
    forced: int = 0
    #: times a topic-partition was declared idle after ``max_idle_s``
    idle_timeouts: int = 0
    pauses: int = 0
    #: received offsets ignored because they had been received already
    redelivered: int = 0


class Aligner(Generic[R]):
    """Buffers received records and releases them in event-time order (see the module)."""

    def __init__(self, max_idle_s: float, max_buffered: int) -> None:
        if max_idle_s < 0 or max_buffered < 2:
            raise ValueError("max_idle_s >= 0 and max_buffered >= 2 are required")
        self.max_idle_s = max_idle_s
        self.max_buffered = max_buffered
        self._queues: dict[TP, _Queue[R]] = {}
        #: heads of non-empty queues: (time key, tp)
        self._heap: list[tuple[TimeKey, TP]] = []
        self._held = 0
        #: monotonic time at which the current wait for an empty tp began
        self._waiting_since: float | None = None
        #: empty, not caught-up tps given up on after ``max_idle_s``
        self._idle: set[TP] = set()
        self._paused: set[TP] = set()
        #: event time (us) of the newest record released since the last ``retain``
        #: (-1: none); released records are in event-time order, so this is how
        #: far in event time the released input has come
        self.released_until_us = -1
        self.stats = AlignStats()

    # -- input ---------------------------------------------------------------------
    def add(self, tp: TP, offset: int, key: TimeKey, record: R) -> bool:
        """Buffer a received record; False (ignored) if ``offset`` was received before.

        Records of one tp must come in offset order. A redelivery of an offset
        already received (the consumer seeks back to the committed offset after
        a rebalance) is ignored: the record is held or was released already.
        """
        q = self._queues.get(tp)
        if q is None:
            q = self._queues[tp] = _Queue()
        elif q.next_offset is not None and offset < q.next_offset:
            self.stats.redelivered += 1
            return False
        if not q.items:
            heapq.heappush(self._heap, (key, tp))
        q.items.append((key, offset, record))
        q.next_offset = offset + 1
        if q.awaited is not None and offset >= q.awaited:
            q.awaited = None
        self._held += 1
        self._idle.discard(tp)
        return True

    def requeue(self, items: list[tuple[TP, int, TimeKey, R]]) -> None:
        """Put released records back at the front of their queues, in their order.

        For records released but not processed (the processing was cancelled):
        they were received, so the consumer will not deliver them again.
        """
        by_tp: dict[TP, list[tuple[TimeKey, int, R]]] = {}
        for tp, offset, key, record in items:
            by_tp.setdefault(tp, []).append((key, offset, record))
        for tp, back in by_tp.items():
            q = self._queues.setdefault(tp, _Queue())
            q.items.extendleft(reversed(back))
            self._held += len(back)
        self._heap = [(q.items[0][0], tp) for tp, q in self._queues.items() if q.items]
        heapq.heapify(self._heap)
        self.stats.released -= len(items)

    def expect(self, tp: TP, offset: int) -> None:
        """``tp`` is not caught up before the record at ``offset`` was received.

        Used for records the worker forwarded to the rekey topic itself: the
        consumer's view of that partition's end lags the write.
        """
        q = self._queues.get(tp)
        if q is None:
            q = self._queues[tp] = _Queue()
        if q.next_offset is not None and q.next_offset > offset:
            return
        q.awaited = offset if q.awaited is None else max(q.awaited, offset)
        self._idle.discard(tp)

    def position(self, tp: TP) -> int | None:
        """Next offset of ``tp`` the worker has not received (None: none received)."""
        q = self._queues.get(tp)
        return None if q is None else q.next_offset

    # -- output --------------------------------------------------------------------
    def pop_ready(self, now: float, members: Iterable[TP],
                  caught_up: Callable[[TP], bool]) -> list[R]:
        """Release, in event-time order, every record that may go now.

        ``members`` are the topic-partitions currently assigned (only they
        can hold others back); ``caught_up(tp)`` tells whether the worker has
        received everything the broker holds for ``tp``. ``now`` is a
        monotonic time in seconds.
        """
        out: list[R] = []
        if not self._held:
            self._waiting_since = None
            return out
        blockers = {tp for tp in members if self._blocks(tp, caught_up)}
        while self._heap:
            if blockers:
                if self._waiting_since is None:
                    self._waiting_since = now
                if now - self._waiting_since < self.max_idle_s:
                    break
                # Waited long enough: stop waiting for these until they get a record.
                self._idle |= blockers
                self.stats.idle_timeouts += len(blockers)
                blockers = set()
            self._waiting_since = None
            key, tp = heapq.heappop(self._heap)
            q = self._queues[tp]
            _, _, record = q.items.popleft()
            out.append(record)
            self._held -= 1
            if key[0] > self.released_until_us:
                self.released_until_us = key[0]
            if self._idle:
                self.stats.forced += 1
            if q.items:
                heapq.heappush(self._heap, (q.items[0][0], tp))
            elif self._blocks(tp, caught_up):
                blockers.add(tp)
        self.stats.released += len(out)
        return out

    def _blocks(self, tp: TP, caught_up: Callable[[TP], bool]) -> bool:
        q = self._queues.get(tp)
        if q is not None and q.items:
            return False
        if tp in self._idle:
            if caught_up(tp):
                self._idle.discard(tp)  # the next time it falls behind, it holds again
            return False
        if q is not None and q.awaited is not None:
            return True
        return not caught_up(tp)

    def flow(self) -> tuple[set[TP], set[TP]]:
        """``(to_pause, to_resume)``: changes to apply to the consumer now."""
        pause = {tp for tp, q in self._queues.items()
                 if len(q.items) >= self.max_buffered and tp not in self._paused}
        resume = {tp for tp in self._paused
                  if len(self._queues[tp].items) <= self.max_buffered // 2}
        self._paused = (self._paused | pause) - resume
        self.stats.pauses += len(pause)
        return pause, resume

    def retain(self, assigned: Iterable[TP]) -> int:
        """Forget the tps not in ``assigned`` (a rebalance moved them away).

        Their held records are dropped: nothing held was committed, so the
        new owner receives them. Held records of tps that stay are kept: the
        consumer may or may not deliver them again, and :meth:`add` ignores a
        repeat. Returns the number of records dropped.
        """
        keep = set(assigned)
        dropped = 0
        # A new assignment starts every partition unpaused in the consumer.
        self._paused = set()
        for tp in [tp for tp in self._queues if tp not in keep]:
            dropped += len(self._queues.pop(tp).items)
            self._idle.discard(tp)
        if dropped:
            self._held -= dropped
            self._heap = [(k, tp) for k, tp in self._heap if tp in keep]
            heapq.heapify(self._heap)
        self._waiting_since = None
        # The partitions kept or gained may be behind what was released before.
        self.released_until_us = -1
        return dropped

    # -- observation ---------------------------------------------------------------
    @property
    def held(self) -> int:
        """Records received and not released yet."""
        return self._held

    @property
    def paused(self) -> frozenset[TP]:
        return frozenset(self._paused)

    def waiting(self, now: float) -> float:
        """Seconds the aligner has been holding records for an empty partition."""
        return 0.0 if self._waiting_since is None else now - self._waiting_since

    def skew_us(self) -> dict[int, int]:
        """Per partition number: newest minus oldest head event time held (microseconds)."""
        lo: dict[int, int] = {}
        hi: dict[int, int] = {}
        for (_, partition), q in self._queues.items():
            if not q.items or q.items[0][0][0] < 0:
                continue
            t = q.items[0][0][0]
            lo[partition] = min(lo.get(partition, t), t)
            hi[partition] = max(hi.get(partition, t), t)
        return {p: hi[p] - lo[p] for p in lo}
