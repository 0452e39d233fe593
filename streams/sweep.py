"""The time sweep: changes that no event triggers.

Customers move to ``at_risk``/``lapsed`` or drop out of ``attached`` and points
expire just because time passes. Every ``settings.sweep_interval_s`` seconds a
timer walks the customer rows of the partitions this worker *actively* owns
and calls ``fold.advance(state, now)``; changed states are written back and
their effects (transitions, expiry ledger entries, the new snapshot) are
published.

**How "now" is defined.** ``now`` is the worker's wall clock in UTC
(``datetime.now(UTC)``), read once at the start of each sweep pass and used for
every customer of that pass. Event processing never uses the wall clock for
scoring: an event is folded at its own ``occurred_at``, and the fold expires
lots due by that instant first. The wall clock only decides *when* a
time-driven change is noticed, never what the resulting state is, so a
worker with a skewed clock publishes changes early or late but computes the
same state as ``loyalty replay --as-of`` for the same instant.

**Never stalling event processing.** Keys are processed in chunks of
:data:`CHUNK` with ``await asyncio.sleep(0)`` between chunks, so the agent gets
the event loop between chunks.

**Writing from a timer.** Faust decides the store partition *and* the
changelog partition of a table write from the event being processed
(``current_event().message.partition``; the RocksDB store even asserts that an
event exists). A timer has no event, so :func:`partition_context` installs a
stand-in event whose ``message.partition`` is the partition the key lives in
(``murmur2(key) % partitions``, the same partition the agent wrote it from).
Without it the write would raise, or - with ``use_partitioner`` - could land in
a different local store than the changelog partition it was sent to.

**Races with the agent.** Read-advance-write is split by the broker
acknowledgement of the effects (published before the state write, like the
agent does). A key the agent is processing right now is skipped, and the
write is a compare-and-set: if the row changed while the sweep waited, the
sweep's result is dropped (the next sweep advances the newer state; effects
have deterministic ids, so a repeat is harmless).

**Shop tallies.** Each pass also recomputes every shop's tally of the partition
exactly from the customer rows and overwrites drifted rows (a crash between the
agent's state write and tally write leaves such drift). Changes made by the
agent while a pass is under way are folded into the recomputation through
:meth:`Sweeper.note_change`, so the result is exact even though the pass
yields between chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from faust.streams import _current_event

from schemas import codec
from streams.app import partition_for
from streams.shops import (
    TallyDelta,
    delta_for_advance,
    recount_contribution,
    shop_of,
    tally_key,
    update_row,
)

if TYPE_CHECKING:
    from scoring.shop import ShopTally
    from streams.app import LoyaltyService

log = logging.getLogger(__name__)

#: customers advanced between two yields to the event loop
CHUNK = 200


class _Message:
    __slots__ = ("partition", "topic")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition


class _SweepEvent:
    """Stand-in for a Faust event: only ``message.partition``/``topic`` are read."""

    __slots__ = ("message", "__weakref__")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = _Message(topic, partition)


@contextlib.contextmanager
def partition_context(topic: str, partition: int) -> Iterator[None]:
    """Make table reads/writes inside the block target ``partition``.

    ``topic`` must have the table's partition count (Faust verifies it); the
    rekey topic is used. Must not span an ``await``: the context variable is
    task-local, but a stand-in event must never be seen by ``Topic.send``
    (it would try to attach the message to it).
    """
    event = _SweepEvent(topic, partition)
    token = _current_event.set(weakref.ref(event))  # type: ignore[arg-type]
    try:
        yield
    finally:
        _current_event.reset(token)


@dataclass
class _Pass:
    """Exact recomputation of one partition's shop tallies, in progress."""

    pending: set[bytes]
    acc: dict[str, ShopTally] = field(default_factory=dict)


@dataclass
class SweepStats:
    """What one sweep did."""

    now: datetime
    customers: int = 0
    changed: int = 0
    skipped: int = 0
    tallies_repaired: int = 0
    seconds: float = 0.0


def _same_tally(a: bytes, b: bytes) -> bool:
    """Equal figures, ignoring zero counts and order (encodings may differ)."""
    from scoring.shop import ShopTally

    def norm(raw: bytes) -> tuple[Any, ...]:
        t = ShopTally.decode(raw)
        return ({k: v for k, v in t.funnel.items() if v}, list(t.nps_all),
                {int(d): list(r) for d, r in t.nps_days.items() if any(r)})

    return norm(a) == norm(b)


