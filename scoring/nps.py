"""Net Promoter Score: classification of one answer and the shop-level score."""

from __future__ import annotations

from schemas.policy import ShopPolicy

PROMOTER, PASSIVE, DETRACTOR = 0, 1, 2


def classify(nps: int, policy: ShopPolicy) -> int:
    if nps >= policy.promoter_min_nps:
        return PROMOTER
    if nps <= policy.detractor_max_nps:
        return DETRACTOR
    return PASSIVE


def score(promoters: int, passives: int, detractors: int) -> float | None:
    """round(100 x (promoters - detractors) / responses, 1); None with no responses."""
    responses = promoters + passives + detractors
    if responses == 0:
        return None
    # Decimal-free exact rounding: work in tenths, half-even like Python's round().
    from fractions import Fraction

    from scoring.ltv import round_half_even

    tenths = round_half_even(Fraction(1000 * (promoters - detractors), responses))
    return tenths / 10


def band(nps: float | None) -> str | None:
    """poor (<= 0), average (<= 30), good (<= 50), strong (<= 70), leader (> 70)."""
    if nps is None:
        return None
    if nps <= 0:
        return "poor"
    if nps <= 30:
        return "average"
    if nps <= 50:
        return "good"
    if nps <= 70:
        return "strong"
    return "leader"
