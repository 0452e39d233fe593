"""Unit tests of the time sweep's due index and tally recount (memory store, no broker).

The broker is replaced by a publisher that acknowledges every record at once;
ownership and readiness are stubbed. States are written through the same
commit protocol and row-store interface as in production (memory rows). The real-broker tests (tests/integration/
test_service_end_to_end.py, ..._metrics.py and tests/chaos) run the sweep in a
worker against RocksDB.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from schemas import codec
from schemas.policy import PolicyBook
from scoring import fold as fold_module
from scoring import snapshot as snapshot_module
from scoring.clock import from_us, to_us
from scoring.shop import ShopTally
from scoring.state import CustomerState, NewerStateFormat
from streams import sweep as sweep_module
from streams.app import LoyaltyService, create_service
from streams.compat import partition_context
from streams.publish import Sent
from streams.records import Record
from streams.settings import Settings
from streams.topics import (
    CUSTOMERS_TABLE,
    changelog_topic_name,
    message_key,
    partition_for,
    tally_key,
)

NOW = datetime(2026, 1, 10, tzinfo=UTC)
PARTITIONS = 4


def purchase_record(customer: str, event_id: str, at: str, *, amount: int = 2500,
                    order_id: str | None = None, offset: int = 0) -> Record:
    """A purchase of shop s1 as the agent receives it, on its customer's partition."""
    key = message_key("s1", customer)
    value = codec.dumps({"type": "purchase", "event_id": event_id, "shop_id": "s1",
                         "customer_id": customer, "occurred_at": at,
                         "order_id": order_id or f"o-{event_id}", "amount": amount,
                         "currency": "USD"})
    return Record(topic="loyalty.purchases", partition=partition_for(key, PARTITIONS),
                  offset=offset, key=key, value=value)


class Harness:
    """A memory-store service whose sweeper runs without Kafka."""

    def __init__(self, tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                 recount_interval_s: float, **settings: Any) -> None:
        settings = Settings(app_id="unit-sweep", store="memory://", partitions=PARTITIONS,
                            data_dir=tmp_path, tally_recount_interval_s=recount_interval_s,
                            **settings)
        self.svc: LoyaltyService = create_service(settings, web_enabled=False,
                                                  sweep_enabled=False)
        self.sent: list[dict[str, Any]] = []  # output records (not changelog records)
        self.on_send: list[Any] = []  # callables run (once each) at the next publish
        ctx = self.svc.context
        changelog = changelog_topic_name(settings, CUSTOMERS_TABLE)
        offsets: dict[tuple[str, int], int] = {}

        async def publish(records: Any) -> list[Sent]:
            """The broker: acknowledges every record at once, with real offsets."""
            out = []
            for topic, key, value, _headers, partition in records:
                if topic != changelog:
                    self.sent.append({"topic": topic, "key": key, "value": value})
                partition = partition if partition is not None else partition_for(key, PARTITIONS)
                offset = offsets[(topic, partition)] = offsets.get((topic, partition), -1) + 1
                fut = asyncio.get_running_loop().create_future()
                fut.set_result(SimpleNamespace(offset=offset))
                out.append(Sent(topic, partition, 1, fut))
            hooks, self.on_send[:] = list(self.on_send), []
            for hook in hooks:  # a hook appended by a hook runs at the publish after
                hook()
            return out

        monkeypatch.setattr(ctx.publisher, "publish", publish)
        monkeypatch.setattr(ctx, "owned_partitions", lambda: list(range(PARTITIONS)))
        monkeypatch.setattr(ctx, "tables_ready", lambda: True)
        self.recounted = 0
        recount = ctx.engine.count_customer

        def counting(*args: Any) -> None:
            self.recounted += 1
            recount(*args)

        monkeypatch.setattr(ctx.engine, "count_customer", counting)

    @property
    def sweeper(self) -> Any:
        return self.svc.sweeper

    def purchase(self, customer: str, at: str, event_id: str, amount: int = 2500) -> bytes:
        """Fold and write one purchase through the agent's plan/write path."""
        rec = purchase_record(customer, event_id, at, amount=amount)
        plan = self.svc.processor.plan(rec, now=NOW)
        assert plan.status == "applied"
        self.svc.processor.write(plan)
        return rec.key  # type: ignore[return-value]

    def state(self, key: bytes) -> CustomerState:
        return CustomerState.decode(self.svc.context.customers.get(key))

    def states(self) -> dict[bytes, CustomerState]:
        return {k: self.state(k) for k in self.svc.context.customers.keys()}

    def indexed(self, key: bytes) -> int | None:
        index = self.sweeper._index.get(partition_for(key, PARTITIONS))
        return None if index is None else index.due.get(key)

    def tally(self, partition: int) -> bytes | None:
        """Shop s1's tally row of ``partition`` as a reader sees it (held deltas applied)."""
        return self.svc.context.shop_tally_rows("s1", [partition])[0]

    def set_tally(self, partition: int, raw: bytes) -> None:
        with partition_context(self.svc.context.rekey.get_topic_name(), partition):
            self.svc.context.tallies[tally_key("s1", partition)] = raw

    def rebalance(self) -> None:
        self.svc.context.app.consumer_generation_id += 1


