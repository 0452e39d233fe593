"""/openapi.json describes every route, and the segment listing answers as described.

Without a broker: one worker on a memory store owning every partition (the
real-broker check of every endpoint is in tests/integration/test_service_poison.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from schemas import codec
from streams.app import LoyaltyService, create_service
from streams.listing import decode_cursor, encode_cursor
from streams.openapi import PATHS, document
from streams.records import Record
from streams.settings import Settings
from streams.topics import message_key, partition_for
from streams.web import ROUTED_HEADER
from tests.contracts import response_errors

PARTITIONS = 4
AUTH = {"Authorization": "Bearer s3cret"}


def _service(tmp_path: Path) -> LoyaltyService:
    return create_service(Settings(app_id="unit-openapi", store="memory://",
                                   partitions=PARTITIONS, data_dir=tmp_path,
                                   api_token="s3cret"), sweep_enabled=False)


async def test_every_route_is_described_and_every_description_is_a_route(tmp_path: Path) -> None:
    # async like the others: a service built outside pytest-asyncio's loop before
    # async tests leaves later modules' sync Faust writes without an event loop
    svc = _service(tmp_path)
    web = svc.app.web
    web.blueprints.apply(web)  # Faust's own endpoints, as a running worker serves them
    routes = {r.resource.canonical for r in svc.app.web.web_app.router.routes()
              if r.method == "GET" and r.resource is not None}
    assert routes == set(PATHS)
    doc = codec.loads(codec.dumps(document()))  # as served
    validate(doc)  # a valid OpenAPI 3.1 document, every $ref resolvable
    assert doc["openapi"].startswith("3.1")
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    for path, item in PATHS.items():
        op = item["get"]
        assert "200" in op["responses"], path
        assert ("401" in op["responses"]) == bool(op["security"]), path
        named = {p["name"] for p in op["parameters"] if p["in"] == "path"}
        assert named == {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}, path


@pytest.fixture
async def client(tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[TestClient, Any]]:
    svc = _service(tmp_path)
    ctx = svc.context
    # as after recovery, this worker owning every partition
    monkeypatch.setattr(ctx, "tables_ready", lambda: True)
    monkeypatch.setattr(ctx, "owned_partitions", lambda: list(range(PARTITIONS)))
    n = 0
    for cust in ("c03", "c01", "c05", "c02", "c04", "c/6|x"):
        events = [{"type": "purchase", "order_id": "o1", "amount": 2500, "currency": "USD",
                   "occurred_at": "2026-01-02T10:00:00Z"}]
        if cust in ("c01", "c04"):  # two purchase dates: repeat
            events.append({"type": "purchase", "order_id": "o2", "amount": 900,
                           "currency": "USD", "occurred_at": "2026-01-05T10:00:00Z"})
        if cust == "c02":
            events.append({"type": "feedback", "nps": 3, "occurred_at": "2026-01-06T10:00:00Z"})
        for ev in events:
            n += 1
            key = message_key("s1", cust)
            value = codec.dumps({**ev, "event_id": f"e{n}", "shop_id": "s1", "customer_id": cust})
            plan = svc.processor.plan(Record("loyalty.purchases", partition_for(key, PARTITIONS),
                                             n, key, value), now=datetime(2026, 1, 10, tzinfo=UTC))
            svc.processor.write(plan)
    async with TestClient(TestServer(svc.app.web.web_app)) as c:
        yield c, svc


async def _get(c: TestClient, template: str, path: str, headers: dict[str, str] = AUTH) -> Any:
    resp = await c.get(path, headers=headers)
    body = await resp.read()
    bad = response_errors(template, resp.status, resp.content_type, body, resp.headers)
    assert not bad, bad
    return resp.status, codec.loads(body)


LIST = "/shops/{shop_id}/customers"


async def test_the_listing_pages_through_a_segment_in_customer_order(client: Any) -> None:
    c, _ = client
    status, body = await _get(c, LIST, "/shops/s1/customers")
    assert status == 200 and body["next_cursor"] is None
    assert [i["customer_id"] for i in body["items"]] == ["c/6|x", "c01", "c02", "c03", "c04",
                                                         "c05"]
    seen, cursor = [], None
    while True:
        q = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, page = await _get(c, LIST, "/shops/s1/customers" + q)
        assert status == 200 and len(page["items"]) <= 2
        seen += [i["customer_id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [i["customer_id"] for i in body["items"]]

    status, body = await _get(c, LIST, "/shops/s1/customers?stage=repeat")
    assert [(i["customer_id"], i["stage"]) for i in body["items"]] == [
        ("c01", "repeat"), ("c04", "repeat")]
    status, body = await _get(c, LIST, "/shops/s1/customers?detractor_status=detractor"
                                       "&stage=first_purchase")
    [item] = body["items"]
    assert item["customer_id"] == "c02" and item["nps_last"] == 3
    assert item["detractor_since"] == "2026-01-06T10:00:00Z"
    status, body = await _get(c, LIST, "/shops/other/customers?wallet_band=committed")
    assert status == 200 and body == {"items": [], "next_cursor": None}


@pytest.mark.parametrize("query", [
    "stage=gone", "loyalty_type=TRUE", "wallet_band=", "limit=0", "limit=1001", "limit=ten",
    "limit=-1", "stages=at_risk", "stage=repeat&stage=loyal", "cursor=!!", "cursor=",
    "cursor=" + encode_cursor("a") + "=",
])
async def test_the_listing_rejects_every_bad_parameter(client: Any, query: str) -> None:
    c, _ = client
    status, body = await _get(c, LIST, "/shops/s1/customers?" + query)
    assert status == 400 and body["error"] == "bad_query", body


def test_cursors_round_trip() -> None:
    for cid in ("c1", "ü/|x", "x" * 128):
        assert decode_cursor(encode_cursor(cid)) == cid


async def test_the_other_answers_are_as_described(client: Any) -> None:
    c, svc = client
    status, body = await _get(c, LIST, "/shops/s1/customers", headers={})
    assert status == 401
    status, body = await _get(c, "/shops/{shop_id}", "/shops/s1?as_of=2020-01-01T00:00:00Z")
    assert status == 400 and body["error"] == "as_of_unsupported"
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status, body = await _get(c, "/shops/{shop_id}", f"/shops/s1?as_of={now}")
    assert status == 200 and body["customers"] == 6 and body["funnel"]["repeat"] == 2
    status, body = await _get(c, "/customers/{shop_id}/{customer_id}", "/customers/s1/c%2F6%7Cx",
                              headers={**AUTH, ROUTED_HEADER: "1"})  # answered here
    assert status == 200 and body["customer_id"] == "c/6|x"
    status, body = await _get(c, "/openapi.json", "/openapi.json", headers={})
    assert status == 200 and body == codec.loads(codec.dumps(document()))
    svc.context.tables_ready = lambda: False  # a rebalance starts
    status, body = await _get(c, LIST, "/shops/s1/customers")
    assert status == 503
