"""Forgetting a customer in the service (streams/forget.py), without a broker.

The commit protocol runs against the sweep tests' acknowledging publisher
(tests/streams/test_sweep.py), so the tombstones, the row deletion, the tally
and the due index are those of production code paths; the real-broker proof
is tests/integration/test_service_forget.py.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from schemas import codec
from schemas.events import parse_event
from schemas.policy import PolicyBook
from scoring import fold
from scoring.replay import fold_lines
from streams import sweep as sweep_module
from streams.forget import forget_request
from streams.records import Record
from streams.topics import CUSTOMERS_TABLE, changelog_topic_name, message_key, partition_for
from tests.streams.test_planning import state_write
from tests.streams.test_sweep import NOW, PARTITIONS, Harness, monthly_customers, purchase_record

FORGET_TOPIC = "loyalty.forget"


@pytest.fixture
def h(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Harness:
    harness = Harness(tmp_path, monkeypatch, recount_interval_s=400 * 86400)
    publish = harness.svc.context.publisher.publish
    changelog = changelog_topic_name(harness.svc.context.settings, CUSTOMERS_TABLE)
    harness.changelog = []  # type: ignore[attr-defined]

    async def recording(records: Any) -> Any:
        records = list(records)
        harness.changelog += [(k, v) for t, k, v, _, _ in records if t == changelog]  # type: ignore[attr-defined]
        return await publish(records)

    monkeypatch.setattr(harness.svc.context.publisher, "publish", recording)
    return harness


def forget_record(customer: str, at: str = "2026-01-09T12:00:00Z") -> Record:
    _, key, value = forget_request("s1", customer)
    value["occurred_at"] = at
    return Record(topic=FORGET_TOPIC, partition=partition_for(key, PARTITIONS), offset=0,
                  key=key, value=codec.dumps(value))


async def forget(h: Harness, customer: str) -> Any:
    plan = h.svc.processor.plan(forget_record(customer), now=NOW)
    await h.svc.processor.commit([plan])
    return plan


async def test_forget_deletes_the_row_writes_both_tombstones_and_leaves_every_figure(
        h: Harness) -> None:
    keys = monthly_customers(h)
    await h.sweeper.sweep(NOW)  # full scan: the index and the recount know everyone
    key = next(k for k in keys if h.indexed(k) is not None)  # one with a change still due
    partition = partition_for(key, PARTITIONS)
    rows_before = h.sweeper._index[partition].rows

    plan = await forget(h, key.decode().split("|")[1])
    assert (plan.status, plan.event_type) == ("applied", "forget")
    assert h.svc.context.customers.get(key) is None
    assert {"topic": "loyalty.scores", "key": key, "value": None} in h.sent
    assert h.changelog[-1] == (key, None)
    assert h.indexed(key) is None
    assert h.sweeper._index[partition].rows == rows_before - 1

    # The incremental tally is what a recount of the remaining rows gives.
    kept = h.tally(partition)
    h.rebalance()  # the next sweep is a full scan
    stats = await h.sweeper.sweep(NOW + timedelta(seconds=30))
    assert stats.tallies_repaired == 0
    assert sweep_module._same_tally(h.tally(partition), kept)
    assert stats.customers == len(keys) - 1


async def test_a_repeated_forget_only_repeats_the_tombstones(h: Harness) -> None:
    monthly_customers(h, 3)
    await forget(h, "c1")
    partition = partition_for(message_key("s1", "c1"), PARTITIONS)
    tally = h.tally(partition)
    again = await forget(h, "c1")
    assert again.status == "duplicate"
    assert h.tally(partition) == tally
    assert h.changelog[-1] == (message_key("s1", "c1"), None)
    never = await forget(h, "nobody")  # never seen: harmless as well
    assert never.status == "duplicate"


async def test_events_after_the_forget_start_a_new_history_even_in_one_batch(
        h: Harness) -> None:
    def purchase(event_id: str, at: str) -> Record:
        return purchase_record("c1", event_id, at, amount=1000, order_id=event_id)

    await h.svc.processor.handle_batch([
        purchase("e1", "2026-01-05T10:00:00Z"), purchase("e2", "2026-01-06T10:00:00Z"),
        forget_record("c1"),
        purchase("e1", "2026-01-05T10:00:00Z"),  # its event ids are not remembered either
    ])
    snap = [s for s in h.sent if s["topic"] == "loyalty.scores" and s["value"]][-1]
    assert codec.loads(snap["value"])["purchase_count"] == 1
    assert len(h.state(message_key("s1", "c1")).seen) == 1


async def test_a_damaged_row_is_removed_by_forgetting_the_customer(h: Harness) -> None:
    """README "Guarantees": the remedy for a row no decoder reads. Its events are
    dead-lettered as unreadable_state; a forget request erases it all the same,
    and the customer's next event starts a new history."""
    keys = monthly_customers(h, 4)
    key = keys[2]
    partition = partition_for(key, PARTITIONS)
    await h.sweeper.sweep(NOW)  # the full recount counts the customer while it is readable
    assert h.svc.context.rows.write(partition, [(key, b'{"v": 4}')], None)
    purchase = purchase_record("c2", "after-damage", "2026-01-07T10:00:00Z", amount=900,
                               order_id="o-after")
    await h.svc.processor.handle_batch([purchase])
    letters = [codec.loads(s["value"]) for s in h.sent if s["topic"] == "loyalty.dead-letter"]
    assert [d["reason"] for d in letters] == ["unreadable_state"]

    plan = await forget(h, "c2")
    assert plan.status == "applied"
    assert h.svc.context.customers.get(key) is None and h.changelog[-1] == (key, None)
    assert {"topic": "loyalty.scores", "key": key, "value": None} in h.sent
    await h.svc.processor.handle_batch([purchase])  # a new history, from this event on
    assert h.state(key).max_ts is not None and len(h.state(key).seen) == 1
    # Its share could not be taken out at the erasure; the next full recount does it.
    h.rebalance()
    stats = await h.sweeper.sweep(NOW + timedelta(seconds=30))
    assert stats.tallies_repaired == 1
    h.rebalance()
    assert (await h.sweeper.sweep(NOW + timedelta(seconds=60))).tallies_repaired == 0