def monthly_customers(h: Harness, n: int = 10) -> list[bytes]:
    """``n`` customers with one purchase each, a month apart (distinct next_due)."""
    return [h.purchase(f"c{i}", f"2025-{i + 1:02d}-05T10:00:00Z", f"e{i}") for i in range(n)]


def first_due(h: Harness) -> tuple[bytes, int]:
    """The customer due first and its ``next_due``."""
    states = h.states()
    due_at = min(s.next_due for s in states.values() if s.next_due is not None)
    [key] = [k for k, s in states.items() if s.next_due == due_at]
    return key, due_at


@pytest.fixture
def long_index(tmp_path, monkeypatch) -> Harness:
    """Full scans 400 days apart: the index holds every customer with a next_due."""
    return Harness(tmp_path, monkeypatch, recount_interval_s=400 * 86400)


@pytest.fixture
def hourly(tmp_path, monkeypatch) -> Harness:
    return Harness(tmp_path, monkeypatch, recount_interval_s=3600)


async def test_sweep_with_nothing_due_visits_nobody_and_a_due_customer_is_advanced(
        long_index: Harness) -> None:
    h = long_index
    keys = monthly_customers(h)
    first = await h.sweeper.sweep(NOW)
    assert (first.full_scans, first.visited, first.customers) == (PARTITIONS, 10, 10)

    second = await h.sweeper.sweep(NOW + timedelta(seconds=30))
    assert (second.full_scans, second.visited, second.changed) == (0, 0, 0)

    states = h.states()
    assert all(s.next_due is None or s.next_due > to_us(NOW) for s in states.values())
    due_at = min(s.next_due for s in states.values() if s.next_due is not None)
    [due_key] = [k for k, s in states.items() if s.next_due == due_at]
    assert h.indexed(due_key) == due_at
    sent_before = len(h.sent)
    third = await h.sweeper.sweep(from_us(due_at))
    assert (third.full_scans, third.visited, third.changed) == (0, 1, 1)
    advanced = h.state(due_key)
    assert advanced.clock == due_at  # advanced to the sweep's now
    assert h.indexed(due_key) == advanced.next_due  # re-filed with its new next_due
    assert any(kw["key"] == due_key for kw in h.sent[sent_before:])  # new snapshot published
    assert all(h.state(k).clock != due_at for k in keys if k != due_key)

    again = await h.sweeper.sweep(from_us(due_at))
    assert (again.visited, again.changed) == (0, 0)


async def test_customers_are_advanced_no_further_than_the_input_is_processed(
        long_index: Harness) -> None:
    """While the input is behind, ``now`` is capped at its event time, in a full scan
    (all customers due by the wall clock) and in a due pass; the recount's schedule
    stays on the wall clock."""
    h = long_index
    keys = monthly_customers(h)
    input_time: list[int | None] = [-1]  # a new generation, nothing processed yet
    h.sweeper.input_time = lambda: input_time[0]
    later = NOW + timedelta(days=400)  # every customer is due by then
    first = await h.sweeper.sweep(later)
    assert (first.full_scans, first.visited, first.changed) == (PARTITIONS, 10, 0)
    assert first.now == later and first.advanced_to is None
    assert all(h.state(k).clock < to_us(NOW) for k in keys)

    key, due_at = first_due(h)
    input_time[0] = due_at - 1
    held = await h.sweeper.sweep(later)
    assert (held.full_scans, held.changed) == (0, 0)  # a due pass: the index stays
    assert held.advanced_to == from_us(due_at - 1)
    input_time[0] = due_at
    moved = await h.sweeper.sweep(later)
    assert (moved.full_scans, moved.changed) == (0, 1)
    assert h.state(key).clock == due_at
    assert all(h.state(k).clock < due_at for k in keys if k != key)

    input_time[0] = None  # caught up: the wall clock
    live = await h.sweeper.sweep(later)
    assert live.advanced_to == later and live.changed == 10
    assert all(h.state(k).clock == to_us(later) for k in keys)


