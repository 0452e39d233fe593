"""Unit tests of the state agent's planning step (memory store, one test on RocksDB; no broker).

These exercise the per-record decisions - size check, parse errors, keying,
fold, dead-letter format - without Kafka. The real-broker tests in
tests/integration/test_service_*.py are the proof that the service works.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest

from schemas import codec
from scoring.clock import day_of
from scoring.shop import ShopTally
from streams import compat
from streams.app import create_service
from streams.compat import partition_context
from streams.records import ORIGIN_HEADER, Record
from streams.settings import Settings
from streams.topics import message_key, partition_for
from tests.contracts import assert_valid

NOW = datetime(2026, 1, 10, tzinfo=UTC)


def _service(tmp_path, store: str):
    # Faust's table writes (the tallies) need a current event loop even here,
    # and pytest-asyncio's async tests in earlier modules leave none behind.
    policy = asyncio.get_event_loop_policy()
    try:
        before = policy.get_event_loop()
    except RuntimeError:
        before = None
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    settings = Settings(app_id=f"unit-agents-{store}", store=f"{store}://", partitions=4,
                        data_dir=tmp_path)
    yield create_service(settings, web_enabled=False, sweep_enabled=False)
    asyncio.set_event_loop(before)
    loop.close()


@pytest.fixture
def service(tmp_path):
    yield from _service(tmp_path, "memory")


def state_write(service, plan) -> tuple[bytes, bytes | None] | None:
    """``(customer key, the row's new bytes)`` that committing ``plan`` writes, encoded by
    the service's one encoder (None: it writes no state; ``(key, None)``: erased)."""
    if plan.tally_delta is None or (plan.state is None and not plan.erase):
        return None
    return (plan.tally_delta[1],
            None if plan.erase else service.context.encode_state(plan.state))


def purchase(**kw: object) -> bytes:
    ev = {"type": "purchase", "event_id": "e1", "shop_id": "s1", "customer_id": "c1",
          "occurred_at": "2026-01-05T10:00:00Z", "order_id": "o1", "amount": 2500,
          "currency": "USD", **kw}
    return codec.dumps(ev)


def record(value: bytes | None, key: bytes | None = None, partition: int | None = None,
           topic: str = "loyalty.purchases", offset: int = 7) -> Record:
    key = message_key("s1", "c1") if key is None else key
    if partition is None:
        partition = partition_for(message_key("s1", "c1"), 4)
    return Record(topic=topic, partition=partition, offset=offset, key=key, value=value,
                  timestamp=1.0)


@pytest.mark.parametrize("value,reason", [
    (purchase(amount=10.5), "wrong_type"),
    (purchase(currency="EUR"), "currency_mismatch"),
    (b"{not json", "invalid_json"),
    (b"\xff\xfe", "invalid_encoding"),
    (purchase(comment="x" * 70000), "too_large"),
    (None, "empty"),
])
def test_invalid_records_are_dead_lettered_with_reason(service, value, reason) -> None:
    plan = service.processor.plan(record(value), now=NOW)
    assert plan.status == "invalid" and plan.reason == reason
    assert state_write(service, plan) is None
    [out] = plan.sends
    assert out.topic is service.context.dead_letter
    letter = codec.loads(out.value)
    assert_valid("out-DeadLetter.json", letter)
    assert letter["reason"] == reason and letter["detail"]
    assert (letter["topic"], letter["partition"], letter["offset"]) == ("loyalty.purchases",
                                                                        record(value).partition, 7)
    if value is not None:
        raw = (base64.b64decode(letter["value"]) if letter["value_encoding"] == "base64"
               else letter["value"].encode())
        assert raw == value


@pytest.mark.parametrize("key", [None, b"wrong|key", b"s1|c1 "])
def test_wrongly_keyed_record_is_forwarded_to_rekey_topic(service, key) -> None:
    rec = Record(topic="loyalty.purchases", partition=0, offset=3, key=key or b"", value=purchase())
    if key is None:
        rec = Record(topic="loyalty.purchases", partition=0, offset=3, key=None, value=purchase())
    plan = service.processor.plan(rec, now=NOW)
    assert plan.status == "rekeyed" and state_write(service, plan) is None
    [out] = plan.sends
    assert out.topic is service.context.rekey
    assert out.key == message_key("s1", "c1") and out.value == purchase()
    origin = codec.loads(dict(out.headers)[ORIGIN_HEADER])
    assert origin["topic"] == "loyalty.purchases" and origin["offset"] == 3


def test_right_key_wrong_partition_is_forwarded(service) -> None:
    right = partition_for(message_key("s1", "c1"), 4)
    plan = service.processor.plan(record(purchase(), partition=(right + 1) % 4), now=NOW)
    assert plan.status == "rekeyed"


def test_rekeyed_record_on_wrong_partition_is_not_looped(service) -> None:
    right = partition_for(message_key("s1", "c1"), 4)
    rec = record(purchase(), key=b"x|y", partition=(right + 1) % 4,
                 topic=service.context.rekey.get_topic_name())
    plan = service.processor.plan(rec, now=NOW)
    assert plan.status == "invalid" and plan.reason == "partition_mismatch"
    assert_valid("out-DeadLetter.json", codec.loads(plan.sends[0].value))


def test_apply_then_exact_duplicate_changes_nothing(service) -> None:
    proc = service.processor
    rec = record(purchase())
    plan = proc.plan(rec, now=NOW)
    assert plan.status == "applied" and state_write(service, plan) is not None
    kinds = {o.topic for o in plan.sends}
    assert service.context.rewards in kinds and service.context.scores not in kinds
    [snapshot_out] = [o for o in proc.planner.settle([plan]).outputs
                      if o[0] == service.context.scores.get_topic_name()]
    assert codec.loads(snapshot_out[2])["customer_id"] == "c1"
    with partition_context(service.context.rekey.get_topic_name(), rec.partition):
        proc.write(plan)
    written = state_write(service, plan)[1]
    assert service.context.customers.get(message_key("s1", "c1")) == written

    again = proc.plan(rec, now=NOW)
    assert again.status == "duplicate" and state_write(service, again) is None
    assert again.sends == []

    conflict = proc.plan(record(purchase(amount=9999)), now=NOW)
    assert conflict.status == "rejected" and conflict.reason == "conflicting_duplicate"
    assert [o.topic for o in conflict.sends] == [service.context.dead_letter]


def test_a_batch_writes_one_state_and_one_snapshot_per_customer(service) -> None:
    """Coalescing: three records of one customer in a batch give one changelog record,
    one score snapshot (the last state's) and the tally change of all three, exactly
    what three one-record commits would leave."""
    proc = service.processor
    overlay: dict = {}
    plans = []
    for i, kw in enumerate([{}, {"type": "visit"}, {"amount": 700}]):
        value = purchase(event_id=f"e{i}", order_id=f"o{i}",
                         occurred_at=f"2026-01-0{5 + i}T10:00:00Z", **kw)
        if kw.get("type") == "visit":
            value = codec.dumps({k: v for k, v in codec.loads(value).items()
                                 if k not in ("order_id", "amount", "currency")})
        plan = proc.plan(record(value), now=NOW, overlay=overlay)
        assert plan.status == "applied", plan.reason
        overlay[plan.tally_delta[1]] = plan.state
        plans.append(plan)
    settled = proc.planner.settle(plans)
    [change] = settled.changes()
    assert change.value == state_write(service, plans[-1])[1]
    scores = [o for o in settled.outputs if o[0] == service.context.scores.get_topic_name()]
    assert len(scores) == 1 and codec.loads(scores[0][2])["purchase_days"] == 2
    effects = [o for o in settled.outputs if o[0] != service.context.scores.get_topic_name()]
    assert len(effects) == sum(len(p.sends) for p in plans)

    one_by_one = ShopTally.empty()
    for plan in plans:
        plan.tally_delta[2].apply(one_by_one)
    merged = change.delta.apply(ShopTally.empty())
    policy = service.context.policies.for_shop("s1")
    day = day_of(plans[-1].state.clock)
    assert merged.figures("s1", day, policy) == one_by_one.figures("s1", day, policy)
    assert merged.funnel == {k: v for k, v in one_by_one.funnel.items() if v}


def planned_and_written(service, rec: Record):
    """Plan ``rec`` and write its state (steps 4-5 only: no broker here)."""
    plan = service.processor.plan(rec, now=NOW)
    with partition_context(service.context.rekey.get_topic_name(), rec.partition):
        service.processor.write(plan)
    return plan


def test_the_state_cache_serves_the_live_state_only_while_the_row_holds_it(service) -> None:
    proc = service.processor
    rec = record(purchase())
    plan = planned_and_written(service, rec)
    key = message_key("s1", "c1")
    raw = service.context.rows.get(rec.partition, key)
    assert proc.planner.states.get(key, raw) is plan.state  # the live object, head and all
    assert proc.planner.states.get(key, raw + b" ") is not plan.state  # another writer's bytes


def test_a_too_late_record_at_or_before_the_last_applied_offset_is_a_redelivery(service) -> None:
    """The state remembers, per input partition, the offset of the last record that
    changed it. A record the fold rejects as ``too_late`` at or before that
    offset was applied before (its id forgotten since): a ``duplicate``, no dead
    letter. Later in the partition, or in another partition, it is late input."""
    first = planned_and_written(service, record(purchase(), offset=7))
    assert first.state.positions == {f"loyalty.purchases:{first.tally_delta[0]}": 7}
    old = {"event_id": "e0", "order_id": "o0", "occurred_at": "2025-12-01T10:00:00Z"}

    again = service.processor.plan(record(purchase(**old), offset=5), now=NOW)
    assert (again.status, again.reason, again.sends, state_write(service, again)) == (
        "duplicate", "redelivered", [], None)
    at_itself = service.processor.plan(record(purchase(**old), offset=7), now=NOW)
    assert at_itself.status == "duplicate" and at_itself.sends == []
    for late in (record(purchase(**old), offset=8),
                 record(purchase(**old), offset=5, topic="loyalty.refunds")):
        plan = service.processor.plan(late, now=NOW)
        assert (plan.status, plan.reason) == ("rejected", "too_late")
        [letter] = plan.sends
        assert letter.topic is service.context.dead_letter

    second = planned_and_written(service, record(purchase(event_id="e2", order_id="o2"),
                                                 offset=3, topic="loyalty.refunds"))
    assert second.state.positions == {f"loyalty.purchases:{first.tally_delta[0]}": 7,
                                      f"loyalty.refunds:{first.tally_delta[0]}": 3}
    assert first.state.positions == {f"loyalty.purchases:{first.tally_delta[0]}": 7}  # not shared


def test_the_state_format_written_is_the_setting(service) -> None:
    """LOYALTY_STATE_WRITE_FORMAT=3 (a rolling upgrade from a build that reads at
    most format 3): the changes the commit writes are in that format."""
    plan = service.processor.plan(record(purchase()), now=NOW)
    [change] = service.processor.planner.changes([plan])
    assert change.value.startswith(b"[4,")
    service.context.settings = service.context.settings.model_copy(
        update={"state_write_format": 3})
    [change] = service.processor.planner.changes([plan])
    assert change.value.startswith(b"[3,") and b"loyalty.purchases" not in change.value


def test_rows_read_ahead_for_a_batch_are_the_rows_plan_would_read(service) -> None:
    """``read_rows`` reads a batch's rows by (partition, key) in one call per partition;
    a misplaced record with the same key does not shadow the row of the right partition,
    and ``plan`` folds onto the rows it is given."""
    proc = service.processor
    first = record(purchase())
    written = planned_and_written(service, first)
    key = message_key("s1", "c1")
    other = message_key("s1", "c2")
    right = first.partition
    wrong = (right + 1) % 4
    batch = [record(purchase(event_id="e2", order_id="o2")),
             record(purchase(event_id="e3", order_id="o3"), partition=wrong),
             record(purchase(customer_id="c2"), key=other,
                    partition=partition_for(other, 4))]
    rows = proc.planner.read_rows(batch)
    row = state_write(service, written)[1]
    assert rows[right, key] == service.context.rows.get(right, key) == row
    # The misplaced record's lookup is its own entry: it cannot shadow the right one.
    assert set(rows) == {(right, key), (wrong, key), (partition_for(other, 4), other)}
    assert rows[wrong, key] == service.context.rows.get(wrong, key)
    assert rows[partition_for(other, 4), other] is None

    ahead = proc.plan(batch[0], now=NOW, rows=rows)
    alone = proc.plan(batch[0], now=NOW)
    assert ahead.status == alone.status == "applied"
    assert state_write(service, ahead) == state_write(service, alone)
    # The rows given are the rows used: told the customer has none, it starts afresh.
    fresh = proc.plan(batch[0], now=NOW, rows={(right, key): None})
    engine = service.context.engine
    assert engine.encode(fresh.state) != engine.encode(ahead.state)
    assert state_write(service, proc.plan(batch[0], now=NOW, rows={})) == state_write(service, alone)


def test_a_failing_batch_read_leaves_its_partition_to_single_reads(service) -> None:
    """``read_rows`` never raises: a partition whose batch read fails is left out, and
    ``plan`` reads its rows itself (a store that refuses batch reads)."""
    rows_store = service.context.rows

    class NoBatchReads(type(rows_store)):
        def get_many(self, partition, keys):
            raise OSError("batch read refused")

    first = record(purchase())
    written = planned_and_written(service, first)
    rows_store.__class__ = NoBatchReads
    try:
        second = record(purchase(event_id="e2", order_id="o2",
                                 occurred_at="2026-01-06T10:00:00Z"))
        assert service.processor.planner.read_rows([second]) == {}
        plan = service.processor.plan(second, now=NOW, rows={})
    finally:
        rows_store.__class__ = NoBatchReads.__mro__[1]
    assert written.status == plan.status == "applied"
    [score] = [o for o in service.processor.planner.settle([plan]).outputs
               if o[0] == service.context.scores.get_topic_name()]
    assert codec.loads(score[2])["purchase_days"] == 2  # folded onto the first purchase


@pytest.fixture
def rocks_service(tmp_path):
    """The service over RocksDB (its every partition open), whose store gives stamps."""
    for service in _service(tmp_path, "rocksdb"):
        for p in range(4):
            compat.open_rocksdict_partition(service.context.customers, p)
            compat.open_rocksdict_partition(service.context.tallies, p)
        yield service


@contextmanager
def reads_counted(store) -> Iterator[list[bytes]]:
    """The keys ``store``'s batch reads ask for while inside (the real store's reads)."""
    reads: list[bytes] = []

    class CountingReads(type(store)):
        def get_many(self, partition, keys):
            reads.extend(keys)
            return super().get_many(partition, keys)

    store.__class__ = CountingReads
    try:
        yield reads
    finally:
        store.__class__ = CountingReads.__mro__[1]


def test_a_kept_live_state_is_not_read_again_until_another_writer_moves_its_partition(
        rocks_service) -> None:
    """The agent's own writes keep its live states in step with the rows, so a batch
    reads no row of a customer it keeps; any other write to the partition (here
    straight into RocksDB, as a restore would) makes it read them again, and the
    fold never starts from a state the row no longer holds."""
    service = rocks_service
    store = service.context.rows
    key = message_key("s1", "c1")
    first = planned_and_written(service, record(purchase()))
    row = store.get(first.tally_delta[0], key)
    second = record(purchase(event_id="e2", order_id="o2", occurred_at="2026-01-06T10:00:00Z"))
    with reads_counted(store) as reads:
        assert service.processor.planner.read_rows([second]) == {(second.partition, key): row}
        assert reads == []  # kept with the partition's stamp: not read
        db = compat.rocksdict_partition(service.context.customers, second.partition)
        db.delete(key)  # another writer: the customer's row is gone
        assert service.processor.planner.read_rows([second]) == {(second.partition, key): None}
        assert reads == [key]
        plan = service.processor.plan(second, now=NOW,
                                      rows=service.processor.planner.read_rows([second]))
    [score] = [o for o in service.processor.planner.settle([plan]).outputs
               if o[0] == service.context.scores.get_topic_name()]
    assert codec.loads(score[2])["purchase_days"] == 1  # folded onto no row, not the cache


def test_a_row_the_agent_wrote_without_keeping_its_state_is_read_again(rocks_service) -> None:
    """The commit takes a key's trust away before writing its row: a write whose live
    state is never kept (an error between the write and ``on_written``) leaves the
    row to be read, so the next fold starts from what the row holds."""
    service = rocks_service
    proc, store = service.processor, service.context.rows
    key = message_key("s1", "c1")
    planned_and_written(service, record(purchase()))
    second = proc.plan(record(purchase(event_id="e2", order_id="o2",
                                       occurred_at="2026-01-06T10:00:00Z")), now=NOW)
    [change] = proc.planner.changes([second])
    with partition_context(service.context.rekey.get_topic_name(), change.partition):
        proc.committer.write([change], {})  # no on_written: the cache never hears of it
    third = record(purchase(event_id="e3", order_id="o3", occurred_at="2026-01-07T10:00:00Z"))
    with reads_counted(store) as reads:
        rows = proc.planner.read_rows([third])
    assert reads == [key] and rows == {(third.partition, key): change.value}
    plan = proc.plan(third, now=NOW, rows=rows)
    [score] = [o for o in proc.planner.settle([plan]).outputs
               if o[0] == service.context.scores.get_topic_name()]
    assert codec.loads(score[2])["purchase_days"] == 3  # onto the second purchase's row
