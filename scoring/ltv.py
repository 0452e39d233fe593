"""Money and value arithmetic: exact rationals, integer minor units.

Every product of an amount and a rate is computed on the exact rate as written
(a :class:`~fractions.Fraction`), then rounded half-to-even, as DOMAIN.md
requires. No floats touch a balance.
"""

from __future__ import annotations

from fractions import Fraction

from scoring.aggregate import Agg, orders_in_window


def round_half_even(value: Fraction) -> int:
    """Round a rational to the nearest integer, ties to even (banker's rounding)."""
    q, r = divmod(value.numerator, value.denominator)
    twice = 2 * r
    if twice > value.denominator or (twice == value.denominator and q % 2 == 1):
        q += 1
    return q


def margin_of(net: int, rate_num: int, rate_den: int) -> int:
    """round-half-even(net x rate) for one order."""
    return round_half_even(Fraction(net * rate_num, rate_den))


def ltv_formula(agg: Agg, day: int, tenure_days: int, shop_margin: Fraction, months: int) -> int:
    """DOMAIN.md's S x C x P x t, rounded half-even to an integer number of minor units.

    S = spend_total / purchase_count; C = orders in window 365 / max(1, min(12,
    (tenure_days + 1) / 30.4375)); P = margin_total / spend_total (the shop's
    margin when spend_total is 0); t = ``months``. 0 with no purchase.
    """
    if agg.purchase_count == 0:
        return 0
    s = Fraction(agg.spend_total, agg.purchase_count)
    span = min(Fraction(12), Fraction((tenure_days + 1) * 10_000, 304_375))
    c = Fraction(sum(1 for _ in orders_in_window(agg, day, 365))) / max(Fraction(1), span)
    p = Fraction(agg.margin_total, agg.spend_total) if agg.spend_total else shop_margin
    return round_half_even(s * c * p * months)
