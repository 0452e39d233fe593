"""Output records produced by the fold, with deterministic ids.

An effect's ``id`` depends only on what caused it, never on when or how often
it was computed, so a redelivered event, a re-fold after a late event, and the
periodic sweep all produce the same id for the same fact. Consumers
deduplicate, and upsert, by ``id``:

* ledger entries caused by an event: (event_id, family); the families are
  ``earn``, ``free_item``, ``clawback`` and ``redeem`` (``redeem`` and
  ``redemption_rejected`` share an id: a late event can turn one into the other);
* expiry of a lot: (the lot's order_id, the lot's expiry instant);
* a stage transition: (from, to, instant);
* a detractor alert: (the feedback's event_id): ``detractor`` and
  ``recovered`` share it, since a late answer can turn one into the other.

When a late event changes an already published effect, the fold publishes it
again with the same id and ``"restated": true``; an effect that no longer holds
is published once more as ``{"void": true}`` with its id.
"""

from __future__ import annotations

import hashlib
from typing import Any

from schemas.codec import dumps_sorted
from scoring.clock import rfc3339

LEDGER, TRANSITION, ALERT = "ledger", "transition", "alert"


def effect_id(shop_id: str, customer_id: str, *parts: object) -> int:
    raw = "\x1f".join([shop_id, customer_id, *map(str, parts)]).encode()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big") >> 1


def digest(effect: dict[str, Any]) -> int:
    return int.from_bytes(hashlib.blake2b(dumps_sorted(effect), digest_size=8).digest(), "big") >> 1


def ledger(shop_id: str, customer_id: str, eid: int, entry: str, points: int, at_us: int,
           balance_after: int, **extra: Any) -> dict[str, Any]:
    out = {"kind": LEDGER, "id": f"{eid:016x}", "shop_id": shop_id, "customer_id": customer_id,
           "entry": entry, "points": points, "at": rfc3339(at_us), "balance_after": balance_after}
    out.update(extra)
    return out


def transition(shop_id: str, customer_id: str, eid: int, from_stage: str | None, to_stage: str,
               at_us: int, cause: dict[str, Any]) -> dict[str, Any]:
    return {"kind": TRANSITION, "id": f"{eid:016x}", "shop_id": shop_id, "customer_id": customer_id,
            "from": from_stage, "to": to_stage, "at": rfc3339(at_us), "cause": cause}


def alert(shop_id: str, customer_id: str, eid: int, status: str, at_us: int, *, event_id: str,
          nps: int, comment: str | None, touchpoint: str | None,
          detractor_since: str | None) -> dict[str, Any]:
    """A customer's ``detractor_status`` became ``status`` (detractor or recovered) by a feedback."""
    return {"kind": ALERT, "id": f"{eid:016x}", "shop_id": shop_id, "customer_id": customer_id,
            "alert": status, "at": rfc3339(at_us), "event_id": event_id, "nps": nps,
            "comment": comment, "touchpoint": touchpoint, "detractor_since": detractor_since}


def void(kind: str, shop_id: str, customer_id: str, eid: int) -> dict[str, Any]:
    return {"kind": kind, "id": f"{eid:016x}", "shop_id": shop_id, "customer_id": customer_id, "void": True}
