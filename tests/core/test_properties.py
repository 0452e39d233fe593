"""Hypothesis properties of the fold (DOMAIN.md "Ordering, duplicates, late events")."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.policy import PolicyBook
from scoring.clock import to_us
from scoring.engine import Engine
from tests.core.conftest import ENGINES, Customer
from tests.core.factory import T0, feedback, purchase, raw, redeem, refund, visit

LATENESS = timedelta(days=7)
ORDERS = [f"o{i}" for i in range(6)]


@st.composite
def customer_events(draw: Any) -> list[tuple[Any, bytes]]:
    """A customer's events in canonical order: (occurred_at, bytes), realistic mix and spans."""
    n = draw(st.integers(1, 25))
    spread = draw(st.sampled_from([3, 40, 500]))  # days: dense, monthly, multi-year (expiry)
    out = []
    for i in range(n):
        when = T0 + timedelta(days=draw(st.floats(0, spread)), seconds=i)
        kind = draw(st.sampled_from(["purchase"] * 4 + ["refund"] * 2 + ["visit", "feedback", "redeem"] * 1))
        eid = f"e{i:03d}"
        if kind == "purchase":
            data = purchase(when, draw(st.integers(1, 120_000)), order_id=draw(st.sampled_from(ORDERS)),
                            event_id=eid)
        elif kind == "refund":
            data = refund(when, draw(st.sampled_from(ORDERS)), draw(st.integers(1, 80_000)), event_id=eid)
        elif kind == "visit":
            data = visit(when, event_id=eid)
        elif kind == "feedback":
            data = feedback(when, draw(st.integers(0, 10)), event_id=eid,
                            touchpoint=draw(st.sampled_from([None, "web", "store"])))
        else:
            data = redeem(when, draw(st.integers(1, 900)), event_id=eid)
        out.append((when, data))
    out.sort(key=lambda x: (x[0], x[1]))
    return out


def arrival_order(events: list[tuple[Any, bytes]], seed: int) -> list[bytes]:
    """Shuffle so that no event arrives a full lateness behind the newest one seen."""
    rng = random.Random(seed)
    keyed = [(when + rng.random() * LATENESS * 0.999, data) for when, data in events]
    keyed.sort(key=lambda x: x[0])
    return [data for _, data in keyed]


def ledger_view(effects: list[dict]) -> dict[str, dict]:
    """What a downstream consumer holds after upserting by id and honouring voids."""
    view: dict[str, dict] = {}
    for e in effects:
        if e.get("void"):
            view.pop(e["id"], None)
        else:
            view[e["id"]] = {k: v for k, v in e.items() if k != "restated"}
    return view


def conserved(snap: dict) -> bool:
    return snap["points_earned_total"] == (snap["points_balance"] + snap["points_redeemed_total"]
                                           + snap["points_expired_total"] + snap["points_clawed_back_total"])


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("engine", ENGINES)
@FAST
@given(customer_events(), st.integers(0, 2**32))
def test_any_arrival_order_within_lateness_gives_the_canonical_snapshot(engine: Engine, events,
                                                                        seed) -> None:
    canonical = Customer(engine=engine).send(*[d for _, d in events])
    shuffled = Customer(engine=engine).send(*arrival_order(events, seed))
    assert all(o.status == "applied" for o in shuffled.outcomes)
    end = events[-1][0] + timedelta(days=1)
    assert shuffled.snap(end) == canonical.snap(end)
    # and a downstream consumer of the effects converges to the same ledger
    assert ledger_view(shuffled.effects) == ledger_view(canonical.effects)


@pytest.mark.parametrize("engine", ENGINES)
@FAST
@given(customer_events(), st.integers(0, 2**32), st.data())
def test_duplicates_change_nothing(engine: Engine, events, seed, data) -> None:
    arrivals = arrival_order(events, seed)
    with_dups = list(arrivals)
    for _ in range(data.draw(st.integers(1, 5))):
        i = data.draw(st.integers(0, len(arrivals) - 1))
        first = with_dups.index(arrivals[i])
        j = data.draw(st.integers(first + 1, len(with_dups)))
        with_dups.insert(j, arrivals[i])  # a redelivery, after the original
    clean = Customer(engine=engine).send(*arrivals)
    dup = Customer(engine=engine).send(*with_dups)
    end = events[-1][0]
    assert dup.snap(end) == clean.snap(end)
    assert sum(o.status == "applied" for o in dup.outcomes) == len(arrivals)
    # Redeliveries are recognised as duplicates for dedup_retention_days (90) of
    # event time and among the last DEDUP_RECENT_IDS accepted events; an older
    # one is past the lateness too and is rejected as too_late.
    for o in dup.outcomes:
        assert o.status in ("applied", "duplicate") or o.reason == "too_late"
    assert ledger_view(dup.effects) == ledger_view(clean.effects)


