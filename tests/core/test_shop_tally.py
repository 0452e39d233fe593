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
