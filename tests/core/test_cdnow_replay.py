"""A realistic run: the CDNOW purchase log (1997-98) replayed as purchase events.

Every figure is checked against an independent computation straight from the
raw file (tests/cdnow.py), not against the fold itself.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime

import pytest

from schemas.codec import dumps
from schemas.outputs import CustomerSnapshot
from schemas.policy import PolicyBook
from scoring.clock import day_of, to_us
from scoring.replay import fold_lines, snapshots
from scoring.snapshot import clv_inputs, head_as_of
from tests.cdnow import calibration_stats, load_transactions

END = datetime(1998, 6, 30, 23, 59, 59, tzinfo=UTC)


def cdnow_lines() -> list[bytes]:
    lines = []
    for i, t in enumerate(load_transactions()):
        lines.append(dumps({
            "type": "purchase", "event_id": f"t{i}", "shop_id": "cdnow", "customer_id": t.customer_id,
            "occurred_at": f"{t.day.isoformat()}T12:00:00Z", "order_id": f"t{i}",
            "amount": t.amount_cents, "currency": "USD", "items": [{"sku": "cd", "quantity": t.n_cds,
                                                                    "unit_amount": 0}]}))
    return lines


@pytest.fixture(scope="module")
def replayed():
    lines = cdnow_lines()
    book = PolicyBook()
    res = fold_lines(lines, policies=book)
    return lines, book, res


@pytest.mark.slow
def test_cdnow_replay_matches_an_independent_computation(replayed) -> None:
    lines, book, res = replayed
    txs = load_transactions()
    zero = sum(1 for t in txs if t.amount_cents == 0)
    assert res.invalid == {"out_of_range": zero}  # $0.00 rows break "amount > 0"
    assert res.applied == len(txs) - zero and res.duplicates == 0 and not res.rejected
    expect: dict[str, dict] = defaultdict(lambda: {"n": 0, "spend": 0, "days": set()})
    for t in txs:
        if t.amount_cents:
            e = expect[t.customer_id]
            e["n"] += 1
            e["spend"] += t.amount_cents
            e["days"].add(t.day)
    as_of_us, snaps, tallies = snapshots(res, book, END, with_clv=False)
    seen = 0
    funnel: dict[str, int] = defaultdict(int)
    for snap in snaps:
        e = expect[snap["customer_id"]]
        last = max(e["days"])
        assert snap["purchase_count"] == e["n"]
        assert snap["spend_total"] == e["spend"] == snap["margin_total"]
        assert snap["purchase_days"] == len(e["days"])
        assert snap["recency_days"] == (date(1998, 6, 30) - last).days
        assert snap["stamps"] == e["n"] % 5 and snap["free_items_issued"] == e["n"] // 5
        assert snap["points_earned_total"] == (snap["points_balance"] + snap["points_expired_total"])
        funnel[snap["stage"]] += 1
        seen += 1
    assert seen == len(expect) == 23_502  # 68 of the 23 570 customers have only $0.00 rows
    figures = tallies["cdnow"].figures("cdnow", day_of(as_of_us), book.default)
    assert figures["funnel"] == {k: funnel.get(k, 0) for k in figures["funnel"]}
    assert figures["customers"] == 23_502
    # 18 months after a Q1-1997 cohort was acquired, most of it has lapsed or is at risk
    assert funnel["lapsed"] + funnel["at_risk"] > 0.7 * seen


def test_cdnow_clv_inputs_equal_the_papers_calibration_statistics(replayed) -> None:
    """The fold's sufficient statistics for BG/NBD are those of Fader, Hardie & Lee."""
    _, book, _ = replayed
    cal_end = datetime(1997, 9, 30, 23, 59, 59, tzinfo=UTC)
    res = fold_lines(cdnow_lines(), policies=book, as_of=cal_end)
    expected = calibration_stats([t for t in load_transactions() if t.amount_cents])
    day = day_of(to_us(cal_end))
    got = {cust: clv_inputs(head_as_of(st, to_us(cal_end), book.default), day)
           for (_, cust), st in res.states.items()}
    assert got == expected


def test_cdnow_snapshots_match_the_output_contract(replayed) -> None:
    _, book, res = replayed
    _, snaps, _ = snapshots(res, book, END, with_clv=False)
    for i, snap in enumerate(snaps):
        if i % 97 == 0:
            CustomerSnapshot.model_validate(snap)


def test_cdnow_replay_scores_predictive_clv(replayed) -> None:
    _, book, res = replayed
    _, snaps, _ = snapshots(res, book, END, with_clv=True)
    rows = list(snaps)
    assert all(0 <= r["p_alive"] <= 1 for r in rows)  # rounded to 6 places: ~0 for silent heavy buyers
    assert all(r["expected_purchases_90d"] >= 0 and r["clv_365d"] >= 0 for r in rows)
    # one-time buyers are alive by the model's definition; among repeat buyers,
    # the recently active outscore the long-silent
    repeat = [r for r in rows if r["purchase_days"] >= 3]
    recent = [r["p_alive"] for r in repeat if r["recency_days"] <= 30]
    silent = [r["p_alive"] for r in repeat if r["recency_days"] >= 400]
    assert recent and silent and sum(recent) / len(recent) > 2 * sum(silent) / len(silent)
    one_timers = [r for r in rows if r["purchase_days"] == 1]
    assert all(r["p_alive"] == 1.0 for r in one_timers)
