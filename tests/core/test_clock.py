"""The core's instants: RFC 3339 text and back."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from schemas.events import parse_rfc3339
from scoring.clock import from_us, rfc3339, to_us

# 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999Z
_FIRST_US, _LAST_US = -62_135_596_800_000_000, 253_402_300_799_999_999


def _written_out(us: int) -> str:
    """The format spelled field by field: four-digit year, "Z", microseconds only when non-zero."""
    dt = from_us(us)
    base = (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T"
            f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}")
    return f"{base}.{dt.microsecond:06d}Z" if dt.microsecond else f"{base}Z"


@given(st.one_of(st.integers(_FIRST_US, _LAST_US),
                 st.integers(_FIRST_US // 1_000_000, _LAST_US // 1_000_000).map(lambda s: s * 1_000_000)))
def test_rfc3339_text_is_the_documented_form_and_parses_back_to_the_instant(us: int) -> None:
    text = rfc3339(us)
    assert text == _written_out(us)
    assert to_us(parse_rfc3339(text)) == us


def test_rfc3339_of_nothing_is_nothing() -> None:
    assert rfc3339(None) is None
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(-1) == "1969-12-31T23:59:59.999999Z"
