"""RFM (scoring/rfm.py, docs/domain.md "RFM"): cut points, scores, segments, replay."""

from __future__ import annotations

import typing
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import codec
from schemas.outputs import CustomerSnapshot
from schemas.policy import PolicyBook
from scoring import rfm
from scoring.clock import to_us
from scoring.replay import fit_rfm_models, fold_lines
from scoring.snapshot import head_as_of

AS_OF = datetime(2026, 1, 1, tzinfo=UTC)


def test_cut_points_are_nearest_rank_quintiles_computed_by_hand() -> None:
    assert rfm.cut_points(range(1, 11)) == (2, 4, 6, 8)
    assert [rfm.score((2, 4, 6, 8), x) for x in range(1, 11)] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    # n = 7: ceil(7k/5) = 2, 3, 5, 6
    assert rfm.cut_points([70, 10, 60, 20, 50, 30, 40]) == (20, 30, 50, 60)
    assert rfm.cut_points([5]) == (5, 5, 5, 5)
    # ties are never split: nine one-day buyers and one two-day buyer
    cuts = rfm.cut_points([1] * 9 + [2])
    assert cuts == (1, 1, 1, 1) and rfm.score(cuts, 1) == 1 and rfm.score(cuts, 2) == 5


def test_recency_is_scored_negated_so_recent_buyers_score_high() -> None:
    buyers = [(days, 1, 100) for days in (0, 10, 20, 30, 40, 50, 60, 70, 80, 90)]
    model = rfm.fit(buyers, min_customers=10)
    assert model is not None and model.recency == (-80, -60, -40, -20)
    assert rfm.scores(model, (0, 1, 100))["rfm_recency"] == 5
    assert rfm.scores(model, (90, 1, 100))["rfm_recency"] == 1
    assert rfm.scores(model, (45, 1, 100))["rfm_recency"] == 3


def test_null_below_the_minimum_and_without_purchases() -> None:
    assert rfm.fit([(1, 1, 1)] * 9, min_customers=10) is None
    assert rfm.fit([], min_customers=0) is None
    model = rfm.fit([(1, 1, 1)] * 10, min_customers=10)
    assert rfm.scores(model, None) == dict.fromkeys(rfm.RFM_FIELDS)
    assert rfm.scores(None, (1, 1, 1)) == dict.fromkeys(rfm.RFM_FIELDS)


def test_every_r_f_pair_has_exactly_one_segment_and_the_schema_lists_them() -> None:
    pairs = [(r, f) for _, rs, fs in rfm.SEGMENT_TABLE for r in rs for f in fs]
    assert sorted(pairs) == [(r, f) for r in range(1, 6) for f in range(1, 6)]
    assert rfm.SEGMENTS[(5, 5)] == "champions" and rfm.SEGMENTS[(1, 1)] == "hibernating"
    assert rfm.SEGMENTS[(4, 4)] == "loyal" and rfm.SEGMENTS[(2, 3)] == "at_risk"
    literal = CustomerSnapshot.model_fields["rfm_segment"].annotation
    names = {a for arg in typing.get_args(literal) for a in typing.get_args(arg)}
    assert names == {name for name, _, _ in rfm.SEGMENT_TABLE}


def test_the_model_round_trips_and_a_malformed_one_is_refused() -> None:
    model = rfm.fit([(d, d % 3 + 1, 100 * d) for d in range(20)], min_customers=1)
    assert model is not None and rfm.RfmModel.from_dict(codec.loads(codec.dumps(model.to_dict()))) == model
    with pytest.raises(ValueError):
        rfm.RfmModel.from_dict({**model.to_dict(), "frequency": [3, 2, 1, 0]})


values_st = st.tuples(st.integers(0, 3000), st.integers(1, 400), st.integers(0, 10**9))


@settings(max_examples=200, deadline=None)
@given(st.lists(values_st, min_size=1, max_size=60), values_st, values_st)
def test_scores_are_1_to_5_and_monotone_in_each_value(buyers, a, b) -> None:  # type: ignore[no-untyped-def]
    model = rfm.fit(buyers, min_customers=1)
    sa, sb = rfm.scores(model, a), rfm.scores(model, b)
    for name in ("rfm_recency", "rfm_frequency", "rfm_monetary"):
        # the snapshot contract: an integer score 1-5 (not a rank, a float or None)
        assert type(sa[name]) is int and sa[name] in range(1, 6), (name, sa[name])
    # more recent (fewer days), more frequent, more spend: never a lower score
    assert (a[0] <= b[0]) <= (sa["rfm_recency"] >= sb["rfm_recency"])
    assert (a[1] <= b[1]) <= (sa["rfm_frequency"] <= sb["rfm_frequency"])
    assert (a[2] <= b[2]) <= (sa["rfm_monetary"] <= sb["rfm_monetary"])
    assert sa["rfm_segment"] == rfm.SEGMENTS[(sa["rfm_recency"], sa["rfm_frequency"])]
    # a 5 means strictly above the 80th percentile: at most a fifth of the buyers
    top = sum(1 for x in buyers if rfm.scores(model, x)["rfm_monetary"] == 5)
    assert top <= len(buyers) // 5


def population(n: int) -> list[bytes]:
    """``n`` buyers with 1-5 purchase days, different spend and last purchase dates."""
    lines = []
    for i in range(n):
        for j in range(i % 5 + 1):
            lines.append(codec.dumps({
                "type": "purchase", "event_id": f"c{i}-{j}", "shop_id": "s1", "customer_id": f"c{i}",
                "occurred_at": f"2025-{1 + (i * 7 + j) % 12:02d}-{1 + (i + 3 * j) % 28:02d}T10:00:00Z",
                "order_id": f"o{i}-{j}", "amount": 500 + (i * 37) % 4000, "currency": "USD"}))
    lines.append(codec.dumps({"type": "visit", "event_id": "v", "shop_id": "s1",
                              "customer_id": "visitor", "occurred_at": "2025-06-01T10:00:00Z"}))
    return lines


def test_replay_scores_every_buyer_once_the_shop_has_enough_of_them() -> None:
    policies = PolicyBook()
    res = fold_lines(population(40), policies=policies, as_of=AS_OF)
    heads = {k: head_as_of(s, to_us(AS_OF), policies.default) for k, s in res.states.items()}
    assert fit_rfm_models(heads, to_us(AS_OF))["s1"] is None  # 40 < 200 buyers
    model = fit_rfm_models(heads, to_us(AS_OF), min_customers=40)["s1"]
    assert model is not None and model.customers == 40  # the visitor is not a buyer
    assert model.frequency == (1, 2, 3, 4)  # purchase days 1..5, eight buyers each
