"""The compact form of an accepted event, as the fold stores and replays it.

An event held open for reordering lives inside the customer state, so it is a
plain list, cheap to encode: ``[ts_us, event_id, kind, a, b, c]`` where ``kind``
and the payload slots are:

=====  ==========  ==========================================
kind   event       a, b, c
=====  ==========  ==========================================
"P"    purchase    order_id, amount, margin rate "num/den" or None
"R"    refund      order_id, amount, None
"V"    visit       None, None, None
"F"    feedback    nps, share_of_wallet or None, [touchpoint, comment] or None
"X"    redemption  points, None, None
=====  ==========  ==========================================

The canonical order of DOMAIN.md is ``(ts_us, event_id)``, i.e. list order of
the first two slots. Fields the fold never reads (items, channel, reward...)
are not stored, but they are part of the content digest, so a retry that
changes them is still recognised as a conflicting duplicate. A feedback's
touchpoint and comment are stored since state version 2 (NPS per touchpoint,
detractor alerts); a record written by version 1 has None there.
"""

from __future__ import annotations

import hashlib
from fractions import Fraction

from schemas.events import Event
from scoring.clock import to_us

PURCHASE, REFUND, VISIT, FEEDBACK, REDEMPTION = "P", "R", "V", "F", "X"

Record = list  # [ts_us, event_id, kind, a, b, c]


def content_digest(event: Event) -> int:
    """63-bit (fits a signed JSON integer) digest of the event's validated content (unknown fields excluded).

    ``occurred_at`` is normalised to UTC by validation, so the same instant
    written with another offset is the same content.
    """
    return int.from_bytes(hashlib.blake2b(event.model_dump_json().encode(), digest_size=8).digest(), "big") >> 1


def to_record(event: Event) -> Record:
    ts = to_us(event.occurred_at)
    t = event.type
    if t == "purchase":
        rate = event.margin_rate  # type: ignore[union-attr]
        if rate is not None:
            f = Fraction(rate)
            rate_s: str | None = f"{f.numerator}/{f.denominator}"
        else:
            rate_s = None
        return [ts, event.event_id, PURCHASE, event.order_id, event.amount, rate_s]  # type: ignore[union-attr]
    if t == "refund":
        return [ts, event.event_id, REFUND, event.order_id, event.amount, None]  # type: ignore[union-attr]
    if t == "visit":
        return [ts, event.event_id, VISIT, None, None, None]
    if t == "feedback":
        tp, comment = event.touchpoint, event.comment  # type: ignore[union-attr]
        extra = None if tp is None and comment is None else [tp, comment]
        return [ts, event.event_id, FEEDBACK, event.nps, event.share_of_wallet, extra]  # type: ignore[union-attr]
    return [ts, event.event_id, REDEMPTION, event.points, None, None]  # type: ignore[union-attr]


def id_hash(event_id: str) -> int:
    """63-bit key under which an event id is remembered for duplicate detection."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big") >> 1
