"""A catalogue of poison input: one record per kind, each with the dead-letter reason it
must get (:data:`schemas.events.REASONS`, or ``empty`` for a record without a value;
never ``internal_error``).

Every kind names the shop of the synthetic stream and its own customer
(``poison-<n>``), so none can touch a valid customer's state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from schemas import codec
from streams import synthetic
from streams.topics import message_key


@dataclass(frozen=True)
class Poison:
    kind: str
    value: bytes
    reason: str
    event_type: str | None  # routing: the topic it is produced to (None: purchases)
    key: bytes | None


def catalogue(shop: str, at: datetime) -> list[Poison]:
    """The poison kinds, for ``shop`` at event time ``at`` (UTC)."""
    out: list[Poison] = []
    iso = at.strftime("%Y-%m-%dT%H:%M:%SZ")

    def base(typ: str, n: int) -> dict[str, Any]:
        ev: dict[str, Any] = {"type": typ, "event_id": f"poison-{n}", "shop_id": shop,
                              "customer_id": f"poison-{n}", "occurred_at": iso}
        if typ in ("purchase", "refund"):
            ev.update(order_id=f"o-poison-{n}", amount=1000, currency="USD")
        if typ == "feedback":
            ev["nps"] = 7
        if typ == "redemption":
            ev["points"] = 100
        return ev

    def raw(kind: str, value: bytes, reason: str, typ: str | None = "purchase") -> None:
        out.append(Poison(kind, value, reason, typ, message_key(shop, f"poison-{len(out)}")))

    def ev(kind: str, reason: str, typ: str = "purchase", drop: tuple[str, ...] = (),
           **fields: Any) -> None:
        n = len(out)
        value = {k: v for k, v in {**base(typ, n), **fields}.items() if k not in drop}
        raw(kind, codec.dumps(value), reason, typ)

    raw("truncated json", b'{"type": "purchase", "amount": ', "invalid_json")
    raw("empty value", b"", "empty")  # the service's check before parsing
    raw("bare word", b"nul", "invalid_json")
    raw("trailing garbage", b'{"type": "visit"} x', "invalid_json")
    raw("NaN literal", b'{"type": "purchase", "amount": NaN}', "invalid_json")
    raw("not utf-8", b"\xff\xfe not utf-8 \x80", "invalid_encoding", None)
    raw("utf-8 surrogate", b'{"type": "visit", "shop_id": "\xed\xa0\x80"}', "invalid_encoding")
    raw("json array", b"[1, 2]", "not_an_object", None)
    raw("json number", b"42", "not_an_object", None)
    raw("json string", b'"purchase"', "not_an_object", None)
    raw("json null", b"null", "not_an_object", None)
    ev("no type", "missing_field", drop=("type",))
    ev("unknown type", "unknown_type", type="teleport")
    ev("numeric type", "unknown_type", type=5)
    for field in ("event_id", "shop_id", "customer_id", "occurred_at", "order_id", "amount",
                  "currency"):
        ev(f"no {field}", "missing_field", drop=(field,))
    ev("refund without order", "missing_field", "refund", drop=("order_id",))
    ev("feedback without nps", "missing_field", "feedback", drop=("nps",))
    ev("redemption without points", "missing_field", "redemption", drop=("points",))
    ev("float amount", "wrong_type", amount=10.5)
    ev("string amount", "wrong_type", amount="1000")
    ev("boolean amount", "wrong_type", amount=True)
    ev("numeric event id", "wrong_type", event_id=123)
    ev("numeric customer id", "wrong_type", customer_id=42)
    ev("items not a list", "wrong_type", items="x")
    ev("item not an object", "wrong_type", items=[5])
    ev("string nps", "wrong_type", "feedback", nps="9")
    ev("string margin rate", "wrong_type", margin_rate="0.3")
    ev("negative amount", "out_of_range", amount=-5)
    ev("zero amount", "out_of_range", amount=0)
    ev("amount above the limit", "out_of_range", amount=10**13)
    raw("70-bit amount", codec.dumps(base("purchase", len(out))).replace(
        b'"amount":1000', b'"amount":' + str(2**70).encode()), "out_of_range")
    ev("empty event id", "out_of_range", event_id="")
    ev("event id of 200 chars", "out_of_range", event_id="e" * 200)
    ev("nps 11", "out_of_range", "feedback", nps=11)
    ev("zero points", "out_of_range", "redemption", points=0)
    ev("margin rate 1.5", "out_of_range", margin_rate=1.5)
    ev("item quantity 0", "out_of_range",
       items=[{"sku": "a", "quantity": 0, "unit_amount": 1}])
    ev("comment of 3000 chars", "out_of_range", "feedback", comment="c" * 3000)
    ev("shop id with spaces", "invalid_format", shop_id="bad shop!")
    ev("control char in customer id", "invalid_format", customer_id="a\x01b")
    ev("lower-case currency", "invalid_format", currency="usd")
    ev("unknown channel", "invalid_format", channel="fax")
    ev("timestamp not a time", "invalid_timestamp", occurred_at="yesterday")
    ev("month 13", "invalid_timestamp", occurred_at="2025-13-01T00:00:00Z")
    ev("timestamp without offset", "invalid_timestamp", occurred_at="2025-05-01T12:00:00")
    ev("epoch seconds", "invalid_timestamp", occurred_at=1700000000)
    ev("400 days ahead", "future_timestamp",
       occurred_at=(datetime.now(at.tzinfo) + timedelta(days=400)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    ev("foreign currency", "currency_mismatch", currency="EUR")
    ev("refund in foreign currency", "currency_mismatch", "refund", currency="EUR")
    ev("oversized", "too_large", comment="x" * 70000)
    return out


def interleave(valid: list[synthetic.SyntheticRecord], poison: list[Poison],
               seed: int = 5) -> list[synthetic.SyntheticRecord]:
    """``valid`` with each poison record inserted at a random place."""
    import random

    rnd = random.Random(seed)
    out = list(valid)
    for p in poison:
        out.insert(rnd.randrange(len(out) + 1), synthetic.SyntheticRecord(
            p.value, p.key, p.event_type, f"invalid:{p.reason}"))
    return out
