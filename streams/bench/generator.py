"""Input streams for the benchmark, as ``(event_type, key, value)`` triples in arrival order.

Four generators:

* :func:`fast_stream` (default) - exactly ``events`` valid contract-v1 events
  over exactly ``min(events, customers)`` customers in 5 shops. Every customer
  gets one first event (a purchase or a visit); the remaining events are
  spread over customers with log-normal activity weights, so a few customers
  are very active and many are nearly silent, like a real shop. The type mix
  follows :mod:`streams.synthetic`'s (purchases ~45 %, visits ~35 %, feedback
  ~12 %, refunds and redemptions ~4 % each); a refund always refers to an
  earlier order of the customer and a redemption never asks for more points
  than the purchases earned net of refund clawbacks (a lower bound of the
  core's balance), so almost every event changes state. Events are
  spread over ``span_days`` ending a few minutes before the wall clock (the
  service rejects timestamps in the future), in time order per customer.
  Generation is vectorised with numpy and streams its output (nothing is held
  per event), about 200 000 events/s on one core, so 10^6 customers are fine.
* :func:`heavy_stream` - the fast stream with a few hundred hot customers:
  :data:`HEAVY_CUSTOMERS` (300) customers get :data:`HEAVY_EVENTS` (200)
  events each, at most :data:`HEAVY_SHARE` (half) of all events, so smaller
  runs get fewer heavy customers (:func:`heavy_plan`: 100 000 events -> 250
  x 200, 20 000 -> 50 x 200). Their events, like everyone's, are in time
  order per customer and inside ``span_days``, which must be less than the
  7-day allowed lateness, so every one of them is folded. The remaining
  events are the fast stream's mix over the other customers; the counts are
  exact and the refunds and redemptions valid in the same way (it is the
  same generator with the heavy customers' events fixed instead of drawn).
* :func:`regulars_stream` - the heavy stream's hot customers over a long
  history instead: the same counts (:func:`heavy_plan`), spread over
  ``span_days`` (:data:`REGULARS_SPAN_DAYS`, a year, by default), so each is a
  regular with a purchase every few days, whose windows (the 180-day
  attached window, the 365-day spend window, a year of point lots) are full.
  It measures what an event costs with a long history behind it, where the
  heavy stream measures a full lateness buffer.
* :func:`synthetic_stream` - :func:`streams.synthetic.generate` with its
  segments and injected faults (duplicates, late, too-late, misrouted and
  invalid records). Its event count follows from the customer count (about
  4.2 events per customer) and it holds the whole population in memory
  (about 70 000 events/s), so ``--events`` is ignored with it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from schemas import codec
from streams.synthetic import SHOP_NAMES

Triple = tuple[str, bytes, bytes]  # (event_type, key, value)

#: extra-event type mix: (type, cumulative probability)
_MIX = (("purchase", 0.45), ("visit", 0.80), ("feedback", 0.92), ("refund", 0.96),
        ("redemption", 1.0))
_CHANNELS = ("store", "web", "app")
_REWARDS = ("coffee", "voucher", "tote")
#: heavy generator defaults: hot customers, events each, at most this share of all events
HEAVY_CUSTOMERS = 300
HEAVY_EVENTS = 200
HEAVY_SHARE = 0.5
#: the default event-time span of the fast and heavy streams, days (less than
#: the 7-day allowed lateness) and of the regulars stream
SPAN_DAYS = 6.0
REGULARS_SPAN_DAYS = 365.0
#: the default number of shops the customers are spread over (round robin)
SHOPS = len(SHOP_NAMES)


@dataclass
class StreamStats:
    """What a generator produced (filled while the stream is consumed)."""

    events: int = 0
    customers: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    generator: str = "fast"
    first_us: int | None = None
    last_us: int | None = None
    keys_sample: list[bytes] = field(default_factory=list)  # customer keys, for latency
    shops: int = 0  # shops the customers are spread over
    heavy_customers: int = 0  # heavy generator: customers with heavy_events_each events
    heavy_events_each: int = 0


def shop_names(shops: int) -> list[str]:
    """The first ``shops`` of the synthetic shops' names, then ``shop-00005`` and so on."""
    if shops < 1:
        raise ValueError(f"at least one shop is needed, got {shops}")
    return [SHOP_NAMES[i] if i < len(SHOP_NAMES) else f"shop-{i:05d}" for i in range(shops)]


