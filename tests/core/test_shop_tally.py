"""Shop tallies: replacing a customer's contribution equals removing the old and adding the new."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from schemas.codec import dumps, loads
from scoring.shop import ShopTally

_TYPES = st.sampled_from(["true", "latent", "spurious", "none", "unknown"])


@st.composite
def contributions(draw: Any) -> list[Any]:
    """A :func:`scoring.shop.contribution`-shaped list: flags, labels, sums, dated net spend."""
    days = sorted(draw(st.sets(st.integers(19_600, 20_000), max_size=30)))
    return [draw(st.integers(0, 1)), draw(st.integers(0, 1)), draw(_TYPES),
            draw(st.sampled_from([None, "committed", "moderate", "vulnerable"])),
            draw(st.sampled_from([None, "none", "detractor", "recovered"])),
            draw(st.integers(0, 10**6)), draw(st.integers(0, 50)), draw(st.integers(0, 1)),
            [[d, draw(st.integers(-5_000, 5_000).filter(bool))] for d in days]]


def _figures(tally: ShopTally) -> tuple[Any, ...]:
    """Everything a tally holds, order aside."""
    return (tally.buyers, tally.repeaters, tally.types, tally.wallets, tally.detractors,
            tally.spend_sum, tally.count_sum, tally.spend_days)


@given(st.lists(contributions(), max_size=4), contributions() | st.none(),
       contributions() | st.none(), st.booleans())
def test_replacing_a_contribution_is_removing_then_adding(
        others: list[list[Any]], before: list[Any] | None, after: list[Any] | None,
        near: bool) -> None:
    if near and before is not None and after is not None:
        # The usual case: the same customer one event later, most dates unchanged.
        after[7] = before[7]
        after[8] = [row[:] for row in before[8][1:]] + after[8][-1:]
        after[8] = sorted({d: [d, n] for d, n in after[8]}.values())
    expected, replaced = ShopTally.empty(), ShopTally.empty()
    for tally in (expected, replaced):
        for other in others:
            tally.add_contribution(other)
        tally.add_contribution(before)
    expected.add_contribution(before, -1)
    expected.add_contribution(after)
    replaced.replace_contribution(before, after)
    assert _figures(replaced) == _figures(expected)
    assert ShopTally.decode(replaced.encode()).spend_days == expected.spend_days


@given(st.lists(contributions(), max_size=4), st.booleans())
def test_a_row_of_decimal_strings_reads_as_the_row_of_integers(
        added: list[list[Any]], huge: bool) -> None:
    # Earlier builds wrote the money sums as decimal strings; this one writes
    # integers while they fit orjson's 64 bits, strings beyond (a shop's sums).
    tally = ShopTally.empty()
    for contrib in added:
        tally.add_contribution(contrib)
    if huge:
        tally.spend_sum += 2**64
    row = loads(tally.encode())
    assert isinstance(row[9], str if huge else int)
    as_strings = row[:9] + [str(row[9]), str(row[10]),
                            [[d, str(a), str(b)] for d, a, b in row[11]]]
    from_strings = ShopTally.decode(dumps(as_strings))
    assert _figures(from_strings) == _figures(ShopTally.decode(tally.encode())) == _figures(tally)
    assert from_strings.encode() == tally.encode()


_DAYS = st.integers(19_600, 20_000)
_STEPS = st.lists(st.one_of(
    st.tuples(st.just("feedback"), _DAYS, st.integers(0, 2)),
    st.tuples(st.just("add"), contributions(), st.sampled_from([1, -1])),
    st.tuples(st.just("replace"), contributions(), contributions()),
    st.tuples(st.just("trim"), _DAYS, st.integers(0, 200)),
    st.tuples(st.just("encode")),
), max_size=12)


@given(st.lists(contributions(), max_size=3), _STEPS)
def test_an_encode_after_changes_holds_every_row_as_it_is_now(
        start: list[list[Any]], steps: list[tuple[Any, ...]]) -> None:
    # encode() re-encodes only the blocks of days changed since the last
    # encode: whatever the changes in between, the row must decode to the
    # tally's rows as they are, as a tally encoded from scratch does.
    tally = ShopTally.empty()
    for contrib in start:
        tally.add_contribution(contrib)
    tally.add_feedback(19_700, 0)
    tally.encode()
    for step in steps:
        if step[0] == "feedback":
            tally.add_feedback(step[1], step[2])
        elif step[0] == "add":
            tally.add_contribution(step[1], step[2])
        elif step[0] == "replace":
            tally.replace_contribution(step[1], step[2])
        elif step[0] == "trim":
            tally.trim(step[1], step[2])
        else:
            tally.encode()
        row = ShopTally.decode(tally.encode())
        assert (row.nps_days, row.spend_days) == (tally.nps_days, tally.spend_days)
        fresh = ShopTally.decode(ShopTally.decode(tally.encode()).encode())
        assert _figures(fresh) == _figures(tally)