@FAST
@given(customer_events(), st.lists(st.integers(0, 900), min_size=1, max_size=5))
def test_points_are_conserved_and_never_negative(events, probe_days) -> None:
    c = Customer()
    for _, data in events:
        c.send(data)
        snap = c.snap()
        assert conserved(snap) and snap["points_balance"] >= 0
    for d in probe_days:
        from scoring.aggregate import L_REMAINING
        from scoring.clock import to_us
        from scoring.snapshot import head_as_of

        when = events[-1][0] + timedelta(days=d)
        head = head_as_of(c.state, to_us(when), c.policies.default)
        assert head.points_balance == sum(lot[L_REMAINING] for lot in head.lots)
        snap = c.snap(when)
        assert conserved(snap) and snap["points_balance"] >= 0 and snap["clawback_shortfall"] >= 0


@FAST
@given(customer_events(), st.integers(0, 2**32), st.integers(0, 900))
def test_state_survives_serialisation(events, seed, probe) -> None:
    """Live objects (in-order fast path), decoded states (full re-fold) and decoded
    states given back their kept head (the state cache's second tier) agree exactly."""
    from scoring.state import CustomerState, StateCache

    arrivals = arrival_order(events, seed)
    live = Customer(keep_objects=True).send(*arrivals)
    decoded = Customer().send(*arrivals)
    heads = StateCache(capacity=0, head_budget=1 << 20)
    kept = Customer(cache=heads).send(*arrivals)
    assert live.state == decoded.state == kept.state
    assert live.effects == decoded.effects == kept.effects
    assert heads.head_hits == sum(o.changed for o in kept.outcomes)  # every state came back with its head
    when = events[-1][0] + timedelta(days=probe)
    assert live.snap(when) == decoded.snap(when) == kept.snap(when)
    assert CustomerState.decode(live.state.encode()).encode() == live.state.encode()


@pytest.mark.parametrize("engine", ENGINES)
@FAST
@given(customer_events(), st.integers(1, 800))
def test_sweep_publishes_what_a_later_event_would_and_changes_no_snapshot(engine: Engine, events,
                                                                         days) -> None:
    policy = PolicyBook().default
    c = Customer(engine=engine).send(*[d for _, d in events])
    last = events[-1][0]
    now = last + timedelta(days=days)
    swept = engine.advance(c.state, to_us(now), policy)
    assert swept.status == "applied"
    later = now + timedelta(days=1)
    assert engine.snapshot(swept.state, later, policy) == engine.snapshot(c.state, later, policy)
    # a later visit re-derives the same time effects: nothing new but the visit's own
    c2 = Customer(engine=engine).send(*[d for _, d in events])
    c2.state = swept.state
    c2.send(raw("visit", now + timedelta(seconds=1), event_id="late-visit"))
    again = ledger_view(c2.outcomes[-1].effects)
    assert not any(e["kind"] == "ledger" and e["entry"] == "expire" for e in again.values())
    # and a second sweep at the same instant has nothing to do
    assert engine.advance(swept.state, to_us(now), policy).changed is False


def test_state_cache_serves_live_objects_only_for_identical_bytes() -> None:
    from scoring.fold import apply
    from scoring.state import StateCache
    from tests.core.factory import parse

    policy = PolicyBook().default
    cache = StateCache(capacity=2)
    key = b"shop-1|c1"
    out = apply(None, parse(purchase(T0, 100, order_id="a")), policy)
    raw = out.state.encode()
    cache.put(key, raw, out.state)
    assert cache.get(key, raw) is out.state and cache.hits == 1
    other = apply(out.state, parse(visit(T0 + timedelta(days=1))), policy).state.encode()
    decoded = cache.get(key, other)  # someone else wrote the row: decode, never the stale object
    assert decoded is not out.state and decoded.encode() == other and cache.misses == 1
    assert cache.get(key, None) is None
    cache.put(b"k2", raw, out.state)
    cache.put(b"k3", raw, out.state)
    assert len(cache) == 2 and cache.get(key, raw) is not out.state  # evicted (LRU)