def customer_ids(customers: int, shops: int = SHOPS) -> list[tuple[str, str]]:
    """``(shop_id, customer_id)`` of customer ``0..customers-1`` (round robin over shops)."""
    names = shop_names(shops)
    return [(names[i % shops], f"c{i:07d}") for i in range(customers)]


class _Formatter:
    """RFC 3339 with microseconds, ~5x faster than ``datetime.isoformat``.

    The date part is cached per day; the service parses the same text either way.
    Microseconds are always printed (a value of 0 is nudged to 1 by the
    callers that need unique text, see :func:`rfc3339_us`).
    """

    def __init__(self) -> None:
        self._days: dict[int, str] = {}

    def __call__(self, us: int) -> str:
        day, rest = divmod(us, 86_400_000_000)
        prefix = self._days.get(day)
        if prefix is None:
            d = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=day)
            prefix = self._days[day] = f"{d.year:04d}-{d.month:02d}-{d.day:02d}T"
        secs, micro = divmod(rest, 1_000_000)
        h, rem = divmod(secs, 3600)
        m, s = divmod(rem, 60)
        return f"{prefix}{h:02d}:{m:02d}:{s:02d}.{micro:06d}Z"


rfc3339_us = _Formatter()


def fast_stream(events: int, customers: int, *, seed: int = 7, span_days: float = SPAN_DAYS,
                end: datetime | None = None, stats: StreamStats | None = None,
                shops: int = SHOPS) -> Iterator[Triple]:
    """Yield ``events`` valid events over ``min(events, customers)`` customers, in arrival order.

    ``end`` (default: wall clock minus 5 minutes) is the newest ``occurred_at``.
    ``stats`` is filled as the stream is consumed.
    """
    stats = stats if stats is not None else StreamStats()
    stats.generator = "fast"
    return _stream(events, customers, seed=seed, span_days=span_days, end=end, stats=stats,
                   shops=shops)


