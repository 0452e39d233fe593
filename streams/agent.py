"""The state agent: folds every input record into the customer table.

One agent, ``concurrency=1``, subscribed to the four input topics and the
internal rekey topic (all co-partitioned). With more than one concurrent
actor per partition Faust may commit an offset past a record that another
actor is still processing, which breaks at-least-once; one actor keeps the
per-partition order and the commit point honest.

The agent's loop is :func:`streams.consume.consume`: take a batch, repair
gaps (:mod:`streams.gaps`), hand it to :meth:`Processor.handle_batch`, mark
it done. Per batch, :class:`Processor` plans every record
(:mod:`streams.planning`; an exception while planning changes nothing), then
commits the plans (:mod:`streams.commit`): outputs acknowledged, then the
states' changelog records acknowledged, then rows and tallies written.

Failure modes:

* Any unexpected exception is caught and the record retried twice (safe:
  see :meth:`Processor.handle`); if it still fails it is dead-lettered with
  reason ``internal_error`` and a traceback summary, counted, and processing
  continues. The worker never dies of a record and never ``noack``s.
* A customer row that holds no readable state (damage: a bug or a hand-edited
  changelog) is not transient: the customer's records are dead-lettered at
  once with reason ``unreadable_state``, the row stays as it is for repair.
* A crash anywhere in the commit loses nothing and counts nothing twice
  (:mod:`streams.commit` says what each step boundary means): a record
  redelivered after its state was written is an exact duplicate for the fold.
* Faust may drop *and acknowledge* records around rebalances; see
  :mod:`streams.gaps` for how none is lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from scoring.engine import NewerStateFormat, State, StateFormatError
from streams import compat
from streams.aligned_input import AlignedInput
from streams.aligned_input import install as install_aligned_input
from streams.commit import Change, Committer, WriteFailed
from streams.consume import consume
from streams.context import ServiceContext
from streams.gaps import GapReader, Progress, install_seek_tracking, reread_dropped
from streams.load import BusyShare
from streams.metrics import BATCH_STEPS
from streams.planning import Plan, Planner, Rows
from streams.publish import futures
from streams.records import Record, dead_letter_record
from streams.shops import TallyDelta

log = logging.getLogger(__name__)

#: called with (partition, customer key, tally delta, next_due) after every state write
ChangeListener = Callable[[int, bytes, TallyDelta, "int | None"], None]
RETRIES = 2  # extra attempts before a record is dead-lettered as internal_error
RETRY_DELAY_S = 0.5
#: seconds between checks for partitions whose last records the consumer dropped
#: (streams.gaps.reread_dropped: two checks confirm a drop, well inside max_idle_ms)
REREAD_INTERVAL_S = 0.5
#: batches of ``settings.batch_max`` records the intake holds before the fetcher waits
INTAKE_BATCHES = 4
#: the window of :attr:`Processor.load` (seconds): long against a batch, short
#: against a full scan of the time sweep, which reads it
LOAD_WINDOW_S = 2.0


class Processor:
    """Plans input records and commits the plans; never raises for a record."""

    def __init__(self, service: ServiceContext, on_change: ChangeListener | None = None) -> None:
        self.service = service
        self.metrics = service.metrics
        #: told about every state write (the time sweep's due index and recount)
        self.on_change = on_change
        self.planner = Planner(service)
        self._step_wall = {step: self.metrics.batch_steps.labels(step) for step in BATCH_STEPS}
        self._step_cpu = {step: self.metrics.batch_step_cpu.labels(step) for step in BATCH_STEPS}
        #: this thread's CPU time when the current step began (see :meth:`time_step`)
        self._cpu_mark = time.thread_time()
        self.committer = Committer(service, timings=self.time_step)
        #: called after every batch :meth:`handle_batch` finished (the worker's
        #: garbage-collector policy, :mod:`streams.collector`)
        self.after_batch: Callable[[], None] | None = None
        #: the share of recent wall time spent in :meth:`handle_batch` (the time
        #: sweep gives way while it is high)
        self.load = BusyShare(LOAD_WINDOW_S)

    def time_step(self, step: str, seconds: float) -> None:
        """Report ``step`` of a batch: ``seconds`` of wall time, and this thread's CPU
        since the previous step ended (or the batch began: :meth:`_start_steps`).

        The steps run back to back on the agent's thread, so their CPU adds up to
        the batch's, but for the metrics and the collector policy after the
        write; what other tasks of the loop ran while a step awaited (the
        producer's sender, Faust's services) is counted in that step.
        """
        self._step_wall[step].observe(seconds)
        now = time.thread_time()
        self._step_cpu[step].inc(now - self._cpu_mark)
        self._cpu_mark = now

    def _start_steps(self) -> None:
        self._cpu_mark = time.thread_time()

    def plan(self, record: Record, *, now: datetime | None = None,
             overlay: dict[bytes, State] | None = None, rows: Rows | None = None) -> Plan:
        """:meth:`streams.planning.Planner.plan` (reads rows, writes nothing)."""
        return self.planner.plan(record, now=now, overlay=overlay, rows=rows)

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
        started = time.perf_counter()
        settled = self.planner.settle(plans)
        self.time_step("settle", time.perf_counter() - started)
        # The states are encoded while the outputs travel (Settled.changes).
        await self.committer.commit(settled.outputs, settled.changes, on_written=self._written)

    def write(self, plan: Plan, changelog_offsets: dict[int, int] | None = None) -> None:
        """Steps 4-5 of the commit for one plan whose records are already acknowledged.

        ``changelog_offsets`` (partition -> offset of the state's changelog
        record) becomes the persisted offset; without it the persisted offset
        is left as it is (unit tests of the write path).
        """
        self.committer.write(self.planner.changes([plan]), changelog_offsets or {},
                             on_written=self._written)

    def _written(self, change: Change) -> None:
        self.planner.remember(change)
        if self.on_change is not None:
            self.on_change(change.partition, change.key, change.delta, change.next_due)

    def observe(self, planned: list[tuple[Record, Plan]], started: float) -> None:
        """Update metrics for processed records: :meth:`Metrics.observe_processed`."""
        self.metrics.observe_processed(planned, started)
        self.metrics.batch_records.observe(len(planned))

    async def handle(self, record: Record) -> str:
        """Process one record end to end. Returns the plan status.

        Never raises, with one exception: a customer state of a newer format
        (:class:`scoring.engine.NewerStateFormat`) stops the worker
        (:meth:`ServiceContext.stop_for_newer_state`) and this call waits until
        the stop cancels it, so the record is neither processed nor
        dead-lettered, and neither is the rest of its batch (the aligned input
        hands them back; they are not marked done).

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
                planning = time.perf_counter()
                self._start_steps()
                plan = self.plan(record)
                self.time_step("plan", time.perf_counter() - planning)
                self._mark_in_flight({plan.tally_delta[1]} if plan.tally_delta else ())
                await self.commit([plan])
                self._mark_in_flight(())
                self.observe([(record, plan)], started)
                return plan.status
            except NewerStateFormat as exc:
                # Not this record's fault and not transient: a newer build wrote
                # the customer's state. Neither retried nor dead-lettered.
                self._mark_in_flight(())
                await self.service.stop_for_newer_state(
                    exc, f"{record.topic}[{record.partition}]@{record.offset}")
                # Hold the record (and the rest of its batch) until the stop cancels
                # this task: the aligned input then hands them back unprocessed.
                await asyncio.Event().wait()
            except StateFormatError as exc:
                # A damaged row: retrying reads the same bytes. Its own reason lets
                # the operator find the row (the record's key) and repair it.
                self._mark_in_flight(())
                await self._dead_letter(record, "unreadable_state",
                                        f"the customer's stored state cannot be read: {exc}")
                return "invalid"
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
                summary = "".join(traceback.format_exception(exc, limit=6))[-3000:]
                log.error("internal error on %s[%d]@%d: %s", record.topic, record.partition,
                          record.offset, summary)
                self.metrics.internal_errors.inc()
                await self._dead_letter(record, "internal_error", summary)
        return "internal_error"

    async def handle_batch(self, records: list[Record]) -> None:
        """Process a batch with one broker round trip; never raises.

        The order of :meth:`handle` holds for the batch as a whole: plan every
        record (each on top of the states planned before it), then one
        commit (:mod:`streams.commit`): all outputs published and
        acknowledged once, all changelog records once, then every state and
        tally written in one synchronous run. A crash before the writes
        means the whole batch is redelivered and folded again (outputs repeat
        with the same ids); a crash after them leaves exact duplicates.

        A record whose planning raises splits the batch: the records before
        it are committed as a batch, then it alone goes through
        :meth:`handle` (retries, then the dead letter), then the rest as a
        batch; one bad record costs a few round trips, not one per record of
        the batch. If the commit fails before the writes, nothing was written
        and those records are processed again one at a time, with
        :meth:`handle`'s retries and dead letter; a failure while writing is
        raised.
        """
        started = time.perf_counter()
        try:
            if len(records) == 1:
                await self.handle(records[0])
                return
            while records:
                failed_at = await self._plan_and_commit(records)
                if failed_at is None:
                    return
                await self.handle(records[failed_at])
                records = records[failed_at + 1:]
        finally:
            self.load.add(started, time.perf_counter())
            if self.after_batch is not None:
                self.after_batch()

    async def _plan_and_commit(self, records: list[Record]) -> int | None:
        """Plan ``records`` up to the first that raises, commit those planned.

        Returns the index of the record whose planning raised (not committed),
        or None when every record was planned.
        """
        started = time.perf_counter()
        self._start_steps()
        # One clock reading per batch (it only bounds future timestamps, by a day).
        now = datetime.now(UTC)
        overlay: dict[bytes, State] = {}
        planned: list[tuple[Record, Plan]] = []
        failed_at: int | None = None
        # No await from here to the commit: the rows read ahead stay current.
        rows = self.planner.read_rows(records)
        for index, record in enumerate(records):
            try:
                plan = self.plan(record, now=now, overlay=overlay, rows=rows)
            except Exception as exc:  # noqa: BLE001 - handle() retries and dead-letters it
                log.warning("planning %s[%d]@%d failed (%r): committing the %d records "
                            "before it, then it alone", record.topic, record.partition,
                            record.offset, exc, index)
                failed_at = index
                break
            if plan.tally_delta is not None:  # a new state, or None: erased
                overlay[plan.tally_delta[1]] = plan.state
            planned.append((record, plan))
        if not planned:
            return failed_at
        self.time_step("plan", time.perf_counter() - started)
        try:
            self._mark_in_flight(overlay)
            await self.commit([plan for _, plan in planned])
        except WriteFailed:
            self._mark_in_flight(())
            raise
        except Exception as exc:  # noqa: BLE001 - fall back; handle() never raises
            self._mark_in_flight(())
            log.warning("batch of %d records failed before its writes (%r): "
                        "processing them one at a time", len(planned), exc)
            for record, _ in planned:
                await self.handle(record)
            return failed_at
        self._mark_in_flight(())
        self.observe(planned, started)
        return failed_at

    def _mark_in_flight(self, keys: Any) -> None:
        """Make ``keys`` the customers the sweep must leave alone (see :meth:`handle`)."""
        self.service.in_flight.clear()
        self.service.in_flight.update(keys)

    async def _dead_letter(self, record: Record, reason: str, detail: str) -> None:
        """Dead-letter ``record``, which could not be processed, with ``reason``; never raises."""
        self.metrics.invalid_events.labels(reason).inc()
        self.metrics.events_consumed.labels(record.topic, "error").inc()
        letter = dead_letter_record(record, reason, detail)
        try:
            sent = await self.service.publisher.publish(
                [(self.service.dead_letter.get_topic_name(), record.key, letter, None, None)])
            await asyncio.gather(*futures(sent))
        except Exception:  # noqa: BLE001
            log.exception("could not dead-letter %s[%d]@%d", record.topic,
                          record.partition, record.offset)


