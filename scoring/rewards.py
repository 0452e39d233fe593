"""Reward programmes: discount tiers, bonus-point lots, the stamp card.

All quantities are integers; rates are exact rationals from the policy.
Conservation invariant (checked by property tests)::

    earned == balance + redeemed + expired + clawed
"""

from __future__ import annotations

from schemas.policy import ShopPolicy
from scoring.aggregate import (
    L_EXPIRES,
    L_ORDER,
    L_REMAINING,
    O_DAY,
    Agg,
    window_totals,
)


def spend_in_window(agg: Agg, day: int, window: int) -> int:
    """Net amount of orders whose purchase date d has ``day - window < d <= day``."""
    return window_totals(agg, day, window)[0]


def tier_on(agg: Agg, day: int, policy: ShopPolicy,
            spend_365d: int | None = None) -> tuple[str, object, int]:
    """(name, multiplier, discount_pct) of the tier reached by spend_365d on ``day``.

    With the discount programme off every customer stays in the first tier.
    ``spend_365d``: that spend when the caller has it already.
    """
    table = policy.tier_table
    if not policy.discount_enabled:
        _, name, mult, pct = table[-1]
        return name, mult, pct
    spend = spend_in_window(agg, day, 365) if spend_365d is None else spend_365d
    for threshold, name, mult, pct in table:
        if spend >= threshold:
            return name, mult, pct
    _, name, mult, pct = table[-1]  # unreachable: the first tier starts at 0
    return name, mult, pct


def points_for(amount: int, multiplier, policy: ShopPolicy) -> int:  # noqa: ANN001
    """floor(amount x points_per_unit x multiplier / 100), exactly."""
    ppu = policy.points_per_unit_fraction
    num = amount * ppu.numerator * multiplier.numerator
    den = ppu.denominator * multiplier.denominator * 100
    return num // den


def expire_due(agg: Agg, at_us: int) -> list[list]:
    """Expire every lot with ``expires_us <= at_us`` ("at or after that instant
    it is expired"). Returns the expired lots (with what remained in them)."""
    gone = []
    lots = agg.lots
    i = 0
    # Lots are created in canonical order with a fixed lifetime, so expiry
    # instants are non-decreasing: the due ones are a prefix.
    while i < len(lots) and lots[i][L_EXPIRES] <= at_us:
        i += 1
    if i:
        gone = lots[:i]
        del lots[:i]
        for lot in gone:
            agg.expired += lot[L_REMAINING]
    return gone


def take_oldest(agg: Agg, points: int) -> int:
    """Take up to ``points`` from the oldest lots first; returns what was taken."""
    taken = 0
    lots = agg.lots
    i = 0
    while taken < points and i < len(lots):
        lot = lots[i]
        take = min(lot[L_REMAINING], points - taken)
        if take:
            lot = lots[i] = lot[:]  # copy on write: Agg.copy shares lot entries
            lot[L_REMAINING] -= take
        taken += take
        i += 1
    # Empty lots are dropped; they can neither expire nor be taken from again.
    agg.lots = [lot for lot in lots if lot[L_REMAINING] > 0]
    return taken


def take_for_clawback(agg: Agg, order_id: str, points: int) -> int:
    """Claw back from the order's own lot first, then from the oldest lots."""
    taken = 0
    for i, lot in enumerate(agg.lots):
        if lot[L_ORDER] == order_id:
            taken = min(lot[L_REMAINING], points)
            lot = agg.lots[i] = lot[:]  # copy on write: Agg.copy shares lot entries
            lot[L_REMAINING] -= taken
            break
    if taken < points:
        taken += take_oldest(agg, points - taken)
    else:
        agg.lots = [lot for lot in agg.lots if lot[L_REMAINING] > 0]
    return taken


def order_day(agg: Agg, order_id: str) -> int | None:
    order = agg.orders.get(order_id)
    return None if order is None else order[O_DAY]