class Sweeper:
    """Time-driven advancement and tally recomputation for owned partitions."""

    def __init__(self, service: LoyaltyService) -> None:
        self.service = service
        self._passes: dict[int, _Pass] = {}
        self._lock = asyncio.Lock()
        self.last: SweepStats | None = None
        self._generation = -1

    # -- called by the agent ---------------------------------------------------------
    def note_change(self, partition: int, key: bytes, delta: TallyDelta) -> None:
        """Record a customer change so a running recomputation stays exact.

        Keys the pass has not reached yet are ignored: their current state is
        counted when the pass gets there. Keys already counted (or created
        after the pass started) get the delta applied.
        """
        p = self._passes.get(partition)
        if p is None or key in p.pending:
            return
        from scoring.shop import ShopTally

        shop = shop_of(key)
        p.acc[shop] = delta.apply(p.acc.get(shop) or ShopTally.empty())

    # -- the sweep ---------------------------------------------------------------------
    def tables_ready(self) -> bool:
        """True when no rebalance or changelog recovery is under way.

        Faust keeps agents paused during recovery, but timers keep running. A
        sweep during recovery would advance a half-restored row and append it
        to the changelog *after* the newer values still being restored: the
        stale row would win. Flow control is suspended from rebalance start
        until recovery has finished, so it is the gate.
        """
        app = self.service.app
        return (app.flow_control.is_active() and not app.rebalancing
                and not getattr(app, "in_recovery", False))

    def keys_of_partition(self, partition: int) -> list[bytes]:
        """Customer keys stored in ``partition`` (materialised: iteration never
        spans an ``await``, so a partition revoked mid-sweep cannot invalidate
        a live RocksDB iterator)."""
        table = self.service.customers
        store = table.data
        dbs = getattr(store, "_dbs", None)
        if isinstance(dbs, dict) and partition in dbs:
            offset_key = getattr(store, "offset_key", None)
            return sorted(k for k in dbs[partition].keys() if k != offset_key)
        n = self.service.partitions
        return sorted(k for k in table.keys() if partition_for(k, n) == partition)

    async def sweep(self, now: datetime | None = None) -> SweepStats:
        """One pass over every actively owned partition. Never raises.

        A failure in one partition is logged and counted as an internal error;
        the other partitions are still swept.
        """
        async with self._lock:  # a slow sweep must not overlap the next timer tick
            stats = SweepStats(now=now or datetime.now(UTC))
            started = time.perf_counter()
            self._generation = self.service.app.consumer_generation_id
            for partition in self.service.owned_partitions() if self.tables_ready() else []:
                try:
                    await self._sweep_partition(partition, stats)
                except Exception:  # noqa: BLE001 - the timer must keep running
                    log.exception("sweep of partition %d failed", partition)
                    self.service.metrics.internal_errors.inc()
                finally:
                    self._passes.pop(partition, None)
            stats.seconds = time.perf_counter() - started
            self._publish_gauges()
            m = self.service.metrics
            m.sweeps.inc()
            m.sweep_changed.inc(stats.changed)
            m.sweep_seconds.observe(stats.seconds)
            self.last = stats
            return stats

    async def _sweep_partition(self, partition: int, stats: SweepStats) -> None:
        from scoring import fold
        from scoring.clock import to_us
        from scoring.shop import ShopTally
        from scoring.snapshot import snapshot
        from scoring.state import CustomerState

        svc = self.service
        table = svc.customers
        ctx_topic = svc.rekey.get_topic_name()
        processor = svc.processor  # type: ignore[attr-defined]
        now_us = to_us(stats.now)
        keys = self.keys_of_partition(partition)
        run = self._passes[partition] = _Pass(pending=set(keys))
        for start in range(0, len(keys), CHUNK):
            if not self._still_owner(partition):
                return  # rebalanced mid-pass: the (new) owner sweeps it next time
            chunk = keys[start:start + CHUNK]
            work: list[tuple[bytes, bytes, Any, Any]] = []
            with partition_context(ctx_topic, partition):
                for key in chunk:
                    if key in processor.in_flight:
                        stats.skipped += 1
                        continue
                    raw = table.get(key)
                    if raw is None:
                        continue
                    state = CustomerState.decode(raw)
                    policy = svc.policies.for_shop(state.shop_id)
                    outcome = fold.advance(state, now_us, policy)
                    if outcome.changed:
                        work.append((key, raw, outcome, policy))
            stats.customers += len(chunk)
            # Publish effects + snapshots and wait for the broker before writing
            # state (same ordering argument as the agent's).
            futures = []
            for key, _raw, outcome, policy in work:
                effects = list(outcome.effects)
                for out in processor.effect_messages(effects):
                    futures.append(await out.topic.send(key=out.key, value=out.value, force=True))
                futures.append(await svc.scores.send(
                    key=key, value=codec.dumps(snapshot(outcome.state, None, policy,
                                               svc.clv_model(outcome.state.shop_id))),
                    force=True))
                svc.metrics.observe_effects(effects)
            if futures:
                await asyncio.gather(*futures)
            if not self._still_owner(partition):
                return
            with partition_context(ctx_topic, partition):
                for key, raw, outcome, _policy in work:
                    if key in processor.in_flight or table.get(key) != raw:
                        stats.skipped += 1  # the agent got there first: keep its state
                        continue
                    delta = delta_for_advance(outcome)
                    tkey = tally_key(shop_of(key), partition)
                    row = update_row(svc.tallies.get(tkey), delta)
                    table[key] = bytes(outcome.state.encode())
                    svc.tallies[tkey] = row
                    stats.changed += 1
                # Count the chunk into the exact recomputation (still no await).
                for key in chunk:
                    run.pending.discard(key)
                    raw = table.get(key)
                    if raw is None:
                        continue
                    state = CustomerState.decode(raw)
                    shop = shop_of(key)
                    tally = run.acc.get(shop) or ShopTally.empty()
                    recount_contribution(tally, state, svc.policies.for_shop(shop))
                    run.acc[shop] = tally
            await asyncio.sleep(0)  # let the agent run between chunks
        if not self._still_owner(partition):
            return
        with partition_context(ctx_topic, partition):
            for shop, tally in run.acc.items():
                exact = bytes(tally.encode())
                tkey = tally_key(shop, partition)
                current = svc.tallies.get(tkey)
                if current is None or not _same_tally(current, exact):
                    if current is not None:
                        stats.tallies_repaired += 1
                        log.warning("repaired drifted tally %s", tkey)
                    svc.tallies[tkey] = exact
        svc.metrics.table_rows.labels("customers").set(
            sum(len(self.keys_of_partition(p)) for p in svc.owned_partitions()))

    def _still_owner(self, partition: int) -> bool:
        return (self.tables_ready()
                and self.service.app.consumer_generation_id == self._generation
                and partition in self.service.owned_partitions())

    def local_tally(self, shop_id: str) -> tuple[list[int], Any]:
        """Merge this worker's tallies of ``shop_id`` over its owned partitions."""
        from scoring.shop import ShopTally

        svc = self.service
        owned = svc.owned_partitions()
        total = ShopTally.empty()
        for p in owned:
            raw = svc.tallies.get(tally_key(shop_id, p))
            if raw:
                total = total.merge(ShopTally.decode(raw))
        return owned, total

    def _publish_gauges(self) -> None:
        svc = self.service
        shops: set[str] = set()
        owned = set(svc.owned_partitions())
        rows = 0
        for k in list(svc.tallies.keys()):
            shop, _, p = k.decode().rpartition("|")
            if p.isdigit() and int(p) in owned:
                shops.add(shop)
                rows += 1
        svc.metrics.table_rows.labels("shop-tallies").set(rows)
        from scoring.clock import day_of, to_us

        today = day_of(to_us(datetime.now(UTC)))
        for shop in shops:
            try:
                _, tally = self.local_tally(shop)
                figures = tally.figures(shop, today, svc.policies.for_shop(shop))
                svc.metrics.set_shop_figures(shop, figures)
            except Exception:  # noqa: BLE001 - gauges are best effort
                log.exception("shop gauges for %s", shop)


def register_sweep(service: LoyaltyService) -> None:
    """Run :meth:`Sweeper.sweep` every ``settings.sweep_interval_s`` on every worker."""
    sweeper = service.sweeper

    async def loyalty_sweep() -> None:
        stats = await sweeper.sweep()
        log.info("sweep: %d customers, %d changed, %d skipped, %d tallies repaired in %.2fs",
                 stats.customers, stats.changed, stats.skipped, stats.tallies_repaired,
                 stats.seconds)

    service.app.timer(interval=service.settings.sweep_interval_s,
                      on_leader=False, name="loyalty-sweep")(loyalty_sweep)
