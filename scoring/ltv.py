"""Money and value arithmetic: exact rationals, integer minor units.

Every product of an amount and a rate is computed on the exact rate as written
(a :class:`~fractions.Fraction`), then rounded half-to-even, as DOMAIN.md
requires. No floats touch a balance.
"""

from __future__ import annotations

from fractions import Fraction

from scoring.aggregate import Agg, window_totals


def round_half_even(value: Fraction) -> int:
    """Round a rational to the nearest integer, ties to even (banker's rounding)."""
    return round_ratio(value.numerator, value.denominator)


def round_ratio(num: int, den: int) -> int:
    """``round_half_even(num / den)`` for integers, ``den != 0``, without a Fraction."""
    if den < 0:
        num, den = -num, -den
    q, r = divmod(num, den)
    twice = 2 * r
    if twice > den or (twice == den and q % 2 == 1):
        q += 1
    return q


def margin_of(net: int, rate_num: int, rate_den: int) -> int:
    """round-half-even(net x rate) for one order."""
    return round_ratio(net * rate_num, rate_den)


def ltv_formula(agg: Agg, day: int, tenure_days: int, shop_margin: Fraction, months: int,
                orders_365d: int | None = None) -> int:
    """DOMAIN.md's S x C x P x t, rounded half-even to an integer number of minor units.

    S = spend_total / purchase_count; C = orders in window 365 / max(1, min(12,
    (tenure_days + 1) / 30.4375)); P = margin_total / spend_total (the shop's
    margin when spend_total is 0); t = ``months``. 0 with no purchase.
    ``orders_365d``: the window's order count when the caller has it already.
    """
    if agg.purchase_count == 0:
        return 0
    # Exact, in integers (this runs for every published snapshot; Fractions
    # would normalise by a gcd at every step): S x C x P x t as one ratio.
    # span = min(12, (tenure + 1) / 30.4375) floored at 1, as span_num / span_den.
    span_num, span_den = (tenure_days + 1) * 10_000, 304_375
    if span_num >= 12 * span_den:
        span_num, span_den = 12, 1
    elif span_num < span_den:
        span_num, span_den = 1, 1
    orders = window_totals(agg, day, 365)[1] if orders_365d is None else orders_365d
    if agg.spend_total:
        p_num, p_den = agg.margin_total, agg.spend_total
    else:
        p_num, p_den = shop_margin.numerator, shop_margin.denominator
    return round_ratio(agg.spend_total * orders * span_den * p_num * months,
                       agg.purchase_count * span_num * p_den)
