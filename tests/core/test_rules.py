"""DOMAIN.md's worked examples and every boundary of its rules."""

from __future__ import annotations

from fractions import Fraction

import pytest

from schemas.policy import PolicyBook
from scoring import nps
from scoring.ltv import round_half_even
from tests.core.conftest import Customer
from tests.core.factory import at, feedback, purchase, redeem, refund, visit

# -- LTV ---------------------------------------------------------------------


def test_fitness_club_ltv_is_720_dollars() -> None:
    """$20 per visit, once a month, for 3 years, P = 100%: 20 x 12 x 3 = $720."""
    c = Customer().send(visit(at(-1)))  # joins, then pays monthly
    for month in range(12):
        c.send(purchase(at(30.4375 * month), 2000))
    snap = c.snap(at(364))  # tenure 365 days: C = 12 orders / 12 months
    assert snap["purchase_count"] == 12 and snap["tenure_days"] == 365
    assert snap["ltv_formula"] == 72_000  # minor units
    assert snap["ltv_historical"] == 24_000


def test_ltv_formula_uses_margin_and_short_tenure_floor() -> None:
    c = Customer()
    c.send(purchase(at(0), 10_000, margin_rate=0.25))
    snap = c.snap(at(0))
    # S=10000, C = 1 / max(1, min(12, 1/30.4375)) = 1, P = 0.25, t = 36
    assert snap["ltv_formula"] == 90_000
    assert snap["margin_total"] == 2_500


def test_ltv_zero_without_purchase_and_after_full_refund() -> None:
    c = Customer().send(visit(at(0)))
    assert c.snap()["ltv_formula"] == 0
    c.send(purchase(at(1), 500, order_id="o1"), refund(at(2), "o1", 500))
    snap = c.snap()
    assert snap["spend_total"] == 0 and snap["ltv_formula"] == 0 and snap["margin_total"] == 0


def test_round_half_even_on_margin() -> None:
    assert round_half_even(Fraction(5, 2)) == 2
    assert round_half_even(Fraction(7, 2)) == 4
    c = Customer().send(purchase(at(0), 5, margin_rate=0.5), purchase(at(1), 7, margin_rate=0.5))
    assert c.snap()["margin_total"] == 2 + 4


# -- NPS ---------------------------------------------------------------------


@pytest.mark.parametrize(("value", "band"), [
    (-100, "poor"), (0, "poor"), (0.1, "average"), (30, "average"), (30.1, "good"), (50, "good"),
    (50.1, "strong"), (69.9, "strong"), (70, "leader"), (100, "leader"), (None, None)])
def test_nps_bands_at_their_edges(value: float | None, band: str | None) -> None:
    assert nps.band(value) == band


def test_nps_score_rounding_and_classes() -> None:
    policy = PolicyBook().default
    assert [nps.classify(v, policy) for v in (0, 6, 7, 8, 9, 10)] == [2, 2, 1, 1, 0, 0]
    assert nps.score(2, 1, 0) == 66.7
    assert nps.score(1, 1, 1) == 0.0
    assert nps.score(0, 0, 0) is None


# -- tiers and bonus points --------------------------------------------------


def test_tier_thresholds_and_the_tier_that_earns() -> None:
    c = Customer()
    c.send(purchase(at(0), 49_999, order_id="a"))  # bronze: 499 points
    assert c.snap()["tier"] == "bronze" and c.snap()["points_balance"] == 499
    c.send(purchase(at(1), 1, order_id="b"))  # spend 50 000 -> silver, and this purchase earns at 1.25
    snap = c.snap()
    assert snap["tier"] == "silver" and snap["discount_pct"] == 5
    assert snap["points_earned_total"] == 499 + 0  # floor(1 x 1.25 / 100) = 0
    c.send(purchase(at(2), 150_000, order_id="c"))  # 200 000 -> gold earns at 1.5
    snap = c.snap()
    assert snap["tier"] == "gold" and snap["discount_pct"] == 10
    assert snap["points_earned_total"] == 499 + 2250


def test_tier_falls_back_when_spend_leaves_the_365_day_window() -> None:
    c = Customer().send(purchase(at(0), 60_000))
    assert c.snap(at(364))["tier"] == "silver"
    assert c.snap(at(365))["tier"] == "bronze"


def test_points_expire_fifo_at_the_exact_instant() -> None:
    c = Customer().send(purchase(at(0), 10_000, order_id="a"), purchase(at(10), 20_000, order_id="b"))
    assert c.snap(at(365, microseconds=-1))["points_balance"] == 300
    snap = c.snap(at(365))  # at that instant the first lot is expired
    assert snap["points_balance"] == 200 and snap["points_expired_total"] == 100
    # a redemption at the expiry instant sees the lot already gone
    c.send(redeem(at(365), 250))
    snap = c.snap(at(365))
    assert snap["redemptions_rejected"] == 1 and snap["points_redeemed_total"] == 0
    c.send(redeem(at(366), 150))
    snap = c.snap(at(366))
    assert snap["points_redeemed_total"] == 150 and snap["points_balance"] == 50


