"""Build contract-v1 events for core tests (as JSON bytes, exactly what shops send)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.codec import dumps
from schemas.events import parse_event
from schemas.policy import PolicyBook

T0 = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
NOW = datetime(2030, 1, 1, tzinfo=UTC)  # wall clock for validation: after every test event


def at(days: float = 0, base: datetime = T0, **kw: float) -> datetime:
    return base + timedelta(days=days, **kw)


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_counter = [0]


def raw(type_: str, when: datetime, *, shop: str = "shop-1", customer: str = "c1",
        event_id: str | None = None, **fields: Any) -> bytes:
    if event_id is None:
        _counter[0] += 1
        event_id = f"e{_counter[0]:06d}"
    body = {"type": type_, "event_id": event_id, "shop_id": shop, "customer_id": customer,
            "occurred_at": iso(when)}
    if type_ in ("purchase", "refund"):
        fields.setdefault("currency", "USD")
    body.update(fields)
    return dumps(body)


def purchase(when: datetime, amount: int, order_id: str | None = None, **kw: Any) -> bytes:
    return raw("purchase", when, order_id=order_id or f"o-{iso(when)}-{amount}", amount=amount, **kw)


def refund(when: datetime, order_id: str, amount: int, **kw: Any) -> bytes:
    return raw("refund", when, order_id=order_id, amount=amount, **kw)


def visit(when: datetime, **kw: Any) -> bytes:
    return raw("visit", when, **kw)


def feedback(when: datetime, nps: int, **kw: Any) -> bytes:
    return raw("feedback", when, nps=nps, **kw)


def redeem(when: datetime, points: int, **kw: Any) -> bytes:
    return raw("redemption", when, points=points, **kw)


def parse(data: bytes, policies: PolicyBook | None = None):  # noqa: ANN201
    return parse_event(data, now=NOW, policies=policies or PolicyBook())
