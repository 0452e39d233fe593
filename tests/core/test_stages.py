"""The stage between events: :func:`scoring.stages.change_days` against a day-by-day scan."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from schemas.policy import ShopPolicy
from scoring.aggregate import Agg
from scoring.clock import US_PER_DAY
from scoring.stages import change_days, stage_on

SPAN = 800  # days scanned after the head's day: past every threshold of the policies below


@st.composite
def heads(draw: Any) -> tuple[Agg, ShopPolicy, int]:
    """A folded value with purchases, as of its own day, under a drawn policy."""
    policy = ShopPolicy(
        attached_window_days=draw(st.integers(0, 366)),
        attached_min_purchase_days=draw(st.integers(-1, 8)),
        at_risk_min_days=draw(st.integers(1, 120)),
        lapsed_days=draw(st.integers(1, 500)),
        loyal_min_purchase_days=draw(st.integers(1, 8)),
        loyal_min_tenure_days=draw(st.integers(0, 400)),
    )
    today = 20_000
    pdays = sorted(draw(st.sets(st.integers(today - 400, today), min_size=1, max_size=40)))
    agg = Agg()
    agg.pdays = pdays
    agg.purchase_days = len(pdays)
    agg.purchase_count = len(pdays) + draw(st.integers(0, 3))
    agg.first_purchase_us = pdays[0] * US_PER_DAY + draw(st.integers(0, US_PER_DAY - 1))
    agg.last_purchase_us = pdays[-1] * US_PER_DAY + draw(st.integers(0, US_PER_DAY - 1))
    agg.first_seen_us = (pdays[0] - draw(st.integers(0, 60))) * US_PER_DAY
    agg.nps_last = draw(st.none() | st.integers(0, 10))
    after_day = draw(st.integers(pdays[-1], today + 30))  # the head's day: at or after its purchases
    return agg, policy, after_day


@given(heads())
def test_change_days_hold_every_date_a_day_by_day_scan_finds_a_change(case: tuple[Agg, ShopPolicy, int]) -> None:
    agg, policy, after_day = case
    listed = change_days(agg, after_day, after_day + SPAN, policy)
    assert listed == sorted(set(listed)) and all(after_day < d <= after_day + SPAN for d in listed)
    changed = [d for d in range(after_day + 1, after_day + SPAN + 1)
               if stage_on(agg, d, policy) != stage_on(agg, d - 1, policy)]
    assert set(changed) <= set(listed), (changed, listed)
    assert len(listed) <= 4


def test_a_full_window_of_purchases_gives_one_date_for_the_window() -> None:
    # 200 purchase dates in a row (a daily buyer): one date per purchase date
    # leaving the attached window was listed before; only the one that takes
    # the count below the minimum can change the stage.
    policy = ShopPolicy()
    agg = Agg()
    agg.pdays = list(range(19_801, 20_001))
    agg.purchase_days = agg.purchase_count = 200
    agg.first_purchase_us = agg.first_seen_us = 19_801 * US_PER_DAY
    agg.last_purchase_us = 20_000 * US_PER_DAY
    assert stage_on(agg, 20_000, policy) == "loyal"
    at_risk = 20_000 + policy.at_risk_min_days + 1  # a mean gap of one day: the minimum applies
    window = agg.pdays[-policy.attached_min_purchase_days] + policy.attached_window_days
    lapse = 20_000 + policy.lapsed_days + 1  # (tenure reached its minimum long before)
    assert change_days(agg, 20_000, 21_000, policy) == [at_risk, window, lapse]
    assert [stage_on(agg, d, policy) for d in (at_risk, window, lapse)] == \
        ["at_risk", "at_risk", "lapsed"]
