"""A deterministic synthetic shop population, in arrival order, with injected faults.

``generate(seed=..., end=...)`` returns the same records for the same
arguments (one ``random.Random(seed)``; no wall clock is read). Used by the
tests, ``loyalty demo`` and the benchmarks.

Population per shop: customer segments (regulars, occasionals, one-timers,
lapsing, browsers who only visit), log-normal order amounts, refunds (full and
partial), redemptions, NPS feedback whose score depends on the segment, and
store/web visits.

Purchases follow the BG/NBD story (Fader, Hardie & Lee 2005), one customer at a
time: while alive a customer buys at its own rate, drawn from a Gamma
distribution around the segment's mean (so gaps are exponential), and after
each purchase drops out with its own probability, drawn from the segment's
Beta distribution. Customers of a segment therefore differ in both, which is
what lets the predictive CLV models be fitted on this population (with one
drop-out probability per segment the BG/NBD parameters a and b are not
identified). Order amounts are log-normal around each customer's own typical
basket, so the Gamma-Gamma spend model is identified too. One-timers always drop out after their first purchase; browsers
never buy.

Faults (each :class:`SyntheticRecord` says which, in ``kind``):

* ``duplicate`` - an exact re-send of an earlier event;
* ``conflicting_duplicate`` - same ``event_id`` and type, different amount;
* ``late`` - delivered 1-3 days after newer events of the customer (within lateness);
* ``too_late`` - delivered after an event of the *same topic* that is more than
  ``lateness_days`` newer (so it is too late in every consumption order);
* ``orphan_refund`` - a refund of an order that never existed;
* ``misrouted`` - produced with a wrong key or none (a dedicated cohort whose
  events all fall within two days, so the rekey hop cannot reorder them
  beyond lateness);
* ``invalid:<reason>`` - one of each invalid kind, with the reason code the
  scoring core reports (``wrong_type``, ``missing_field``,
  ``currency_mismatch``, ``future_timestamp``, ``too_large``,
  ``invalid_json``, ``invalid_encoding``, ``unknown_type``, ``out_of_range``).

**Ordering caveat (read before using this for equality tests).** The service
consumes four input topics; Kafka orders records only within one partition of
one topic, so after a backlog a customer's records from different topics can
be consumed in a different order than they were produced. The fold is
order-independent within the allowed lateness, so equality with ``replay``
holds whenever the whole population spans less than the lateness
(``span_days < lateness_days``, e.g. a policy with ``allowed_lateness_days``
60 and ``span_days`` 45), or when records are consumed as they are produced.
Injected ``too_late`` records are single-topic, so they are too late in any
order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from schemas import codec
from streams.topics import message_key

SHOP_NAMES = ("cafe-aurora", "books-north", "fit-club", "garden-supply", "tea-house")
#: name, share, mean days between purchases, nps (lo, hi), Beta (a, b) of the
#: per-customer drop-out probability after a purchase (None: never buys again).
SEGMENTS = (
    ("regular", 0.22, 9.0, (7, 10), (1.0, 30.0)),
    ("occasional", 0.30, 30.0, (5, 9), (1.5, 12.0)),
    ("one_timer", 0.20, 0.0, (0, 8), None),
    ("lapsing", 0.13, 14.0, (0, 6), (3.0, 6.0)),
    ("browser", 0.15, 0.0, (4, 9), None),
)
#: Shape of the Gamma distribution of purchase rates within a segment (its mean is
#: the segment's 1 / mean gap); smaller is more heterogeneous.
RATE_SHAPE = 2.0


@dataclass(frozen=True)
class SyntheticRecord:
    """One input record as produced: value bytes, key, routing type and fault kind."""

    value: bytes
    key: bytes | None
    event_type: str | None  # routing type ("purchase", ...); None: not routable
    kind: str = "valid"
    arrival: float = 0.0  # sort key: seconds since the epoch when it "arrives"

    @property
    def is_invalid(self) -> bool:
        return self.kind.startswith("invalid:")

    @property
    def reason(self) -> str | None:
        """Dead-letter reason expected for an invalid record."""
        return self.kind.split(":", 1)[1] if self.is_invalid else None


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


class _Gen:
    def __init__(self, seed: int, end: datetime, span_days: float, lateness_days: int) -> None:
        self.rnd = random.Random(seed)
        self.end = end
        self.start = end - timedelta(days=span_days)
        self.span = span_days
        self.lateness = lateness_days
        self.out: list[SyntheticRecord] = []
        self.n = 0

    def eid(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}-{self.n:07d}"

    def emit(self, ev: dict[str, Any], at: datetime, *, kind: str = "valid",
             delay_s: float | None = None, key: bytes | None | str = "correct") -> None:
        if delay_s is None:
            delay_s = self.rnd.uniform(0, 600)  # normal transport jitter: < 10 minutes
        if key == "correct":
            key = message_key(ev["shop_id"], ev["customer_id"])
        self.out.append(SyntheticRecord(codec.dumps(ev), key, ev["type"], kind,
                                        at.timestamp() + delay_s))

    def customer(self, shop: str, cid: str, segment: tuple[Any, ...], misrouted: bool) -> None:
        rnd = self.rnd
        name, _, gap, (nps_lo, nps_hi), dropout = segment
        first = self.start + timedelta(days=rnd.uniform(0, self.span * 0.6))
        events: list[tuple[datetime, dict[str, Any]]] = []
        base = {"shop_id": shop, "customer_id": cid}

        def add(t: datetime, typ: str, **fields: Any) -> dict[str, Any]:
            ev = {"type": typ, "event_id": self.eid(typ[:2]), **base,
                  "occurred_at": _iso(t), **fields}
            events.append((t, ev))
            return ev

        if misrouted:
            t = self.end - timedelta(days=rnd.uniform(3, 10))
            add(t, "visit", channel="store")
            add(t + timedelta(hours=1), "purchase", order_id=f"o-{cid}-1",
                amount=rnd.randint(500, 9000), currency="USD")
            add(t + timedelta(hours=20), "feedback", nps=rnd.randint(nps_lo, nps_hi))
        else:
            add(first, "visit", channel=rnd.choice(["store", "web", "app"]))
            # this customer's own purchase rate (per day) and drop-out probability
            rate = rnd.gammavariate(RATE_SHAPE, 1.0 / (RATE_SHAPE * gap)) if gap > 0 else 0.0
            p_drop = rnd.betavariate(*dropout) if dropout is not None else 1.0
            # ... and its own typical basket (log-normal amounts around it)
            spend_mu = rnd.gauss(7.8, 0.45)
            tt = first + timedelta(minutes=rnd.uniform(5, 90))
            orders: list[tuple[str, int, datetime]] = []
            points = 0
            i = -1
            while name != "browser" and tt <= self.end:
                i += 1
                amount = max(100, int(math.exp(rnd.gauss(spend_mu, 0.55))))
                order = f"o-{cid}-{i + 1}"
                extra: dict[str, Any] = {}
                if rnd.random() < 0.3:
                    extra["margin_rate"] = rnd.choice([0.25, 0.4, 0.5])
                if rnd.random() < 0.5:
                    extra["items"] = [{"sku": f"sku-{rnd.randint(1, 40)}", "quantity": 1,
                                       "unit_amount": amount}]
                add(tt, "purchase", order_id=order, amount=amount, currency="USD",
                    channel=rnd.choice(["store", "web", "app"]), **extra)
                points += amount // 100
                orders.append((order, amount, tt))
                if rnd.random() < 0.35:
                    add(tt + timedelta(minutes=rnd.uniform(1, 30)), "visit")
                if rnd.random() < 0.06:  # refund, full or partial
                    part = amount if rnd.random() < 0.5 else rnd.randint(1, amount)
                    add(tt + timedelta(days=rnd.uniform(0.5, 5)), "refund", order_id=order,
                        amount=part, currency="USD")
                if points > 60 and rnd.random() < 0.15:
                    want = rnd.choice([20, 50, points + 500])  # the last one is rejected
                    add(tt + timedelta(hours=rnd.uniform(1, 48)), "redemption", points=want,
                        reward=rnd.choice(["coffee", "voucher", "tote"]))
                    points -= want if want <= points else 0
                if rnd.random() < 0.12:
                    add(tt + timedelta(hours=rnd.uniform(1, 72)), "feedback",
                        nps=rnd.randint(nps_lo, nps_hi),
                        share_of_wallet=rnd.randint(20, 95), touchpoint="receipt")
                if rate <= 0.0 or rnd.random() < p_drop:
                    break  # dropped out after this purchase, for good
                tt = tt + timedelta(days=rnd.expovariate(rate) + 0.2)
            if rnd.random() < 0.4:
                add(first + timedelta(days=rnd.uniform(0, 2)), "feedback",
                    nps=rnd.randint(nps_lo, nps_hi))
        events = [(t, e) for t, e in events if t <= self.end]
        for t, ev in events:
            self.emit(ev, t, key=None if misrouted and rnd.random() < 0.5 else (
                b"wrong|key" if misrouted else "correct"), kind="misrouted" if misrouted else "valid")
        if misrouted or len(events) < 3:
            return
        # Faults on this customer (deterministic by the shared RNG).
        roll = rnd.random()
        t, ev = rnd.choice(events)
        if roll < 0.10:
            self.emit(ev, t, kind="duplicate", delay_s=rnd.uniform(60, 3 * 86400))
        elif roll < 0.14 and ev["type"] == "purchase":
            self.emit({**ev, "amount": ev["amount"] + 1}, t, kind="conflicting_duplicate",
                      delay_s=rnd.uniform(3600, 86400))
        elif roll < 0.22:
            # late within lateness: arrives 1-3 days after it happened
            self.out.pop(next(i for i in range(len(self.out) - 1, -1, -1)
                              if self.out[i].value == codec.dumps(ev)))
            self.emit(ev, t, kind="late", delay_s=rnd.uniform(86400, 3 * 86400))
        elif roll < 0.25:
            self.emit({**base, "type": "refund", "event_id": self.eid("rf"),
                       "occurred_at": _iso(t), "order_id": f"ghost-{cid}", "amount": 500,
                       "currency": "USD"}, t, kind="orphan_refund")

    def too_late(self, shop: str, k: int) -> None:
        """A customer whose purchase arrives after a same-topic purchase > lateness newer."""
        cid = f"late-{k:03d}"
        newer = self.end - timedelta(days=1)
        older = newer - timedelta(days=self.lateness + 2)
        base = {"shop_id": shop, "customer_id": cid, "currency": "USD"}
        self.emit({"type": "purchase", "event_id": self.eid("pu"), **base,
                   "occurred_at": _iso(newer), "order_id": f"o-{cid}-2", "amount": 2500},
                  newer)
        self.emit({"type": "purchase", "event_id": self.eid("pu"), **base,
                   "occurred_at": _iso(older), "order_id": f"o-{cid}-1", "amount": 1500},
                  newer, kind="too_late", delay_s=3600)

    def invalid(self, shop: str) -> None:
        """One record of each invalid kind, spread over the stream."""
        t = self.start + timedelta(days=self.rnd.uniform(0, self.span))
        good = {"type": "purchase", "event_id": "x", "shop_id": shop, "customer_id": "bad-1",
                "occurred_at": _iso(t), "order_id": "o-bad", "amount": 1000, "currency": "USD"}
        key = message_key(shop, "bad-1")

        def bad(value: bytes, reason: str, event_type: str | None = "purchase") -> None:
            self.out.append(SyntheticRecord(value, key, event_type, f"invalid:{reason}",
                                            t.timestamp() + self.rnd.uniform(0, 600)))

        def with_(**kw: Any) -> bytes:
            return codec.dumps({**good, "event_id": self.eid("bad"), **kw})

        bad(with_(amount=10.5), "wrong_type")
        bad(with_(amount="1000"), "wrong_type")
        bad(codec.dumps({k: v for k, v in good.items() if k != "order_id"}), "missing_field")
        bad(with_(currency="EUR"), "currency_mismatch")
        bad(with_(occurred_at=_iso(self.end + timedelta(days=400))), "future_timestamp")
        bad(with_(amount=-5), "out_of_range")
        bad(with_(type="teleport"), "unknown_type", None)
        bad(with_(comment="x" * 70000), "too_large")
        bad(b'{"type": "purchase", "amount": ', "invalid_json")
        bad(b"\xff\xfe not utf-8 \x80", "invalid_encoding", None)


def generate(
    *,
    seed: int = 7,
    shops: int = 3,
    customers_per_shop: int = 150,
    end: datetime | None = None,
    span_days: float = 45.0,
    lateness_days: int = 7,
    faults: bool = True,
    misrouted_per_shop: int = 3,
) -> list[SyntheticRecord]:
    """The synthetic population as records in arrival order.

    ``end`` is the newest ``occurred_at`` (default 2026-01-01T00:00Z, fixed so
    the output never depends on the wall clock; pass a time near "now" to feed
    a live worker - future timestamps are invalid). ``lateness_days`` must be
    the policy's allowed lateness so ``too_late`` faults really are too late.
    """
    end = end or datetime(2026, 1, 1, tzinfo=UTC)
    g = _Gen(seed, end, span_days, lateness_days)
    weights = [s[1] for s in SEGMENTS]
    for s in range(shops):
        shop = SHOP_NAMES[s] if s < len(SHOP_NAMES) else f"shop-{s}"
        for c in range(customers_per_shop):
            segment = g.rnd.choices(SEGMENTS, weights)[0]
            g.customer(shop, f"c{c:05d}", segment, misrouted=False)
        if faults:
            for k in range(misrouted_per_shop):
                g.customer(shop, f"m{k:03d}", SEGMENTS[0], misrouted=True)
            g.too_late(shop, 0)
            if s == 0:
                g.invalid(shop)
    # Stable sort: ties keep generation order (a customer's too_late record
    # must follow its newer purchase).
    return sorted(g.out, key=lambda r: r.arrival)


def lines(records: Iterable[SyntheticRecord]) -> list[bytes]:
    """The record values in arrival order (what ``loyalty replay`` reads)."""
    return [r.value for r in records]


def write_jsonl(records: Iterable[SyntheticRecord], path: Path) -> int:
    """Write the values as JSON lines (invalid bytes kept verbatim); returns the count."""
    n = 0
    with open(path, "wb") as fh:
        for r in records:
            fh.write(r.value.replace(b"\n", b" ") + b"\n")
            n += 1
    return n
