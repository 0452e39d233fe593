"""Event contract v1: every kind of invalid input is rejected with its reason."""

from __future__ import annotations

from datetime import timedelta

import pytest

from schemas import export
from schemas.codec import compact, dumps, loads
from schemas.events import MAX_EVENT_BYTES, InvalidEvent, parse_event
from schemas.outputs import (
    CustomerSnapshot,
    DeadLetter,
    DetractorAlert,
    LedgerEntry,
    StageTransition,
    VoidRecord,
)
from schemas.policy import PolicyBook, PolicyError
from streams.records import ORIGIN_HEADER, Record, dead_letter_record
from tests.contracts import assert_valid
from tests.core.conftest import Customer
from tests.core.factory import NOW, at, feedback, iso, purchase, redeem, refund, visit

BASE = {"type": "purchase", "event_id": "e1", "shop_id": "shop-1", "customer_id": "c1",
        "occurred_at": "2024-01-01T12:00:00Z", "order_id": "o1", "amount": 100, "currency": "USD"}


def bad(**changes: object) -> bytes:
    body = dict(BASE)
    for k, v in changes.items():
        if v is ...:
            body.pop(k)
        else:
            body[k] = v
    return dumps(body)


CASES = [
    ("float amount", bad(amount=100.0), "wrong_type", "amount"),
    ("boolean amount", bad(amount=True), "wrong_type", "amount"),
    ("string amount", bad(amount="100"), "wrong_type", "amount"),
    ("zero amount", bad(amount=0), "out_of_range", "amount"),
    ("number as id", bad(event_id=17), "wrong_type", "event_id"),
    ("empty id", bad(event_id=""), "out_of_range", "event_id"),
    ("long id", bad(event_id="x" * 129), "out_of_range", "event_id"),
    ("bad shop chars", bad(shop_id="shop one"), "invalid_format", "shop_id"),
    ("long shop", bad(shop_id="s" * 65), "out_of_range", "shop_id"),
    ("control char customer", bad(customer_id="c\n1"), "invalid_format", "customer_id"),
    ("missing order", bad(order_id=...), "missing_field", "order_id"),
    ("missing type", bad(type=...), "missing_field", "type"),
    ("unknown type", bad(type="gift"), "unknown_type", "type"),
    ("no offset", bad(occurred_at="2024-01-01T12:00:00"), "invalid_timestamp", "occurred_at"),
    ("not a date", bad(occurred_at="yesterday"), "invalid_timestamp", "occurred_at"),
    ("impossible date", bad(occurred_at="2024-02-30T00:00:00Z"), "invalid_timestamp", "occurred_at"),
    ("epoch number", bad(occurred_at=1704110400), "invalid_timestamp", "occurred_at"),
    ("future", bad(occurred_at=iso(NOW + timedelta(days=1, seconds=1))), "future_timestamp", "occurred_at"),
    ("lower-case currency", bad(currency="usd"), "invalid_format", "currency"),
    ("other currency", bad(currency="EUR"), "currency_mismatch", "currency"),
    ("margin above 1", bad(margin_rate=1.01), "out_of_range", "margin_rate"),
    ("margin as bool", bad(margin_rate=True), "wrong_type", "margin_rate"),
    ("margin as string", bad(margin_rate="0.3"), "wrong_type", "margin_rate"),
    # Finer rates do not fit the state's 64-bit integers once exact.
    ("margin finer than 18 places", bad(margin_rate=1e-20), "out_of_range", "margin_rate"),
    ("too many items", bad(items=[{"sku": "a", "quantity": 1, "unit_amount": 1}] * 501), "out_of_range", "items"),
    ("item quantity 0", bad(items=[{"sku": "a", "quantity": 0, "unit_amount": 1}]), "out_of_range", "items.0.quantity"),
    ("bad channel", bad(channel="fax"), "invalid_format", "channel"),
    ("nps 11", dumps({**BASE, "type": "feedback", "nps": 11}), "out_of_range", "nps"),
    ("nps float", dumps({**BASE, "type": "feedback", "nps": 9.0}), "wrong_type", "nps"),
    ("share of wallet 101", dumps({**BASE, "type": "feedback", "nps": 5, "share_of_wallet": 101}), "out_of_range", "share_of_wallet"),
    ("long comment", dumps({**BASE, "type": "feedback", "nps": 5, "comment": "x" * 2001}), "out_of_range", "comment"),
    ("points 0", dumps({**BASE, "type": "redemption", "points": 0}), "out_of_range", "points"),
    ("NaN", bad().replace(b'"amount":100', b'"amount":NaN'), "invalid_json", ""),
    ("Infinity", bad().replace(b'"amount":100', b'"amount":Infinity'), "invalid_json", ""),
    ("not JSON", b"purchase,1,2", "invalid_json", ""),
    ("truncated", bad()[:-5], "invalid_json", ""),
    ("array", b"[1, 2]", "not_an_object", ""),
    ("bad UTF-8", b'{"type": "visit", "event_id": "\xff"}', "invalid_encoding", ""),
    ("oversized", dumps({**BASE, "pad": "x" * MAX_EVENT_BYTES}), "too_large", ""),
]


