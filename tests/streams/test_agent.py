"""The state agent's batch handling (streams/agent.py), without a broker.

The commit protocol runs against the sweep tests' acknowledging publisher
(tests/streams/test_sweep.py); a planning failure is injected into the real
planner for one record.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from schemas import codec
from streams import agent as agent_module
from streams.records import Record
from tests.streams.test_sweep import Harness, purchase_record

pytestmark = pytest.mark.usefixtures("leave_an_event_loop")


@pytest.fixture
def h(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Harness:
    harness = Harness(tmp_path, monkeypatch, recount_interval_s=400 * 86400)
    publish = harness.svc.context.publisher.publish
    harness.publishes = 0  # type: ignore[attr-defined]

    async def counting(records: Any) -> Any:
        harness.publishes += 1  # type: ignore[attr-defined]
        return await publish(records)

    monkeypatch.setattr(harness.svc.context.publisher, "publish", counting)
    monkeypatch.setattr(agent_module, "RETRY_DELAY_S", 0.0)
    return harness


async def test_a_record_that_cannot_be_planned_splits_the_batch(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    records = [purchase_record(f"c{n}", f"e{n}", "2026-01-05T10:00:00Z", amount=1000,
                               order_id=f"o{n}", offset=n) for n in range(40)]
    bad = records[17]
    planner = h.svc.processor.planner
    plan = planner.plan

    def failing(record: Record, **kw: Any) -> Any:
        if record is bad:
            raise RuntimeError("injected planning failure")
        return plan(record, **kw)

    monkeypatch.setattr(planner, "plan", failing)
    await h.svc.processor.handle_batch(records)

    rows = h.svc.context.customers
    assert [r.offset for r in records if rows.get(r.key) is None] == [17]
    assert all(h.state(r.key).max_ts is not None for r in records if r is not bad)
    letters = [codec.loads(s["value"]) for s in h.sent if s["topic"] == "loyalty.dead-letter"]
    assert [(d["reason"], d["offset"]) for d in letters] == [("internal_error", 17)]
    # Two commits (outputs, then changelog records: two publishes each) around
    # one dead letter; one record at a time would have been 39 commits.
    assert h.publishes == 5  # type: ignore[attr-defined]


async def test_the_state_cache_tiers_change_no_output_and_no_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same batches through a worker that decodes and re-folds every state
    (no cache) and one that keeps a single live state, so that every other
    customer comes back from the head tier: identical rows and outputs."""
    records = []
    for n in range(30):  # 6 customers, 5 purchases each, some out of order
        day = (1, 3, 2, 5, 4)[n // 6]
        records.append(purchase_record(f"c{n % 6}", f"e{n}", f"2026-01-0{day}T10:00:{n:02d}Z",
                                       amount=1000 + n, offset=n))
    runs = {}
    for name, sizes in (("none", {"state_cache_size": 0, "head_cache_mb": 0}),
                        ("tiers", {"state_cache_size": 1, "head_cache_mb": 1})):
        harness = Harness(tmp_path / name, monkeypatch, recount_interval_s=400 * 86400, **sizes)
        for start in range(0, len(records), 4):
            await harness.svc.processor.handle_batch(records[start:start + 4])
        runs[name] = (harness.states(), harness.sent, harness.svc.processor.planner.states)
    (states, sent, _), (tier_states, tier_sent, cache) = runs["none"], runs["tiers"]
    assert len(states) == 6 and tier_states == states
    assert tier_sent == sent and any(s["topic"] == "loyalty.rewards" for s in sent)
    assert cache.misses > 0 and cache.head_hits == cache.misses  # each came back with its head


# --- the pipelined commit (Processor.submit) ----------------------------------------------


def _batches() -> list[list[Record]]:
    """Four batches of 6 purchases over 4 customers, each customer in every batch."""
    records = [purchase_record(f"c{n % 4}", f"e{n}", f"2026-01-0{1 + n // 6}T10:00:{n:02d}Z",
                               amount=1000 + n, offset=n) for n in range(24)]
    return [records[start:start + 6] for start in range(0, 24, 6)]


def _harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> Harness:
    monkeypatch.setattr(agent_module, "RETRY_DELAY_S", 0.0)
    return Harness(tmp_path / name, monkeypatch, recount_interval_s=400 * 86400)


class Gate:
    """Holds every publish of the harness's broker until released (``fail``: then raises)."""

    def __init__(self, h: Harness, monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> None:
        self.released = asyncio.Event()
        self.calls = 0
        publish = h.svc.context.publisher.publish

        async def held(records: Any) -> Any:
            self.calls += 1
            await self.released.wait()
            if fail and self.calls == 1:
                raise ConnectionError("injected broker failure")
            return await publish(records)

        monkeypatch.setattr(h.svc.context.publisher, "publish", held)


async def _submit_all(h: Harness, batches: list[list[Record]]) -> list[int]:
    done: list[int] = []
    for batch in batches:
        await h.svc.processor.submit(batch, lambda rs: done.extend(r.offset for r in rs))
    await h.svc.processor.flush()
    return done


async def test_pipelined_batches_write_and_send_what_one_batch_at_a_time_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = await _one_at_a_time(tmp_path, monkeypatch, *_batches())
    h = _harness(tmp_path, monkeypatch, "pipelined")
    done = await _submit_all(h, _batches())
    assert done == list(range(24))  # each record reported processed once, in order
    assert h.states() == reference.states() and len(h.states()) == 4
    assert h.sent == reference.sent
    assert h.svc.context.in_flight == set()


async def _second_while_first_commits(h: Harness, first: list[Record], second: list[Record],
                                      ) -> tuple[list[int], asyncio.Future[None]]:
    """Submit ``first`` (its commit held by a :class:`Gate`), then ``second`` as a task
    left waiting for that commit; returns the offsets reported done and the task."""
    done: list[int] = []
    await h.svc.processor.submit(first, lambda rs: done.extend(r.offset for r in rs))
    nxt = asyncio.ensure_future(
        h.svc.processor.submit(second, lambda rs: done.extend(r.offset for r in rs)))
    for _ in range(5):
        await asyncio.sleep(0)
    return done, nxt


async def _one_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         *batches: list[Record]) -> Harness:
    """The batches through a fresh worker's :meth:`Processor.handle_batch`, in turn."""
    reference = _harness(tmp_path, monkeypatch, "reference")
    for batch in batches:
        await reference.svc.processor.handle_batch(batch)
    return reference


async def test_the_next_batch_is_planned_during_the_commit_and_published_after_its_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = _harness(tmp_path, monkeypatch, "gated")
    first, second = _batches()[:2]
    gate = Gate(h, monkeypatch)
    planner = h.svc.processor.planner
    plan = planner.plan
    planned_at: dict[int, int] = {}  # offset -> publishes started when it was planned

    def counting(record: Record, **kw: Any) -> Any:
        planned_at[record.offset] = gate.calls
        return plan(record, **kw)

    monkeypatch.setattr(planner, "plan", counting)
    done, nxt = await _second_while_first_commits(h, first, second)
    # The second batch is planned while the first waits for its outputs' acknowledgement,
    # and both batches' customers are kept from the sweep.
    assert gate.calls == 1 and not nxt.done() and done == []
    assert all(planned_at[r.offset] == 1 for r in second)
    assert h.svc.context.in_flight == {r.key for r in first}
    gate.released.set()
    await nxt
    await h.svc.processor.flush()
    assert done == [r.offset for r in first + second]
    # outputs, changelog (first batch), then outputs, changelog (second batch)
    assert gate.calls == 4
    assert h.states() == (await _one_at_a_time(tmp_path, monkeypatch, first, second)).states()


async def test_a_batch_planned_on_a_failed_commit_is_planned_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = _harness(tmp_path, monkeypatch, "failing")
    first, second = _batches()[:2]
    gate = Gate(h, monkeypatch, fail=True)
    # Alone (the fallback after the failed commit) the first record cannot be
    # planned: it is dead-lettered, so the second batch's plans, made on a state
    # that had folded it, must not be written.
    bad = first[0]
    planner = h.svc.processor.planner
    plan = planner.plan

    def failing_alone(record: Record, **kw: Any) -> Any:
        if record is bad and kw.get("overlay") is None:
            raise RuntimeError("injected planning failure")
        return plan(record, **kw)

    monkeypatch.setattr(planner, "plan", failing_alone)
    done, nxt = await _second_while_first_commits(h, first, second)
    gate.released.set()  # the first batch's outputs fail: nothing of it was written
    await nxt
    await h.svc.processor.flush()
    assert done == [r.offset for r in first + second]
    reference = await _one_at_a_time(tmp_path, monkeypatch, first[1:], second)
    assert h.states() == reference.states()
    letters = [codec.loads(s["value"]) for s in h.sent if s["topic"] == "loyalty.dead-letter"]
    assert [(d["reason"], d["offset"]) for d in letters] == [("internal_error", bad.offset)]


async def test_an_abandoned_commit_writes_nothing_and_returns_its_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = _harness(tmp_path, monkeypatch, "abandoned")
    first = _batches()[0]
    gate = Gate(h, monkeypatch)
    done: list[int] = []
    await h.svc.processor.submit(first, lambda rs: done.extend(r.offset for r in rs))
    await asyncio.sleep(0)
    assert h.svc.processor.abandon() == first
    gate.released.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert done == [] and h.states() == {} and h.sent == []
    assert h.svc.context.in_flight == set()
    await h.svc.processor.flush()  # nothing in flight any more
