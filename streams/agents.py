"""The state agent: folds every input record into the customer table.

One agent, ``concurrency=1``, subscribed to the four input topics and the
internal rekey topic (all co-partitioned). With more than one concurrent
actor per partition Faust may commit an offset past a record that another
actor is still processing, which breaks at-least-once; one actor keeps the
per-partition order and the commit point honest.

Per record, in this order (:meth:`Processor.plan` computes everything first,
:meth:`Processor.execute` then writes and sends - an exception while planning
changes nothing):

1. size check (``max_event_bytes``) -> dead letter ``too_large``;
2. ``parse_event`` -> :class:`InvalidEvent` -> dead letter with its reason;
3. keying: if the record's key is not ``b"shop|customer"`` of the event or
   its partition is not ``murmur2(key) % partitions``, forward the original
   bytes, correctly keyed, to the rekey topic and stop (the same agent
   consumes it there, on the right partition). Correctly keyed input is
   processed directly, without a hop;
4. table lookup, ``fold.apply``;
5. if the outcome changed the state: publish the effects (transitions,
   ledger entries) and the new snapshot (scores), wait for the broker's
   acknowledgements, then publish the state's changelog record, wait for its
   acknowledgement, then write the state into
   the partition's RocksDB database (with Faust's persisted offset, in one
   write batch) and update the shop tally of this partition (a Faust table
   write);
6. a ``rejected`` outcome goes to the dead letter with the fold's reason.

Records are processed in batches of up to ``settings.batch_max``: steps 1-4
for every record of the batch, one publish and one wait for all their
acknowledgements, then all the writes (see :meth:`Processor.handle_batch`).

Failure modes:

* Any unexpected exception is caught and the record retried twice (safe:
  see :meth:`Processor.handle`); if it still fails it is dead-lettered with
  reason ``internal_error`` and a traceback summary, counted, and processing
  continues. The worker never dies of a record and never ``noack``s.
* Outputs are published and acknowledged by the broker *before* the state
  write (see :meth:`Processor.handle`). kill -9 before the state write: the
  record is redelivered and applied again, outputs repeat with the same ids.
  kill -9 after the state write but before the offset commit: the record is
  redelivered, the fold sees an exact duplicate and changes nothing; its
  outputs were already acknowledged. Nothing is lost, nothing counted twice.
* The state's changelog record is acknowledged before the local write, so
  the local store is never ahead of the changelog: a crash in between leaves
  the changelog holding the state (a restore brings it back) and the record
  is redelivered as an exact duplicate.
* kill -9 between the state write and the tally write: the tally drifts
  until the sweep's next full scan recomputes it exactly from the customer
  table (the first sweep after the restart is one).
* Faust may drop *and acknowledge* records around rebalances. Input offsets
  are never committed past the agent's contiguous progress
  (:func:`install_seek_tracking`), skipped ranges are read back
  (:meth:`Processor.find_gap`, :class:`GapReader`) and silent partitions are
  re-driven through the rekey topic (:func:`redrive_idle_partitions`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

from schemas import codec
from schemas.events import InvalidEvent, parse_event
from scoring import fold
from scoring.snapshot import snapshot
from scoring.state import CustomerState
from streams import compat
from streams.commit import Change, Committer, WriteFailed
from streams.context import ServiceContext
from streams.records import ORIGIN_HEADER, Outgoing, Record, dead_letter_record, effect_messages
from streams.shops import TallyDelta, delta_for_event
from streams.topics import (
    message_key,
    partition_for,
)

log = logging.getLogger(__name__)

#: called with (partition, customer key, tally delta, next_due) after every state write
ChangeListener = Callable[[int, bytes, TallyDelta, "int | None"], None]
RETRIES = 2  # extra attempts before a record is dead-lettered as internal_error
RETRY_DELAY_S = 0.5


@dataclass
class Plan:
    """Everything one record causes, computed before anything is written."""

    state_write: tuple[bytes, bytes] | None = None
    # (partition, customer key, delta); applied to the tally row at write time,
    # not plan time, because the sweep may rewrite the row while the agent
    # waits for the broker.
    tally_delta: tuple[int, bytes, TallyDelta] | None = None
    # next_due of the state written (for the time sweep's due index)
    next_due: int | None = None
    sends: list[Outgoing] = field(default_factory=list)
    event_type: str = "invalid"
    status: str = "invalid"
    reason: str | None = None  # dead-letter reason of an invalid record or rejected outcome
    occurred_at: datetime | None = None
    effects: list[dict[str, Any]] = field(default_factory=list)


class Processor:
    """Turns one input record into a :class:`Plan` and executes it."""

    def __init__(self, service: ServiceContext, on_change: ChangeListener | None = None) -> None:
        self.service = service
        self.settings = service.settings
        self.metrics = service.metrics
        self.rekey_name = service.rekey.get_topic_name()
        #: told about every state write (the time sweep's due index and recount)
        self.on_change = on_change
        self._last_offset: dict[tuple[str, int], tuple[int | None, int]] = {}
        self._last_seen_at: dict[tuple[str, int], float] = {}
        #: (topic, partition) -> highest offset up to which every record was processed
        self.done: dict[tuple[str, int], int] = {}
        self.repair = GapReader(service)
        self.committer = Committer(service)
        #: (topic, partition) -> (generation, offset positioned at, monotonic time)
        self.seeks: dict[tuple[str, int], tuple[int, int, float]] = {}

    def find_gap(self, record: Record, generation: int | None) -> tuple[int, int] | None:
        """The offsets ``[start, end)`` of this record's partition that the consumer skipped.

        Input topics are delete-policy and written without transactions, so
        their offsets are contiguous. Faust has known bugs around rebalances
        (records prefetched before a rebalance delivered after it, and its
        "gap" bookkeeping then treating the skipped range as done:
        faust-streaming#216, #221, #606) that make the stream jump ahead:
        records fetched just before a rebalance are dropped *and acknowledged*
        after it. We detect a jump within one group generation, and a first
        record of a generation that is not the one the consumer was positioned
        at on assignment (see :func:`install_seek_tracking`). A false positive
        only costs a re-read: re-applying records is idempotent.
        """
        tp = (record.topic, record.partition)
        last = self._last_offset.get(tp)
        self._last_offset[tp] = (generation, record.offset)
        self._last_seen_at[tp] = time.monotonic()
        if last is not None and last[0] == generation:
            start = last[1] + 1
        else:
            # First record of this partition in this generation: it must be the
            # one the consumer was positioned at when the partition was assigned.
            seek = self.seeks.get(tp)
            if seek is None or seek[0] != generation:
                return None
            start = seek[1]
        if record.offset > start:
            self.metrics.offset_gaps.labels(record.topic).inc(record.offset - start)
            log.warning("consumer skipped %s[%d] offsets %d..%d (generation %s): re-reading",
                        record.topic, record.partition, start, record.offset - 1, generation)
            return start, record.offset
        return None

    # -- planning (pure apart from table reads) ----------------------------------------
    def plan(self, record: Record, *, now: datetime | None = None,
             overlay: dict[bytes, bytes] | None = None) -> Plan:
        """Compute what ``record`` causes. Reads the tables, writes nothing.

        ``now`` (wall clock UTC by default) is only used by ``parse_event`` to
        reject timestamps more than a day in the future. ``overlay`` holds the
        states planned (not yet written) for earlier records of the same batch:
        a customer's second record in a batch folds onto the first one's result.
        """
        svc = self.service
        now = now or datetime.now(UTC)
        raw = record.value
        if raw is None or len(raw) == 0:
            return self._reject(record, "empty", "record has no value")
        if len(raw) > self.settings.max_event_bytes:
            return self._reject(record, "too_large",
                                f"{len(raw)} bytes > max_event_bytes={self.settings.max_event_bytes}")
        try:
            event = parse_event(raw, now=now, policies=svc.policies)
        except InvalidEvent as exc:
            return self._reject(record, exc.reason, exc.detail)

        key = message_key(event.shop_id, event.customer_id)
        want_partition = partition_for(key, svc.partitions)
        if record.key != key or record.partition != want_partition:
            if record.topic == self.rekey_name:
                # Already re-keyed and still misplaced: the rekey topic's partition
                # count differs from settings.partitions. Looping would never end.
                return self._reject(record, "partition_mismatch",
                                    f"rekeyed record on partition {record.partition}, "
                                    f"expected {want_partition}")
            origin = codec.dumps(record.origin())
            plan = Plan(event_type=event.type, status="rekeyed")
            plan.sends.append(Outgoing(svc.rekey, key, raw, [(ORIGIN_HEADER, origin)]))
            return plan

        policy = svc.policies.for_shop(event.shop_id)
        if overlay is not None and key in overlay:
            old_raw = overlay[key]
        else:
            old_raw = svc.rows.get(record.partition, key)
        old = _decode_state(old_raw)
        outcome = fold.apply(old, event, policy)
        plan = Plan(event_type=event.type, status=outcome.status, occurred_at=event.occurred_at)
        if outcome.changed:
            new_state = outcome.state
            plan.state_write = (key, bytes(new_state.encode()))
            plan.tally_delta = (record.partition, key,
                                delta_for_event(outcome, event, policy, old is None))
            plan.next_due = new_state.next_due
            snap = snapshot(new_state, None, policy, svc.clv_model(event.shop_id))
            plan.sends.append(Outgoing(svc.scores, key, codec.dumps(snap)))
        plan.effects = list(outcome.effects)
        plan.sends.extend(effect_messages(svc, plan.effects))
        if outcome.status == "rejected":
            reason = getattr(outcome, "reason", None) or "rejected"
            detail = getattr(outcome, "detail", None) or reason
            plan.reason = reason
            plan.sends.append(Outgoing(svc.dead_letter, record.key,
                                       dead_letter_record(record, reason, detail)))
        return plan

    def _reject(self, record: Record, reason: str, detail: str) -> Plan:
        plan = Plan(event_type="invalid", status="invalid")
        plan.sends.append(Outgoing(self.service.dead_letter, record.key,
                                   dead_letter_record(record, reason, detail)))
        plan.status = "invalid"
        plan.reason = reason
        return plan

    # -- execution ---------------------------------------------------------------------
    async def commit(self, plans: list[Plan]) -> None:
        """Publish what ``plans`` send and write their states: :meth:`Committer.commit`.

        Every output is published and acknowledged first, then each changed
        state's changelog record, then the states go into the row store with
        the persisted offset and the tally deltas are applied (the numbered
        steps of :mod:`streams.commit`). Everything is published through
        :class:`streams.publish.Publisher`, not ``Topic.send``: Faust's
        "attachments" would hold the records back until the offset commit,
        and they must reach Kafka *before* the state write (see
        :meth:`handle`). Raises what the commit raises.
        """
        outputs = [(out.topic.get_topic_name(), out.key, out.value, out.headers, None)
                   for plan in plans for out in plan.sends]
        await self.committer.commit(outputs, _changes(plans), on_written=self._written)

    def write(self, plan: Plan, changelog_offsets: dict[int, int] | None = None) -> None:
        """Steps 4-5 of the commit for one plan whose records are already acknowledged.

        ``changelog_offsets`` (partition -> offset of the state's changelog
        record) becomes the persisted offset; without it the persisted offset
        is left as it is (unit tests of the write path).
        """
        self.committer.write(_changes([plan]), changelog_offsets or {},
                             on_written=self._written)

    def _written(self, change: Change) -> None:
        if self.on_change is not None:
            self.on_change(change.partition, change.key, change.delta, change.next_due)

    def observe(self, record: Record, plan: Plan, started: float) -> None:
        """Update metrics for a processed record."""
        m = self.metrics
        m.events_consumed.labels(record.topic, plan.event_type).inc()
        if plan.status in ("invalid", "rejected"):
            m.invalid_events.labels(plan.reason or plan.status).inc()
        elif plan.status == "duplicate":
            m.duplicates.inc()
        elif plan.status == "rekeyed":
            m.rekeyed.labels(record.topic).inc()
        elif plan.status == "applied":
            m.events_applied.labels(plan.event_type).inc()
        m.observe_effects(plan.effects)
        if plan.occurred_at is not None:
            lag = time.time() - plan.occurred_at.timestamp()
            m.event_lag.labels(record.topic).set(lag)
        m.latency.observe(time.perf_counter() - started)

    async def handle(self, record: Record) -> str:
        """Process one record end to end; never raises. Returns the plan status.

        Order matters for at-least-once outputs: the outputs are published and
        acknowledged by the broker *before* the state is written. If the worker
        dies in between, the record is redelivered, the fold applies it again
        (the state never recorded it) and the outputs repeat with the same ids.
        Writing the state first would let a crash leave the state updated but
        the outputs unsent, and the redelivered record would then be a silent
        duplicate: outputs lost for good.

        While the broker acknowledges, the customer's key is marked in flight so
        the time sweep neither reads nor overwrites it (no lost update).
        """
        started = time.perf_counter()
        for attempt in range(RETRIES + 1):
            try:
                plan = self.plan(record)
                self._mark_in_flight({plan.state_write[0]} if plan.state_write else ())
                await self.commit([plan])
                self._mark_in_flight(())
                self.observe(record, plan, started)
                return plan.status
            except Exception as exc:  # noqa: BLE001 - the worker must survive any record
                self._mark_in_flight(())
                if attempt < RETRIES:
                    # Transient trouble (broker hiccup, metadata not yet fresh) must
                    # not cost an event. A retry is safe: the plan is recomputed
                    # from the table, and a write that did land makes the record
                    # an exact duplicate for the fold.
                    log.warning("retrying %s[%d]@%d after %r", record.topic,
                                record.partition, record.offset, exc)
                    await asyncio.sleep(RETRY_DELAY_S * (attempt + 1))
                    continue
                await self._internal_error(record, exc)
        return "internal_error"

    async def handle_batch(self, records: list[Record]) -> None:
        """Process a batch with one broker round trip; never raises.

        The order of :meth:`handle` holds for the batch as a whole: plan every
        record (each on top of the states planned before it), then one
        commit (:mod:`streams.commit`): all outputs published and
        acknowledged once, all changelog records once, then every state and
        tally written in one synchronous run. A crash before the writes
        means the whole batch is redelivered and folded again (outputs repeat
        with the same ids); a crash after them leaves exact duplicates. If
        anything fails before the writes, nothing was written and the batch
        is processed again one record at a time, with :meth:`handle`'s
        retries and dead letter; a failure while writing is raised.
        """
        if len(records) == 1:
            await self.handle(records[0])
            return
        started = time.perf_counter()
        overlay: dict[bytes, bytes] = {}
        planned: list[tuple[Record, Plan]] = []
        try:
            for record in records:
                plan = self.plan(record, overlay=overlay)
                if plan.state_write is not None:
                    overlay[plan.state_write[0]] = plan.state_write[1]
                planned.append((record, plan))
            self._mark_in_flight(overlay)
            await self.commit([plan for _, plan in planned])
        except WriteFailed:
            self._mark_in_flight(())
            raise
        except Exception as exc:  # noqa: BLE001 - fall back; handle() never raises
            self._mark_in_flight(())
            log.warning("batch of %d records failed before its writes (%r): "
                        "processing them one at a time", len(records), exc)
            for record in records:
                await self.handle(record)
            return
        self._mark_in_flight(())
        for record, plan in planned:
            self.observe(record, plan, started)

    def _mark_in_flight(self, keys: Any) -> None:
        """Make ``keys`` the customers the sweep must leave alone (see :meth:`handle`)."""
        self.service.in_flight.clear()
        self.service.in_flight.update(keys)

    async def _internal_error(self, record: Record, exc: BaseException) -> None:
        """Dead-letter ``record`` with reason ``internal_error``; never raises."""
        summary = "".join(traceback.format_exception(exc, limit=6))[-3000:]
        log.error("internal error on %s[%d]@%d: %s", record.topic, record.partition,
                  record.offset, summary)
        self.metrics.internal_errors.inc()
        self.metrics.invalid_events.labels("internal_error").inc()
        self.metrics.events_consumed.labels(record.topic, "error").inc()
        try:
            await self.service.dead_letter.send(
                key=record.key, value=dead_letter_record(record, "internal_error", summary),
                force=True)
        except Exception:  # noqa: BLE001
            log.exception("could not dead-letter %s[%d]@%d", record.topic,
                          record.partition, record.offset)


class GapReader:
    """Reads ranges of input records with its own consumer (no group, no commits)."""

    def __init__(self, service: ServiceContext) -> None:
        self.settings = service.settings
        self._consumer: AIOKafkaConsumer | None = None

    async def _start(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers,
                                        group_id=None, enable_auto_commit=False)
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def close(self) -> None:
        """Stop the private consumer (called on worker shutdown)."""
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The offset after the last record of each of ``tps``."""
        consumer = await self._start()
        return dict(await consumer.end_offsets(tps))

    async def fetch(self, topic: str, partition: int, start: int, end: int,
                    timeout: float = 30.0) -> list[Record]:
        """Records with ``start <= offset < end`` of one partition, in order."""
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
        log.error("could only re-read %d of %d skipped records of %s[%d]", len(out),
                  end - start, topic, partition)
        return out


def install_seek_tracking(service: ServiceContext, processor: Processor) -> None:
    """Remember, per input partition and generation, where the consumer was positioned,
    and never commit an input offset past what the agent has processed.

    Faust positions every assigned partition at its committed offset after
    each rebalance's recovery; the first record the agent then sees must be
    that offset (:func:`streams.compat.on_seek_to_committed`). Faust also
    acknowledges records it drops around rebalances, so its own committable
    offset can run ahead of the agent; a kill -9 after such a commit would
    lose those records for good. Capping every commit at the agent's
    contiguous progress (:func:`streams.compat.cap_commits`) turns that into
    a harmless redelivery.
    """
    app = service.app
    watched = {*service.input_topic_names, service.rekey.get_topic_name()}

    def on_seek(committed: Mapping[TP, int | None]) -> None:
        generation = compat.generation(app)
        now = time.monotonic()
        for tp, offset in committed.items():
            if tp.topic in watched and offset is not None:
                processor.seeks[(tp.topic, tp.partition)] = (generation, int(offset), now)
                # Everything before the committed position is done by definition.
                processor.done[(tp.topic, tp.partition)] = int(offset) - 1

    def cap(offsets: Mapping[TP, int]) -> dict[TP, int]:
        capped = {}
        for tp, offset in offsets.items():
            if tp.topic in watched:
                done = processor.done.get((tp.topic, tp.partition))
                if done is None:
                    continue  # nothing processed here yet: leave the broker's offset
                if offset > done + 1:
                    log.info("capping commit of %s[%d] at %d (consumer wanted %d)",
                             tp.topic, tp.partition, done + 1, offset)
                    offset = done + 1
            capped[tp] = offset
        return capped

    compat.on_seek_to_committed(app, on_seek)
    compat.cap_commits(app, cap)


async def redrive_idle_partitions(service: ServiceContext, processor: Processor,
                                  idle_s: float = 10.0) -> int:
    """Re-read records the consumer read but never handed to the agent.

    The agent's sequence check needs a *later* record on the same partition;
    on a sparse partition (feedback, redemptions) records dropped by the
    consumer would stay unnoticed. So, for each input partition of the current
    generation on which the agent has seen nothing for ``idle_s`` seconds:
    if Faust's consumer has read past the next offset the agent expects, the
    records in between were dropped. They are fetched and forwarded, correctly
    keyed, to the rekey topic, where the agent processes them in order
    (re-applying a record is harmless). Returns the number re-driven.
    """
    app = service.app
    generation = compat.generation(app)
    now = time.monotonic()
    read_offsets = compat.read_offsets(app)
    candidates = []
    for tp, (gen, seek_offset, at) in list(processor.seeks.items()):
        if gen != generation:
            continue
        last = processor._last_offset.get(tp)
        expected = last[1] + 1 if last is not None and last[0] == gen else seek_offset
        if now - max(at, processor._last_seen_at.get(tp, 0.0)) < idle_s:
            continue
        read = read_offsets.get(TP(*tp))
        if read is None or read < expected:
            continue
        candidates.append((tp, expected, read + 1))
    if not candidates:
        return 0
    ends = await processor.repair.end_offsets(
        [TopicPartition(t, p) for (t, p), _, _ in candidates])
    total = 0
    for (topic, partition), start, stop in candidates:
        end = min(stop, ends.get(TopicPartition(topic, partition), 0))
        if end <= start or compat.generation(app) != generation:
            continue
        records = await processor.repair.fetch(topic, partition, start, end)
        futures = [await service.rekey.send(key=_redrive_key(r), value=r.value or b"",
                                            headers=[(ORIGIN_HEADER, codec.dumps(r.origin()))],
                                            force=True)
                   for r in records]
        if futures:
            await asyncio.gather(*futures)  # durable in the rekey topic before "done"
        processor._last_offset[(topic, partition)] = (generation, end - 1)
        if records and records[-1].offset == end - 1:
            processor.done[(topic, partition)] = max(
                processor.done.get((topic, partition), -1), end - 1)
        processor._last_seen_at[(topic, partition)] = time.monotonic()
        service.metrics.offset_gaps.labels(topic).inc(len(records))
        log.warning("consumer read %s[%d] up to %d but the agent got nothing after %d: "
                    "re-driving %d records through the rekey topic", topic, partition,
                    end - 1, start - 1, len(records))
        total += len(records)
    return total


def _redrive_key(record: Record) -> bytes | None:
    """Correct key for a re-driven record (its own key if the value is unparseable)."""
    try:
        data = codec.loads(record.value or b"")
        return message_key(data["shop_id"], data["customer_id"])
    except Exception:  # noqa: BLE001 - invalid records are dead-lettered downstream
        return record.key


def _changes(plans: list[Plan]) -> list[Change]:
    """The state changes of ``plans``, in order (state and tally always come together)."""
    return [Change(plan.tally_delta[0], key, value, plan.tally_delta[2], plan.next_due)
            for plan in plans if plan.state_write is not None and plan.tally_delta is not None
            for key, value in (plan.state_write,)]


def _decode_state(raw: bytes | None) -> CustomerState | None:
    if raw is None:
        return None
    return CustomerState.decode(raw)


def register_agents(service: ServiceContext,
                    on_change: ChangeListener | None = None) -> Processor:
    """Attach the state agent to ``service.app``; returns its :class:`Processor`.

    ``on_change`` is told about every state the agent writes (the time sweep's
    :meth:`streams.sweep.Sweeper.note_change`).
    """
    processor = Processor(service, on_change)

    settings = service.settings

    async def loyalty_state(stream: Any) -> None:
        # Faust acks the events of a batch only when the next one is taken,
        # and offsets are capped at ``processor.done`` (contiguous progress).
        async for events in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            batch: list[Record] = []
            for event in events:
                record = Record.from_message(event.message)
                gap = processor.find_gap(record, event.message.generation_id)
                if gap is not None:
                    batch.extend(await processor.repair.fetch(record.topic, record.partition, *gap))
                batch.append(record)
            await processor.handle_batch(batch)
            # Everything up to these offsets of their partitions is now processed.
            for record in batch:  # in order: the last record of each partition wins
                processor.done[(record.topic, record.partition)] = record.offset

    service.app.agent(service.inputs, name="loyalty-state", concurrency=1)(loyalty_state)
    install_seek_tracking(service, processor)

    async def loyalty_redrive() -> None:
        try:
            await redrive_idle_partitions(service, processor)
        except Exception:  # noqa: BLE001 - best effort; retried next tick
            log.exception("re-drive check failed")

    service.app.timer(interval=5.0, on_leader=False, name="loyalty-redrive")(loyalty_redrive)

    @service.app.on_before_shutdown.connect
    async def close_gap_reader(app: Any, **kwargs: Any) -> None:
        await processor.repair.close()
    return processor