def test_compact_keeps_the_bytes_at_their_size() -> None:
    import tracemalloc

    data = dumps([list(range(40)) for _ in range(10)])  # about 1 KiB of JSON
    tracemalloc.start()
    try:
        kept = [compact(data) for _ in range(200)]
        traced = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert kept[0] == data and kept[0] is not data
    assert traced < 200 * (len(data) + 128), (traced, len(data))


@pytest.mark.parametrize(("name", "data", "reason", "field"), CASES, ids=[c[0] for c in CASES])
def test_invalid_input_is_rejected_with_its_reason(name: str, data: bytes, reason: str, field: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_event(data, now=NOW, policies=PolicyBook())
    assert info.value.reason == reason
    assert info.value.detail.startswith(field)


def test_valid_events_parse_and_unknown_fields_are_ignored() -> None:
    ev = parse_event(bad(margin_rate=0.35, extra={"x": 1}, items=[{"sku": "a", "quantity": 2, "unit_amount": 50}]),
                     now=NOW, policies=PolicyBook())
    assert str(ev.margin_rate) == "0.35" and not hasattr(ev, "extra")
    assert parse_event(bad(occurred_at="2024-01-01T13:30:00.123456789+01:30"), now=NOW,
                       policies=PolicyBook()).occurred_at.isoformat() == "2024-01-01T12:00:00.123456+00:00"


def test_a_shop_with_another_currency_accepts_it() -> None:
    book = PolicyBook(shops={"shop-1": {"currency": "EUR"}})
    assert parse_event(bad(currency="EUR"), now=NOW, policies=book).currency == "EUR"


def test_conflicting_duplicate_is_rejected_and_the_first_stands() -> None:
    c = Customer().send(purchase(at(0), 100, order_id="o", event_id="same"))
    c.send(purchase(at(0), 100, order_id="o", event_id="same", channel="web"))  # differs in content
    c.send(purchase(at(0), 100, order_id="o", event_id="same", unknown="ignored"))  # same content
    assert [o.status for o in c.outcomes] == ["applied", "rejected", "duplicate"]
    assert c.outcomes[1].reason == "conflicting_duplicate"
    assert c.snap()["spend_total"] == 100


def test_too_late_events_are_rejected_and_counted_not_applied() -> None:
    c = Customer().send(purchase(at(10), 100), purchase(at(2.9), 100))
    assert c.outcomes[-1].status == "rejected" and c.outcomes[-1].reason == "too_late"
    c.send(purchase(at(3.1), 100))  # within 7 days of the newest: accepted
    assert c.outcomes[-1].status == "applied" and c.snap()["purchase_count"] == 2


def test_policy_file_errors_name_the_file_and_the_key(tmp_path) -> None:  # noqa: ANN001
    p = tmp_path / "policy.json"
    p.write_bytes(dumps({"shops": {"a": {"margn_rate": "0.3"}}}))
    with pytest.raises(PolicyError, match="margn_rate"):
        PolicyBook.load(p)
    p.write_bytes(dumps({"defaults": {"allowed_lateness_days": 100}}))
    with pytest.raises(PolicyError, match=str(p)):
        PolicyBook.load(p)
    p.write_bytes(dumps({"shops": {"a": {"margin_rate": 0.3, "tiers": [
        {"name": "base", "min_spend_365d": 0, "points_multiplier": "2", "discount_pct": 0}]}}}))
    book = PolicyBook.load(p)
    assert str(book.for_shop("a").margin_rate) == "0.3" and book.for_shop("b").margin_rate == 1


def test_committed_json_schemas_match_the_models() -> None:
    docs = export.documents()
    for name, data in docs.items():
        path = export.OUT_DIR / name
        assert path.exists(), f"{path} missing: run python -m schemas.export"
        assert loads(path.read_bytes()) == loads(data), f"{name} drifted: run python -m schemas.export"


def test_every_output_record_matches_its_contract() -> None:
    """Pydantic models and committed files (checked by jsonschema) agree on real records."""
    c = Customer()
    c.send(visit(at(-1)), purchase(at(0), 60_000, order_id="a"), purchase(at(1), 300, order_id="b"),
           refund(at(2), "a", 30_000), redeem(at(3), 10_000), redeem(at(4), 10), feedback(at(5), 9),
           feedback(at(5.5), 2, comment="slow", touchpoint="store"), feedback(at(5.7), 9),
           purchase(at(6), 100, order_id="c"), purchase(at(7), 100, order_id="d"),
           purchase(at(8), 100, order_id="e"), purchase(at(4.5), 100, order_id="late"))
    # the late purchase makes "d" the 5th purchase: e's free item is voided, d's is issued
    assert [e for e in c.effects if e.get("void")], "the free item of 'e' should have been voided"
    kinds = set()
    for e in c.effects:
        model = VoidRecord if e.get("void") else {
            "ledger": LedgerEntry, "transition": StageTransition, "alert": DetractorAlert}[e["kind"]]
        model.model_validate(e)
        topic = "out-RewardsValue.json" if e["kind"] == "ledger" else "out-TransitionsValue.json"
        assert_valid(topic, e)
        kinds.add(e.get("entry", e["kind"]))
    assert {"earn", "clawback", "redeem", "redemption_rejected", "free_item", "transition", "alert"} <= kinds
    CustomerSnapshot.model_validate(c.snap(at(800)))
    assert_valid("out-CustomerSnapshot.json", c.snap(at(800)))
    assert c.snap(at(800))["points_expired_total"] > 0


def test_dead_letters_match_their_contract() -> None:
    """Text and binary keys/values, a missing key, a rekey hop: all follow out-DeadLetter.json."""
    origin = dumps({"topic": "in", "partition": 1, "offset": 7, "timestamp": 1773223200.123})
    records = [
        Record("in", 0, 5, b"s|c", b"not json", 1773223200.5),
        Record("in", 0, 6, None, b"\xff\xfe", None),
        Record("in", 0, 7, b"\xff", None, 1.0),
        Record("app-rekey", 2, 9, b"s|c", b"{}", 2.0, ((ORIGIN_HEADER, origin),)),
    ]
    letters = [loads(dead_letter_record(r, "invalid_json", "x" * 5000)) for r in records]
    for letter in letters:
        assert_valid("out-DeadLetter.json", letter)
        DeadLetter.model_validate(letter)
    assert letters[0]["timestamp"] == 1773223200500  # milliseconds, Kafka's unit
    assert letters[1]["value_encoding"] == "base64" and letters[1]["key_encoding"] == "none"
    assert letters[3]["topic"] == "in" and letters[3]["via_topic"] == "app-rekey"
    assert letters[3]["timestamp"] == 1773223200123
