"""Gap repair: records Faust's consumer skipped, found and read back.

Faust may drop *and acknowledge* records around rebalances (records
prefetched before a rebalance delivered after it, and its "gap" bookkeeping
then treating the skipped range as done: faust-streaming#216, #221, #606).
Three measures keep every input record processed:

* input offsets are never committed past the agent's contiguous progress
  (:func:`install_seek_tracking`, :attr:`Progress.done`);
* a jump in a partition's offsets is detected (:meth:`Progress.find_gap`)
  and the skipped range read back (:class:`GapReader`) before the batch is
  handled;
* partitions whose consumer read past the agent, with nothing more arriving
  to reveal the gap, are read back into the agent's input
  (:func:`reread_dropped`).

A false positive only costs a re-read: re-applying a record is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

from streams import compat
from streams.context import ServiceContext
from streams.metrics import Metrics
from streams.records import Record
from streams.security import client_kwargs

log = logging.getLogger(__name__)


class Progress:
    """Per input partition: what the agent saw, what it finished, where the consumer was put."""

    def __init__(self, metrics: Metrics,
                 skipped: Callable[[tuple[str, int], int, int], bool] | None = None) -> None:
        self.metrics = metrics
        #: ``skipped(tp, start, end)``: the consumer itself passed over every offset
        #: of the range without a record (:func:`streams.compat.skipped_offsets`)
        self.skipped = skipped or (lambda tp, start, end: False)
        #: (topic, partition) -> (generation, offset) of the last record seen
        self.last_offset: dict[tuple[str, int], tuple[int | None, int]] = {}
        #: (topic, partition) -> highest offset up to which every record was processed
        self.done: dict[tuple[str, int], int] = {}
        #: (topic, partition) -> (generation, offset positioned at)
        self.seeks: dict[tuple[str, int], tuple[int, int]] = {}
        #: input partition -> the offset Faust wanted to commit beyond ``done``
        self.owed: dict[TP, int] = {}
        #: input partition -> the offset the group's position already covers: where
        #: the consumer was put (the committed offset, or the first one when none
        #: was committed), then each commit; nothing below it needs committing
        self.covered: dict[TP, int] = {}
        #: (topic, partition) -> ((generation, next offset expected), monotonic time):
        #: read past by the consumer, nothing received since (:func:`reread_dropped`)
        self.suspects: dict[tuple[str, int], tuple[tuple[int | None, int], float]] = {}

    def find_gap(self, record: Record, generation: int | None) -> tuple[int, int] | None:
        """The offsets ``[start, end)`` of this record's partition that the consumer skipped.

        Input topics are delete-policy, so a partition's offsets are
        contiguous except where the consumer itself passed over offsets that
        hold no record for it (a transaction's commit marker, records of an
        aborted transaction: ``skipped``); such a range is no gap. Faust has
        known bugs around rebalances (records prefetched before a rebalance
        delivered after it, and its "gap" bookkeeping then treating the
        skipped range as done: faust-streaming#216, #221, #606) that make the
        stream jump ahead: records fetched just before a rebalance are
        dropped *and acknowledged* after it. We detect a jump within one
        group generation, and a first record of a generation that is not the
        one the consumer was positioned at on assignment (see
        :func:`install_seek_tracking`). A false positive only costs a re-read:
        re-applying records is idempotent.
        """
        tp = (record.topic, record.partition)
        last = self.last_offset.get(tp)
        self.last_offset[tp] = (generation, record.offset)
        if last is not None and last[0] == generation:
            start = last[1] + 1
        else:
            # First record of this partition in this generation: it must be the
            # one the consumer was positioned at when the partition was assigned.
            seek = self.seeks.get(tp)
            if seek is None or seek[0] != generation:
                return None
            start = seek[1]
        if record.offset > start and not self.skipped(tp, start, record.offset):
            self.metrics.offset_gaps.labels(record.topic).inc(record.offset - start)
            log.warning("consumer skipped %s[%d] offsets %d..%d (generation %s): re-reading",
                        record.topic, record.partition, start, record.offset - 1, generation)
            return start, record.offset
        return None

    def seeked(self, positions: Mapping[TP, int], generation: int | None) -> None:
        """The consumer was positioned at ``positions`` (each partition's committed
        offset, or its first offset when it has none: see
        :func:`streams.compat.on_seek_to_committed`).

        Everything before a partition's position is done by definition, and
        nothing after it: an earlier assignment of the partition in this
        process (processed further, never committed, given away, assigned
        again) must not let a commit pass records no one processed.
        """
        for tp, offset in positions.items():
            self.seeks[(tp.topic, tp.partition)] = (generation, offset)
            self.done[(tp.topic, tp.partition)] = offset - 1
            self.covered[tp] = offset

    def processed(self, records: Iterable[Record]) -> None:
        """Everything up to these records' offsets of their partitions is now processed."""
        for record in records:  # in order: the last record of each partition wins
            self.done[(record.topic, record.partition)] = record.offset


class GapReader:
    """Reads ranges of input records with its own consumer (no group, no commits)."""

    def __init__(self, service: ServiceContext) -> None:
        self.settings = service.settings
        self._consumer: AIOKafkaConsumer | None = None
        self._starting = asyncio.Lock()  # callers race at start-up: one consumer
        # The agent's gap repair and the read-back timer may read at the same
        # time; a read assigns the consumer its one partition, so reads take turns.
        self._reading = asyncio.Lock()

    async def _start(self) -> AIOKafkaConsumer:
        async with self._starting:
            return await self._start_once()

    async def _start_once(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            # earliest: a range deleted by retention meanwhile reads as nothing at
            # once, instead of waiting at the end of the partition for records.
            # A short retry back-off: the first question about a topic fails
            # once for want of its metadata, and a rebalance waits for the answer.
            consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers,
                                        group_id=None, enable_auto_commit=False,
                                        auto_offset_reset="earliest", retry_backoff_ms=20,
                                        isolation_level="read_committed",  # as the worker's
                                        **client_kwargs(self.settings))
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def close(self) -> None:
        """Stop the private consumer (called on worker shutdown)."""
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    async def beginning_offsets(self, tps: list[TP]) -> dict[TP, int]:
        """The first offset of each of ``tps`` (the log start: older records were deleted)."""
        consumer = await self._start()
        return _by_tp(await consumer.beginning_offsets(_aiokafka(tps)))

    async def end_offsets(self, tps: list[TP]) -> dict[TP, int]:
        """The offset after the last record of each of ``tps``."""
        consumer = await self._start()
        return _by_tp(await consumer.end_offsets(_aiokafka(tps)))

    async def fetch(self, topic: str, partition: int, start: int, end: int,
                    timeout: float = 30.0) -> list[Record]:
        """Records with ``start <= offset < end`` of one partition, in order.

        Concurrent calls take turns (each assigns the consumer its partition).
        Offsets that hold no record (a transaction's commit marker) are passed
        over: the read ends once the consumer's position reaches ``end``. Fewer
        records than there are, logged as an error, only if the broker does
        not deliver them within ``timeout``.
        """
        async with self._reading:
            return await self._fetch(topic, partition, start, end, timeout)

    async def _fetch(self, topic: str, partition: int, start: int, end: int,
                     timeout: float) -> list[Record]:
        consumer = await self._start()
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, start)
        out: list[Record] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500)
            for m in batch.get(tp, []):
                if m.offset >= end:
                    return out
                out.append(Record(topic=m.topic, partition=m.partition, offset=m.offset,
                                  key=m.key, value=m.value, timestamp=m.timestamp / 1000.0,
                                  headers=tuple((k, bytes(v or b"")) for k, v in m.headers)))
            if out and out[-1].offset >= end - 1:
                return out
            if await consumer.position(tp) >= end:
                return out  # the rest of the range holds no record (markers)
        log.error("could only re-read %d of %d skipped records of %s[%d]", len(out),
                  end - start, topic, partition)
        return out


