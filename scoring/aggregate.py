"""The folded value of a customer's events: everything a snapshot needs.

:class:`Agg` is what ``apply_event`` mutates. It is plain data (ints, strings,
lists, one dict), copied before every speculative re-fold and encoded as a
list for the changelog.

Bounded size
------------
* ``orders``: one entry per order, kept ``order_retention_days`` (730) after its
  purchase date; windows need 365 days, the rest serves late refunds.
* ``pdays``: the distinct purchase dates of the last 365 days (+ slack).
* ``lots``: open bonus-point lots; a lot lives at most ``points_expiry_days``.
* ``fb_recent``: feedback classes of the last 90 days (shop NPS window).
Everything else is a fixed number of counters.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# Order entry slots.
O_DAY, O_AMOUNT, O_REFUNDED, O_RATE_NUM, O_RATE_DEN, O_MARGIN, O_POINTS, O_CLAWED, O_TS = range(9)
# Lot slots: [expires_us, remaining, order_id, earned]
L_EXPIRES, L_REMAINING, L_ORDER, L_EARNED = range(4)


class Agg:
    __slots__ = (
        "t_us", "first_seen_us", "purchase_count", "purchase_days", "first_purchase_us",
        "last_purchase_us", "spend_total", "refund_total", "margin_total", "first_day_net",
        "orders", "pdays", "visit_days", "last_visit_day", "nps_last", "sow_last",
        "fb_counts", "fb_recent", "lots", "earned", "redeemed", "expired", "clawed",
        "shortfall", "redemptions_rejected", "stamps", "free_items", "stage",
        "orphan_refunds", "duplicate_orders", "refunds_capped",
    )

    def __init__(self) -> None:
        self.t_us: int | None = None  # instant the value is "as of"
        self.first_seen_us: int | None = None
        self.purchase_count = 0
        self.purchase_days = 0
        self.first_purchase_us: int | None = None
        self.last_purchase_us: int | None = None
        self.spend_total = 0
        self.refund_total = 0
        self.margin_total = 0
        self.first_day_net = 0  # net spend of the first purchase date (CLV excludes it)
        self.orders: dict[str, list] = {}  # order_id -> order slots (canonical order)
        self.pdays: list[int] = []  # distinct purchase days, ascending
        self.visit_days = 0
        self.last_visit_day: int | None = None
        self.nps_last: int | None = None
        self.sow_last: int | None = None
        self.fb_counts = [0, 0, 0]  # promoters, passives, detractors (all time)
        self.fb_recent: list[list[int]] = []  # [day, class] for the shop NPS window
        self.lots: list[list] = []  # open lots, oldest first
        self.earned = 0
        self.redeemed = 0
        self.expired = 0
        self.clawed = 0
        self.shortfall = 0
        self.redemptions_rejected = 0
        self.stamps = 0
        self.free_items = 0
        self.stage: str | None = None  # stage as of t_us
        self.orphan_refunds = 0
        self.duplicate_orders = 0
        self.refunds_capped = 0

    def copy(self) -> Agg:
        new = Agg.__new__(Agg)
        for name in Agg.__slots__:
            setattr(new, name, getattr(self, name))
        # Order entries are shared and copied on write (only a refund changes
        # one); feedback entries are never mutated. Lots are small and mutable.
        new.orders = dict(self.orders)
        new.pdays = self.pdays[:]
        new.fb_counts = self.fb_counts[:]
        new.fb_recent = self.fb_recent[:]
        new.lots = [x[:] for x in self.lots]
        return new

    def to_list(self) -> list[Any]:
        out = [getattr(self, name) for name in Agg.__slots__]
        # dicts keep insertion (= canonical) order through orjson; store as pairs to be explicit.
        out[Agg.__slots__.index("orders")] = [[k, v] for k, v in self.orders.items()]
        return out

    @classmethod
    def from_list(cls, data: list[Any]) -> Agg:
        new = cls.__new__(cls)
        for name, value in zip(Agg.__slots__, data, strict=True):
            setattr(new, name, value)
        new.orders = {k: v for k, v in new.orders}  # type: ignore[misc]
        return new

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Agg) and self.to_list() == other.to_list()

    @property
    def points_balance(self) -> int:
        # Conservation (earned = balance + redeemed + expired + clawed) makes the
        # balance derivable in O(1); the property tests check it against the lots.
        return self.earned - self.redeemed - self.expired - self.clawed


def orders_in_window(agg: Agg, day: int, window: int) -> Iterator[list]:
    """Orders whose purchase date d satisfies ``day - window < d <= day``.

    Orders are kept in canonical (date) order, so the scan walks back from the
    newest and stops at the window's start.
    """
    lo = day - window
    for order in reversed(agg.orders.values()):
        d = order[O_DAY]
        if d <= lo:
            return
        if d <= day:
            yield order
