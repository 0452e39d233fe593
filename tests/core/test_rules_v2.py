"""Domain rules v2 of the customer snapshot: wallet band, detractor follow-up,
NPS band edges, and the state encoding that carries them."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.outputs import CustomerSnapshot, DetractorAlert, VoidRecord
from schemas.policy import PolicyBook, PolicyError
from scoring import nps
from scoring.snapshot import snapshot
from scoring.state import CustomerState
from tests.core.conftest import Customer
from tests.core.factory import at, feedback, iso, purchase, visit

DATA = Path(__file__).parent / "data"


def alerts(c: Customer) -> list[dict]:
    return [e for e in c.effects if e["kind"] == "alert"]


@pytest.mark.parametrize(("sow", "band"), [
    (100, "committed"), (70, "committed"), (69, "moderate"), (50, "moderate"), (49, "vulnerable"),
    (0, "vulnerable")])
def test_wallet_band_edges(sow: int, band: str) -> None:
    snap = Customer().send(feedback(at(0), 8, share_of_wallet=sow)).snap()
    assert snap["wallet_band"] == band


def test_wallet_band_is_null_without_share_of_wallet_and_follows_the_latest_answer() -> None:
    c = Customer().send(purchase(at(0), 100))
    assert c.snap()["wallet_band"] is None
    c.send(feedback(at(1), 8, share_of_wallet=80), feedback(at(2), 8))
    assert c.snap()["wallet_band"] is None  # the latest answer has no share of wallet


def test_detractor_run_recovery_and_relapse() -> None:
    c = Customer().send(purchase(at(0), 100))
    snap = c.snap()
    assert (snap["detractor_status"], snap["detractor_since"]) == (None, None)
    c.send(feedback(at(1), 8))
    assert c.snap()["detractor_status"] == "none"  # never a detractor: not "recovered"
    c.send(feedback(at(2), 6), feedback(at(3), 0))
    snap = c.snap()
    assert snap["detractor_status"] == "detractor"
    assert snap["detractor_since"] == iso(at(2)).replace(".000000", "")  # first answer of the run
    c.send(feedback(at(4), 7))
    snap = c.snap()
    assert (snap["detractor_status"], snap["detractor_since"]) == ("recovered", None)
    c.send(feedback(at(5), 10))
    assert c.snap()["detractor_status"] == "recovered"
    c.send(feedback(at(6), 2))
    snap = c.snap()
    assert snap["detractor_since"] == iso(at(6)).replace(".000000", "")  # a new run
    CustomerSnapshot.model_validate(snap)


def test_detractor_follow_up_honours_canonical_order_of_late_answers() -> None:
    # The 3 arrives last but occurred first: canonical order is 3, 9, 5.
    c = Customer().send(feedback(at(2), 9, event_id="b"), feedback(at(3), 5, event_id="c"))
    assert c.snap()["detractor_since"] == "2024-01-04T12:00:00Z"
    c.send(feedback(at(1), 3, event_id="a"))
    snap = c.snap()
    assert snap["detractor_status"] == "detractor"
    assert snap["detractor_since"] == "2024-01-04T12:00:00Z"  # the 9 broke the run
    # A late 4 just before the 5 joins the current run and moves its start.
    c.send(feedback(at(2, hours=12), 4, event_id="bb"))
    assert c.snap()["detractor_since"] == "2024-01-04T00:00:00Z"


def test_thresholds_are_per_shop_policy_settings() -> None:
    policies = PolicyBook(shops={"shop-1": {
        "wallet_committed_min_pct": 90, "wallet_moderate_min_pct": 20,
        "detractor_status_max_nps": 4, "recovered_min_nps": 9}})
    c = Customer(policies).send(feedback(at(0), 5, share_of_wallet=80))
    snap = c.snap()
    assert (snap["wallet_band"], snap["detractor_status"]) == ("moderate", "none")
    c.send(feedback(at(1), 4), feedback(at(2), 8))
    assert c.snap()["detractor_status"] == "none"  # 8 is below this shop's recovery mark
    c.send(feedback(at(3), 9))
    assert c.snap()["detractor_status"] == "recovered"


@pytest.mark.parametrize("overrides", [
    {"wallet_moderate_min_pct": 70}, {"recovered_min_nps": 6}, {"nps_band_leader_min": 50},
    {"nps_band_poor_max": 30}])
def test_inconsistent_v2_thresholds_are_refused(overrides: dict) -> None:
    with pytest.raises(PolicyError):
        PolicyBook(shops={"s": overrides})


def test_nps_band_edges_follow_the_policy() -> None:
    policy = PolicyBook(defaults={"nps_band_leader_min": 60, "nps_band_good_max": 40}).default
    assert nps.band(60, policy) == "leader" and nps.band(59.9, policy) == "strong"
    assert nps.band(40.1, policy) == "strong" and nps.band(40, policy) == "good"


def test_alerts_when_becoming_a_detractor_and_recovering() -> None:
    c = Customer().send(feedback(at(0), 9, event_id="f0"),
                        feedback(at(1), 3, event_id="f1", comment="cold coffee", touchpoint="store"),
                        feedback(at(2), 2, event_id="f2"),
                        feedback(at(3), 8, event_id="f3", touchpoint="app"))
    got = alerts(c)
    assert [(a["alert"], a["event_id"]) for a in got] == [("detractor", "f1"), ("recovered", "f3")]
    first = got[0]
    assert (first["comment"], first["touchpoint"], first["nps"]) == ("cold coffee", "store", 3)
    assert first["detractor_since"] == first["at"] == "2024-01-02T12:00:00Z"
    assert got[1]["detractor_since"] is None and got[1]["comment"] is None
    for a in got:
        DetractorAlert.model_validate(a)
    again = Customer().send(feedback(at(0), 9, event_id="f0"),
                            feedback(at(1), 3, event_id="f1", comment="cold coffee", touchpoint="store"))
    assert alerts(again)[0]["id"] == first["id"]  # deterministic


def test_a_late_answer_restates_or_voids_an_alert() -> None:
    c = Customer().send(feedback(at(2), 3, event_id="late-run"))
    [published] = alerts(c)
    c.send(feedback(at(1), 2, event_id="earlier"))  # the run now starts here
    new = alerts(c)[1:]
    by_id = {a["id"]: a for a in new}
    assert by_id[published["id"]].get("void") is True
    VoidRecord.model_validate(by_id[published["id"]])
    [fresh] = [a for a in new if not a.get("void")]
    assert (fresh["event_id"], fresh["alert"]) == ("earlier", "detractor")


def test_touchpoint_and_comment_survive_the_state_encoding() -> None:
    c = Customer().send(feedback(at(0), 9, touchpoint="web"), feedback(at(1), 3, touchpoint="web"),
                        feedback(at(2), 8), purchase(at(30), 100))
    head = c.state.ckpt  # every answer is finalized (30 days later)
    assert sorted(head.fb_tp, key=str) == sorted([["web", 1, 0, 1], [None, 0, 1, 0]], key=str)


def test_a_state_written_by_version_1_still_decodes_and_folds_on() -> None:
    # Written by the previous build (format 1): purchases, a promoter answer,
    # then detractor answers at days 10, 20 (finalized) and 29 (still open).
    raw = (DATA / "state_v1_detractor.json").read_bytes()
    assert raw.startswith(b"[1,")
    state = CustomerState.decode(raw)
    policy = PolicyBook().default
    snap = snapshot(state, None, policy)
    assert (snap["nps_last"], snap["detractor_status"], snap["stage"]) == (4, "detractor", "repeat")
    # Version 1 kept answer dates, not instants: the run starts at that day's midnight.
    assert snap["detractor_since"] == "2024-01-11T00:00:00Z"
    assert snap["loyalty_type"] == "spurious" and snap["spend_total"] == 4500  # repeat, no bond
    assert state.ckpt.fb_tp == [[None, 1, 0, 2]]  # v1 dropped touchpoints
    # It folds on and re-encodes as the current format.
    c = Customer()
    c.state = state
    c.send(feedback(at(30), 9, touchpoint="app"))
    snap = c.snap()
    assert (snap["detractor_status"], snap["loyalty_type"]) == ("recovered", "true")
    assert c.state.encode().startswith(b"[4,")  # upgraded when written
    assert [a["alert"] for a in alerts(c)] == ["recovered"]
    # Version 1 kept no shop-KPI contribution: it is computed from the old
    # state, so the service's tally moves from what the customer counted as.
    from scoring.shop import C_DET, C_SPEND, C_TYPE

    before, after = c.outcomes[-1].kpi_before, c.outcomes[-1].kpi_after
    assert (before[C_DET], before[C_TYPE], before[C_SPEND]) == ("detractor", "spurious", 4500)
    assert (after[C_DET], after[C_TYPE]) == ("recovered", "true")


def test_an_unknown_state_format_is_refused_with_a_clear_error() -> None:
    from scoring.state import StateFormatError

    with pytest.raises(StateFormatError, match="state format 9"):
        CustomerState.decode(b'[9,"s","c"]')
    with pytest.raises(StateFormatError, match="unreadable"):
        CustomerState.decode(b'[2,"s","c",[1,2,3],[],[],[],null,null,null,null,null,[0,0,0,0]]')


def test_a_state_is_written_in_format_3_on_request_and_a_newer_one_is_told_apart() -> None:
    """Format 3 (for a group that still runs an older build) is format 4 without
    the positions; a format this build does not know is refused, a newer one as
    :class:`NewerStateFormat` (the worker stops rather than dead-letter)."""
    from schemas import codec
    from scoring.state import NewerStateFormat, StateFormatError

    c = Customer()
    c.send(purchase(at(1), 3000, order_id="o1"))
    c.state.positions = {"loyalty.purchases:2": 41}
    v3 = c.state.encode(3)
    assert v3.startswith(b"[3,") and b"loyalty.purchases" not in v3
    decoded = CustomerState.decode(v3)
    assert decoded.positions == {} and decoded.encode(3) == v3
    assert codec.loads(decoded.encode()) == [4, *codec.loads(v3)[1:], {}]
    with pytest.raises(ValueError, match="this build writes"):
        c.state.encode(5)
    with pytest.raises(NewerStateFormat, match="written by a newer build"):
        CustomerState.decode(b'[5,"s","c"]')
    with pytest.raises(StateFormatError) as refused:
        CustomerState.decode(b'[0,"s","c"]')
    assert not isinstance(refused.value, NewerStateFormat)


def test_states_written_by_versions_2_and_3_decode_to_the_same_state() -> None:
    """Format 3 changed only the layout of the id maps, format 4 appended the
    input positions (none in a state the core folds): a version-2 state (rows
    ``[id, *value]``) and a version-3 one decode to exactly the state they
    were written from."""
    from schemas import codec

    c = Customer()
    c.send(purchase(at(1), 3000, order_id="o1"), feedback(at(2), 4),
           purchase(at(3), 1500, order_id="o2"))
    state = c.state
    assert state.seen and state.emitted
    v4 = codec.loads(state.encode())
    assert v4[0] == 4 and v4[-1] == {}
    v3 = [3, *v4[1:-1]]
    v2 = [2, *v3[1:5], [[k, *v] for k, v in state.seen.items()],
          [[k, *v] for k, v in state.emitted.items()], *v3[7:]]
    assert CustomerState.decode(codec.dumps(v3)) == state
    assert CustomerState.decode(codec.dumps(v2)) == state


def test_input_positions_travel_with_the_state_and_the_fold_keeps_them() -> None:
    """The service's positions are encoded, decoded, and carried unchanged by
    every state the fold derives (an applied event, time passing); a state
    whose positions are not a map is refused as unreadable."""
    from schemas import codec
    from scoring import fold
    from scoring.clock import to_us
    from scoring.state import StateFormatError

    c = Customer()
    c.send(purchase(at(1), 3000, order_id="o1"))
    c.state.positions = {"loyalty.purchases:2": 41}
    c.send(visit(at(2)))
    assert c.state.positions == {"loyalty.purchases:2": 41}
    later = fold.advance(c.state, to_us(at(400)), PolicyBook().for_shop(c.state.shop_id))
    assert later.changed and later.state.positions == {"loyalty.purchases:2": 41}
    decoded = CustomerState.decode(later.state.encode())
    assert decoded.positions == {"loyalty.purchases:2": 41} and decoded == later.state
    raw = codec.loads(later.state.encode())
    with pytest.raises(StateFormatError, match="positions"):
        CustomerState.decode(codec.dumps([*raw[:-1], [41]]))