def _aiokafka(tps: list[TP]) -> list[TopicPartition]:
    return [TopicPartition(tp.topic, tp.partition) for tp in tps]


def _by_tp(offsets: Mapping[TopicPartition, int]) -> dict[TP, int]:
    return {TP(tp.topic, tp.partition): int(offset) for tp, offset in offsets.items()}


CommitOwed = Callable[[], Awaitable[None]]


def install_seek_tracking(service: ServiceContext, progress: Progress,
                          reader: GapReader) -> CommitOwed:
    """Remember, per input partition and generation, where the consumer was positioned,
    and never commit an input offset past what the agent has processed.

    Faust positions every assigned partition at its committed offset after
    each rebalance's recovery; the first record the agent then sees must be
    that offset (:func:`streams.compat.on_seek_to_committed`). Faust also
    acknowledges records it drops around rebalances, and every record the
    aligned input holds back, so its own committable offset can run ahead of
    the agent; a kill -9 after such a commit would lose those records for
    good. Capping every commit at the agent's contiguous progress
    (:func:`streams.compat.cap_commits`) turns that into a harmless
    redelivery. Faust then records the uncapped offset as committed and never
    asks again, so what the cap held back is kept in :attr:`Progress.owed`;
    the returned coroutine function commits it once the agent got there (the
    aligned input's timer calls it). ``reader`` answers the first offsets of
    partitions without a commit, over its own connection.
    """
    app = service.app
    watched = service.agent_topic_names

    def on_seek(positions: Mapping[TP, int]) -> None:
        progress.seeked(positions, compat.generation(app))

    def cap(offsets: Mapping[TP, int]) -> dict[TP, int]:
        capped = {}
        for tp, offset in offsets.items():
            if tp.topic in watched:
                done = progress.done.get((tp.topic, tp.partition))
                if done is None or offset > done + 1:
                    progress.owed[tp] = max(progress.owed.get(tp, -1), offset)
                if done is None:
                    continue  # nothing processed here yet: leave the broker's offset
                offset = min(offset, done + 1)
                if offset <= progress.covered.get(tp, -1):
                    # Committed as far already (an owed commit, or one past a
                    # transaction's trailing marker, which Faust never sees):
                    # committing less would move the group's offset back.
                    continue
                progress.covered[tp] = offset
            capped[tp] = offset
        return capped

    compat.on_seek_to_committed(app, watched, on_seek, reader.beginning_offsets)
    commit = compat.cap_commits(app, cap)

    async def commit_owed() -> None:
        """Commit what the cap held back, as far as the agent has processed it."""
        if not progress.owed:
            return
        assigned = compat.assignment(app)
        todo = {}
        settled: dict[TP, int] = {}  # owed in full once todo is committed
        for tp, wanted in list(progress.owed.items()):
            if tp not in assigned:
                del progress.owed[tp]  # revoked: its new owner starts from the committed offset
                continue
            done = progress.done.get((tp.topic, tp.partition))
            if done is None:
                continue
            target = min(wanted, done + 1)
            if target > progress.covered.get(tp, -1):
                todo[tp] = target
            if target >= wanted:
                settled[tp] = wanted
        if todo:
            # Tally rows go through Faust's producer buffer: flushed first, as
            # Faust does before its own commits.
            await app.producer.flush()
            if not await commit(todo):
                # Kept owed and asked again at the next tick: Faust will not ask
                # for a partition that receives nothing more, so dropping it here
                # left that partition's lag behind for good.
                return
            progress.covered.update(todo)
        for tp, wanted in settled.items():
            if progress.owed.get(tp) == wanted:  # not raised while the flush awaited
                del progress.owed[tp]

    return commit_owed


