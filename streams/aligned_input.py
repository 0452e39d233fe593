"""The agent's input, released in event-time order (:mod:`streams.align` applied to Faust).

The agent hands every received record (after the gap check) to
:meth:`AlignedInput.receive` and then calls :meth:`AlignedInput.drain`, which
releases what the aligner allows, in event-time order, to the processor in
batches of at most ``settings.batch_max``. A timer calls ``drain`` as well, so
a partition that stays silent holds the others back for at most
``settings.max_idle_ms`` even when nothing else arrives. One lock serialises
the two callers: records are folded by one task at a time, as before.

What "caught up" means here: the worker has received every record of the
topic-partition up to the high-water mark of the fetches whose records the
consumer has handed on (:func:`streams.compat.highwater`, with
:func:`streams.compat.track_fetches`); before any record of the
current consumer generation, the position is the committed offset Faust
seeked to (0 when the group has none). A record the worker itself forwarded
to the rekey topic is awaited explicitly (:meth:`Aligner.expect`), because
the consumer's high-water mark of that partition is older than the write.

At-least-once: only released records are processed, and ``Progress.done``
(the cap on every offset commit, :mod:`streams.gaps`) advances only over processed records, so a
crash or rebalance while records are held makes them redelivered. On a new
consumer generation the held records of partitions that moved away are
dropped (never committed, so their new owner receives them); those of
partitions that stay are kept, and a repeat delivery of an offset already
received is ignored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from faust.types import TP

from schemas import codec
from streams import compat
from streams.align import UNREADABLE, Aligner, TimeKey, time_key_of
from streams.context import ServiceContext
from streams.gaps import CommitOwed, GapReader, Progress
from streams.records import Record
from streams.topics import message_key, partition_for

if TYPE_CHECKING:
    from streams.consume import BatchHandler

log = logging.getLogger(__name__)


def inspect(value: bytes | None) -> tuple[TimeKey, bytes | None]:
    """``(time key, correct message key)`` of a record value, parsing it once.

    The key is None when the value does not name a shop and a customer (the
    agent dead-letters such a record); the time key is
    :data:`streams.align.UNREADABLE` when ``occurred_at`` cannot be read.
    :meth:`AlignedInput.receive` also sorts first a record whose time lies
    beyond the policy's ``max_future_seconds``: it is rejected as
    ``future_timestamp``, and a future time at the head of a partition would
    hold back every record behind it.
    """
    try:
        obj = codec.loads(value or b"")
    except ValueError:
        return UNREADABLE, None
    if not isinstance(obj, dict):
        return UNREADABLE, None
    try:
        key: bytes | None = message_key(obj["shop_id"], obj["customer_id"])
    except Exception:  # noqa: BLE001 - no usable ids: the agent rejects it
        key = None
    return time_key_of(obj), key


class AlignedInput:
    """Holds the agent's records in an :class:`Aligner` and processes them when released."""

    def __init__(self, service: ServiceContext, handler: BatchHandler, progress: Progress,
                 reader: GapReader, commit_owed: CommitOwed) -> None:
        settings = service.settings
        self.service = service
        self.handler = handler
        self.progress = progress
        self.reader = reader
        self.commit_owed = commit_owed
        self.aligner: Aligner[Record] = Aligner(settings.max_idle_ms / 1000.0,
                                                settings.align_max_buffered)
        self.rekey_name = service.rekey.get_topic_name()
        #: the engine's fast reading of a value (:meth:`scoring.engine.Engine.read`)
        self.read = service.engine.read
        self.watched = service.agent_topic_names
        self.batch_max = settings.batch_max
        self.lock = asyncio.Lock()
        self.generation: int | None = None
        #: rekey partitions that records of the current batch were forwarded to
        self._forwarded: set[int] = set()
        self._reported = (0, 0, 0)
        self._skew_labels: set[int] = set()
        #: event time (us) of the newest record processed in this generation (-1: none)
        self._processed_until_us = -1
        #: monotonic time the input last showed it is moving (see ``input_time_us``)
        self._moving_at = time.monotonic()
        self._max_idle_s = settings.max_idle_ms / 1000.0

    # -- called by the agent -------------------------------------------------------
    def receive(self, records: list[Record]) -> None:
        """Buffer records in arrival order (per topic-partition: offset order)."""
        self._check_generation()
        self._moving_at = time.monotonic()
        partitions = self.service.partitions
        now_us = int(time.time() * 1_000_000)
        for r in records:
            at, key = self._time_key(r, now_us)
            if (r.topic != self.rekey_name and key is not None
                    and (r.key != key or r.partition != partition_for(key, partitions))):
                # The agent will forward it to the rekey topic: await it there.
                self._forwarded.add(partition_for(key, partitions))
            self.aligner.add((r.topic, r.partition), r.offset, at, r)

    def _time_key(self, r: Record, now_us: int) -> tuple[TimeKey, bytes | None]:
        event = r.event
        if event is None:
            # Read once here, kept on the record for the planner: what
            # ``inspect`` would answer, without parsing the value in Python.
            event = self.read(r.value)
            if event is not None:
                r.remember_reading(event)
        if event is not None:
            at: TimeKey = (event.ts_us, event.event_id)
            key: bytes | None = message_key(event.shop_id, event.customer_id)
        else:
            at, key = inspect(r.value)
        if key is not None and at[0] > now_us + self._max_future_us(key):
            # Dead-lettered as future_timestamp when processed: at the head of
            # its partition with a time in the future it would hold back every
            # record behind it until the others caught up with that time.
            at = UNREADABLE
        return at, key

    def _max_future_us(self, key: bytes) -> int:
        shop = key.split(b"|", 1)[0].decode("utf-8", "replace")
        return self.service.policies.for_shop(shop).max_future_seconds * 1_000_000

    async def drain(self) -> int:
        """Process every record the aligner releases now; returns how many."""
        async with self.lock:
            self._check_generation()
            done = 0
            # Never during a rebalance or a recovery: the tables may be restored
            # under our writes (the rebalance waits for a drain under way, see
            # ``install``).
            while self.service.tables_ready():
                ready = self.aligner.pop_ready(time.monotonic(), self._members(),
                                               self._caught_up)
                if not ready:
                    break
                until = self.aligner.released_until_us
                finished = 0
                try:
                    for start in range(0, len(ready), self.batch_max):
                        chunk = ready[start:start + self.batch_max]
                        await self.handler.handle_batch(chunk)
                        # per topic-partition in offset order: the last record wins
                        self.progress.processed(chunk)
                        finished = start + len(chunk)
                except BaseException:
                    # Cancelled (shutdown, rebalance): the records not processed go
                    # back, since the consumer will not deliver them again.
                    now_us = int(time.time() * 1_000_000)
                    self.aligner.requeue([((r.topic, r.partition), r.offset,
                                           self._time_key(r, now_us)[0], r)
                                          for r in ready[finished:]])
                    raise
                done += finished
                self._processed_until_us = max(self._processed_until_us, until)
                self._moving_at = time.monotonic()
                await self._await_forwarded()
            await self._apply_flow()
            self._observe()
            return done

    async def tick(self) -> None:
        """Timer: release records whose wait for a silent partition has expired,
        and commit the offsets Faust acknowledged before they were processed."""
        if self.aligner.held:
            await self.drain()
        async with self.lock:
            if self.service.tables_ready():
                await self.commit_owed()
            else:
                # Nothing is fetched during a rebalance or a recovery: the quiet
                # that follows says nothing about being caught up.
                self._moving_at = time.monotonic()

    def input_time_us(self) -> int | None:
        """How far in event time this worker's input is processed, while it is behind.

        None when the input is caught up: nothing is held or being processed,
        and every assigned input topic-partition is caught up, or none has
        received or processed anything for ``max_idle_ms`` (the bound the
        aligner itself waits for a partition; a partition whose end offset
        its records never reach, such as one ending in a transaction marker,
        must not hold this back forever). Otherwise the event time of the
        newest record processed in this consumer generation: every record
        still to come is (up to the aligner's idle bound) at least that old,
        so the time sweep (:mod:`streams.sweep`) advances customers no
        further, and their history is not overtaken by their own clock.
        -1 when nothing was processed yet in a new generation.
        """
        self._check_generation()  # a rebalance may have come with no record since
        if self.aligner.held or self.lock.locked():
            return self._processed_until_us
        if time.monotonic() - self._moving_at >= self._max_idle_s:
            return None
        if all(self._caught_up(tp) for tp in self._members()):
            return None
        return self._processed_until_us

    # -- internals -----------------------------------------------------------------
    def _check_generation(self) -> None:
        generation = compat.generation(self.service.app)
        if generation != self.generation:
            dropped = self.aligner.retain(self._members())
            if dropped:
                log.warning("rebalance: %d held records of partitions moved away dropped "
                            "(their new owner receives them: none was committed)", dropped)
            self._forwarded.clear()
            self.generation = generation
            self._processed_until_us = -1
            self._moving_at = time.monotonic()

    def _members(self) -> list[tuple[str, int]]:
        try:
            assigned = compat.assignment(self.service.app)
        except Exception:  # noqa: BLE001 - no consumer yet: nothing can hold back
            return []
        return [(tp.topic, tp.partition) for tp in assigned if tp.topic in self.watched]

    def _caught_up(self, tp: tuple[str, int]) -> bool:
        highwater = compat.highwater(self.service.app, TP(*tp))
        if highwater is None:
            return False  # not fetched yet: unknown, so assume records are coming
        position = self.aligner.position(tp)
        if position is None:
            seek = self.progress.seeks.get(tp)
            position = seek[1] if seek is not None and seek[0] == self.generation else 0
        return position >= highwater

    async def _await_forwarded(self) -> None:
        """Make the rekey partitions just written to wait for the forwarded records."""
        if not self._forwarded:
            return
        partitions, self._forwarded = self._forwarded, set()
        ends = await self.reader.end_offsets([TP(self.rekey_name, p) for p in partitions])
        for tp, end in ends.items():
            if end > 0:
                self.aligner.expect((tp.topic, tp.partition), end - 1)

    async def _apply_flow(self) -> None:
        pause, resume = self.aligner.flow()
        if pause or resume:
            try:
                # Decided in this generation and applied only in it: a pause landing
                # after a rebalance would outlive the aligner's memory of it.
                await compat.set_fetching(self.service.app, pause, resume, self.generation)
            except Exception as exc:  # noqa: BLE001 - a rebalance raced us: it resets pauses
                log.warning("could not pause %s / resume %s: %r", sorted(pause),
                            sorted(resume), exc)

    def _observe(self) -> None:
        m = self.service.metrics
        stats = self.aligner.stats
        m.align_held.set(self.aligner.held)
        last_pauses, last_idle, last_forced = self._reported
        m.align_pauses.inc(stats.pauses - last_pauses)
        m.align_idle_timeouts.inc(stats.idle_timeouts - last_idle)
        m.align_forced.inc(stats.forced - last_forced)
        self._reported = (stats.pauses, stats.idle_timeouts, stats.forced)
        skews = self.aligner.skew_us()
        for partition in self._skew_labels - skews.keys():
            m.align_skew.labels(str(partition)).set(0)
        for partition, skew in skews.items():
            m.align_skew.labels(str(partition)).set(skew / 1e6)
        self._skew_labels = set(skews)


def install(service: ServiceContext, handler: BatchHandler, progress: Progress,
            reader: GapReader, commit_owed: CommitOwed) -> AlignedInput:
    """Create the aligned input and its idle timer on ``service.app``."""
    aligned = AlignedInput(service, handler, progress, reader, commit_owed)
    interval = max(0.05, min(1.0, service.settings.max_idle_ms / 4000.0))

    async def loyalty_align_idle() -> None:
        try:
            await aligned.tick()
        except Exception:  # noqa: BLE001 - retried next tick; the agent drains too
            log.exception("aligned input: idle drain failed")

    service.app.timer(interval=interval, on_leader=False,
                      name="loyalty-align-idle")(loyalty_align_idle)

    @service.app.on_partitions_revoked.connect
    async def wait_for_drain(app: Any, revoked: Any, **kwargs: Any) -> None:
        # Faust waits for the records its agents have not acknowledged, but it
        # acknowledged the held ones already: a drain under way (the idle timer
        # runs during rebalances) must finish its writes before the tables are
        # handed over and restored, or a persisted offset can run past the
        # changelog end that the recovery measured (ConsistencyError).
        async with aligned.lock:
            pass

    return aligned
