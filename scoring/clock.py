"""Time as the core sees it: integer microseconds since the Unix epoch, UTC.

Integers keep the state compact and comparisons exact; calendar dates (DOMAIN.md
windows, recency, tenure) are UTC day numbers since 1970-01-01.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache

US_PER_DAY = 86_400_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)


def to_us(dt: datetime) -> int:
    """Aware datetime -> microseconds since the epoch (exact)."""
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def day_of(us: int) -> int:
    """The UTC calendar date of an instant, as a day number."""
    return us // US_PER_DAY


def day_start_us(day: int) -> int:
    return day * US_PER_DAY


def rfc3339(us: int | None) -> str | None:
    """RFC 3339 in UTC with a ``Z``; microseconds only when non-zero."""
    if us is None:
        return None
    return _rfc3339(us)


@lru_cache(maxsize=1 << 16)  # the same instants are formatted again on every re-fold
def _rfc3339(us: int) -> str:
    # A naive datetime's isoformat is exactly the form wanted without the "Z"
    # (four-digit year, microseconds only when non-zero), written in C.
    return (_EPOCH_NAIVE + timedelta(microseconds=us)).isoformat() + "Z"


def parse_instant(text: str) -> datetime:
    """Parse an RFC 3339 instant given on a command line or query string (offset required)."""
    from schemas.events import parse_rfc3339

    return parse_rfc3339(text.strip())