def heavy_plan(events: int, customers: int, heavy_customers: int = HEAVY_CUSTOMERS,
               heavy_events: int = HEAVY_EVENTS) -> tuple[int, int]:
    """``(heavy customers, events each)`` of :func:`heavy_stream` for a run of this size.

    ``heavy_events`` each, but at most :data:`HEAVY_SHARE` of ``events`` in
    all: the number of heavy customers shrinks first (down to one), then the
    events each; every other customer keeps its one first event, and at least
    one customer stays in the normal mix.
    """
    n_cust = min(events, customers)
    budget = int(events * HEAVY_SHARE)
    n_heavy = min(heavy_customers, n_cust - 1, max(1, budget // max(1, heavy_events)))
    if n_heavy <= 0:
        return 0, 0
    spare = min(budget, events - n_cust)  # events beyond every customer's first one
    return n_heavy, 1 + min(heavy_events - 1, spare // n_heavy)


def heavy_stream(events: int, customers: int, *, seed: int = 7, span_days: float = SPAN_DAYS,
                 heavy_customers: int = HEAVY_CUSTOMERS, heavy_events: int = HEAVY_EVENTS,
                 end: datetime | None = None, stats: StreamStats | None = None,
                 shops: int = SHOPS) -> Iterator[Triple]:
    """:func:`fast_stream` with hot customers: see :func:`heavy_plan` for how many.

    The heavy customers are the first ones (spread over the shops); each gets
    exactly the planned number of events, the others share the rest like in
    the fast stream. Raises :class:`ValueError` unless ``span_days`` is less
    than the default policy's allowed lateness (all of a heavy customer's
    events must fit in its window).
    """
    from schemas.policy import PolicyBook

    lateness = PolicyBook.load(None).for_shop(SHOP_NAMES[0]).allowed_lateness_days
    if not span_days < lateness:
        raise ValueError(f"the heavy generator needs span_days < the allowed lateness "
                         f"({lateness} days), got {span_days}")
    return _hot_stream("heavy", events, customers, seed=seed, span_days=span_days,
                       heavy_customers=heavy_customers, heavy_events=heavy_events, end=end,
                       stats=stats, shops=shops)


def regulars_stream(events: int, customers: int, *, seed: int = 7,
                    span_days: float = REGULARS_SPAN_DAYS,
                    heavy_customers: int = HEAVY_CUSTOMERS, heavy_events: int = HEAVY_EVENTS,
                    end: datetime | None = None, stats: StreamStats | None = None,
                    shops: int = SHOPS) -> Iterator[Triple]:
    """:func:`heavy_stream`'s hot customers over ``span_days`` of history (module docstring).

    Raises :class:`ValueError` unless ``span_days`` is positive.
    """
    if not span_days > 0:
        raise ValueError(f"the regulars generator needs span_days > 0, got {span_days}")
    return _hot_stream("regulars", events, customers, seed=seed, span_days=span_days,
                       heavy_customers=heavy_customers, heavy_events=heavy_events, end=end,
                       stats=stats, shops=shops)


def _hot_stream(name: str, events: int, customers: int, *, seed: int, span_days: float,
                heavy_customers: int, heavy_events: int, end: datetime | None,
                stats: StreamStats | None, shops: int) -> Iterator[Triple]:
    """The fast stream with :func:`heavy_plan`'s hot customers, recorded as generator ``name``."""
    stats = stats if stats is not None else StreamStats()
    stats.generator = name
    stats.heavy_customers, stats.heavy_events_each = heavy_plan(events, customers,
                                                                heavy_customers, heavy_events)
    return _stream(events, customers, seed=seed, span_days=span_days, end=end, stats=stats,
                   heavy=stats.heavy_customers, heavy_each=stats.heavy_events_each, shops=shops)


def _stream(events: int, customers: int, *, seed: int, span_days: float,
            end: datetime | None, stats: StreamStats, heavy: int = 0, heavy_each: int = 0,
            shops: int = SHOPS) -> Iterator[Triple]:
    """The fast stream; customers ``0..heavy-1`` get exactly ``heavy_each`` events each."""
    import numpy as np

    n_cust = min(events, customers)
    if n_cust <= 0:
        return
    end = end or datetime.now(UTC) - timedelta(minutes=5)
    end_us = int(end.timestamp() * 1_000_000)
    span_us = int(span_days * 86_400_000_000)
    start_us = end_us - span_us
    rng = np.random.default_rng(seed)
    # First appearance in the first 80 % of the span, so most customers have a history.
    first = start_us + (rng.random(n_cust) * 0.8 * span_us).astype(np.int64)
    extra = events - n_cust
    weights = rng.lognormal(0.0, 1.2, n_cust)
    weights[:heavy] = 0.0  # their extra events are fixed, not drawn
    hot = np.repeat(np.arange(heavy), heavy_each - 1) if heavy else np.empty(0, dtype=np.int64)
    drawn = extra - len(hot)
    owner = rng.choice(n_cust, size=drawn, p=weights / weights.sum()) if drawn else \
        np.empty(0, dtype=np.int64)
    owner = np.concatenate([hot, owner]) if heavy else owner
    t_extra = first[owner] + (rng.random(extra) * (end_us - first[owner])).astype(np.int64)
    who = np.concatenate([np.arange(n_cust), owner])
    when = np.concatenate([first, t_extra])
    order = np.argsort(when, kind="stable")  # arrival order = event time order
    who, when = who[order].tolist(), when[order].tolist()
    is_first = np.concatenate([np.ones(n_cust, bool), np.zeros(extra, bool)])[order].tolist()
    rolls = rng.random(events).tolist()
    amounts = np.maximum(100, rng.lognormal(7.8, 0.7, events).astype(np.int64)).tolist()
    rnd = random.Random(seed)
    ids = customer_ids(n_cust, shops)
    stats.shops = min(shops, n_cust)
    keys = [f"{s}|{c}".encode() for s, c in ids]
    last_order: list[tuple[str, int] | None] = [None] * n_cust
    points = [0] * n_cust
    orders = [0] * n_cust
    by_type = stats.by_type
    stats.customers = n_cust
    stats.keys_sample = keys
    fmt = rfc3339_us
    dumps = codec.dumps
    for i in range(events):
        c = who[i]
        t = when[i]
        roll = rolls[i]
        if is_first[i]:
            typ = "purchase" if roll < 0.7 else "visit"
        else:
            typ = next(name for name, cum in _MIX if roll < cum)
        shop, cid = ids[c]
        ev: dict[str, object] = {"type": typ, "event_id": f"{typ[:2]}-{i:010d}",
                                 "shop_id": shop, "customer_id": cid, "occurred_at": fmt(t)}
        if typ == "refund":
            lo = last_order[c]
            if lo is None:  # nothing to refund yet: a visit keeps the stream valid
                typ = ev["type"] = "visit"
            else:
                ev["order_id"], amount = lo
                refunded = ev["amount"] = amount if roll < 0.94 else max(1, amount // 2)
                ev["currency"] = "USD"
                last_order[c] = None  # refund an order once
                # The core claws back the refunded share of the order's points
                # (a debt if spent): without this, redemptions could overdraw.
                points[c] -= (amount // 100) * refunded // amount
        elif typ == "redemption":
            want = 50 if points[c] >= 50 else 20
            if points[c] < want:
                typ = ev["type"] = "visit"
            else:
                ev["points"] = want
                ev["reward"] = _REWARDS[i % 3]
                points[c] -= want
        elif typ == "feedback":
            ev["nps"] = rnd.randint(0, 10)
            if roll < 0.85:
                ev["share_of_wallet"] = rnd.randint(20, 95)
        if typ == "purchase":
            orders[c] += 1
            order_id = f"o-{cid}-{orders[c]}"
            amount = amounts[i]
            ev["order_id"] = order_id
            ev["amount"] = amount
            ev["currency"] = "USD"
            ev["channel"] = _CHANNELS[i % 3]
            last_order[c] = (order_id, amount)
            points[c] += amount // 100
        elif typ == "visit":
            ev["channel"] = _CHANNELS[i % 3]
        by_type[typ] = by_type.get(typ, 0) + 1
        stats.events += 1
        yield typ, keys[c], dumps(ev)
    stats.first_us, stats.last_us = when[0], when[-1]


def synthetic_stream(customers: int, *, seed: int = 7, stats: StreamStats | None = None,
                     shops: int = SHOPS) -> Iterator[Triple]:
    """Yield :func:`streams.synthetic.generate` records (with faults) for ~``customers``.

    Unroutable records (no type) go to the purchases topic like ``loyalty
    produce`` sends them; records without a key are sent unkeyed.
    """
    from streams import synthetic

    stats = stats if stats is not None else StreamStats()
    stats.generator = "synthetic"
    stats.shops = shops
    per_shop = max(1, math.ceil(customers / shops))
    end = datetime.now(UTC) - timedelta(minutes=5)
    records = synthetic.generate(seed=seed, shops=shops, customers_per_shop=per_shop, end=end)
    seen: set[bytes] = set()
    for r in records:
        if r.kind == "valid" and r.key:
            seen.add(r.key)
    stats.customers = len(seen)
    stats.keys_sample = sorted(seen)
    for r in records:
        typ = r.event_type or "invalid"
        stats.by_type[typ] = stats.by_type.get(typ, 0) + 1
        stats.events += 1
        yield (r.event_type or "purchase"), r.key or b"", r.value
