"""Amount and points bounds (rule v2): no input reaches the fold out of range,
and no input makes the fold, a snapshot or a state encoding fail."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import dumps, loads
from schemas.events import MAX_AMOUNT, REASONS, InvalidEvent
from schemas.policy import PolicyBook
from scoring.fold import APPLIED, MAX_CUSTOMER_GROSS, REJECTED, apply
from scoring.replay import fold_lines, snapshots
from scoring.shop import ShopTally
from scoring.snapshot import snapshot
from scoring.state import CustomerState
from tests.core.conftest import Customer
from tests.core.factory import at, iso, parse, purchase

HUGE = [MAX_AMOUNT, MAX_AMOUNT + 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 2**64 + 1, 10**30, -(2**63)]
integers = st.one_of(st.sampled_from(HUGE), st.integers(-(2**70), 2**70), st.integers(1, 10**13))


def literal(n: int, digits: int) -> bytes:
    """``n``, or a run of ``digits`` nines (an integer no 64-bit decoder holds)."""
    return b"9" * digits if digits else str(n).encode()


@st.composite
def hostile_events(draw: Any) -> bytes:
    """One event whose numeric fields are drawn from huge and edge integers."""
    kind = draw(st.sampled_from(["purchase", "refund", "redemption", "feedback"]))
    n = draw(integers)
    digits = draw(st.sampled_from([0] * 6 + [25, 400, 5000]))
    value = literal(n, digits)
    head = (b'{"type":"%s","event_id":"e%d","shop_id":"s","customer_id":"c",'
            b'"occurred_at":"%s"' % (kind.encode(), draw(st.integers(0, 3)),
                                     iso(at(draw(st.integers(0, 3)))).encode()))
    if kind in ("purchase", "refund"):
        body = b',"order_id":"o","currency":"USD","amount":' + value
        if kind == "purchase" and draw(st.booleans()):
            body += b',"items":[{"sku":"x","quantity":%s,"unit_amount":%s}]' % (
                literal(draw(integers), 0), literal(draw(integers), 0))
    elif kind == "redemption":
        body = b',"points":' + value
    else:
        body = b',"nps":%s,"share_of_wallet":%s' % (literal(draw(integers), 0), value)
    return head + body + b"}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile_events(), min_size=1, max_size=6))
def test_huge_integers_are_rejected_or_fold_and_encode(lines: list[bytes]) -> None:
    policies = PolicyBook()
    policy = policies.default
    state: CustomerState | None = None
    for data in lines:
        try:
            event = parse(data, policies)
        except InvalidEvent as exc:
            assert exc.reason in REASONS and exc.detail
            continue
        for name in ("amount", "points"):
            assert 0 < getattr(event, name, 1) <= MAX_AMOUNT
        out = apply(state, event, policy)
        assert out.status != REJECTED or out.reason in ("conflicting_duplicate", "too_late", "out_of_range")
        if out.status == APPLIED:
            state = CustomerState.decode(out.state.encode())
            assert state == out.state
            dumps(snapshot(state, None, policy))
            dumps(out.effects)
    # The offline replay path: fold, snapshots, shop figures, all encoded.
    res = fold_lines(lines, policies=policies, now=at(3650))
    _, snaps, tallies = snapshots(res, policies)
    for snap in snaps:
        dumps(snap)
    for tally in tallies.values():
        assert ShopTally.decode(tally.encode()) is not None


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("amount", MAX_AMOUNT + 1, "out_of_range"), ("amount", 2**63, "out_of_range"),
    ("amount", 10**400, "out_of_range"), ("amount", 0, "out_of_range"),
    ("amount", "1e30", "wrong_type"), ("amount", "1.0", "wrong_type")])
def test_amount_bounds_give_a_reason_naming_the_field(field: str, value: Any, reason: str) -> None:
    base = loads(purchase(at(0), 1))
    text = dumps(base).replace(b'"amount":1', b'"amount":' + str(value).encode())
    with pytest.raises(InvalidEvent) as err:
        parse(text)
    assert err.value.reason == reason
    assert err.value.detail.startswith(f"{field}:") and len(err.value.detail) < 120


def test_a_timestamp_outside_the_utc_years_is_invalid_not_a_crash() -> None:
    base = loads(purchase(at(0), 1))
    base["occurred_at"] = "0001-01-01T00:00:00+01:00"
    with pytest.raises(InvalidEvent) as err:
        parse(dumps(base))
    assert err.value.reason == "invalid_timestamp"


def test_a_customers_gross_purchases_are_capped() -> None:
    n = MAX_CUSTOMER_GROSS // MAX_AMOUNT
    c = Customer(keep_objects=True)
    c.send(*(purchase(at(i / 100), MAX_AMOUNT, order_id=f"o{i}") for i in range(n)))
    assert all(o.status == APPLIED for o in c.outcomes)
    c.send(purchase(at(n / 100), 1, order_id="one-more"))
    last = c.outcomes[-1]
    assert (last.status, last.reason) == (REJECTED, "out_of_range")
    snap = c.snap()
    assert snap["spend_total"] == MAX_CUSTOMER_GROSS
    dumps(snap)
    assert CustomerState.decode(c.state.encode()) == c.state