async def test_an_invalid_forget_request_is_dead_lettered(h: Harness) -> None:
    rec = forget_record("c1")
    bad = codec.loads(rec.value)
    del bad["occurred_at"]
    plan = h.svc.processor.plan(Record(topic=rec.topic, partition=rec.partition, offset=1,
                                       key=rec.key, value=codec.dumps(bad)), now=NOW)
    assert (plan.status, plan.reason) == ("invalid", "missing_field")


async def test_a_forget_request_is_honoured_only_from_the_forget_topic(h: Harness) -> None:
    monthly_customers(h, 2)
    rec = forget_record("c1")
    elsewhere = Record(topic="loyalty.visits", partition=rec.partition, offset=2, key=rec.key,
                       value=rec.value)
    plan = h.svc.processor.plan(elsewhere, now=NOW)
    assert (plan.status, plan.reason) == ("invalid", "wrong_topic")
    assert state_write(h.svc, plan) is None
    # Wrongly keyed on the forget topic: forwarded through the rekey topic, then applied.
    misplaced = Record(topic=FORGET_TOPIC, partition=(rec.partition + 1) % PARTITIONS, offset=3,
                       key=rec.key, value=rec.value)
    hop = h.svc.processor.plan(misplaced, now=NOW)
    assert hop.status == "rekeyed"
    [out] = hop.sends
    forwarded = Record(topic=out.topic.get_topic_name(), partition=rec.partition, offset=0,
                       key=out.key, value=out.value, headers=tuple(out.headers or ()))
    applied = h.svc.processor.plan(forwarded, now=NOW)
    assert applied.status == "applied" and state_write(h.svc, applied) == (rec.key, None)
    # ... while a request that entered elsewhere stays refused after a hop, too.
    smuggled = Record(topic=forwarded.topic, partition=rec.partition, offset=1, key=rec.key,
                      value=rec.value,
                      headers=(("loyalty-origin", codec.dumps({"topic": "loyalty.visits"})),))
    assert h.svc.processor.plan(smuggled, now=NOW).reason == "wrong_topic"


def test_the_fold_refuses_a_forget_request() -> None:
    _, _, value = forget_request("s1", "c1")
    event = parse_event(codec.dumps(value), now=NOW + timedelta(days=3650), policies=PolicyBook())
    with pytest.raises(ValueError, match="fold.forget"):
        fold.apply(None, event, PolicyBook().default)


def test_forget_request_ids_are_checked() -> None:
    with pytest.raises(ValueError, match="shop_id"):
        forget_request("bad shop", "c1")
    with pytest.raises(ValueError):
        forget_request("s1", "")
    a, key, value = forget_request("s1", "c|1")
    b, _, _ = forget_request("s1", "c|1")
    assert a != b and key == b"s1|c|1" and value["event_id"] == a


def test_replay_forgets_where_the_line_falls() -> None:
    def line(event_id: str, customer: str, at: str) -> bytes:
        return codec.dumps({"type": "visit", "event_id": event_id, "shop_id": "s1",
                            "customer_id": customer, "occurred_at": at})

    _, _, value = forget_request("s1", "c1")
    value["occurred_at"] = "2026-01-03T00:00:00Z"
    lines = [line("v1", "c1", "2026-01-01T10:00:00Z"), line("v2", "c2", "2026-01-01T10:00:00Z"),
             line("v3", "c1", "2026-01-02T10:00:00Z"), codec.dumps(value),
             line("v1", "c1", "2026-01-04T10:00:00Z")]
    res = fold_lines(lines, policies=PolicyBook(), now=NOW)
    assert res.forgotten == 1 and res.summary()["forgotten"] == 1
    assert sorted(res.states) == [("s1", "c1"), ("s1", "c2")]
    again = fold_lines(lines[:4], policies=PolicyBook(), now=NOW)
    assert sorted(again.states) == [("s1", "c2")]
    fresh = fold_lines([lines[-1]], policies=PolicyBook(), now=NOW)
    assert res.states[("s1", "c1")].encode() == fresh.states[("s1", "c1")].encode()


async def test_delete_endpoint_needs_the_token_and_answers_202_once_acknowledged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.streams.test_web import AUTH, _service

    svc = _service(tmp_path)
    produced: list[Any] = []

    async def publish(records: Any) -> list[Any]:
        produced.extend(records)
        return []

    monkeypatch.setattr(svc.context.publisher, "publish", publish)
    async with TestClient(TestServer(svc.app.web.web_app)) as c:
        assert (await c.delete("/customers/s1/c1")).status == 401
        assert not produced
        resp = await c.delete("/customers/s1/c%7C1", headers=AUTH)
        body = codec.loads(await resp.read())
        assert resp.status == 202 and body["status"] == "accepted"
        [(topic, key, value, _, _)] = produced
        assert (topic, key) == (FORGET_TOPIC, b"s1|c|1")
        assert codec.loads(value)["event_id"] == body["request_id"]
        assert (await c.delete("/customers/bad%20shop/c1", headers=AUTH)).status == 400

        async def down(records: Any) -> list[Any]:
            raise ConnectionError("broker down")

        monkeypatch.setattr(svc.context.publisher, "publish", down)
        assert (await c.delete("/customers/s1/c1", headers=AUTH)).status == 503
