"""The HTTP API on the worker's aiohttp app, without a broker (memory store, one worker)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from schemas import codec
from scoring.snapshot import snapshot
from scoring.state import CustomerState
from streams.app import LoyaltyService, create_service
from streams.compat import partition_context
from streams.records import Record
from streams.settings import Settings
from streams.topics import message_key, partition_for, tally_key
from streams.web import ROUTED_HEADER, parse_as_of

PARTITIONS = 4
TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Answered locally, as a request another worker routed here (routing needs the
# partition assignment of a running app).
LOCAL = {**AUTH, ROUTED_HEADER: "1"}
AS_OF = "2026-01-10T00:00:00Z"


def _service(tmp_path: Path) -> LoyaltyService:
    settings = Settings(app_id="unit-web", store="memory://", partitions=PARTITIONS,
                        data_dir=tmp_path, api_token=TOKEN)
    return create_service(settings, sweep_enabled=False)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[TestClient, LoyaltyService]]:
    svc = _service(tmp_path)
    async with TestClient(TestServer(svc.app.web.web_app)) as c:
        yield c, svc


def _store_purchase(svc: LoyaltyService) -> bytes:
    """Fold one purchase and write it through the agent's write path."""
    key = message_key("s1", "c1")
    value = codec.dumps({"type": "purchase", "event_id": "e1", "shop_id": "s1",
                         "customer_id": "c1", "occurred_at": "2026-01-05T10:00:00Z",
                         "order_id": "o1", "amount": 2500, "currency": "USD"})
    plan = svc.processor.plan(Record(topic="loyalty.purchases",
                                     partition=partition_for(key, PARTITIONS), offset=0,
                                     key=key, value=value),
                              now=datetime(2026, 1, 10, tzinfo=UTC))
    svc.processor.write(plan)
    return key


async def _get(c: TestClient, path: str, **headers: str) -> tuple[int, Any]:
    resp = await c.get(path, headers=headers)
    return resp.status, codec.loads(await resp.read())


async def test_data_endpoints_need_the_token(client: Any) -> None:
    c, _ = client
    status, body = await _get(c, "/customers/s1/c1")
    assert status == 401 and body["error"] == "unauthorized"
    resp = await c.get("/customers/s1/c1")
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="loyalty-scorer"'
    status, _ = await _get(c, "/customers/s1/c1", Authorization="Bearer wrong")
    assert status == 401


async def test_bad_ids_and_as_of_are_rejected(client: Any) -> None:
    c, _ = client
    status, body = await _get(c, "/customers/s%7Cx/c1", **AUTH)
    assert status == 400 and "shop_id" in body["detail"]
    status, body = await _get(c, "/customers/s1/c1?as_of=yesterday", **LOCAL)
    assert status == 400 and body["error"] == "bad_as_of"


async def test_no_answer_while_the_tables_are_not_ready(client: Any) -> None:
    c, svc = client
    assert not svc.context.tables_ready()  # the app has not started: no assignment yet
    status, body = await _get(c, "/customers/s1/c1", **LOCAL)
    assert status == 503 and body["error"] == "recovering"
    status, body = await _get(c, "/health")
    assert status == 200 and body["ready"] is False and body["last_sweep"] is None


async def test_a_stored_customer_is_served_as_its_snapshot(
        client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    c, svc = client
    ctx = svc.context
    monkeypatch.setattr(ctx, "tables_ready", lambda: True)  # as after recovery
    key = _store_purchase(svc)
    status, body = await _get(c, f"/customers/s1/c1?as_of={AS_OF}", **LOCAL)
    assert status == 200
    state = CustomerState.decode(ctx.customers.get(key))
    want = snapshot(state, parse_as_of(AS_OF), ctx.policies.for_shop("s1"), None)
    assert body == codec.loads(codec.dumps(want))
    status, body = await _get(c, "/customers/s1/nobody", **LOCAL)
    assert status == 404 and body["error"] == "not_found"


@pytest.mark.parametrize(("row", "status", "code", "says"), [
    # A worker older than the build that wrote the state (a rolling upgrade,
    # README "Upgrading a running group") cannot read it: 503, not 500.
    (b'[5,"s1","c1"]', 503, "newer_state_format", ("state format 5", "upgraded")),
    # A damaged row (README "Guarantees"): named, not a bare 500.
    (b'{"v": 4}', 500, "unreadable_state", ("unreadable customer state",)),
])
async def test_a_state_this_worker_cannot_read_is_answered_by_name(
        client: Any, monkeypatch: pytest.MonkeyPatch, row: bytes, status: int, code: str,
        says: tuple[str, ...]) -> None:
    c, svc = client
    monkeypatch.setattr(svc.context, "tables_ready", lambda: True)
    key = _store_purchase(svc)
    assert svc.context.rows.write(partition_for(key, PARTITIONS), [(key, row)], None)
    got, body = await _get(c, "/customers/s1/c1", **LOCAL)
    assert got == status and body["error"] == code
    assert all(text in body["detail"] for text in says)


async def test_shop_figures_with_a_damaged_tally_row_say_it_is_being_recounted(
        client: Any, monkeypatch: Any) -> None:
    c, svc = client
    ctx = svc.context
    monkeypatch.setattr(ctx, "tables_ready", lambda: True)
    monkeypatch.setattr(ctx, "owned_partitions", lambda: list(range(PARTITIONS)))
    key = _store_purchase(svc)
    partition = partition_for(key, PARTITIONS)
    status, body = await _get(c, "/shops/s1", **LOCAL)
    assert status == 200 and body["funnel"]
    with partition_context(ctx.rekey.get_topic_name(), partition):
        ctx.tallies[tally_key("s1", partition)] = b"[1, 2]"
    status, body = await _get(c, "/shops/s1", **LOCAL)
    assert status == 503 and body["error"] == "partitions_unavailable"
    assert f"partitions [{partition}] are being recounted" in body["detail"]
    assert ctx.tallies_to_recount == {partition}


async def test_metrics_are_served_without_a_token(client: Any) -> None:
    c, svc = client
    svc.context.metrics.internal_errors.inc()
    resp = await c.get("/metrics")
    assert resp.status == 200
    assert "loyalty_internal_errors_total 1.0" in (await resp.text())


def test_parse_as_of() -> None:
    assert parse_as_of(None) is None and parse_as_of("") is None
    assert parse_as_of("2026-01-10T01:00:00+01:00") == datetime(2026, 1, 10, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_as_of("2026-01-10T00:00:00")  # no offset
    with pytest.raises(ValueError):
        parse_as_of("x" * 65)