#: seconds a partition must stay read past the agent, with nothing of it queued or
#: received, before its records count as dropped: records on their way from the
#: consumer's thread to the agent arrive within milliseconds, and the aligned
#: input waits ``max_idle_ms`` (10 s by default) for a partition behind the others
REREAD_CONFIRM_S = 1.0


async def reread_dropped(service: ServiceContext, progress: Progress, reader: GapReader,
                         receive: Callable[[list[Record]], None],
                         queued: Callable[[], set[tuple[str, int]] | None],
                         confirm_s: float = REREAD_CONFIRM_S) -> int:
    """Re-read records the consumer read but never handed to the agent, into its input.

    The agent's sequence check (:meth:`Progress.find_gap`) needs a *later*
    record of the same partition; when the consumer dropped the last records it
    read of a partition, none comes: a sparse partition (feedback, redemptions),
    or a whole backlog fetched in one go around a rebalance. So, per input
    partition of the current generation: when Faust's consumer has read past
    the next offset the agent expects, no record of the partition waits in the
    agent's intake (``queued()``: the partitions it holds records of, or None
    while it is full, when records may wait in front of it), and the same holds
    ``confirm_s`` later with nothing received in between, the records in
    between were dropped. They are read back and handed to ``receive`` (the
    aligned input) as that partition's records, in offset order: they take
    their place in event time like any record, and a late delivery of one of
    them is ignored as a repeat. Returns the number re-read.
    """
    app = service.app
    generation = compat.generation(app)
    now = time.monotonic()
    # How far the consumer read: aiokafka's consumed position (the offset
    # after the last record it handed to Faust). Faust's own read offset is
    # the committed offset after a seek and does not move for records it
    # drops, so a sparse partition whose first records after a rebalance were
    # dropped looked read up to one record (or not at all, with no committed
    # offset): the rest stayed unprocessed, silently, until the next restart.
    positions = compat.consumed_positions(app)
    suspects: dict[tuple[str, int], tuple[int, int]] = {}
    for tp, (gen, seek_offset) in list(progress.seeks.items()):
        if gen != generation:
            continue
        last = progress.last_offset.get(tp)
        expected = last[1] + 1 if last is not None and last[0] == gen else seek_offset
        position = positions.get(TP(*tp))
        if position is None or position <= expected:
            continue
        if progress.skipped(tp, expected, position):
            # Only offsets without a record (a transaction's commit marker) were
            # read past: nothing was dropped. Once everything before them is
            # processed (records may still be held: then a later check), they
            # count as done, so the committed offset passes them too (else the
            # partition shows a lag of one marker for good).
            done = progress.done.get(tp, -1)
            if expected - 1 <= done < position - 1:
                progress.done[tp] = position - 1
                progress.owed[TP(*tp)] = max(progress.owed.get(TP(*tp), -1), position)
            continue
        suspects[tp] = (expected, position)
    waiting = queued() if suspects else set()
    if waiting is None:
        return 0  # the intake is full: records may be waiting to enter it
    confirmed = []
    for tp, (expected, position) in suspects.items():
        if tp in waiting:
            progress.suspects.pop(tp, None)
            continue
        first = progress.suspects.get(tp)
        if first is None or first[0] != (generation, expected):
            progress.suspects[tp] = ((generation, expected), now)
        elif now - first[1] >= confirm_s:
            confirmed.append((tp, expected, position))
    for tp in [tp for tp in progress.suspects if tp not in suspects]:
        del progress.suspects[tp]
    if not confirmed:
        return 0
    ends = await reader.end_offsets([TP(t, p) for (t, p), _, _ in confirmed])
    total = 0
    for (topic, partition), start, stop in confirmed:
        end = min(stop, ends.get(TP(topic, partition), 0))
        if end <= start or compat.generation(app) != generation:
            continue
        records = await reader.fetch(topic, partition, start, end)
        progress.suspects.pop((topic, partition), None)
        if compat.generation(app) != generation:
            continue  # moved away meanwhile: its new owner starts from the committed offset
        last = progress.last_offset.get((topic, partition))
        if not records:
            # Only offsets without a record (transaction markers) were read past:
            # nothing was dropped, and the range is not read again.
            if last is None or last[0] != generation or last[1] < end - 1:
                progress.last_offset[(topic, partition)] = (generation, end - 1)
            continue
        if last is not None and last[0] == generation:
            # Delivered meanwhile after all (late, not dropped): those are not read back.
            records = [r for r in records if r.offset > last[1]]
            if not records:
                continue
        # The same bookkeeping as for records the consumer delivers (no gap: the
        # range starts at the offset the agent expects).
        for record in records:
            progress.find_gap(record, generation)
        receive(records)
        service.metrics.offset_gaps.labels(topic).inc(len(records))
        log.warning("consumer read %s[%d] up to %d but the agent got nothing after %d: "
                    "%d records read back into the agent's input", topic, partition,
                    end - 1, start - 1, len(records))
        total += len(records)
    return total