async def test_agent_write_updates_the_index(hourly: Harness) -> None:
    h = hourly
    monthly_customers(h, 3)
    await h.sweeper.sweep(NOW)
    assert (await h.sweeper.sweep(NOW + timedelta(seconds=30))).visited == 0

    # A new customer whose only purchase is old: time alone changes it already.
    old = h.purchase("old", "2024-03-01T09:00:00Z", "e-old")
    assert h.state(old).next_due < to_us(NOW)
    assert h.indexed(old) == h.state(old).next_due
    later = NOW + timedelta(seconds=60)
    stats = await h.sweeper.sweep(later)
    assert (stats.full_scans, stats.visited, stats.changed, stats.customers) == (0, 1, 1, 4)
    assert h.state(old).clock == to_us(later)

    # A new purchase pushes the customer's next_due past the next full scan:
    # it leaves the index (that scan will see it).
    h.purchase("old", (NOW - timedelta(days=1)).isoformat().replace("+00:00", "Z"), "e-old-2")
    assert h.state(old).next_due > to_us(NOW) + 3600 * 1_000_000
    assert h.indexed(old) is None


async def test_recount_runs_on_the_first_pass_and_then_only_after_the_interval(
        hourly: Harness) -> None:
    h = hourly
    monthly_customers(h)
    first = await h.sweeper.sweep(NOW)
    assert first.full_scans == PARTITIONS and h.recounted == 10

    for seconds in (30, 600, 3599):
        stats = await h.sweeper.sweep(NOW + timedelta(seconds=seconds))
        assert stats.full_scans == 0, seconds
    assert h.recounted == 10

    due = await h.sweeper.sweep(NOW + timedelta(seconds=3600))
    assert due.full_scans == PARTITIONS and h.recounted == 20

    # A rebalance (or restart: a new process is always a new generation) rebuilds.
    h.rebalance()
    rebuilt = await h.sweeper.sweep(NOW + timedelta(seconds=3630))
    assert rebuilt.full_scans == PARTITIONS and h.recounted == 30


async def test_drifted_tally_is_repaired_by_the_recount_pass(hourly: Harness) -> None:
    h = hourly
    key = monthly_customers(h)[0]
    partition = partition_for(key, PARTITIONS)
    assert (await h.sweeper.sweep(NOW)).tallies_repaired == 0
    exact = h.tally(partition)

    # As if the worker died between a state write and its tally write.
    drifted = ShopTally.decode(exact)
    drifted.move(None, "loyal")
    h.set_tally(partition, bytes(drifted.encode()))

    assert (await h.sweeper.sweep(NOW + timedelta(seconds=30))).tallies_repaired == 0
    assert h.tally(partition) != exact  # due passes do not recount

    repaired = await h.sweeper.sweep(NOW + timedelta(seconds=3600))
    assert repaired.tallies_repaired == 1
    assert sweep_module._same_tally(h.tally(partition), exact)

    # After a crash the restarted worker's first sweep recounts.
    h.set_tally(partition, bytes(drifted.encode()))
    h.rebalance()
    assert (await h.sweeper.sweep(NOW + timedelta(seconds=3630))).tallies_repaired == 1
    assert sweep_module._same_tally(h.tally(partition), exact)

    # A drift in a rule v2 KPI count alone is repaired as well.
    kpi_drift = ShopTally.decode(exact)
    kpi_drift.buyers += 1
    assert not sweep_module._same_tally(bytes(kpi_drift.encode()), exact)
    h.set_tally(partition, bytes(kpi_drift.encode()))
    h.rebalance()
    assert (await h.sweeper.sweep(NOW + timedelta(seconds=3660))).tallies_repaired == 1
    assert sweep_module._same_tally(h.tally(partition), exact)