def test_redemption_takes_oldest_lots_first() -> None:
    c = Customer().send(purchase(at(0), 10_000), purchase(at(100), 10_000), redeem(at(101), 150))
    # 100 from the first lot, 50 from the second; the first lot's expiry then expires nothing
    snap = c.snap(at(366))
    assert snap["points_expired_total"] == 0 and snap["points_balance"] == 50
    assert c.snap(at(466))["points_expired_total"] == 50


def test_overdrawn_redemption_is_rejected_and_changes_nothing_else() -> None:
    c = Customer().send(purchase(at(0), 1_000))
    c.send(redeem(at(1), 11))
    snap = c.snap()
    assert snap["points_balance"] == 10 and snap["redemptions_rejected"] == 1
    assert c.effects[-1]["entry"] == "redemption_rejected"


def test_partial_and_oversized_refunds_with_clawback() -> None:
    c = Customer().send(purchase(at(0), 10_001, order_id="o"))  # 100 points
    c.send(refund(at(1), "o", 3_333))  # floor(100*3333/10001) = 33
    assert c.snap()["points_clawed_back_total"] == 33
    c.send(refund(at(2), "o", 3_334))  # cumulative 6667 -> floor(66.66) = 66: +33
    assert c.snap()["points_clawed_back_total"] == 66
    c.send(refund(at(3), "o", 99_999))  # capped at the remaining 3334
    snap = c.snap()
    assert snap["refund_total"] == 10_001 and snap["spend_total"] == 0
    assert snap["points_clawed_back_total"] == 100 and snap["points_balance"] == 0
    assert snap["refunds_capped"] == 1
    c.send(refund(at(4), "o", 5))  # nothing left: capped to zero
    assert c.snap()["refund_total"] == 10_001


def test_clawback_takes_own_lot_then_oldest_and_counts_shortfall() -> None:
    c = Customer().send(purchase(at(0), 10_000, order_id="a"), purchase(at(1), 5_000, order_id="b"))
    c.send(redeem(at(2), 120))  # a: 0 left, b: 30 left
    c.send(refund(at(3), "a", 10_000))  # claw 100: b's... own lot a is empty -> oldest (b: 30) -> shortfall 70
    snap = c.snap()
    assert snap["points_clawed_back_total"] == 30 and snap["clawback_shortfall"] == 70
    assert snap["points_balance"] == 0
    assert snap["points_earned_total"] == (snap["points_balance"] + snap["points_redeemed_total"]
                                           + snap["points_expired_total"] + snap["points_clawed_back_total"])


def test_orphan_refund_applies_when_its_purchase_arrives_late() -> None:
    c = Customer().send(refund(at(1), "o", 500))
    assert c.snap()["orphan_refunds"] == 1 and c.snap()["refund_total"] == 0
    c.send(purchase(at(0), 1_000, order_id="o"))  # late, within lateness, earlier in canonical order
    snap = c.snap()
    assert snap["orphan_refunds"] == 0 and snap["refund_total"] == 500 and snap["spend_total"] == 500


def test_refund_before_its_purchase_in_canonical_order_stays_orphan() -> None:
    c = Customer().send(refund(at(0), "o", 500), purchase(at(1), 1_000, order_id="o"))
    snap = c.snap()
    assert snap["orphan_refunds"] == 1 and snap["spend_total"] == 1_000


def test_duplicate_order_id_is_ignored_and_counted() -> None:
    c = Customer().send(purchase(at(0), 1_000, order_id="o"), purchase(at(1), 9_999, order_id="o"))
    snap = c.snap()
    assert snap["purchase_count"] == 1 and snap["spend_total"] == 1_000 and snap["duplicate_orders"] == 1
    assert snap["stamps"] == 1


def test_stamp_card_issues_a_free_item_every_fifth_purchase_and_ignores_refunds() -> None:
    c = Customer()
    for i in range(5):
        c.send(purchase(at(i), 300, order_id=f"o{i}"))
    snap = c.snap()
    assert snap["stamps"] == 0 and snap["free_items_issued"] == 1
    c.send(purchase(at(6), 300, order_id="o6"), refund(at(7), "o6", 300))
    assert c.snap()["stamps"] == 1
    assert [e["entry"] for e in c.effects if e["kind"] == "ledger" and e["entry"] == "free_item"] == ["free_item"]


def test_programmes_can_be_switched_off_per_shop() -> None:
    book = PolicyBook(shops={"shop-1": {"bonus_enabled": False, "stamps_enabled": False,
                                        "discount_enabled": False}})
    c = Customer(book).send(purchase(at(0), 900_000))
    snap = c.snap()
    assert snap["points_earned_total"] == 0 and snap["stamps"] == 0 and snap["tier"] == "bronze"


# -- stages --------------------------------------------------------------------


