"""The service context: what one worker's agent, time sweep and web views share.

:class:`ServiceContext` is built once by :func:`streams.app.create_service`
with every field set; nothing is attached to it afterwards. The runtime
modules receive it as their only handle on the worker and import this module
(never :mod:`streams.app`), so the composition root is the only module that
imports everything.

Besides the tables, topics, policies and metrics, the context holds the
customer row store and the batch publisher the commit protocol
(:mod:`streams.commit`) uses, and owns the worker-wide state that more than
one part reads:

* :attr:`ServiceContext.in_flight`: customer keys whose outputs the agent is
  waiting for; the time sweep neither reads nor overwrites them meanwhile;
* :attr:`ServiceContext.states`: the live customer states (the agent's cache,
  validated by the row's bytes), which the time sweep reads instead of
  decoding and re-folding, and updates in place when it writes a live one;
* readiness (:meth:`ServiceContext.tables_ready`) and ownership
  (:meth:`ServiceContext.owned_partitions`);
* the local shop tallies (:meth:`ServiceContext.local_tally`) and the last
  sweep's figures (:attr:`ServiceContext.last_sweep`), read by the web views;
* the tally changes the commits hold (:attr:`ServiceContext.tally_deltas`:
  applied to the rows' decoded tallies at each commit, the rows written by
  :meth:`ServiceContext.flush_tallies` once a flush interval and before any
  reader).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from scoring.engine import PYTHON, Engine, NewerStateFormat, State, StateCache
from scoring.shop import ShopTally, TallyFormatError
from streams.clv_models import ClvModels
from streams.compat import generation, partition_context
from streams.metrics import Metrics
from streams.publish import Publisher
from streams.shops import DecodedTallies, PendingTallies, TallyDelta
from streams.store import RowStore
from streams.topics import tally_key

log = logging.getLogger(__name__)

#: tally rows kept decoded (:class:`streams.shops.DecodedTallies`): a shop's rows on
#: the partitions this worker owns, for a few hundred shops (a row of a shop with a
#: year of history is a few tens of KiB as objects)
TALLY_ROWS_KEPT = 256

if TYPE_CHECKING:
    import faust
    from faust.types import TableT, TopicT

    from schemas.policy import PolicyBook
    from scoring.clv import ShopModel
    from scoring.rfm import RfmModel
    from streams.due_index import SweepStats
    from streams.settings import Settings


@dataclass(eq=False)
class ServiceContext:
    """Everything one worker shares between the agent, the sweep and the web views."""

    settings: Settings
    app: faust.App
    #: customer key ``b"shop|customer"`` -> the state's bytes (``engine.encode``)
    customers: TableT[bytes, bytes]
    #: tally key ``b"shop|<partition>"`` -> ``ShopTally.encode()`` bytes
    tallies: TableT[bytes, bytes]
    #: the four input topics and the rekey topic, as one subscription
    inputs: TopicT
    rekey: TopicT
    transitions: TopicT
    rewards: TopicT
    scores: TopicT
    dead_letter: TopicT
    policies: PolicyBook
    input_topic_names: tuple[str, ...]
    #: the customer rows the agent and the sweep read and write (streams.store)
    rows: RowStore
    #: the tally rows' store: the agent's commits write them directly (streams.commit)
    tally_rows: RowStore
    #: batch publisher over the app's producer (every output and changelog record)
    publisher: Publisher
    metrics: Metrics = field(default_factory=Metrics)
    #: the scoring core (scoring.engine): every fold, snapshot, state encoding and
    #: decoding of the worker goes through it
    engine: Engine = PYTHON
    #: live states of recently written customers (streams.planning: the agent's cache);
    #: by default the engine's with its default bounds
    states: StateCache = field(default=None)  # type: ignore[assignment]
    #: the CLV models served per shop (filled by streams.clv_service when CLV is enabled;
    #: every change of a shop's served model is reported to the metrics)
    clv_models: ClvModels = field(init=False)
    #: customer keys whose outputs the agent is waiting for (mutated in place)
    in_flight: set[bytes] = field(default_factory=set)
    #: partitions with a tally row no decoder reads: the sweep recounts them next
    #: (:meth:`tally_unreadable`; mutated in place)
    tallies_to_recount: set[int] = field(default_factory=set)
    #: shop tallies changed by written states, not yet written to their rows
    #: (:meth:`hold_tally_deltas`, :meth:`flush_tallies`)
    tally_deltas: PendingTallies = field(default_factory=PendingTallies)
    #: the tally rows :meth:`flush_tallies` wrote, kept decoded
    tallies_kept: DecodedTallies = field(default_factory=lambda: DecodedTallies(TALLY_ROWS_KEPT))
    #: what the last time sweep did (None before the first one)
    last_sweep: SweepStats | None = None
    #: starts the worker's graceful stop (set by ``loyalty worker``, the only runner of
    #: the service; None in unit tests, where only ``stop_reason`` is set)
    stop_worker: Callable[[], None] | None = None
    #: why the worker stops on its own (its exit status is then 1)
    stop_reason: BaseException | None = None

    def __post_init__(self) -> None:
        if self.states is None:
            self.states = self.engine.state_cache(10_000, 0)
        self.clv_models = ClvModels(self.metrics.set_clv)

    @property
    def partitions(self) -> int:
        return self.settings.partitions

    @property
    def agent_topic_names(self) -> frozenset[str]:
        """The topics the state agent reads: the four inputs and the rekey topic."""
        return frozenset({*self.input_topic_names, self.rekey.get_topic_name()})

    def clv_model(self, shop_id: str) -> ShopModel | None:
        """The shop's fitted CLV model, or None (snapshot CLV fields are then null)."""
        return self.clv_models.get(shop_id)

    def rfm_model(self, shop_id: str) -> RfmModel | None:
        """The shop's RFM cut points from the refit, or None (snapshot RFM fields are then null)."""
        return self.clv_models.rfm(shop_id)

    def owned_partitions(self) -> list[int]:
        """Partitions of the customer table this worker actively owns (not standbys)."""
        changelog = self.customers.changelog_topic.get_topic_name()
        try:
            actives = self.app.assignor.assigned_actives()
        except Exception:  # assignor not ready (before the first rebalance)
            return []
        return sorted(tp.partition for tp in actives if tp.topic == changelog)

    def encode_state(self, state: State) -> bytes:
        """``state`` as its row's bytes, in the format this worker writes
        (``LOYALTY_STATE_WRITE_FORMAT``): every writer of the customer table encodes here."""
        return bytes(self.engine.encode(state, self.settings.state_write_format))

    async def stop_for_newer_state(self, exc: NewerStateFormat, where: str) -> None:
        """Stop this worker: it met, at ``where``, a customer state a newer build wrote.

        Nothing is dead-lettered and no offset passes the input that needed
        that state (the caller goes no further: the agent waits to be
        cancelled by the stop, the sweep leaves its pass): once this worker has
        left the group, a worker of the newer build takes its partitions over
        and folds that input. Logged as critical, with what to do; asked again,
        does nothing.
        """
        if self.stop_reason is not None:
            return  # already stopping
        log.critical("%s: %s. This worker's build is older than the one that wrote the "
                     "state: stopping, so that a newer worker takes its partitions over. "
                     "Upgrade it, or run the newer workers with LOYALTY_STATE_WRITE_FORMAT "
                     "until every worker is upgraded (README: Upgrading a running group).",
                     where, exc)
        self.stop_reason = exc
        if self.stop_worker is not None:
            # The operator's SIGTERM path: offsets committed only up to what was
            # processed, the producer flushed, the local stores kept. (Faust's
            # app.crash() does not stop the worker process.)
            self.stop_worker()

    def tables_ready(self) -> bool:
        """True when no rebalance or changelog recovery is under way.

        Faust keeps agents paused during recovery, but timers keep running. A
        sweep during recovery would advance a half-restored row and append it
        to the changelog *after* the newer values still being restored: the
        stale row would win. Flow control is suspended from rebalance start
        until recovery has finished, so it is the gate. Web views answer 503
        while this is False.
        """
        app = self.app
        return (app.flow_control.is_active() and not app.rebalancing
                and not app.in_recovery)

    def local_tally(self, shop_id: str) -> tuple[list[int], ShopTally]:
        """Merge this worker's tallies of ``shop_id`` over its owned partitions.

        Returns ``(partitions merged, merged tally)``; partitions without a row
        for the shop contribute nothing. A partition whose row cannot be read
        is left out (callers answer for it as for a partition without an owner)
        until the sweep's recount has rewritten it (:meth:`tally_unreadable`).
        """
        owned = self.owned_partitions()
        return self.merge_tally_rows(shop_id, owned, self.shop_tally_rows(shop_id, owned))

    def merge_tally_rows(self, shop_id: str, partitions: list[int],
                         raws: list[bytes | None]) -> tuple[list[int], ShopTally]:
        """``(partitions merged, their tally)`` from ``raws``, the rows of ``shop_id`` in
        ``partitions`` (:meth:`shop_tally_rows`); an unreadable row is left out and
        reported (:meth:`tally_unreadable`)."""
        merged, total = [], ShopTally.empty()
        for partition, raw in zip(partitions, raws, strict=True):
            try:
                row = ShopTally.decode(raw)
            except TallyFormatError as exc:
                self.tally_unreadable(partition, tally_key(shop_id, partition), exc)
                continue
            merged.append(partition)
            if raw:
                total = total.merge(row)
        return merged, total

    def tally_unreadable(self, partition: int, key: bytes, exc: TallyFormatError) -> None:
        """A shop tally row that no decoder reads (damage). Tallies are derived data: the
        partition's next sweep is a full scan, whose recount rewrites the row exactly.
        Logged and counted as an internal error."""
        log.error("shop tally %r of partition %d is unreadable (%s): recounted by the next "
                  "time sweep", key, partition, exc)
        self.metrics.internal_errors.inc()
        self.tallies_to_recount.add(partition)

    def shop_tally_rows(self, shop_id: str, partitions: Iterable[int]) -> list[bytes | None]:
        """The encoded tally rows of ``shop_id`` in ``partitions`` (None: no row), with
        every state written so far counted (:meth:`flush_tallies` first)."""
        partitions = list(partitions)
        self.flush_tallies(partitions)
        return [self.tallies.get(tally_key(shop_id, p)) for p in partitions]

    def hold_tally_deltas(self, changes: Iterable[tuple[int, bytes, TallyDelta]],
                          now: float) -> None:
        """Apply each ``(partition, tally key, delta)`` to its row's held tally (the
        commit's step 5; written by :meth:`flush_tallies`). Never raises for a
        row: one that cannot be read or decoded is counted from empty and
        reported (:meth:`tally_unreadable`), the recount it asks for rewrites it."""
        held = self.tally_deltas
        held.check_generation(generation(self.app))
        for partition, key, delta in changes:
            slot = (partition, key)
            if not held.add(slot, delta):
                held.hold(slot, *self._read_tally(partition, key), now)
                held.add(slot, delta)

    def _read_tally(self, partition: int, key: bytes) -> tuple[bytes | None, ShopTally]:
        """Row ``key`` of ``partition`` and its tally (empty, reported, when unreadable)."""
        try:
            raw = self.tally_rows.get(partition, key)
        except Exception as exc:  # noqa: BLE001 - derived data: recounted
            self.tally_unreadable(partition, key, TallyFormatError(f"not read: {exc!r}"))
            return None, ShopTally.empty()
        return raw, self._decoded_tally(partition, key, raw)

    def _decoded_tally(self, partition: int, key: bytes, raw: bytes | None) -> ShopTally:
        """``raw`` decoded (from :attr:`tallies_kept` while the row holds what was written
        last), or an empty tally for a row no decoder reads (reported)."""
        try:
            return self.tallies_kept.take((partition, key), raw)
        except TallyFormatError as exc:
            self.tally_unreadable(partition, key, exc)
            return ShopTally.empty()

    def flush_tallies(self, partitions: Iterable[int] | None = None) -> int:
        """Write the tallies held for ``partitions`` (None: all) to their rows.

        A row still holding what its held tally was read from gets that tally;
        a row another writer changed meanwhile (the sweep's recount) gets the
        held deltas applied to what it holds now. Each is written through the
        Faust table, which logs it to the table's changelog. What an older
        consumer generation held is dropped, and so is what a partition whose
        store is not open here held (within a generation, one on its way out):
        the next full scan, by whichever worker owns the partition, recounts it.
        Never awaits, so nothing reads or writes a row in between. Returns the
        rows written. A row whose update fails is logged and left to the
        recount it asks for.
        """
        held = self.tally_deltas
        held.check_generation(generation(self.app))
        taken = held.take(partitions)
        if not taken:
            return 0
        context_topic = self.rekey.get_topic_name()
        written = 0
        for (partition, key), entry in taken.items():
            if not self.tally_rows.is_open(partition):
                held.dropped.add(partition)
                continue
            try:
                raw = self.tally_rows.get(partition, key)
                tally = entry.tally
                if raw != entry.base:
                    tally = self._decoded_tally(partition, key, raw)
                    for delta in entry.deltas:
                        delta.apply(tally)
                value = bytes(tally.encode())
                with partition_context(context_topic, partition):
                    self.tallies[key] = value
            except Exception:  # noqa: BLE001 - derived data: recounted, the states stand
                log.exception("shop tally %r of partition %d not updated: recounted by the "
                              "next time sweep", key, partition)
                self.metrics.internal_errors.inc()
                self.tallies_to_recount.add(partition)
                continue
            self.tallies_kept.keep((partition, key), value, tally)
            written += 1
        return written