def register_agents(service: ServiceContext,
                    on_change: ChangeListener | None = None) -> tuple[Processor, AlignedInput]:
    """Attach the state agent, its gap repair and its read-back timer to ``service.app``.

    ``on_change`` is told about every state the agent writes (the time sweep's
    :meth:`streams.sweep.Sweeper.note_change`). Returns the :class:`Processor` and the
    agent's :class:`streams.aligned_input.AlignedInput` (the sweep follows its event time).
    """
    processor = Processor(service, on_change)
    progress = Progress(service.metrics, skipped=lambda tp, start, end: compat.skipped_offsets(
        service.app, tp, start, end))
    reader = GapReader(service)
    settings = service.settings

    commit_owed = install_seek_tracking(service, progress, reader)
    compat.deliver_directly(service.app)
    compat.read_committed(service.app)  # aborted transactions are no events
    compat.track_fetches(service.app)
    compat.batch_fetches(service.app, settings.fetch_min_bytes, settings.fetch_max_wait_ms,
                         service.agent_topic_names)
    aligned = install_aligned_input(service, processor, progress, reader, commit_owed)
    # Room for a few batches: the fetcher runs ahead while one is processed.
    intake = compat.Intake(service.app, INTAKE_BATCHES * settings.batch_max)
    compat.deliver_to_intake(service.app, service.agent_topic_names, intake)

    async def loyalty_state(stream: Any) -> None:
        await consume(stream, intake, aligned, progress, reader, settings)

    service.app.agent(service.inputs, name="loyalty-state", concurrency=1)(loyalty_state)

    async def loyalty_reread() -> None:
        if not service.tables_ready():
            return  # nothing is delivered during a rebalance or a recovery: no evidence
        try:
            await reread_dropped(service, progress, reader, aligned.receive, intake.partitions)
        except Exception:  # noqa: BLE001 - best effort; retried next tick
            log.exception("read-back check failed")

    service.app.timer(interval=REREAD_INTERVAL_S, on_leader=False,
                      name="loyalty-reread")(loyalty_reread)

    @service.app.on_before_shutdown.connect
    async def close_gap_reader(app: Any, **kwargs: Any) -> None:
        await reader.close()
    return processor, aligned
