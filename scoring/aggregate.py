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
* ``fb_tp``: all-time NPS classes per feedback touchpoint, one row per distinct
  touchpoint the customer used.
Everything else is a fixed number of counters.

Encoding versions
-----------------
Slots are encoded in ``__slots__`` order. Version 2 appended ``det_since``,
``ever_det`` and ``fb_tp`` (rule v2: detractor follow-up, NPS by touchpoint).
A version-1 list (:data:`V1_SLOTS` values) is still read: see :meth:`Agg.from_list`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from scoring.clock import US_PER_DAY

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
        # version 2
        "det_since", "ever_det", "fb_tp",
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
        # Start of the current run of consecutive detractor answers (canonical
        # order), None when the latest answer is not a detractor one.
        self.det_since: int | None = None
        self.ever_det = False  # some answer so far was a detractor one (for `recovered`)
        self.fb_tp: list[list] = []  # [touchpoint or None, promoters, passives, detractors]

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
        new.fb_tp = self.fb_tp[:]  # rows are replaced, never mutated in place
        new.lots = [x[:] for x in self.lots]
        return new

    def to_list(self) -> list[Any]:
        out = [getattr(self, name) for name in Agg.__slots__]
        # dicts keep insertion (= canonical) order through orjson; store as pairs to be explicit.
        out[Agg.__slots__.index("orders")] = [[k, v] for k, v in self.orders.items()]
        return out

    @classmethod
    def from_list(cls, data: list[Any]) -> Agg:
        """Decode :meth:`to_list` output, of this version or of version 1.

        A version-1 aggregate never recorded detractor runs nor touchpoints;
        they are rebuilt from what it has (see :func:`_upgrade_v1`).
        Raises ValueError for a list of any other length.
        """
        new = cls.__new__(cls)
        if len(data) == V1_SLOTS:
            for name, value in zip(Agg.__slots__[:V1_SLOTS], data, strict=True):
                setattr(new, name, value)
            _upgrade_v1(new)
        else:
            if len(data) != len(Agg.__slots__):
                raise ValueError(f"aggregate has {len(data)} slots, expected {len(Agg.__slots__)}")
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


V1_SLOTS = len(Agg.__slots__) - 3
_DETRACTOR_CLASS = 2  # scoring.nps.DETRACTOR (not imported: nps imports policy, this stays leaf)


def _upgrade_v1(agg: Agg) -> None:
    """Fill the version-2 slots of an aggregate written by version 1.

    * ``ever_det``: exact: version 1 counted every detractor answer in ``fb_counts``.
    * ``det_since``: when the newest answer of the last 90 days is a detractor
      one, the start (UTC midnight) of the date of the first answer of that
      run in ``fb_recent``. Version 1 kept dates, not instants, and only 90
      days of them, so this is day-precise, and a run older than the kept
      answers starts at the oldest kept one; None when nothing is kept.
    * ``fb_tp``: version 1 dropped touchpoints: all answers count under None.
    """
    agg.ever_det = agg.fb_counts[_DETRACTOR_CLASS] > 0
    agg.det_since = None
    run_day = None
    for day, cls in reversed(agg.fb_recent):
        if cls != _DETRACTOR_CLASS:
            break
        run_day = day
    if run_day is not None:
        agg.det_since = run_day * US_PER_DAY
    agg.fb_tp = [[None, *agg.fb_counts]] if any(agg.fb_counts) else []


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
