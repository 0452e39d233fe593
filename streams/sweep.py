"""The time sweep: changes that no event triggers.

Customers move to ``at_risk``/``lapsed`` or drop out of ``attached`` and points
expire just because time passes. Every ``settings.sweep_interval_s`` seconds a
timer calls the engine's ``advance(state, now)`` (:mod:`scoring.engine`) for
the customers of the partitions this worker *actively* owns whose time has
come; changed states are written back and their effects (transitions, expiry
ledger entries, the new snapshot) are published.

**How "now" is defined.** ``now`` is the worker's wall clock in UTC
(``datetime.now(UTC)``), read once at the start of each sweep and used for
every customer of that sweep. Event processing never uses the wall clock for
scoring: an event is folded at its own ``occurred_at``, and the fold expires
lots due by that instant first. The wall clock only decides *when* a
time-driven change is noticed, never what the resulting state is, so a
worker with a skewed clock publishes changes early or late but computes the
same state as ``loyalty replay --as-of`` for the same instant.

**Never ahead of the input.** While the worker's input is behind (a history
import, a restart after downtime: records held by the aligned input, or an
input partition not caught up), customers are advanced only to the event
time the input is processed to (:attr:`Sweeper.input_time`, from
:meth:`streams.aligned_input.AlignedInput.input_time_us`), not to the wall
clock. The aligned input releases records in event-time order, so a
customer's events still to come are not older than that: they are appended
to its history instead of arriving behind its clock, which would make the
fold re-fold the customer and void the time-driven transitions it had
published for it. Once the input has caught up, ``now`` is the wall clock
again. The full-scan schedule and the recount's windows always follow the
wall clock. ``SweepStats.advanced_to`` (``/health``) tells how far a sweep
advanced.

**What is visited when.** ``CustomerState.next_due`` is the earliest instant
at which time alone changes a state (``advance`` is a no-op before it).
Each owned partition gets one of two passes per sweep:

* a *full scan* reads every customer row of the partition in key order. It
  advances the customers that are due, recomputes the partition's shop
  tallies exactly (below) and rebuilds the partition's *due index*: customer
  key -> ``next_due`` for every customer due before the *next* full scan
  (``now + settings.tally_recount_interval_s``). A partition is fully scanned
  on its first sweep in a consumer generation (``app.consumer_generation_id``
  changes on every rebalance, so after a restart, a crash or a change of
  ownership), again once ``tally_recount_interval_s`` has passed since the
  last full scan, and after a full scan that did not finish (error, lost
  ownership);
* otherwise a *due pass* visits only the keys of the index whose ``next_due``
  is at or before ``now``; with nothing due it reads no customer row at all.

The index stays current without reading rows: every state the agent writes
reports its new ``next_due`` through :meth:`Sweeper.note_change` (and every
state the sweep writes is filed the same way). A key whose ``next_due`` is
None, or not before the next full scan, is not in the index: that scan finds
it. So a due customer is advanced by the first sweep at or after its
``next_due``, as with a scan of every row. The index holds only keys due
within one recount interval, so its memory follows the customers due soon,
not all customers. A key the sweep had to
skip (the agent was processing it, or the row changed under the sweep) keeps
an entry from the row's current state, so it is re-checked by the next sweep
if it is still due. Every key a sweep visits is re-filed from its state, so
an entry that was ever too early costs one no-op visit, nothing more.

The index (:class:`streams.due_index.DueIndex`, a pure structure) lives in
memory only: the customer table and its changelog stay
the truth. A crash or restart loses it; the new process joins a new consumer
generation, whose first sweep rebuilds it with a full scan (and repairs the
tallies). A rebalance drops every index the same way, since ownership and
local stores may have changed. The only writers of the customer table are
the agent and the sweep, and both report every write, so between full scans
an index misses nothing; the periodic full scan would also correct one that
did.

**Never stalling event processing.** Work is done in slices: a slice reads
customers until it has spent :data:`SLICE_BUDGET_S`, commits what changed
(waiting for the broker yields), then yields to the event loop before the
next slice, so the agent waits only briefly for the sweep, in a full scan as
well as in a due pass. Slices are also spaced so the sweep uses at most
:data:`SWEEP_DUTY` of the wall clock, and at most :data:`SWEEP_DUTY_BUSY`
while the agent has spent half of the last seconds or more on batches: a full
scan of a large partition takes long, but never halves the agent's throughput,
and a live feed near the agent's capacity keeps its latency while the scan
runs. A full scan reads a partition afresh per slice from the last key it
reached (:meth:`streams.store.RowStore.keys_after`), so it neither lists all
keys in memory nor keeps an iterator open across an ``await``.

**Cost.** A due pass reads no row unless something is due: the index keeps
a lower bound of its entries, so a partition with nothing due costs a
comparison. Otherwise the pass reads the index entries (in budgeted slices)
and, per due customer, one row, ``advance`` and, if it changed, a
commit. A full scan costs one decode, ``advance`` and a tally
contribution per customer, spread over slices (figures in the README's
Performance section); in the first one of a generation the recount's
re-fold is also the policy check (above).

**A changed policy or rule.** A state's ``next_due`` and other derived
figures were computed by whoever wrote it, under the policy it ran with;
policies are read at start-up. So the first full scan of a partition in a
consumer generation (after every start and rebalance) re-derives each
customer under the running policy (``rederive``: one re-fold of the
open window per customer not held live by the agent, which the tally recount
then uses instead of its own): a
customer whose figures differ is advanced and written as if due, with the
open window's changed effects and the transitions the policy makes due at
their own instants. Without this, a shorter ``lapsed_days`` would wait for
the old lapse instant.

**Writing.** Changed states are committed through the same protocol as the
agent's (:mod:`streams.commit`): effects and snapshots acknowledged, then
the changelog records, then the rows with the persisted offset and the tally
deltas. Tally rows are Faust table writes; outside a stream they target the
key's partition through :func:`streams.compat.partition_context`.

**Races with the agent.** Read-advance-write is split by broker
acknowledgements. A key the agent is processing right now is skipped, and
every write is a compare-and-set (a *guarded* change): if the row changed
while the sweep waited, or the agent took the key meanwhile, the sweep's
result is dropped (the next sweep advances the newer state; effects have
deterministic ids, so a repeat is harmless). A skipped key stays in the
index as due.

**Shop tallies.** The agent and the sweep update a partition's tally rows
incrementally with every state change: the commit applies each change's
delta to the row's tally held in memory and writes the held rows within
``settings.tally_flush_interval_s`` (:mod:`streams.commit`, step 5). A crash
loses what is held and a rebalance drops it, so every full scan also
recomputes each shop's tally of the partition exactly from the customer rows
and, once the rows held for the partition are written, overwrites drifted
rows: on the first sweep after
a restart (a crash always means a new generation), and then every
``settings.tally_recount_interval_s`` (default one hour). Changes made by the
agent while a full scan is under way are folded into the recomputation
through :meth:`Sweeper.note_change`, so the result is exact even though the
scan yields between slices: a change to a key the scan has already counted is
applied as a delta, a change to a key it has not reached yet is counted when
it gets there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from schemas.policy import ShopPolicy
from scoring.clock import day_of, from_us, to_us
from scoring.engine import NewerStateFormat, Outcome, State, StateFormatError, effect_marks
from scoring.shop import SPEND_WINDOW_DAYS, ShopTally, TallyFormatError
from streams import compat
from streams.commit import Change, Committer
from streams.compat import partition_context
from streams.context import ServiceContext
from streams.due_index import DueIndex, Recount, SweepStats
from streams.records import Outgoing, effect_messages
from streams.shops import (
    TallyDelta,
    delta_for_advance,
)
from streams.topics import shop_of, tally_key

log = logging.getLogger(__name__)

#: Seconds (wall clock) a slice of a sweep may spend reading customers before
#: it commits what it found due and yields to the event loop. The agent cannot
#: run while a slice does, so this bounds the latency the sweep adds to an
#: event; a slice still amortises the broker round trip over many customers.
SLICE_BUDGET_S = 0.005
#: Share of the wall clock the sweep may use: after each slice it sleeps nine
#: times as long as the slice ran. A full scan reads every customer and runs
#: after every rebalance, and a due pass can find thousands due at once (a day
#: boundary); back-to-back slices would take a large share of the CPU from a
#: busy agent and queue its events (the bench's latency figures are in the
#: README's Performance section).
SWEEP_DUTY = 0.1
#: The share while the agent is busy (its :attr:`streams.agent.Processor.load`
#: at or above :data:`AGENT_BUSY_SHARE`): a live feed near the agent's capacity
#: has no tenth of the CPU to spare, and the sweep's slices would queue its
#: events. Never zero, so a scan still finishes under a sustained backlog
#: (five times as long as on a quiet worker).
SWEEP_DUTY_BUSY = 0.02
#: The agent's busy share from which the sweep slows down to SWEEP_DUTY_BUSY.
AGENT_BUSY_SHARE = 0.5

_US_PER_S = 1_000_000
#: index entries a due pass examines between two looks at the clock
_SELECT_CHUNK = 2048


class _Budget:
    """The time a slice has left before it must yield (:data:`SLICE_BUDGET_S`).

    ``duty`` < 1 makes :meth:`pause` sleep so that slices use at most that
    share of the wall clock (:data:`SWEEP_DUTY`); while ``load()`` (the agent's
    busy share) is at least :data:`AGENT_BUSY_SHARE`, at most
    :data:`SWEEP_DUTY_BUSY`.
    """

    def __init__(self, duty: float = 1.0, load: Callable[[], float] = lambda: 0.0) -> None:
        self.duty = duty
        self.load = load
        self.restart()

    def restart(self) -> None:
        self.started = time.perf_counter()

    def spent(self) -> bool:
        return time.perf_counter() - self.started >= SLICE_BUDGET_S

    def current_duty(self) -> float:
        """The share of the wall clock the next pause allows the slices."""
        return min(self.duty, SWEEP_DUTY_BUSY) if self.load() >= AGENT_BUSY_SHARE else self.duty

    async def pause(self) -> None:
        """Yield to the event loop (sleeping off the duty cycle), then start a new slice."""
        ran = time.perf_counter() - self.started
        duty = self.current_duty()
        await asyncio.sleep(ran * (1.0 / duty - 1.0) if duty < 1.0 else 0)
        self.restart()


@dataclass
class _Work:
    """A customer the sweep advanced: published, then written if the row is unchanged."""

    key: bytes
    raw: bytes  # the row the advance started from (compare-and-set)
    outcome: Outcome
    effects: Sequence[dict[str, Any]]
    messages: list[Outgoing]  # effects and the new snapshot


def _same_tally(a: bytes, b: bytes, today: int | None = None,
                nps_window_days: int = 0) -> bool:
    """Equal figures, ignoring zero counts and order (encodings may differ).

    Every field is compared (funnel, NPS all time, by day and by touchpoint,
    the rule v2 KPI counts and sums). Per-day rows are compared only within
    the windows a recount rebuilds (the shop's NPS window and the 365-day
    spend window as of ``today``): the running tally keeps older days that a
    recount from the states cannot see, and they no longer affect a figure.
    ``today`` None compares every day.
    """
    lo_nps = -1 if today is None else today - nps_window_days
    lo_spend = -1 if today is None else today - SPEND_WINDOW_DAYS
    def nz(d: dict[Any, Any]) -> dict[Any, Any]:
        return {k: (list(v) if isinstance(v, list | tuple) else v) for k, v in d.items()
                if (any(v) if isinstance(v, list | tuple) else v)}

    def norm(raw: bytes) -> tuple[Any, ...]:
        t = ShopTally.decode(raw)  # TallyFormatError for a damaged row: not the same
        return (nz(t.funnel), list(t.nps_all),
                nz({int(d): r[1:] for d, r in t.nps_days.items() if int(d) > lo_nps}),
                nz(t.nps_tp), t.buyers, t.repeaters, nz(t.types), nz(t.wallets),
                nz(t.detractors), t.spend_sum, t.count_sum,
                nz({int(d): r[1:] for d, r in t.spend_days.items()
                    if int(d) > lo_spend}))

    try:
        return norm(a) == norm(b)
    except TallyFormatError:
        return False  # a damaged row is never the recount's: it is rewritten


class Sweeper:
    """Time-driven advancement and tally recomputation for owned partitions."""

    def __init__(self, service: ServiceContext) -> None:
        self.service = service
        #: how far in event time the worker's input is processed while it is
        #: behind (None: caught up); set to
        #: :meth:`streams.aligned_input.AlignedInput.input_time_us` when the
        #: agent is registered. Customers are advanced no further than that.
        self.input_time: Callable[[], int | None] = lambda: None
        self.committer = Committer(service)
        self._passes: dict[int, Recount] = {}
        self._index: dict[int, DueIndex] = {}
        #: partitions whose every row a full scan of this consumer generation has
        #: re-derived under the running policy
        self._rechecked: set[int] = set()
        self._lock = asyncio.Lock()
        self._generation = -1
        #: shop -> signature (day, owned partitions, tally rows) of its published gauges
        self._published: dict[str, int] = {}
        #: the agent's busy share (:attr:`streams.agent.Processor.load`), set when the
        #: agent is registered: the sweep gives way while it is high (:class:`_Budget`)
        self.agent_load: Callable[[], float] = lambda: 0.0

    def _budget(self) -> _Budget:
        return _Budget(SWEEP_DUTY, lambda: self.agent_load())

    # -- called by the agent ---------------------------------------------------------
    def note_change(self, partition: int, key: bytes, delta: TallyDelta,
                    next_due: int | None) -> None:
        """Record a customer state the agent just wrote.

        ``next_due`` is the new state's: it goes to the partition's due index
        (the sweep files the states it writes itself).
        For a running full scan's recount, keys the scan has not counted yet
        are ignored (their current state is counted when the scan gets
        there); keys already counted (or created where the scan will not
        look) get the delta applied.
        """
        run = self._passes.get(partition)
        pending = run is not None and run.pending(key)
        index = self._index.get(partition)
        if index is not None:
            index.file(key, next_due)
            if delta.stage_before is None and delta.stage_after is not None and not pending:
                index.rows += 1  # a new row always enters the tally from no stage
            elif delta.erased is not None and not pending:
                index.rows -= 1  # an erased row (streams.forget) leaves it
        if run is None or pending:
            return
        shop = shop_of(key)
        run.acc[shop] = delta.apply(run.acc.get(shop) or ShopTally.empty())

    # -- the sweep ---------------------------------------------------------------------
    def _keys_after(self, partition: int, run: Recount) -> Iterator[bytes]:
        """Keys of ``partition`` after ``run.cursor``, in byte order.

        Read afresh per slice from the row store (for RocksDB an iterator
        opened at the cursor), so a full scan never holds all keys in memory
        and never keeps an iterator across an ``await``.
        """
        return self.service.rows.keys_after(partition, run.cursor)

    async def sweep(self, now: datetime | None = None) -> SweepStats:
        """One sweep of every actively owned partition. Never raises.

        A failure in one partition is logged and counted as an internal error;
        the other partitions are still swept. A customer state written by a
        newer build stops the worker instead
        (:meth:`streams.context.ServiceContext.stop_for_newer_state`).
        """
        async with self._lock:  # a slow sweep must not overlap the next timer tick
            stats = SweepStats(now=now or datetime.now(UTC))
            started = time.perf_counter()
            wall_us = to_us(stats.now)
            behind = self.input_time()
            # Never past the input: a customer's own history still on its way
            # would then arrive behind its clock (a re-fold, voided transitions).
            now_us = wall_us if behind is None else min(wall_us, behind)
            stats.advanced_to = from_us(now_us) if now_us >= 0 else None
            generation = compat.generation(self.service.app)
            if generation != self._generation:
                # Ownership may have changed and stores may have been restored:
                # every index is rebuilt by a full scan.
                self._index.clear()
                self._rechecked.clear()
                self._generation = generation
            owned = self.service.owned_partitions() if self.service.tables_ready() else []
            for partition in owned:
                await asyncio.sleep(0)  # partitions are slices too
                try:
                    index = self._index.get(partition)
                    if (index is None or not index.complete or wall_us >= index.horizon_us
                            or partition in self.service.tallies_to_recount):
                        self.service.tallies_to_recount.discard(partition)
                        await self._full_scan(partition, now_us, wall_us, stats)
                    else:
                        await self._due_pass(partition, index, now_us, stats)
                except NewerStateFormat as exc:
                    await self.service.stop_for_newer_state(exc, f"sweep of partition {partition}")
                    break
                except Exception:  # noqa: BLE001 - the timer must keep running
                    log.exception("sweep of partition %d failed", partition)
                    self.service.metrics.internal_errors.inc()
                    if partition in self._index:
                        # Part of the index may not have been visited or filed
                        # again: the next sweep scans the partition in full.
                        self._index[partition].complete = False
                finally:
                    self._passes.pop(partition, None)
            indexes = [self._index[p] for p in owned if p in self._index]
            stats.customers = sum(ix.rows for ix in indexes)
            stats.indexed = sum(len(ix.due) for ix in indexes)
            stats.seconds = time.perf_counter() - started
            await self._publish_gauges()
            m = self.service.metrics
            if owned:
                m.table_rows.labels("customers").set(stats.customers)
                m.sweep_index_keys.set(stats.indexed)
            m.sweeps.inc()
            m.sweep_changed.inc(stats.changed)
            m.sweep_visited.inc(stats.visited)
            m.sweep_seconds.observe(stats.seconds)
            self.service.last_sweep = stats
            return stats

    async def _full_scan(self, partition: int, now_us: int, wall_us: int,
                         stats: SweepStats) -> None:
        """Read every row: advance the due to ``now_us``, rebuild the index, recount the tallies.

        The next full scan and the tally windows follow the wall clock
        (``wall_us``), also while advancing is held back by the input.
        """
        svc = self.service
        interval_us = int(svc.settings.tally_recount_interval_s * _US_PER_S)
        index = self._index[partition] = DueIndex(horizon_us=wall_us + interval_us)
        run = self._passes[partition] = Recount(recheck=partition not in self._rechecked)
        stats.full_scans += 1
        budget = self._budget()
        if not await self._advance(partition, index, now_us, stats, run, budget,
                                   lambda: self._keys_after(partition, run)):
            return  # rebalanced mid-scan: the index stays incomplete
        if run.unreadable:
            log.error("tallies of partition %d not recounted: %d unreadable customer states",
                      partition, run.unreadable)
            run.acc.clear()
        # The recount counted every written state, so the tally rows must hold every
        # change held for them before they are compared with it (no await until then).
        svc.flush_tallies([partition])
        # deltas dropped at a rebalance (streams.shops.PendingTallies): expected drift
        dropped = svc.tally_deltas.recounted(partition)
        ctx_topic = svc.rekey.get_topic_name()
        with partition_context(ctx_topic, partition):
            for shop, tally in run.acc.items():
                exact = bytes(tally.encode())
                tkey = tally_key(shop, partition)
                current = svc.tallies.get(tkey)
                if current is None or not _same_tally(
                        current, exact, day_of(wall_us),
                        svc.policies.for_shop(shop).shop_nps_window_days):
                    if current is not None:
                        stats.tallies_repaired += 1
                        if dropped:
                            log.info("recounted tally %s (changes dropped at a rebalance)", tkey)
                        else:
                            log.warning("repaired drifted tally %s", tkey)
                    svc.tallies[tkey] = exact
        index.complete = True
        self._rechecked.add(partition)

    async def _due_pass(self, partition: int, index: DueIndex, now_us: int,
                        stats: SweepStats) -> None:
        """Advance only the keys the index says are due."""
        if index.earliest is None or index.earliest > now_us:
            return  # nothing can be due: not even the index is read
        budget = self._budget()
        # Each slice resumes the same iterator where the last one stopped.
        due = iter(await self._select_due(index, now_us, budget))
        if not await self._advance(partition, index, now_us, stats, None, budget,
                                   lambda: due):
            index.complete = False  # interrupted: ``earliest`` may now be too late

    @staticmethod
    async def _select_due(index: DueIndex, now_us: int, budget: _Budget) -> list[bytes]:
        """The keys of ``index`` due at ``now_us``, sorted; recomputes ``earliest``.

        Reads a copy of the keys (a large index is read in budgeted slices;
        no iterator spans an ``await``). Every key left out is either not due
        or filed again meanwhile, and each of those lowers ``earliest``; every
        key returned is filed again when the due pass visits it.
        """
        keys = list(index.due)
        index.earliest = None  # file() lowers it again from here on
        due: list[bytes] = []
        for start in range(0, len(keys), _SELECT_CHUNK):
            chunk_due, rest = index.select_due(keys[start:start + _SELECT_CHUNK], now_us)
            due.extend(chunk_due)
            index.lower_earliest(rest)
            if budget.spent():
                await budget.pause()
        due.sort()
        return due

    async def _advance(self, partition: int, index: DueIndex, now_us: int,
                       stats: SweepStats, run: Recount | None, budget: _Budget,
                       next_keys: Callable[[], Iterator[bytes]]) -> bool:
        """Advance the keys ``next_keys()`` yields, slice by slice.

        ``next_keys`` is called once per slice and must resume where the last
        slice stopped. With ``run`` (a full scan) every key is also counted
        into the recount and filed in the index. Each step - reading, sending,
        writing - stops at the slice budget and yields; ownership is checked
        again after every yield. False if the partition was lost mid-way.
        """
        svc = self.service
        while True:
            if not self._still_owner(partition):
                return False
            work: list[_Work] = []
            finished = True
            # One synchronous slice: no await until the commit.
            for key in next_keys():
                if run is not None:
                    run.cursor = key
                elif key in svc.in_flight:
                    stats.skipped += 1  # stays due: re-checked next sweep
                    index.file(key, index.due.get(key))
                    continue
                raw = svc.rows.get(partition, key)
                if raw is None:
                    index.due.pop(key, None)
                    continue
                stats.visited += 1
                # The live state when the agent has it for these bytes: its
                # folded head spares the re-fold that counting and advancing
                # a decoded state need (read only; the cache stays as it was).
                try:
                    state = svc.states.peek(key, raw)
                except StateFormatError as exc:
                    if isinstance(exc, NewerStateFormat):
                        raise  # not damage: this worker is too old (sweep() stops it)
                    self._unreadable(partition, key, exc, index, run)
                    continue
                if run is not None:
                    index.rows += 1
                if key in svc.in_flight:
                    # Full scan only: count the row as it is now; the agent's
                    # write brings its delta and its next_due.
                    stats.skipped += 1
                    self._count(run, key, state)
                    index.file(key, state.next_due)
                else:
                    policy = svc.policies.for_shop(state.shop_id)
                    head, stale = (svc.engine.rederive(state, policy)
                                   if run is not None and run.recheck else (None, False))
                    outcome = svc.engine.advance(state, now_us, policy, stale=stale)
                    if outcome.changed:
                        work.append(self._prepare(key, raw, outcome, policy))
                        if run is not None:
                            run.held.add(key)
                    else:
                        self._count(run, key, state, head)
                        index.file(key, state.next_due)
                if budget.spent():
                    finished = False
                    break
            if work and not await self._commit(partition, work, index, stats, run, budget):
                return False
            if finished and not (work and run is not None):
                return True
            # A full scan whose last slice committed has awaited: the agent may
            # have created keys after the cursor meanwhile (its deltas for them
            # were left to the scan), so the scan reads on from the cursor and
            # is finished only by a slice that did not await.
            await budget.pause()  # let the agent run between slices

    def _unreadable(self, partition: int, key: bytes, exc: StateFormatError, index: DueIndex,
                    run: Recount | None) -> None:
        """Pass over a row that holds no readable state, so that one damaged row does
        not stop the partition's sweep: logged and counted as an internal error,
        left out of the due index (the next full scan meets it again) and of the
        tally recount, whose result is then not written (it would drop the
        customer's share)."""
        log.error("sweep of partition %d: customer %r has an unreadable state (%s); "
                  "passed over", partition, key, exc)
        self.service.metrics.internal_errors.inc()
        index.due.pop(key, None)
        if run is not None:
            run.unreadable += 1

    def _prepare(self, key: bytes, raw: bytes, outcome: Outcome,
                 policy: ShopPolicy) -> _Work:
        """Encode what an advanced customer publishes: its effects and new snapshot.

        Done while reading the slice, so the slice budget covers it (a
        snapshot costs more than the advance itself).
        """
        svc = self.service
        effects = outcome.effects
        messages = effect_messages(svc, key, effects)
        messages.append(Outgoing(svc.scores, key, svc.engine.snapshot_json(
            outcome.state, None, policy, svc.clv_model(outcome.state.shop_id),
            svc.rfm_model(outcome.state.shop_id))))
        return _Work(key, raw, outcome, effects, messages)

    async def _commit(self, partition: int, work: list[_Work], index: DueIndex,
                      stats: SweepStats, run: Recount | None, budget: _Budget) -> bool:
        """Commit the advanced states (:mod:`streams.commit`), guarded against the agent.

        The agent may write any of these keys while the sweep waits for the
        broker, so every change is a compare-and-set on the row it was
        computed from: it yields if the agent is processing the key or wrote
        it (the agent's newer state stays; the next sweep advances it). Its
        changelog record goes through the same producer as the agent's, so
        one key's changelog records are appended in the order their writes
        were decided. False if the partition was lost meanwhile (nothing more
        is written).
        """
        svc = self.service
        states = {item.key: item.outcome.state for item in work}
        outputs = []
        for item in work:
            outputs.extend((out.topic.get_topic_name(), out.key, out.value, None, None)
                           for out in item.messages)
            svc.metrics.observe_effects(effect_marks(item.effects))
        changes = [Change(partition, item.key, svc.encode_state(item.outcome.state),
                          delta_for_advance(item.outcome), item.outcome.state.next_due,
                          base=item.raw)
                   for item in work]

        # A key stays held (pending for the recount, so the agent's deltas to
        # it are ignored) until the commit has decided it: written or yielded.
        # The agent may write it while the changelog record is acknowledged
        # (after the compare): releasing it earlier let that delta into the
        # recount and then the agent's state counted again on top.
        def yielded(change: Change) -> None:
            if run is not None:
                run.held.discard(change.key)  # from here on the row is counted as it is
            stats.skipped += 1  # the agent got there first: keep its state
            current = svc.rows.get(partition, change.key)
            if current is None:
                index.due.pop(change.key, None)
            else:
                state = svc.states.peek(change.key, current)
                self._count(run, change.key, state)
                index.file(change.key, state.next_due)  # still due unless the agent moved it

        def written(change: Change) -> None:
            if run is not None:
                run.held.discard(change.key)
            stats.changed += 1
            if change.value is not None:  # a live state stays live, with the new bytes
                svc.states.replace(change.key, change.value, states[change.key],
                                   svc.rows.stamp(partition))
            self._count(run, change.key, states[change.key])
            index.file(change.key, change.next_due)

        done = await self.committer.commit(
            outputs, changes, owns=lambda: self._still_owner(partition),
            on_yielded=yielded, on_written=written)
        budget.restart()
        return done.complete

    def _count(self, run: Recount | None, key: bytes, state: State, head: Any = None) -> None:
        """Count one customer's current state into the running recount (``head``: the
        engine's ``rederive`` under the running policy, if already computed)."""
        if run is None:
            return
        shop = shop_of(key)
        tally = run.acc.get(shop) or ShopTally.empty()
        self.service.engine.count_customer(tally, state, self.service.policies.for_shop(shop), head)
        run.acc[shop] = tally

    def _still_owner(self, partition: int) -> bool:
        return (self.service.tables_ready()
                and compat.generation(self.service.app) == self._generation
                and partition in self.service.owned_partitions())

    async def _publish_gauges(self) -> None:
        """Set every owned shop's figure gauges from its tally rows.

        A shop whose rows and day are those of its last publication is skipped
        (its figures cannot have changed), and the work is sliced like the
        sweep's, so a deployment with many shops neither recomputes all of
        them every sweep nor stalls the agent while it does.
        """
        svc = self.service
        shops: set[str] = set()
        owned = sorted(svc.owned_partitions())
        owned_set = set(owned)
        rows = 0
        svc.flush_tallies(owned)  # a shop whose first row is still held is listed too
        for k in list(svc.tallies.keys()):
            shop, _, p = k.decode().rpartition("|")
            if p.isdigit() and int(p) in owned_set:
                shops.add(shop)
                rows += 1
        svc.metrics.table_rows.labels("shop-tallies").set(rows)
        today = day_of(to_us(datetime.now(UTC)))
        budget = self._budget()
        for shop in sorted(shops):
            if not svc.metrics.exports_shop(shop):
                continue  # LOYALTY_SHOP_METRICS: no series, so no figures to compute
            if budget.spent():
                await budget.pause()
                if not svc.tables_ready():
                    return  # a rebalance: the next sweep publishes what this worker owns
            try:
                raws = svc.shop_tally_rows(shop, owned)
                signature = hash((today, tuple(owned), tuple(raws)))
                if self._published.get(shop) == signature:
                    continue
                merged, tally = svc.merge_tally_rows(shop, owned, raws)
                if merged != owned:
                    continue  # a damaged row, recounted by the next sweep: then published
                figures = tally.figures(shop, today, svc.policies.for_shop(shop))
                svc.metrics.set_shop_figures(shop, figures)
                self._published[shop] = signature
            except Exception:  # noqa: BLE001 - gauges are best effort
                log.exception("shop gauges for %s", shop)


def register_sweep(service: ServiceContext, sweeper: Sweeper) -> None:
    """Run :meth:`Sweeper.sweep` every ``settings.sweep_interval_s`` on every worker."""

    async def loyalty_sweep() -> None:
        stats = await sweeper.sweep()
        log.info("sweep: %d customers, %d visited (%d partitions fully scanned), %d changed, "
                 "%d skipped, %d tallies repaired, %d keys due-indexed in %.2fs",
                 stats.customers, stats.visited, stats.full_scans, stats.changed,
                 stats.skipped, stats.tallies_repaired, stats.indexed, stats.seconds)

    service.app.timer(interval=service.settings.sweep_interval_s,
                      on_leader=False, name="loyalty-sweep")(loyalty_sweep)
