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


def band(nps: float | None, policy: ShopPolicy | None = None) -> str | None:
    """poor (<= 0), average (<= 30), good (<= 50), strong (< 70), leader (>= 70).

    Rule v2: 70 itself is `leader`. The edges are the policy's ``nps_band_*``
    settings (the defaults above without a policy); None for no score.
    """
    if nps is None:
        return None
    p = policy or _DEFAULT
    if nps <= p.nps_band_poor_max:
        return "poor"
    if nps <= p.nps_band_average_max:
        return "average"
    if nps <= p.nps_band_good_max:
        return "good"
    if nps < p.nps_band_leader_min:
        return "strong"
    return "leader"


_DEFAULT = ShopPolicy()