async def test_full_scan_recount_stays_exact_while_the_agent_writes(
        hourly: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    h = hourly
    keys = monthly_customers(h, 12)
    monkeypatch.setattr(sweep_module, "SLICE_BUDGET_S", 0.0)  # one customer per slice

    async def agent() -> None:
        # Between the scan's slices: customers it has counted, not reached, and new ones.
        for i in range(12):
            h.purchase(f"c{i}", "2025-12-20T10:00:00Z", f"again-{i}")
            h.purchase(f"new{i}", "2025-12-21T10:00:00Z", f"new-{i}")
            await asyncio.sleep(0)

    stats, _ = await asyncio.gather(h.sweeper.sweep(NOW), agent())
    assert stats.full_scans == PARTITIONS and stats.tallies_repaired == 0
    assert stats.customers == len(keys) + 12

    h.rebalance()  # a second full scan with no concurrent writes finds nothing to repair
    check = await h.sweeper.sweep(NOW + timedelta(seconds=30))
    assert check.tallies_repaired == 0 and check.customers == len(keys) + 12


async def test_skipped_customer_stays_due(long_index: Harness) -> None:
    h = long_index
    monthly_customers(h)
    await h.sweeper.sweep(NOW)
    key, due_at = first_due(h)

    h.svc.context.in_flight.add(key)  # the agent is waiting for this customer's outputs
    busy = await h.sweeper.sweep(from_us(due_at))
    assert (busy.skipped, busy.changed) == (1, 0) and h.indexed(key) == due_at
    h.svc.context.in_flight.clear()

    # The agent writes the row while the sweep waits for its acknowledgements:
    # the sweep's result is dropped and the index follows the agent's state.
    h.on_send.append(lambda: h.purchase(key.decode().split("|")[1],
                                        "2025-12-30T10:00:00Z", "while-waiting"))
    raced = await h.sweeper.sweep(from_us(due_at) + timedelta(seconds=30))
    assert (raced.visited, raced.skipped, raced.changed) == (1, 1, 0)
    agent_state = h.state(key)
    assert agent_state.clock < due_at  # the agent's state, not the sweep's
    assert h.indexed(key) == agent_state.next_due


async def test_full_scan_keeps_a_skipped_key_due_and_counts_a_raced_one_once(
        hourly: Harness) -> None:
    h = hourly
    keys = monthly_customers(h)
    first = keys[0]  # its first points expired on 2026-01-05: due at NOW
    assert h.state(first).next_due <= to_us(NOW)

    # The agent takes the key while the scan waits for its acknowledgements.
    h.on_send.append(lambda: h.svc.context.in_flight.add(first))
    scan = await h.sweeper.sweep(NOW)
    assert (scan.full_scans, scan.skipped, scan.changed) == (PARTITIONS, 1, 0)
    assert h.indexed(first) == h.state(first).next_due <= to_us(NOW)  # still due
    h.svc.context.in_flight.clear()
    retry = await h.sweeper.sweep(NOW + timedelta(seconds=30))
    assert (retry.full_scans, retry.visited, retry.changed) == (0, 1, 1)

    # The agent writes a key the scan has advanced but not yet written: the
    # scan drops its result and counts the agent's state, once.
    h.rebalance()
    fresh = h.purchase("fresh", "2025-01-02T10:00:00Z", "old")  # its points expired
    assert h.state(fresh).next_due <= to_us(NOW)
    h.on_send.append(lambda: h.purchase("fresh", "2025-12-30T10:00:00Z", "while-scanning"))
    raced = await h.sweeper.sweep(NOW + timedelta(seconds=60))
    assert raced.full_scans == PARTITIONS and raced.skipped == 1
    assert raced.tallies_repaired == 0
    h.rebalance()
    check = await h.sweeper.sweep(NOW + timedelta(seconds=90))
    assert check.tallies_repaired == 0 and check.customers == len(keys) + 1


async def test_a_failed_due_pass_is_followed_by_a_full_scan(
        long_index: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    h = long_index
    monthly_customers(h)
    await h.sweeper.sweep(NOW)
    due_at = min(s.next_due for s in h.states().values() if s.next_due is not None)

    def broken(*args: Any) -> None:
        raise RuntimeError("boom")

    with monkeypatch.context() as m:
        m.setattr(sweep_module.Sweeper, "_prepare", broken)
        failed = await h.sweeper.sweep(from_us(due_at))
    assert failed.changed == 0
    assert h.svc.context.metrics.registry.get_sample_value("loyalty_internal_errors_total") == 1
    recovered = await h.sweeper.sweep(from_us(due_at) + timedelta(seconds=30))
    assert (recovered.full_scans, recovered.changed) == (1, 1)  # the failed partition


async def test_a_damaged_row_is_passed_over_and_the_partition_still_swept(
        long_index: Harness) -> None:
    h = long_index
    keys = monthly_customers(h)
    await h.sweeper.sweep(NOW)
    key, due_at = first_due(h)
    partition = partition_for(key, PARTITIONS)
    mine = sum(partition_for(k, PARTITIONS) == partition for k in keys)
    # A row no decoder reads, sorted before the due customer in the same partition,
    # and a drifted tally, which a recount without the damaged customer would "repair".
    damaged = next(k for k in (f"s1|a{i}".encode() for i in range(1000))
                   if partition_for(k, PARTITIONS) == partition)
    assert h.svc.context.rows.write(partition, [(damaged, b'{"v": 4}')], None)
    drifted = ShopTally.decode(h.tally(partition))
    drifted.move(None, "loyal")
    h.set_tally(partition, bytes(drifted.encode()))
    h.rebalance()  # a new generation: every partition is scanned in full, the damaged row too
    when = from_us(due_at) + timedelta(seconds=1)
    swept = await h.sweeper.sweep(when)
    assert swept.full_scans == PARTITIONS and swept.changed == 1  # the due customer, behind it
    assert h.state(key).clock == to_us(when)
    assert h.svc.context.metrics.registry.get_sample_value("loyalty_internal_errors_total") == 1
    assert swept.tallies_repaired == 0  # not recounted: the drift (one customer more) stays
    assert sum(ShopTally.decode(h.tally(partition)).funnel.values()) == mine + 1


async def test_a_damaged_tally_row_holds_back_no_event_and_is_recounted_next(
        long_index: Harness) -> None:
    """Tallies are derived data (README "Guarantees"): a tally row no decoder reads
    is counted from empty when the held deltas are next applied to it (here: by the
    read), and the next sweep is a full scan of its partition whose recount
    rewrites it exactly."""
    h = long_index
    keys = monthly_customers(h)
    await h.sweeper.sweep(NOW)  # full scans; the index is complete for 400 days
    key = keys[0]
    partition = partition_for(key, PARTITIONS)
    h.set_tally(partition, b'{"damaged": true}')
    await h.svc.processor.handle_batch([purchase_record("c0", "after", "2026-01-07T10:00:00Z",
                                                        amount=700, order_id="o-after")])
    assert h.state(key).max_ts == to_us(datetime(2026, 1, 7, 10, tzinfo=UTC))
    assert not [s for s in h.sent if s["topic"] == "loyalty.dead-letter"]
    assert ShopTally.decode(h.tally(partition)).funnel  # readable again, counted from empty
    assert h.svc.context.metrics.registry.get_sample_value("loyalty_internal_errors_total") == 1
    assert h.svc.context.tallies_to_recount == {partition}
    stats = await h.sweeper.sweep(NOW + timedelta(seconds=30))
    assert (stats.full_scans, stats.tallies_repaired) == (1, 1)
    assert h.svc.context.tallies_to_recount == set()
    h.rebalance()  # every partition scanned again: nothing left to repair
    assert (await h.sweeper.sweep(NOW + timedelta(seconds=60))).tallies_repaired == 0


async def test_a_damaged_tally_row_is_rewritten_by_the_recount(long_index: Harness) -> None:
    h = long_index
    keys = monthly_customers(h)
    await h.sweeper.sweep(NOW)
    partition = partition_for(keys[0], PARTITIONS)
    exact = h.tally(partition)
    h.set_tally(partition, b"[1, 2]")
    assert h.svc.context.local_tally("s1")[0] == sorted(set(range(PARTITIONS)) - {partition})
    h.rebalance()
    stats = await h.sweeper.sweep(NOW + timedelta(seconds=30))
    assert stats.tallies_repaired == 1
    assert sweep_module._same_tally(h.tally(partition), exact)  # the figures it held before


async def test_a_key_the_agent_takes_during_the_changelog_ack_is_left_to_the_agent(
        long_index: Harness) -> None:
    h = long_index
    monthly_customers(h)
    await h.sweeper.sweep(NOW)
    key, due_at = first_due(h)
    partition = partition_for(key, PARTITIONS)
    tally_before = h.tally(partition)

    # The outputs are acknowledged; while the changelog record is, the agent
    # reads the row and takes the key (it has not written yet).
    h.on_send.append(lambda: h.on_send.append(lambda: h.svc.context.in_flight.add(key)))
    raced = await h.sweeper.sweep(from_us(due_at))
    assert (raced.visited, raced.skipped, raced.changed) == (1, 1, 0)
    assert h.state(key).clock < due_at  # not written: the agent's delta stays valid
    assert h.tally(partition) == tally_before
    assert h.indexed(key) == due_at  # still due
    h.svc.context.in_flight.clear()
    again = await h.sweeper.sweep(from_us(due_at) + timedelta(seconds=30))
    assert (again.visited, again.changed) == (1, 1)


async def test_full_scan_counts_a_key_the_agent_writes_during_the_changelog_ack_once(
        hourly: Harness) -> None:
    # A full scan during a backlog: the scan advanced a key and waits for its
    # changelog acknowledgement when the agent writes the same key. The scan
    # drops its result; its recount must hold the agent's state once, not
    # the agent's state plus the agent's delta (seen: 61 customers vs 64).
    h = hourly
    keys = monthly_customers(h)
    fresh = h.purchase("fresh", "2025-01-02T10:00:00Z", "old")  # its points expired
    assert h.state(fresh).next_due <= to_us(NOW)
    h.on_send.append(lambda: h.on_send.append(
        lambda: h.purchase("fresh", "2025-12-30T10:00:00Z", "during-changelog-ack")))
    raced = await h.sweeper.sweep(NOW)
    assert raced.full_scans == PARTITIONS and raced.skipped >= 1
    assert h.state(fresh).clock == to_us(datetime(2025, 12, 30, 10, tzinfo=UTC))
    h.rebalance()  # a recount with no concurrent writes: nothing may need repair
    check = await h.sweeper.sweep(NOW + timedelta(seconds=30))
    assert check.tallies_repaired == 0 and check.customers == len(keys) + 1


async def test_full_scan_counts_keys_the_agent_creates_during_its_last_commit(
        hourly: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    # A backlog folded during a full scan: new customers keep appearing, with
    # keys after the scan's cursor (their deltas are left to the scan). One
    # created while the scan's last slice waits for its acknowledgements must
    # still be counted: the scan may not stop at the key it had reached.
    h = hourly
    keys = monthly_customers(h)
    monkeypatch.setattr(sweep_module, "SLICE_BUDGET_S", 10.0)  # a partition per slice
    created: list[bytes] = []

    def new_customer_in_the_scanned_partition() -> None:
        [partition] = list(h.sweeper._passes) or [None]
        if partition is not None:
            name = next(f"zz{len(created)}-{i}" for i in range(1000)
                        if partition_for(message_key("s1", f"zz{len(created)}-{i}"),
                                         PARTITIONS) == partition)
            created.append(h.purchase(name, "2025-12-21T10:00:00Z", f"new-{name}"))
        h.on_send.append(new_customer_in_the_scanned_partition)

    h.on_send.append(new_customer_in_the_scanned_partition)
    await h.sweeper.sweep(NOW)
    h.on_send.clear()
    assert created
    h.rebalance()  # a recount with no concurrent writes: nothing may need repair
    check = await h.sweeper.sweep(NOW + timedelta(seconds=30))
    assert check.tallies_repaired == 0 and check.customers == len(keys) + len(created)


async def test_shop_gauges_follow_the_tallies_and_skip_shops_that_did_not_change(
        hourly: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    h = hourly
    metrics = h.svc.context.metrics
    published: list[str] = []
    set_figures = metrics.set_shop_figures

    def recording(shop: str, figures: Any) -> None:
        published.append(shop)
        set_figures(shop, figures)

    monkeypatch.setattr(metrics, "set_shop_figures", recording)

    def buyers() -> float:
        return metrics.registry.get_sample_value("loyalty_shop_kpi",
                                                  {"shop": "s1", "kpi": "buyers"})

    monthly_customers(h, 3)
    await h.sweeper.sweep(NOW)
    assert published == ["s1"] and buyers() == 3
    await h.sweeper.sweep(NOW + timedelta(seconds=30))
    assert published == ["s1"]  # same rows, same day: not recomputed
    h.purchase("new", "2026-01-09T10:00:00Z", "e-new")
    await h.sweeper.sweep(NOW + timedelta(seconds=60))
    assert published == ["s1", "s1"] and buyers() == 4


@pytest.mark.parametrize(("listed", "exported"), [("s1", True), ("s2,s3", False), ("-", False)])
async def test_shop_gauges_only_for_the_listed_shops(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                                     listed: str, exported: bool) -> None:
    h = Harness(tmp_path, monkeypatch, 3600, shop_metrics=listed)
    metrics = h.svc.context.metrics
    computed: list[str] = []
    merge = h.svc.context.merge_tally_rows

    def recording(shop: str, partitions: Any, raws: Any) -> Any:
        computed.append(shop)
        return merge(shop, partitions, raws)

    monkeypatch.setattr(h.svc.context, "merge_tally_rows", recording)
    monthly_customers(h, 3)
    await h.sweeper.sweep(NOW)
    buyers = metrics.registry.get_sample_value("loyalty_shop_kpi", {"shop": "s1", "kpi": "buyers"})
    assert buyers == (3 if exported else None)
    # a shop without series is not even computed; its CLV gauges are not set either
    assert computed == (["s1"] if exported else [])
    metrics.set_clv("s1", "pooled", False)
    assert (metrics.registry.get_sample_value("loyalty_clv_model",
                                              {"shop": "s1", "model": "pooled"})
            == (1.0 if exported else None))


@pytest.mark.parametrize("live", [True, False])
async def test_a_full_scan_reads_live_states_instead_of_re_folding_them(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, live: bool) -> None:
    """The agent's live states (with their folded heads) serve the scan's recount and
    advance; without them (a cache of size 0) every customer's open history is
    re-folded once (the first full scan's policy check, whose head the recount
    takes), and the recount is the same."""
    sizes = {} if live else {"state_cache_size": 0, "head_cache_mb": 0}
    h = Harness(tmp_path, monkeypatch, 400 * 86400, engine="python", **sizes)  # counts its re-folds
    refolds: list[bytes] = []
    fold_open = snapshot_module.fold_open

    def counting(state: CustomerState, *args: Any, **kw: Any) -> Any:
        refolds.append(state.customer_id.encode())
        return fold_open(state, *args, **kw)

    monkeypatch.setattr(snapshot_module, "fold_open", counting)  # the recount's
    monkeypatch.setattr(fold_module, "fold_open", counting)  # the policy check's
    for i in range(5):
        h.purchase(f"c{i}", f"2025-12-2{i}T10:00:00Z", f"e{i}")
    refolds.clear()  # a new customer's first event is a re-fold of nothing
    first = await h.sweeper.sweep(NOW)
    assert (first.full_scans, first.visited, first.tallies_repaired) == (PARTITIONS, 5, 0)
    assert len(refolds) == (0 if live else 5)

    # A customer the sweep advances stays live, with the bytes it wrote: the
    # agent's next event for it is a cache hit, not a decode and re-fold.
    states = h.svc.context.states
    key, due_at = first_due(h)
    await h.sweeper.sweep(from_us(due_at))
    row = h.svc.context.customers.get(key)
    assert h.state(key).clock == due_at
    hits = states.hits
    got = states.get(key, row)
    assert (states.hits == hits + 1 and got.head is not None) if live else states.hits == 0


async def test_the_sweep_gives_way_to_a_busy_agent(hourly: Harness) -> None:
    """The slices' share of the wall clock follows the agent's load (the service wires
    the processor's busy share to the sweeper): a tenth while the agent is quiet, a
    fiftieth while it spent most of the last seconds on batches."""
    h = hourly
    budget = h.sweeper._budget()
    assert budget.current_duty() == sweep_module.SWEEP_DUTY
    h.purchase("c1", "2025-12-20T10:00:00Z", "e1")
    await h.svc.processor.handle_batch([purchase_record("c2", "e2", "2025-12-21T10:00:00Z")])
    assert 0 < h.svc.processor.load.share() < sweep_module.AGENT_BUSY_SHARE
    assert budget.current_duty() == sweep_module.SWEEP_DUTY
    now = time.perf_counter()
    h.svc.processor.load.add(now - 3.0, now)  # three seconds of back-to-back batches
    assert budget.current_duty() == sweep_module.SWEEP_DUTY_BUSY
    # The scan still runs (slower), and the agent's load decays once it is quiet.
    assert (await h.sweeper.sweep(NOW)).visited == 2
    assert h.svc.processor.load.share(now + 10.0) < sweep_module.AGENT_BUSY_SHARE


async def test_the_first_full_scan_of_a_generation_applies_a_changed_policy(
        hourly: Harness) -> None:
    """Policies are read at start-up, states carry figures of the policy they were
    written under: a shorter lapse reaches a quiet customer at the first full scan
    after the start (a new generation), at the lapse's own instant."""
    h = hourly
    key = h.purchase("c1", "2025-06-24T10:00:00Z", "e1")  # 200 days before NOW
    first = await h.sweeper.sweep(NOW)
    assert first.full_scans == PARTITIONS and first.changed == 0
    assert h.state(key).stage == "first_purchase"  # the default lapse is 365 days

    h.svc.context.policies = PolicyBook({"lapsed_days": 180})
    same_generation = await h.sweeper.sweep(NOW + timedelta(seconds=30))
    assert (same_generation.full_scans, same_generation.changed) == (0, 0)
    assert h.state(key).stage == "first_purchase"  # the old next_due rules until a restart

    h.rebalance()  # as a restart with the new policy file: a new consumer generation
    sent = len(h.sent)
    after = await h.sweeper.sweep(NOW + timedelta(seconds=60))
    assert after.full_scans == PARTITIONS and after.changed == 1
    state = h.state(key)
    assert state.stage == "lapsed"
    [transition] = [codec.loads(r["value"]) for r in h.sent[sent:]
                    if r["topic"].endswith("stage-transitions")]
    assert (transition["from"], transition["to"]) == ("first_purchase", "lapsed")
    assert transition["at"] == "2025-12-22T00:00:00Z"  # the midnight after 180 days
    assert state.next_due is None or state.next_due > to_us(NOW)
    # the next full scan of the generation re-derives nothing: nothing changed
    again = await h.sweeper.sweep(NOW + timedelta(hours=2))
    assert again.full_scans == PARTITIONS and again.changed == 0


async def test_a_state_of_a_newer_format_stops_the_worker_instead_of_failing_each_sweep(
        hourly: Harness) -> None:
    """A rolling upgrade's newer build wrote a row (README "Upgrading a running
    group"): the sweep asks the worker to stop, as the agent does, rather than
    log the partition's failure at every sweep; the other rows are untouched."""
    h = hourly
    keys = monthly_customers(h, 3)
    before = {k: h.svc.context.customers.get(k) for k in keys}
    stops: list[int] = []
    h.svc.context.stop_worker = lambda: stops.append(1)
    newer = purchase_record("c-newer", "e-newer", "2025-01-05T10:00:00Z").key
    assert h.svc.context.rows.write(partition_for(newer, PARTITIONS),
                                    [(newer, b'[5,"s1","c-newer"]')], None)
    await h.sweeper.sweep(NOW)
    assert stops == [1] and isinstance(h.svc.context.stop_reason, NewerStateFormat)
    assert h.svc.context.metrics.internal_errors._value.get() == 0
    await h.sweeper.sweep(NOW + timedelta(seconds=30))
    assert stops == [1]  # asked once
    assert {k: h.svc.context.customers.get(k) for k in keys} == before
