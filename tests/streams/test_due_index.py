"""The sweep's pure bookkeeping: due index, running recount, stats."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from streams.due_index import DueIndex, Recount, SweepStats

HORIZON = 1_000


def test_file_keeps_keys_due_before_the_horizon_and_lowers_earliest() -> None:
    index = DueIndex(horizon_us=HORIZON)
    index.file(b"a", 500)
    index.file(b"b", 300)
    index.file(b"c", HORIZON)  # at the horizon: left to the next full scan
    index.file(b"d", None)  # never due
    assert index.due == {b"a": 500, b"b": 300}
    assert index.earliest == 300
    index.file(b"b", 900)  # re-filed later: earliest stays a lower bound
    assert index.due[b"b"] == 900 and index.earliest == 300
    index.file(b"a", None)
    assert b"a" not in index.due


def test_select_due_splits_due_keys_from_the_rest() -> None:
    index = DueIndex(horizon_us=HORIZON)
    for key, t in ((b"a", 10), (b"b", 50), (b"c", 70), (b"d", 40)):
        index.file(key, t)
    due, rest = index.select_due([b"c", b"a", b"gone", b"d", b"b"], 50)
    assert due == [b"a", b"d", b"b"] and rest == 70
    assert index.select_due([b"a"], 50) == ([b"a"], None)
    assert index.select_due([], 50) == ([], None)


@given(st.dictionaries(st.binary(min_size=1, max_size=4), st.integers(0, 2 * HORIZON)),
       st.integers(0, HORIZON))
def test_earliest_is_a_lower_bound_of_every_filed_value(filed: dict[bytes, int],
                                                       now: int) -> None:
    index = DueIndex(horizon_us=HORIZON)
    for key, t in filed.items():
        index.file(key, t)
    kept = {k: t for k, t in filed.items() if t < HORIZON}
    assert index.due == kept
    if kept:
        assert index.earliest is not None and index.earliest <= min(kept.values())
    due, rest = index.select_due(list(index.due), now)
    assert sorted(due) == sorted(k for k, t in kept.items() if t <= now)
    later = [t for t in kept.values() if t > now]
    assert rest == (min(later) if later else None)


def test_recount_pending_follows_the_cursor_and_held_keys() -> None:
    run = Recount()
    assert run.pending(b"m")  # nothing read yet: everything is still to be counted
    run.cursor = b"m"
    assert not run.pending(b"a") and not run.pending(b"m") and run.pending(b"z")
    run.held.add(b"a")  # advanced, acknowledged later: counted when written
    assert run.pending(b"a")


def test_stats_full_scan_flag() -> None:
    stats = SweepStats(now=datetime(2026, 1, 1, tzinfo=UTC))
    assert not stats.full_scan
    stats.full_scans = 2
    assert stats.full_scan