def test_first_visit_then_first_purchase_then_repeat() -> None:
    c = Customer().send(visit(at(0)))
    assert c.snap()["stage"] == "first_visit"
    c.send(purchase(at(1), 100))
    assert c.snap()["stage"] == "first_purchase"
    c.send(purchase(at(1, hours=1), 100))  # same day: still one purchase day
    assert c.snap()["stage"] == "first_purchase"
    c.send(purchase(at(2), 100))
    assert c.snap()["stage"] == "repeat"


def test_lapsed_after_365_days_of_recency() -> None:
    c = Customer().send(purchase(at(0), 100))
    assert c.snap(at(365))["stage"] == "first_purchase"
    assert c.snap(at(366))["stage"] == "lapsed"


def test_at_risk_uses_max_of_60_and_twice_the_interval() -> None:
    c = Customer().send(purchase(at(0), 100), purchase(at(10), 100))  # mean interval 10 -> threshold 60
    assert c.snap(at(70))["stage"] == "repeat"
    assert c.snap(at(71))["stage"] == "at_risk"
    c2 = Customer().send(purchase(at(0), 100), purchase(at(45), 100))  # interval 45 -> threshold 90
    assert c2.snap(at(135))["stage"] == "repeat"
    assert c2.snap(at(136))["stage"] == "at_risk"


def test_attached_and_loyal_edges() -> None:
    c = Customer().send(visit(at(0)))
    for d in (100, 120, 140):
        c.send(purchase(at(d), 100))
    assert c.snap(at(141))["stage"] == "repeat"
    c.send(purchase(at(160), 100))  # 4 purchase days in 180: attached
    assert c.snap(at(161))["stage"] == "attached"
    c.send(purchase(at(170), 100), purchase(at(175), 100))  # 6 days, tenure 175
    assert c.snap(at(179))["stage"] == "attached"
    assert c.snap(at(180))["stage"] == "loyal"  # tenure reaches 180 with no event
    assert c.snap(at(236))["stage"] == "at_risk"  # recency 61 > 60 outranks loyal
    c.send(feedback(at(181), 6))
    assert c.snap(at(181))["stage"] == "attached"  # a detractor is not loyal
    c.send(feedback(at(182), 7))
    assert c.snap(at(182))["stage"] == "loyal"


def test_time_moves_customers_out_of_attached() -> None:
    c = Customer()
    for d in (0, 50, 100, 150):  # interval 50: at-risk threshold 100 days
        c.send(purchase(at(d), 100))
    assert c.snap(at(179))["stage"] == "attached"
    assert c.snap(at(180))["stage"] == "repeat"  # day 0 left the 180-day window
    assert c.snap(at(251))["stage"] == "at_risk"
    transitions = [(e["from"], e["to"]) for e in c.effects if e["kind"] == "transition"]
    assert transitions == [(None, "first_purchase"), ("first_purchase", "repeat"), ("repeat", "attached")]


@pytest.mark.parametrize(("nps_value", "stage_days", "expected"), [
    (None, 1, "unknown"), (9, 4, "true"), (9, 2, "true"), (9, 1, "latent"), (8, 4, "spurious"),
    (8, 2, "spurious"), (3, 1, "none")])
def test_loyalty_types(nps_value: int | None, stage_days: int, expected: str) -> None:
    c = Customer()
    for d in range(stage_days):
        c.send(purchase(at(d), 100))
    if nps_value is not None:
        c.send(feedback(at(stage_days), nps_value, share_of_wallet=75))
    snap = c.snap()
    assert snap["loyalty_type"] == expected
    if nps_value is not None:
        assert snap["nps_last"] == nps_value and snap["share_of_wallet_last"] == 75


# -- windows and counts --------------------------------------------------------


def test_windows_use_purchase_date_and_refunds_count_from_their_own_time() -> None:
    c = Customer().send(purchase(at(0), 1_000, order_id="o"), purchase(at(40), 500),
                        refund(at(50), "o", 400))
    snap = c.snap(at(50))
    assert snap["spend_30d"] == 0 + 500 and snap["spend_90d"] == 600 + 500
    assert snap["purchase_days_30d"] == 1 and snap["purchase_days_90d"] == 2
    before = c.snap(at(49))
    assert before["spend_90d"] == 1_500  # the refund is not visible before it occurred


def test_window_edges_and_derived_fields() -> None:
    c = Customer().send(visit(at(-5)), purchase(at(0), 100), purchase(at(30), 100), visit(at(31)))
    snap = c.snap(at(59))
    assert snap["purchase_days_30d"] == 1  # day 0 is out at date(A) - 30 < d
    assert snap["purchase_days_90d"] == 2 and snap["frequency_per_month"] == round(2 / 3, 4)
    assert snap["mean_interpurchase_days"] == 30.0 and snap["recency_days"] == 29
    assert snap["tenure_days"] == 64 and snap["visit_days"] == 4
    assert snap["first_seen_at"] == "2023-12-27T12:00:00Z"
