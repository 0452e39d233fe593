"""Calibration/holdout validation of the CLV models (Fader, Hardie & Lee 2005, section 4).

The models are fitted on the events up to the calibration end and asked to predict
the holdout period; the check compares, per shop:

* weekly cumulative repeat purchase days of the calibration cohort (customers whose
  first purchase is at or before the calibration end), actual against the model's
  unconditional expectation sum_i E[X(t - first_i)] (paper eq. 9, the closed form at
  x = 0, T = 0);
* mean holdout repeat purchase days by calibration frequency x = 0..6 and 7+, actual
  against the conditional expectation E[Y(t*) | x, t_x, T] (paper eq. 10).

Pure: the caller passes a function that yields the event lines (read several times).
Repeat purchase *days* are counted, as in the fit (same-day purchases merged).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from schemas.policy import PolicyBook
from scoring.clock import US_PER_DAY, day_of, from_us
from scoring.replay import ReplayResult, fold_lines
from scoring.snapshot import clv_inputs, head_as_of

__all__ = ["History", "gather", "check_shop", "served_models", "FREQ_BUCKETS"]

#: Calibration frequencies reported one by one; the last bucket is "7+".
FREQ_BUCKETS = 8
# The head as of an instant keeps the purchase days of at least the 365 days before
# it (scoring.fold prunes older ones), so heads this far apart see every day.
_WINDOW_DAYS = 365


@dataclass(frozen=True, slots=True)
class History:
    """One calibration-cohort customer: the fit statistics as of the calibration end,
    the first purchase day, the repeat purchase days up to the holdout end, and the
    repeat purchase days in the holdout."""

    stats: tuple[int, int, int, int]
    first_day: int
    repeat_days: tuple[int, ...]
    holdout_repeat: int


def gather(lines: Callable[[], Iterable[bytes | str]], policies: PolicyBook, calibration_end_us: int,
           holdout_end_us: int) -> tuple[dict[str, list[History]], ReplayResult]:
    """Fold the events at the calibration end, the holdout end and as many instants in
    between/before as needed to see every purchase day; returns the cohort per shop and
    the fold result at the holdout end (for its summary).

    Raises ValueError unless calibration end < holdout end.
    """
    if not calibration_end_us < holdout_end_us:
        raise ValueError("the calibration end must be before the holdout end")
    at_hold = fold_lines(lines(), policies=policies, as_of=from_us(holdout_end_us))
    at_cal = fold_lines(lines(), policies=policies, as_of=from_us(calibration_end_us))
    cal_day = day_of(calibration_end_us)
    days: dict[tuple[str, str], set[int]] = {}
    first: dict[tuple[str, str], int] = {}
    cal_heads = {}
    for key, state in at_cal.states.items():
        head = head_as_of(state, calibration_end_us, policies.for_shop(key[0]))
        if head.purchase_count:
            cal_heads[key] = head
            first[key] = day_of(head.first_purchase_us)  # type: ignore[arg-type]
            days[key] = set(head.pdays)
    hold_heads = {}
    for key, state in at_hold.states.items():
        if key in cal_heads:
            head = head_as_of(state, holdout_end_us, policies.for_shop(key[0]))
            hold_heads[key] = head
            days[key].update(head.pdays)
    # fill the gaps the two heads leave: before the calibration window, and inside a
    # holdout longer than the window
    earliest = min(first.values(), default=cal_day)
    extra = []
    t = holdout_end_us - _WINDOW_DAYS * US_PER_DAY
    while t > calibration_end_us:
        extra.append(t)
        t -= _WINDOW_DAYS * US_PER_DAY
    t = calibration_end_us - _WINDOW_DAYS * US_PER_DAY
    while day_of(t) > earliest:
        extra.append(t)
        t -= _WINDOW_DAYS * US_PER_DAY
    for t in extra:
        res = fold_lines(lines(), policies=policies, as_of=from_us(t))
        for key, state in res.states.items():
            if key in cal_heads:
                days[key].update(head_as_of(state, t, policies.for_shop(key[0])).pdays)
    out: dict[str, list[History]] = {}
    for key, head in cal_heads.items():
        stats = clv_inputs(head, cal_day)
        assert stats is not None  # purchase_count > 0
        hold = hold_heads[key]
        hold_day = day_of(holdout_end_us)
        repeat = tuple(sorted(d for d in days[key] if first[key] < d <= hold_day))
        out.setdefault(key[0], []).append(History(
            stats, first[key], repeat, hold.purchase_days - head.purchase_days))
    return out, at_hold


def check_shop(model: Any, cohort: list[History], calibration_end_us: int, holdout_end_us: int
               ) -> dict[str, Any]:
    """The numbers behind both plots and the totals, for one shop and its served model.

    ``weekly``: the last day (days since the epoch) of each week from the cohort's first
    purchase to the holdout end (the last week may be shorter), with actual and
    predicted cumulative repeat purchase days up to and including that day.  ``by_frequency``: per calibration
    frequency bucket (0..6, "7+"), customers, actual and predicted mean holdout repeat
    purchase days (null for an empty bucket).  ``calibration``/``holdout``: actual and
    predicted totals; the holdout has both the conditional (per-customer, eq. 10) and
    the unconditional (tracking curve) prediction.
    """
    from scoring import clv

    bg, unit = model.bgnbd, float(model.unit_days)
    cal_day, hold_day = day_of(calibration_end_us), day_of(holdout_end_us)
    start = min(h.first_day for h in cohort)
    # week k covers days start+7(k-1) .. start+7k-1 (the paper's weeks; with a
    # calibration of whole weeks one ends exactly on the calibration end)
    week_ends = list(range(start + 6, hold_day, 7)) + [hold_day]
    by_first: dict[int, int] = {}
    for h in cohort:
        by_first[h.first_day] = by_first.get(h.first_day, 0) + 1
    cache: dict[int, float] = {}

    def expected_by(day: int) -> float:
        """Sum over the cohort of E[repeat purchase days from the first purchase to day]."""
        total = 0.0
        for f, n in by_first.items():
            if day > f:
                t = day - f
                if t not in cache:
                    cache[t] = float(clv.expected_purchases(bg, t / unit, 0, 0.0, 0.0))
                total += n * cache[t]
        return total

    all_repeat = sorted(d for h in cohort for d in h.repeat_days)
    actual_cum = [bisect_right(all_repeat, d) for d in week_ends]
    predicted_cum = [expected_by(d) for d in week_ends]
    horizon = (hold_day - cal_day) / unit
    buckets: list[list[tuple[float, float]]] = [[] for _ in range(FREQ_BUCKETS)]
    pred_total = 0.0
    cond: dict[tuple[int, int, int], float] = {}  # histories repeat a lot: evaluate each once
    for h in cohort:
        x, t_x, T, _ = h.stats
        p = cond.get((x, t_x, T))
        if p is None:
            p = cond[(x, t_x, T)] = float(clv.expected_purchases(bg, horizon, x, t_x / unit, T / unit))
        pred_total += p
        buckets[min(x, FREQ_BUCKETS - 1)].append((h.holdout_repeat, p))
    by_freq = []
    for k, rows in enumerate(buckets):
        n = len(rows)
        by_freq.append({
            "x": str(k) if k < FREQ_BUCKETS - 1 else f"{k}+", "customers": n,
            "actual_mean": sum(a for a, _ in rows) / n if n else None,
            "predicted_mean": sum(p for _, p in rows) / n if n else None})
    cal_actual = sum(h.stats[0] for h in cohort)
    hold_actual = sum(h.holdout_repeat for h in cohort)
    cal_pred = expected_by(cal_day)
    return {
        "customers": len(cohort),
        "calibration": {"actual_repeat": cal_actual, "predicted_repeat": round(cal_pred, 1)},
        "holdout": {"actual_repeat": hold_actual, "predicted_repeat": round(pred_total, 1),
                    "predicted_repeat_unconditional": round(expected_by(hold_day) - cal_pred, 1),
                    "predicted_over_actual": round(pred_total / hold_actual, 4) if hold_actual else None},
        "by_frequency": by_freq,
        "weekly": {"calibration_end_day": cal_day, "week_end_day": week_ends,
                   "actual_cumulative": actual_cum,
                   "predicted_cumulative": [round(v, 3) for v in predicted_cum]},
    }


def served_models(cohorts: Mapping[str, list[History]], policies: PolicyBook, min_customers: int,
                  calibration_end_us: int) -> Any:
    """The CLV fits as of the calibration end, by the same rules as replay and the service."""
    from scoring import clv

    by_shop = {shop: [h.stats for h in hs] for shop, hs in cohorts.items()}
    return clv.fit_models_for(by_shop, policies, 7, min_customers=min_customers,
                              as_of=from_us(calibration_end_us).date())
