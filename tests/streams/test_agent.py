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