def test_state_cache_peek_leaves_it_as_it_was_and_replace_keeps_live_entries_live() -> None:
    from scoring.fold import apply
    from scoring.state import StateCache
    from tests.core.factory import parse

    policy = PolicyBook().default
    cache = StateCache(capacity=2)
    first = apply(None, parse(purchase(T0, 100, order_id="a")), policy).state
    raw = first.encode()
    cache.put(b"a", raw, first)
    cache.put(b"b", raw, first)
    # peek: the live object for the same bytes, a decoded one otherwise; no counters,
    # no recency: "a" stays the oldest and is the one the next put evicts
    assert cache.peek(b"a", raw) is first
    later = apply(first, parse(visit(T0 + timedelta(days=1))), policy).state
    other = later.encode()
    assert cache.peek(b"a", other) is not first and cache.peek(b"a", other).encode() == other
    assert (cache.hits, cache.misses) == (0, 0)
    cache.put(b"c", raw, first)
    assert cache.peek(b"a", raw) is not first and cache.peek(b"b", raw) is first
    # replace: a live key takes the other writer's bytes and state, in place
    cache.replace(b"b", other, later)
    assert cache.get(b"b", other) is later and cache.get(b"b", raw) is not first
    cache.replace(b"z", other, later)  # not live: not added
    assert len(cache) == 2 and cache.peek(b"z", other) is not later


def test_state_cache_keeps_heads_of_evicted_states_within_its_byte_budget() -> None:
    from scoring.fold import apply, cached_head
    from scoring.state import StateCache
    from tests.core.factory import parse

    policy = PolicyBook().default
    states = {}
    for n in range(3):
        out = apply(None, parse(purchase(T0, 100 + n, order_id="a", customer_id=f"c{n}")), policy)
        states[f"c{n}".encode()] = (out.state.encode(), out.state)
    one = StateCache(capacity=1, head_budget=1 << 20)
    for key, (data, state) in states.items():
        one.put(key, data, state)
    assert len(one) == 1 and len(one._heads) == 2  # c0 and c1 left the live tier
    back = one.get(b"c0", states[b"c0"][0])
    assert back is not states[b"c0"][1] and one.head_hits == 1
    assert cached_head(back, policy) == cached_head(states[b"c0"][1], policy)
    assert cached_head(back, PolicyBook().default) is None  # another policy object: re-fold
    assert cached_head(one.get(b"c1", states[b"c1"][0] + b" "), policy) is None  # other bytes
    assert b"c1" not in one._heads and one.head_hits == 1
    one.discard(b"c0")
    assert not one._heads and one.head_bytes == 0
    # The budget is in bytes: an entry charges at least its row and its head.
    size = len(states[b"c0"][0]) * 2
    tight = StateCache(capacity=0, head_budget=size + 400)
    for key, (data, state) in states.items():
        tight.put(key, data, state)
    assert list(tight._heads) == [b"c2"] and 0 < tight.head_bytes <= size + 400
    assert StateCache(capacity=0, head_budget=100).get(b"c2", states[b"c2"][0]).head is None


@settings(max_examples=300, deadline=None)
@given(spend=st.integers(0, 10**12), margin=st.integers(-10**12, 10**12),
       count=st.integers(1, 10**4), orders=st.integers(0, 400), tenure=st.integers(0, 5000),
       months=st.integers(1, 120), shop_num=st.integers(0, 100), shop_den=st.integers(1, 100))
def test_ltv_formula_in_integers_equals_the_rational_definition(
        spend: int, margin: int, count: int, orders: int, tenure: int, months: int,
        shop_num: int, shop_den: int) -> None:
    """The integer form of S x C x P x t is the definition, computed with Fractions."""
    from fractions import Fraction

    from scoring.aggregate import Agg
    from scoring.ltv import ltv_formula, round_half_even

    agg = Agg()
    agg.purchase_count, agg.spend_total, agg.margin_total = count, spend, margin
    agg.day_net = [[100, 0, orders]] if orders else []  # `orders` orders on day 100
    shop = Fraction(shop_num, shop_den)
    s = Fraction(spend, count)
    span = min(Fraction(12), Fraction((tenure + 1) * 10_000, 304_375))
    c = Fraction(orders) / max(Fraction(1), span)
    p = Fraction(margin, spend) if spend else shop
    assert ltv_formula(agg, 100, tenure, shop, months) == round_half_even(s * c * p * months)
