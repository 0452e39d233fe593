"""The state agent's batch handling (streams/agent.py), without a broker.

The commit protocol runs against the sweep tests' acknowledging publisher
(tests/streams/test_sweep.py); a planning failure is injected into the real
planner for one record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from schemas import codec
from streams import agent as agent_module
from streams.records import Record
from tests.core.conftest import NEEDS_NATIVE
from tests.streams.test_sweep import Harness, purchase_record


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


@pytest.mark.parametrize("engine", ["python", pytest.param("native", marks=NEEDS_NATIVE)])
async def test_the_state_cache_tiers_change_no_output_and_no_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str) -> None:
    """The same batches through a worker that decodes and re-folds every state
    (no cache) and one that keeps a single live state, so that every other
    customer comes back from the head tier (the Python engine's; a native
    state is decoded and re-folded in Rust): identical rows and outputs."""
    records = []
    for n in range(30):  # 6 customers, 5 purchases each, some out of order
        day = (1, 3, 2, 5, 4)[n // 6]
        records.append(purchase_record(f"c{n % 6}", f"e{n}", f"2026-01-0{day}T10:00:{n:02d}Z",
                                       amount=1000 + n, offset=n))
    runs = {}
    for name, sizes in (("none", {"state_cache_size": 0, "head_cache_mb": 0}),
                        ("tiers", {"state_cache_size": 1, "head_cache_mb": 1, "state_cache_mb": 1})):
        harness = Harness(tmp_path / name, monkeypatch, recount_interval_s=400 * 86400, engine=engine, **sizes)
        for start in range(0, len(records), 4):
            await harness.svc.processor.handle_batch(records[start:start + 4])
        runs[name] = (harness.states(), harness.sent, harness.svc.processor.planner.states)
    (states, sent, _), (tier_states, tier_sent, cache) = runs["none"], runs["tiers"]
    assert len(states) == 6 and tier_states == states
    assert tier_sent == sent and any(s["topic"] == "loyalty.rewards" for s in sent)
    # Python: each came back with its head; native: a state carries its head inside.
    assert cache.misses > 0 and cache.head_hits == (cache.misses if engine == "python" else 0)
    assert cache.budget == 1 << 20 and 0 < cache.weight <= cache.budget  # LOYALTY_STATE_CACHE_MB


async def test_after_batch_is_told_once_per_batch_whatever_its_path(h: Harness) -> None:
    """The garbage-collector policy's hook (streams.collector): once per handled
    batch, for a single record, a committed batch and a batch split by a bad record."""
    told: list[int] = []
    h.svc.processor.after_batch = lambda: told.append(len(h.svc.context.customers))
    one = [purchase_record("c1", "e1", "2026-01-05T10:00:00Z", amount=1000, offset=0)]
    await h.svc.processor.handle_batch(one)
    many = [purchase_record(f"c{n}", f"f{n}", "2026-01-05T11:00:00Z", amount=1000,
                            order_id=f"p{n}", offset=n + 1) for n in range(2, 6)]
    await h.svc.processor.handle_batch(many)
    unreadable = Record("loyalty.visits", 0, 9, b"s1|c9", b"{not json")
    await h.svc.processor.handle_batch([many[0], unreadable])
    # Told after the batch's writes: the rows it wrote are there.
    assert told == [1, 5, 5]


async def test_a_damaged_row_costs_its_customers_events_not_the_batch(h: Harness) -> None:
    """README "Guarantees": an event of a customer whose row no decoder reads is
    dead-lettered at once with its own reason, not as an internal error (retrying
    reads the same bytes); the row stays as it was for repair."""
    from streams.topics import partition_for

    records = [purchase_record(f"c{n}", f"e{n}", "2026-01-05T10:00:00Z", amount=1000,
                               order_id=f"o{n}", offset=n) for n in range(6)]
    damaged = records[3]
    partition = partition_for(damaged.key, h.svc.context.partitions)
    assert h.svc.context.rows.write(partition, [(damaged.key, b'{"v": 4}')], None)
    await h.svc.processor.handle_batch(records)
    assert h.svc.context.customers.get(damaged.key) == b'{"v": 4}'
    assert all(h.state(r.key).max_ts is not None for r in records if r is not damaged)
    letters = [codec.loads(s["value"]) for s in h.sent if s["topic"] == "loyalty.dead-letter"]
    assert [(d["reason"], d["offset"]) for d in letters] == [("unreadable_state", 3)]
    assert "cannot be read" in letters[0]["detail"]
    registry = h.svc.context.metrics.registry
    assert registry.get_sample_value("loyalty_internal_errors_total") == 0
    assert registry.get_sample_value("loyalty_invalid_events_total",
                                     {"reason": "unreadable_state"}) == 1
