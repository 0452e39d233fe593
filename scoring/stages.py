"""Loyalty stage and loyalty type (DOMAIN.md "Stage, evaluated in this order").

A stage is a function of the folded value and a calendar date only, so between
two events it can change only at UTC midnights; :func:`change_days` lists the
only dates at which it may change, which lets the fold and the sweep publish
time-driven transitions at their exact instant without scanning day by day.
"""

from __future__ import annotations

from bisect import bisect_right

from schemas.policy import ShopPolicy
from scoring.aggregate import Agg
from scoring.clock import day_of

FIRST_VISIT, FIRST_PURCHASE, REPEAT, ATTACHED, LOYAL, AT_RISK, LAPSED = (
    "first_visit", "first_purchase", "repeat", "attached", "loyal", "at_risk", "lapsed",
)
STAGES = (FIRST_VISIT, FIRST_PURCHASE, REPEAT, ATTACHED, LOYAL, AT_RISK, LAPSED)
#: stages in which the customer "currently makes repeat purchases" (loyalty type, rule v2)
REPEAT_BEHAVIOUR = frozenset((REPEAT, ATTACHED, LOYAL))
DETRACTOR_STATUS, RECOVERED_STATUS = "detractor", "recovered"


def purchase_days_in_window(agg: Agg, day: int, window: int) -> int:
    """Distinct purchase dates d with ``day - window < d <= day``."""
    return bisect_right(agg.pdays, day) - bisect_right(agg.pdays, day - window)


def mean_interpurchase_days(agg: Agg) -> float | None:
    """Days between the first and last purchase date per gap, the nearest float; None
    with fewer than two purchase dates. (Integer true division is correctly
    rounded: the float of the exact ratio, without building a Fraction.)"""
    if agg.purchase_days < 2:
        return None
    span = day_of(agg.last_purchase_us) - day_of(agg.first_purchase_us)  # type: ignore[arg-type]
    return span / (agg.purchase_days - 1)


def _at_risk_days(agg: Agg, policy: ShopPolicy) -> int:
    """floor(max(60, 2 x mean_interpurchase_days)); for an integer recency,
    ``recency > threshold`` is exactly ``recency > floor(threshold)``."""
    span = day_of(agg.last_purchase_us) - day_of(agg.first_purchase_us)  # type: ignore[arg-type]
    return max(policy.at_risk_min_days, policy.at_risk_interval_factor * span // (agg.purchase_days - 1))


def stage_on(agg: Agg, day: int, policy: ShopPolicy) -> str:
    """The stage as of any instant on calendar date ``day``."""
    if agg.purchase_count == 0:
        return FIRST_VISIT
    recency = day - day_of(agg.last_purchase_us)  # type: ignore[arg-type]
    if recency > policy.lapsed_days:
        return LAPSED
    if agg.purchase_days >= 2 and recency > _at_risk_days(agg, policy):
        return AT_RISK
    in_window = purchase_days_in_window(agg, day, policy.attached_window_days)
    if in_window >= policy.attached_min_purchase_days:
        tenure = day - day_of(agg.first_seen_us)  # type: ignore[arg-type]
        if (agg.purchase_days >= policy.loyal_min_purchase_days
                and tenure >= policy.loyal_min_tenure_days
                and not (agg.nps_last is not None and agg.nps_last <= policy.loyal_excluded_max_nps)):
            return LOYAL
        return ATTACHED
    if agg.purchase_days >= 2:
        return REPEAT
    return FIRST_PURCHASE


def wallet_band(share_of_wallet: int | None, policy: ShopPolicy) -> str | None:
    """committed (>= 70) / moderate (50-69) / vulnerable (< 50); None without an answer."""
    if share_of_wallet is None:
        return None
    if share_of_wallet >= policy.wallet_committed_min_pct:
        return "committed"
    if share_of_wallet >= policy.wallet_moderate_min_pct:
        return "moderate"
    return "vulnerable"


def detractor_status(agg: Agg, policy: ShopPolicy) -> str | None:
    """None without feedback; detractor (nps_last <= 6); recovered (nps_last >= 7 after
    an earlier answer <= 6); else none. ``agg.ever_det`` covers "earlier": the
    latest answer is above 6 whenever it matters."""
    if agg.nps_last is None:
        return None
    if agg.nps_last <= policy.detractor_status_max_nps:
        return DETRACTOR_STATUS
    if agg.nps_last >= policy.recovered_min_nps and agg.ever_det:
        return RECOVERED_STATUS
    return "none"


def change_days(agg: Agg, after_day: int, through_day: int, policy: ShopPolicy) -> list[int]:
    """Sorted dates in ``(after_day, through_day]`` on which the stage may differ
    from the day before, with no new event: the lapse and at-risk thresholds,
    tenure reaching the loyal minimum, and the attached window's purchase-date
    count falling below ``attached_min_purchase_days``.

    ``after_day`` is at or after the last purchase date (the head's own day).
    With no new event that count only falls, one purchase date at a time, and
    the stage reads it only through that minimum, so of the dates on which a
    purchase date leaves the window only the crossing one can move the stage:
    at most four dates, however many purchases the window holds.
    """
    if agg.purchase_count == 0 or through_day <= after_day:
        return []
    last = day_of(agg.last_purchase_us)  # type: ignore[arg-type]
    cands = {last + policy.lapsed_days + 1,
             day_of(agg.first_seen_us) + policy.loyal_min_tenure_days}  # type: ignore[arg-type]
    if agg.purchase_days >= 2:
        cands.add(last + _at_risk_days(agg, policy) + 1)
    need = policy.attached_min_purchase_days
    if 0 < need <= len(agg.pdays):
        # In the window on day d are the dates p with d - window < p: at least
        # `need` of them until the need-th latest one leaves.
        cands.add(agg.pdays[-need] + policy.attached_window_days)
    return sorted(d for d in cands if after_day < d <= through_day)


def loyalty_type(stage: str, nps_last: int | None, policy: ShopPolicy) -> str:
    """true / latent / spurious / none from attitude x behaviour; unknown without feedback.

    Rule v2: behaviour is high while the customer makes repeat purchases,
    i.e. in stage ``repeat``, ``attached`` or ``loyal`` (v1 excluded ``repeat``).
    """
    if nps_last is None:
        return "unknown"
    attitude = nps_last >= policy.attitude_high_min_nps
    behaviour = stage in REPEAT_BEHAVIOUR
    if attitude and behaviour:
        return "true"
    if attitude:
        return "latent"
    if behaviour:
        return "spurious"
    return "none"
