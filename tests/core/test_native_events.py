"""The native fast path of the event contract against the Python parser.

``loyalty_native.parse_event`` may only accept what
:func:`schemas.events.parse_event` accepts, and then must give the same
fields, record, content digest and id hash (a different digest would turn a
redelivered event into a conflicting duplicate); everything else it hands to
the Python parser, which words the rejection. The aligned input orders and
routes records by the same reading (:func:`streams.aligned_input.inspect`'s
answer, without a parse in Python). Checked here on what the
service is sent (the bench's streams, the synthetic stream with its faults,
CDNOW, every poison kind) and on generated near-valid input: each field drawn
from valid values, values just past its bounds, other JSON types, and text
forms of numbers and instants the fast path must not read differently.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from schemas import codec
from schemas.events import REASONS, InvalidEvent, parse_event
from schemas.policy import PolicyBook
from scoring.cdnow import cdnow_events
from scoring.engine import PYTHON, effect_values
from scoring.native import NATIVE
from scoring.records import content_digest, id_hash, to_record
from streams.aligned_input import inspect
from streams.bench.generator import fast_stream, heavy_stream, regulars_stream, synthetic_stream
from streams.topics import message_key
from tests.cdnow import CDNOW_PATH
from tests.chaos.poison import catalogue
from tests.core.conftest import NEEDS_NATIVE
from tests.core.factory import NOW

pytestmark = NEEDS_NATIVE

if NATIVE is not None:
    import loyalty_native

POLICIES = PolicyBook(shops={"eur-shop": {"currency": "EUR"}})
#: the contract's rules that need the shop's policy: the engine's ``parse`` applies them
POLICY_RULES = ("future_timestamp", "currency_mismatch")


def python_view(raw: bytes) -> Any:
    """The Python parser's event, or its rejection reason."""
    try:
        return parse_event(raw, now=NOW, policies=POLICIES)
    except InvalidEvent as exc:
        return exc.reason


def check(raw: bytes) -> bool:
    """Assert the fast path agrees with the Python parser on ``raw``; True if it took it."""
    py = verdict = python_view(raw)
    fast = loyalty_native.parse_event(raw)
    if fast is not None and isinstance(py, str):
        # the two rules that need the shop's policy are the engine's (below)
        assert py in POLICY_RULES, f"fast path accepted what the contract rejects ({py}): {raw!r}"
        py = parse_event(raw, now=datetime.max.replace(tzinfo=UTC) - timedelta(days=2),
                         policies=PolicyBook(defaults={"currency": fast.currency or "USD"}))
    if fast is not None:
        assert (fast.type, fast.event_id, fast.shop_id, fast.customer_id, fast.occurred_at) == (
            py.type, py.event_id, py.shop_id, py.customer_id, py.occurred_at), raw
        assert fast.record() == to_record(py), raw
        assert fast.digest == content_digest(py), f"content digest differs: {raw!r}"
        assert fast.id_hash == id_hash(py.event_id), raw
        assert fast.currency == getattr(py, "currency", None), raw
        assert (fast.nps, fast.touchpoint) == (getattr(py, "nps", None), getattr(py, "touchpoint", None))
        # the aligned input orders and routes by the fast reading when there is one
        assert inspect(raw) == ((fast.ts_us, fast.event_id), message_key(fast.shop_id, fast.customer_id))
    # The engine's parse (fast path, then the policy's rules, else Python) judges as
    # the contract does, reason for reason.
    try:
        via_engine: Any = NATIVE.parse(raw, now=NOW, policies=POLICIES)
    except InvalidEvent as exc:
        via_engine = exc.reason
    if isinstance(verdict, str):
        assert via_engine == verdict, raw
    else:
        assert not isinstance(via_engine, str) and via_engine.event_id == verdict.event_id, raw
    return fast is not None


def _stream_values(stream: Any) -> list[bytes]:
    return [value for _, _, value in stream]


def test_the_service_s_own_input_takes_the_fast_path() -> None:
    """Every valid event the bench sends (the default, heavy and regulars mixes) is
    read natively; the synthetic stream's faults, the poison kinds and CDNOW agree."""
    sent = (_stream_values(fast_stream(3000, 800)) + _stream_values(heavy_stream(1500, 400))
            + _stream_values(regulars_stream(1500, 400)))
    taken = sum(check(raw) for raw in sent)
    assert taken == len(sent), f"{len(sent) - taken} of {len(sent)} valid bench events left to Python"
    synthetic = _stream_values(synthetic_stream(120))
    assert sum(check(raw) for raw in synthetic) > len(synthetic) // 2
    now = datetime.now(UTC)  # the catalogue's future instants are the wall clock's
    for poison in catalogue("shop-1", now - timedelta(days=1)):
        if poison.value and poison.reason in REASONS:
            check(poison.value)
            with pytest.raises(InvalidEvent) as err:
                NATIVE.parse(poison.value, now=now, policies=POLICIES)
            assert err.value.reason == poison.reason, poison.kind
    with CDNOW_PATH.open("rb") as f:
        lines = list(itertools.islice(f, 3000))
    assert sum(check(raw) for raw in cdnow_events(lines)) > 2900


