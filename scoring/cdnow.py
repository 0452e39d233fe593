"""The CDNOW purchase log (Fader, Hardie & Lee 2005) as contract-v1 purchase events.

The published file has one transaction per line: customer id, date YYYYMMDD, number
of CDs, dollar value, separated by whitespace, after a header line. Each transaction
becomes one purchase event (order id and event id from the line number, noon UTC on
its date, amount in cents, currency USD). Pure: lines in, JSON bytes out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from decimal import Decimal, InvalidOperation

from schemas.codec import dumps

__all__ = ["looks_like_cdnow", "cdnow_events"]


def _fields(line: str) -> list[str] | None:
    parts = line.split()
    if len(parts) == 4 and parts[1].isdigit() and len(parts[1]) == 8:
        return parts
    return None


def looks_like_cdnow(first_lines: Iterable[str]) -> bool:
    """True if the first non-blank lines after an optional header are CDNOW rows."""
    rows = [ln for ln in first_lines if ln.strip()]
    if rows and _fields(rows[0]) is None and not rows[0].lstrip().startswith("{"):
        rows = rows[1:]  # header
    return bool(rows) and all(_fields(ln) is not None for ln in rows)


def cdnow_events(lines: Iterable[bytes | str], shop_id: str = "cdnow") -> Iterator[bytes]:
    """One purchase event (JSON bytes) per CDNOW transaction line.

    The header and blank lines are skipped. A malformed line raises ValueError naming
    its line number and content. A $0.00 row is passed on as is: the event contract
    (amount > 0) rejects it, and the fold counts it as invalid ``out_of_range``.
    """
    for lineno, raw in enumerate(lines, start=1):
        line = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
        if not line.strip():
            continue
        parts = _fields(line)
        if parts is None:
            if lineno == 1:
                continue  # header
            raise ValueError(f"line {lineno}: not a CDNOW row (id, YYYYMMDD, cds, dollars): {line.strip()!r}")
        cid, ymd, n, dollars = parts
        try:
            cents = Decimal(dollars) * 100
            n_cds = int(n)
        except (InvalidOperation, ValueError) as exc:
            raise ValueError(f"line {lineno}: bad number in {line.strip()!r}") from exc
        if cents != cents.to_integral_value():
            raise ValueError(f"line {lineno}: amount {dollars!r} is not whole cents")
        yield dumps({
            "type": "purchase", "event_id": f"t{lineno}", "shop_id": shop_id, "customer_id": cid,
            "occurred_at": f"{ymd[:4]}-{ymd[4:6]}-{ymd[6:]}T12:00:00Z", "order_id": f"t{lineno}",
            "amount": int(cents), "currency": "USD",
            "items": [{"sku": "cd", "quantity": n_cds, "unit_amount": 0}]})
