"""The event-time aligner's rules, unit by unit (no broker: the aligner is pure)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.align import UNREADABLE, Aligner
from streams.aligned_input import inspect

P = ("purchases", 0)
V = ("visits", 0)
R = ("rekey", 1)


def everything_caught_up(tp: tuple[str, int]) -> bool:
    return True


def nothing_caught_up(tp: tuple[str, int]) -> bool:
    return False


def test_releases_by_event_time_across_topics_and_by_offset_within_one() -> None:
    a: Aligner[str] = Aligner(max_idle_s=1.0, max_buffered=100)
    a.add(P, 0, (30, "p0"), "p0")
    a.add(P, 1, (10, "p1"), "p1")  # out of order within its own topic: stays behind p0
    a.add(V, 0, (20, "v0"), "v0")
    a.add(V, 1, (40, "v1"), "v1")
    assert a.pop_ready(0.0, [P, V], everything_caught_up) == ["v0", "p0", "p1", "v1"]
    assert a.held == 0


def test_ties_follow_event_id_and_unreadable_records_go_first() -> None:
    a: Aligner[str] = Aligner(max_idle_s=1.0, max_buffered=100)
    a.add(P, 0, (5, "b"), "b")
    a.add(V, 0, (5, "a"), "a")
    a.add(R, 7, UNREADABLE, "junk")
    assert a.pop_ready(0.0, [P, V, R], everything_caught_up) == ["junk", "a", "b"]


def test_an_empty_partition_that_is_behind_holds_the_others_back() -> None:
    a: Aligner[str] = Aligner(max_idle_s=5.0, max_buffered=100)
    a.add(P, 0, (100, "p"), "p")

    def behind(tp: tuple[str, int]) -> bool:
        return tp != V  # visits has records in the broker the worker has not received

    assert a.pop_ready(0.0, [P, V], behind) == []
    assert a.held == 1 and a.waiting(1.0) == 1.0
    a.add(V, 0, (50, "v"), "v")  # the older record arrives and goes first
    assert a.pop_ready(1.0, [P, V], behind) == ["v"]  # visits is empty and behind again
    assert a.pop_ready(1.5, [P, V], everything_caught_up) == ["p"]


def test_a_caught_up_partition_never_holds_anything_back() -> None:
    a: Aligner[str] = Aligner(max_idle_s=60.0, max_buffered=100)
    a.add(P, 0, (100, "p"), "p")
    assert a.pop_ready(0.0, [P, V], everything_caught_up) == ["p"]


def test_holding_lasts_at_most_max_idle_then_the_partition_is_idle_until_it_gets_a_record() -> None:
    a: Aligner[str] = Aligner(max_idle_s=2.0, max_buffered=100)
    a.add(P, 0, (100, "p0"), "p0")
    assert a.pop_ready(10.0, [P, V], nothing_caught_up) == []
    assert a.pop_ready(11.9, [P, V], nothing_caught_up) == []
    assert a.pop_ready(12.0, [P, V], nothing_caught_up) == ["p0"]
    assert a.stats.idle_timeouts == 1 and a.stats.forced == 1
    # Still idle: no new wait for the same silent partition...
    a.add(P, 1, (200, "p1"), "p1")
    assert a.pop_ready(12.1, [P, V], nothing_caught_up) == ["p1"]
    # ...until it receives a record: then it is an ordinary member again.
    a.add(V, 0, (300, "v0"), "v0")
    a.add(P, 2, (400, "p2"), "p2")
    assert a.pop_ready(12.2, [P, V], nothing_caught_up) == ["v0"]
    assert a.pop_ready(13.0, [P, V], nothing_caught_up) == []


def test_a_forwarded_record_is_awaited_even_when_the_consumer_thinks_the_partition_is_caught_up() -> None:
    a: Aligner[str] = Aligner(max_idle_s=5.0, max_buffered=100)
    a.add(R, 3, (1, "r3"), "r3")
    assert a.pop_ready(0.0, [R, P], everything_caught_up) == ["r3"]
    a.expect(R, 4)  # the agent forwarded a record; it lands at offset 4
    a.add(P, 0, (100, "p"), "p")
    assert a.pop_ready(0.1, [R, P], everything_caught_up) == []
    a.add(R, 4, (50, "r4"), "r4")
    assert a.pop_ready(0.2, [R, P], everything_caught_up) == ["r4", "p"]
    a.expect(R, 2)  # already received: nothing to wait for
    a.add(P, 1, (200, "p1"), "p1")
    assert a.pop_ready(0.3, [R, P], everything_caught_up) == ["p1"]


def test_flow_pauses_a_partition_that_runs_ahead_and_resumes_it_at_half() -> None:
    a: Aligner[int] = Aligner(max_idle_s=5.0, max_buffered=4)
    for i in range(4):
        a.add(P, i, (100 + i, ""), i)
    assert a.flow() == ({P}, set())
    assert a.flow() == (set(), set())  # already paused

    def visits_behind(tp: tuple[str, int]) -> bool:
        return tp != V

    assert a.pop_ready(0.0, [P, V], visits_behind) == []  # held: 4 records, paused
    a.add(V, 0, (100, "v"), 99)
    # v0 (100, "v") sorts after p0 (100, ""); then visits is empty and behind: hold
    assert a.pop_ready(0.0, [P, V], visits_behind) == [0, 99]
    assert a.flow() == (set(), set())  # three held: above half of 4
    a.add(V, 1, (101, "v"), 98)
    assert a.pop_ready(0.0, [P, V], visits_behind) == [1, 98]
    assert a.flow() == (set(), {P})  # two held: resumed
    assert a.stats.pauses == 1
    for i in range(4, 6):
        a.add(P, i, (150 + i, ""), i)
    assert a.flow() == ({P}, set())


def test_a_rebalance_keeps_what_stays_drops_what_moved_and_ignores_repeats() -> None:
    a: Aligner[str] = Aligner(max_idle_s=5.0, max_buffered=2)
    a.add(P, 10, (5, ""), "p10")
    a.add(P, 11, (6, ""), "p11")
    a.add(V, 3, (1, ""), "v3")
    assert a.flow() == ({P}, set())
    assert a.retain([V]) == 2  # purchases moved to another worker
    assert a.held == 1 and a.paused == frozenset()
    assert a.add(V, 3, (1, ""), "v3 again") is False  # redelivered from the committed offset
    assert a.add(V, 4, (2, ""), "v4") is True
    assert a.stats.redelivered == 1
    assert a.pop_ready(0.0, [V], everything_caught_up) == ["v3", "v4"]


def test_released_until_is_the_newest_event_time_released_since_the_last_rebalance() -> None:
    a: Aligner[str] = Aligner(max_idle_s=5.0, max_buffered=100)
    assert a.released_until_us == -1
    a.add(P, 0, (30, ""), "p0")
    a.add(P, 1, (10, ""), "p1")  # out of order within its topic: released after p0
    a.add(R, 0, UNREADABLE, "junk")
    assert a.pop_ready(0.0, [P], everything_caught_up) == ["junk", "p0", "p1"]
    assert a.released_until_us == 30  # never lowered by an older record
    a.add(P, 2, (40, ""), "p2")
    a.retain([P])  # a rebalance: partitions gained may be behind
    assert a.released_until_us == -1
    assert a.pop_ready(0.0, [P], everything_caught_up) == ["p2"]
    assert a.released_until_us == 40


def test_skew_is_reported_per_partition_number() -> None:
    a: Aligner[str] = Aligner(max_idle_s=5.0, max_buffered=10)
    a.add(("purchases", 0), 0, (1_000, ""), "a")
    a.add(("visits", 0), 0, (4_000, ""), "b")
    a.add(("visits", 1), 0, (7_000, ""), "c")
    a.add(("feedback", 1), 0, UNREADABLE, "d")
    assert a.skew_us() == {0: 3_000, 1: 0}


def test_inspect_reads_the_instant_as_utc_the_event_id_and_the_key() -> None:
    def time_key(value: bytes | None) -> tuple[int, str]:
        return inspect(value)[0]

    assert time_key(b'{"occurred_at": "2025-01-01T02:00:00+02:00", "event_id": "e"}') == (
        time_key(b'{"occurred_at": "2025-01-01T00:00:00Z", "event_id": "e"}'))
    assert time_key(b'{"occurred_at": "2025-01-01T00:00:00Z"}')[1] == ""
    for junk in (None, b"", b"\xff", b"[1]", b'{"occurred_at": "yesterday"}'):
        assert time_key(junk) == UNREADABLE
    assert inspect(b'{"shop_id": "s", "customer_id": "c"}') == (UNREADABLE, b"s|c")
    assert inspect(b'{"shop_id": "s"}')[1] is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 50), max_size=12), min_size=1, max_size=5),
       st.lists(st.integers(0, 4), max_size=80))
def test_any_arrival_interleaving_of_time_ordered_topics_is_released_in_time_order(
        topics: list[list[int]], schedule: list[int]) -> None:
    """Each topic's records are in time order; whatever order the consumer hands
    them over in, once every topic has arrived the release is one merge by
    event time, and each topic's records come out in offset order."""
    streams = {(f"t{i}", 0): sorted(times) for i, times in enumerate(topics)}
    a: Aligner[tuple[tuple[str, int], int]] = Aligner(max_idle_s=1e9, max_buffered=1000)
    sent = dict.fromkeys(streams, 0)

    def caught_up(tp: tuple[str, int]) -> bool:
        return sent[tp] == len(streams[tp])

    order = [tp for tp in streams for _ in streams[tp]]
    # deliver in an arbitrary interleaving chosen by ``schedule``
    pending = {tp: list(range(len(ts))) for tp, ts in streams.items()}
    released = []
    steps = iter(schedule)
    while any(pending.values()):
        choices = [tp for tp in streams if pending[tp]]
        tp = choices[next(steps, 0) % len(choices)]
        off = pending[tp].pop(0)
        sent[tp] += 1
        a.add(tp, off, (streams[tp][off], ""), (tp, off))
        released += a.pop_ready(0.0, list(streams), caught_up)
    released += a.pop_ready(0.0, list(streams), caught_up)
    assert len(released) == len(order) and a.held == 0
    times = [streams[tp][off] for tp, off in released]
    assert times == sorted(times)
    for tp in streams:
        assert [off for t, off in released if t == tp] == list(range(len(streams[tp])))


def test_released_records_that_were_not_processed_go_back_in_front() -> None:
    a: Aligner[str] = Aligner(max_idle_s=5.0, max_buffered=100)
    a.add(P, 0, (1, ""), "p0")
    a.add(P, 1, (3, ""), "p1")
    a.add(V, 0, (2, ""), "v0")
    released = a.pop_ready(0.0, [P, V], lambda tp: tp == V)  # purchases behind: stops after p1
    assert released == ["p0", "v0", "p1"]
    a.add(P, 2, (4, ""), "p2")
    a.requeue([(V, 0, (2, ""), "v0"), (P, 1, (3, ""), "p1")])  # their processing was cancelled
    assert a.held == 3
    assert a.add(P, 1, (3, ""), "p1 again") is False  # still received: no second copy
    assert a.pop_ready(0.1, [P, V], everything_caught_up) == ["v0", "p1", "p2"]
