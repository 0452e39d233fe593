"""A state written under one policy, advanced under another (``rederive``, ``advance(stale=)``).

Policies are read when a worker starts; the states in its table were folded
by whoever ran before, possibly under other settings. ``rederive`` tells
whether a state's derived figures are what the running policy gives; under
the policy it was written with they always are.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.policy import PolicyBook
from scoring import fold
from scoring.clock import to_us
from scoring.engine import PYTHON, Engine, State
from scoring.fold import rederive
from tests.core.conftest import ENGINES, Customer
from tests.core.factory import T0, purchase, visit
from tests.core.test_properties import FAST, arrival_order, customer_events

SHORT_LAPSE = PolicyBook({"lapsed_days": 180})
DOUBLE_POINTS = PolicyBook({"points_per_unit": "2"})


def decoded(state: State, engine: Engine = PYTHON) -> State:
    """The state as a new worker reads it from its table: no in-memory head."""
    return engine.decode(engine.encode(state))


def recheck(state: State, now_us: int, policy: Any, engine: Engine = PYTHON) -> Any:
    """What the sweep's first full scan does with a row."""
    return engine.advance(state, now_us, policy, stale=engine.rederive(state, policy)[1])


@pytest.mark.parametrize("engine", ENGINES)
@FAST
@given(customer_events(), st.integers(0, 2**32), st.integers(0, 800))
def test_under_the_same_policy_a_recheck_changes_nothing(engine: Engine, events, seed,
                                                         days) -> None:
    policy = PolicyBook().default
    c = Customer(engine=engine).send(*arrival_order(events, seed))
    state = decoded(c.state, engine)
    head, stale = engine.rederive(state, policy)
    assert not stale and head is not None
    now = to_us(events[-1][0] + timedelta(days=days))
    plain, rechecked = engine.advance(state, now, policy), recheck(state, now, policy, engine)
    assert rechecked.changed == plain.changed
    assert rechecked.effects == plain.effects
    assert engine.encode(rechecked.state) == engine.encode(plain.state)
    if plain.changed:  # and once advanced, the advanced state rechecks clean too
        assert engine.rederive(decoded(plain.state, engine), policy)[1] is False


@pytest.mark.parametrize("engine", ENGINES)
def test_a_shorter_lapse_is_published_at_its_own_instant_not_at_the_old_due_one(
        engine: Engine) -> None:
    old = Customer(engine=engine).send(purchase(T0, 5_000, event_id="p1"))
    state = decoded(old.state, engine)
    new_policy = SHORT_LAPSE.default
    now = to_us(T0 + timedelta(days=200))
    # Without a recheck the state's next due instant (the old 365-day lapse) rules.
    assert state.next_due > now
    assert engine.advance(state, now, new_policy).changed is False

    assert engine.rederive(state, new_policy)[1] is True
    out = recheck(state, now, new_policy, engine)
    assert out.changed and out.stage_before == "first_purchase" and out.stage_after == "lapsed"
    [transition] = [e for e in out.effects if e["kind"] == "transition"]
    assert (transition["from"], transition["to"]) == ("first_purchase", "lapsed")
    # the midnight after 180 days without a purchase: what the new policy gives from the start
    fresh = Customer(SHORT_LAPSE, engine=engine).send(purchase(T0, 5_000, event_id="p1"))
    expected = engine.advance(decoded(fresh.state, engine), now, new_policy)
    assert out.effects == expected.effects
    assert engine.encode(out.state) == engine.encode(expected.state)
    # rechecked once, the state holds the new policy's figures: nothing left to do
    assert engine.rederive(decoded(out.state, engine), new_policy)[1] is False


@pytest.mark.parametrize("engine", ENGINES)
def test_more_points_per_unit_restate_the_open_window_as_a_late_event_would(
        engine: Engine) -> None:
    events = [purchase(T0, 5_000, event_id="p1"), visit(T0 + timedelta(days=2), event_id="v1")]
    state = decoded(Customer(engine=engine).send(*events).state, engine)
    new_policy = DOUBLE_POINTS.default
    out = recheck(state, state.clock, new_policy, engine)
    [earn] = [e for e in out.effects if e["kind"] == "ledger"]
    assert earn["entry"] == "earn" and earn["points"] == 100 and earn["restated"] is True
    fresh = Customer(DOUBLE_POINTS, engine=engine).send(*events)
    assert engine.encode(out.state) == engine.encode(decoded(fresh.state, engine))


def test_a_live_state_of_this_policy_is_not_re_folded(monkeypatch: pytest.MonkeyPatch) -> None:
    c = Customer(keep_objects=True).send(purchase(T0, 5_000, event_id="p1"))
    policy = c.policies.for_shop(c.state.shop_id)
    monkeypatch.setattr(fold, "fold_open", lambda *a, **kw: pytest.fail("re-folded"))
    # the head was folded under this very policy object: trusted, copied, not re-folded
    assert c.state.head is not None
    head, stale = rederive(c.state, policy)
    assert stale is False and head is not c.state.head[1] and head == c.state.head[1]


def test_a_stage_the_policy_changes_inside_finalized_history_moves_at_the_open_window() -> None:
    """The purchase and the first visit are finalized (the second visit is more than
    the lateness later); under the shorter lapse the customer was lapsed before the
    first visit. Only the aggregate of finalized events is kept: the re-fold of the
    open window moves the stage at its first event, the second visit."""
    second_visit = T0 + timedelta(days=210)
    events = [purchase(T0, 5_000, event_id="p1"), visit(T0 + timedelta(days=200), event_id="v1"),
              visit(second_visit, event_id="v2")]
    c = Customer().send(*events)
    state = decoded(c.state)
    assert state.ckpt.t_us == to_us(T0 + timedelta(days=200)) and state.stage == "first_purchase"
    new_policy = SHORT_LAPSE.default
    assert rederive(state, new_policy)[1] is True

    out = recheck(state, to_us(T0 + timedelta(days=211)), new_policy)
    assert out.stage_after == "lapsed"
    [transition] = [e for e in out.effects if e["kind"] == "transition"]
    assert (transition["from"], transition["to"], transition["cause"]) == (
        "first_purchase", "lapsed", {"type": "event", "event_id": "v2"})
    assert transition["at"] == second_visit.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert rederive(decoded(out.state), new_policy)[1] is False
    # the customer's next event folds onto that: no second transition
    c.policies, c.state = SHORT_LAPSE, decoded(out.state)
    c.send(visit(T0 + timedelta(days=215), event_id="v3"))
    assert not [e for e in c.outcomes[-1].effects if e["kind"] == "transition"]
    assert c.state.stage == "lapsed"