def test_folding_a_fast_event_equals_folding_the_model() -> None:
    """Rows, effects and outcomes: the native engine on its own parse's events against
    the reference engine on the Python parser's."""
    # generated once: the streams end at the wall clock
    stream = _stream_values(fast_stream(2000, 300)) + _stream_values(heavy_stream(1000, 200))

    def fold(engine: Any, parse: Any) -> list[Any]:
        states: dict[str, Any] = {}
        out = []
        for raw in stream:
            event = parse(raw, now=NOW, policies=POLICIES)
            key = f"{event.shop_id}|{event.customer_id}"
            o = engine.apply(states.get(key), event, POLICIES.for_shop(event.shop_id))
            states[key] = o.state
            out.append((o.status, o.reason, o.detail, o.changed, effect_values(o.effects),
                        engine.encode(o.state)))
        return out

    assert fold(NATIVE, NATIVE.parse) == fold(PYTHON, parse_event)


# -- generated near-valid input ---------------------------------------------------------

class Raw(str):
    """JSON text written as it is (a number or an instant in a form of its own)."""


def dump(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{dump(k)}:{dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # past 64 bits too
    return codec.dumps(value).decode()


texts = st.one_of(
    st.text(max_size=5), st.text(min_size=60, max_size=70), st.text(min_size=125, max_size=130),
    st.sampled_from(["", "a", "shop-1", "eur-shop", "bad shop", "x|y", "é", "\x00", "\x7f", "\x85",
                     "\u2028", "\ud7ff", "line\nbreak", 'q"uote', "back\\slash", "EUR", "USD", "eur",
                     "store", "web", "app", "phone", "other", "Store"]))
numbers = st.one_of(
    st.integers(-2, 12), st.integers(0, 102), st.sampled_from([10**12, 10**12 + 1, 2**63, -(2**63) - 1]),
    st.sampled_from([Raw("5.0"), Raw("1e2"), Raw("-0"), Raw("0"), Raw("1E0"), Raw("10" * 12),
                     Raw("1" + "0" * 400), True, False, None]))
rates = st.one_of(
    st.floats(0, 1), st.floats(-1, 2), st.integers(-1, 2), st.sampled_from([True, None]),
    st.sampled_from([Raw(t) for t in ("0.35", "0.350", "3.5e-1", "0.00001", "1e-4", "0.0001",
                                      "-0.0", "0.0", "1.0", "1", "0.1234567890123456789",
                                      "0.000123456789012345678", "1.00000000000000000001")]))
any_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                        | st.text(max_size=5),
                        lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)


@st.composite
def instants(draw: Any) -> Any:
    """An instant in the contract's form, or one of its near misses."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.one_of(any_json, st.text(max_size=30)))
    year = draw(st.sampled_from([1, 2, 1969, 1970, 1999, 2000, 2023, 2024, 2100, 9998, 9999]))
    month, day = draw(st.integers(0, 13)), draw(st.integers(0, 32))
    hour, minute, second = draw(st.integers(0, 25)), draw(st.integers(0, 61)), draw(st.integers(0, 61))
    if draw(st.booleans()):
        month, day, hour, minute, second = (draw(st.integers(1, 12)), draw(st.integers(1, 28)),
                                             hour % 24, minute % 60, second % 60)
    frac = draw(st.sampled_from(["", ".", ".5", ".123", ".000001", ".1234567", ".123456789",
                                 ".1234567890", ".٣"]))
    offset = draw(st.sampled_from(["Z", "z", "+00:00", "-00:00", "+02:00", "-05:30", "+23:59",
                                   "+24:00", "+12:60", "+0200", "", "Z\n", " Z"]))
    sep = draw(st.sampled_from(["T", "T", "T", "t", " "]))
    return f"{year:04d}-{month:02d}-{day:02d}{sep}{hour:02d}:{minute:02d}:{second:02d}{frac}{offset}"


FIELDS: dict[str, Any] = {
    "event_id": texts, "shop_id": texts, "customer_id": texts, "order_id": texts,
    "currency": texts, "amount": numbers, "nps": numbers, "share_of_wallet": numbers,
    "points": numbers, "comment": st.one_of(texts, st.text(min_size=1999, max_size=2001)),
    "touchpoint": texts, "reward": texts, "channel": texts, "margin_rate": rates,
}


@st.composite
def items(draw: Any) -> Any:
    def item() -> dict[str, Any]:
        out = {"sku": "sku-1", "quantity": 2, "unit_amount": 500}
        if draw(st.booleans()):
            out["category"] = draw(st.one_of(st.none(), texts))
        if draw(st.integers(0, 3)) == 0:
            out[draw(st.sampled_from(["sku", "quantity", "unit_amount", "extra"]))] = draw(
                st.one_of(texts, numbers))
        if draw(st.integers(0, 5)) == 0:
            del out[draw(st.sampled_from(["sku", "quantity", "unit_amount"]))]
        return out

    return draw(st.one_of(st.lists(st.builds(item), max_size=3), any_json,
                          st.just([{"sku": "s", "quantity": 1, "unit_amount": 0}] * 501)))


VALID = {
    "purchase": {"order_id": "o-1", "amount": 1250, "currency": "USD"},
    "refund": {"order_id": "o-1", "amount": 250, "currency": "USD"},
    "visit": {},
    "feedback": {"nps": 9},
    "redemption": {"points": 100},
    "forget": {},
}
OPTIONAL = {"purchase": ["margin_rate", "items", "channel"], "visit": ["channel"],
            "feedback": ["comment", "share_of_wallet", "touchpoint"], "redemption": ["reward"]}


@st.composite
def near_valid(draw: Any) -> bytes:
    """A valid event with some of its fields replaced, dropped, nulled or duplicated."""
    kind = draw(st.sampled_from([*VALID, "Purchase", "nothing"]))
    body: dict[str, Any] = {"type": kind, "event_id": "e-1", "shop_id": "shop-1",
                            "customer_id": "c-1", "occurred_at": "2024-05-01T12:00:00Z",
                            **VALID.get(kind, {})}
    for name in draw(st.lists(st.sampled_from(OPTIONAL.get(kind, ["channel"])), max_size=3)):
        body[name] = draw(items()) if name == "items" else draw(FIELDS[name])
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from([*body, "extra"]))
        body[name] = draw(st.one_of(FIELDS.get(name, any_json), st.none(), any_json))
    if draw(st.integers(0, 2)) == 0:
        body["occurred_at"] = draw(instants())
    if draw(st.integers(0, 6)) == 0:
        body.pop(draw(st.sampled_from(list(body))))
    if kind in ("purchase", "refund") and draw(st.integers(0, 4)) == 0:
        body["shop_id"] = "eur-shop"  # a shop that settles in EUR: USD is a mismatch
    text = dump(body)
    form = draw(st.integers(0, 9))
    if form == 0:  # a duplicate key: the last one counts, as in orjson
        text = text[:-1] + ',"amount":7,"nps":3,"type":"visit"}'
    elif form == 1:
        text = " \n" + text + "\t "
    elif form == 2:
        text = text + "x"
    elif form == 3:  # escapes the parsers must read alike
        text = text.replace('"c-1"', '"c\\u002d1\\ud800"' if draw(st.booleans()) else '"c\\u002d1\\/"')
    return text.encode("utf-8", "surrogatepass")


@given(near_valid())
@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@example(b'{"type":"purchase","event_id":"e","shop_id":"s","customer_id":"c","occurred_at":'
         b'"2024-05-01T12:00:00.5-00:00","order_id":"o","amount":1,"currency":"USD","margin_rate":0.1}')
@example(b'{"type":"visit","event_id":"e","shop_id":"s","customer_id":"c","occurred_at":'
         b'"2024-02-29T23:59:59.123456789+23:59","channel":null,"extra":[1,{"a":1e30}]}')
def test_near_valid_input_is_judged_as_the_contract_judges_it(raw: bytes) -> None:
    check(raw)


@given(st.floats(0.0001, 1.0))
@settings(max_examples=500, deadline=None)
def test_a_margin_rate_is_read_as_the_decimal_of_its_repr(rate: float) -> None:
    raw = (b'{"type":"purchase","event_id":"e","shop_id":"s","customer_id":"c","occurred_at":'
           b'"2024-05-01T12:00:00Z","order_id":"o","amount":1,"currency":"USD","margin_rate":'
           + repr(rate).encode() + b"}")
    assert check(raw) == (len(repr(rate).partition(".")[2]) <= 18 and "e" not in repr(rate))


def test_the_policy_s_rules_are_the_engine_s() -> None:
    """The two rules the fast path leaves to its caller: the clock and the currency."""
    body = {"type": "purchase", "event_id": "e", "shop_id": "eur-shop", "customer_id": "c",
            "order_id": "o", "amount": 5, "currency": "EUR"}
    for ahead, ok in ((timedelta(days=1), True), (timedelta(days=1, microseconds=1), False)):
        when = (NOW + ahead).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        raw = codec.dumps({**body, "occurred_at": when})
        assert loyalty_native.parse_event(raw) is not None
        check(raw)
        assert (python_view(raw) == "future_timestamp") is not ok
    raw = codec.dumps({**body, "currency": "USD", "occurred_at": "2024-05-01T12:00:00Z"})
    assert loyalty_native.parse_event(raw) is not None
    with pytest.raises(InvalidEvent) as err:
        NATIVE.parse(raw, now=NOW, policies=POLICIES)
    assert err.value.reason == "currency_mismatch"
