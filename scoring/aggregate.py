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
``ever_det`` and ``fb_tp`` (rule v2: detractor follow-up, NPS by touchpoint);
version 3 appended ``day_net``, the net spend and order count per purchase
date of the last 366 days, so that a spend window costs one step per
purchase *date* instead of one per order (a customer with a thousand orders
in a week has a handful of dates). Lists of versions 1 and 2
(:data:`V1_SLOTS`, :data:`V2_SLOTS` values) are still read: see
:meth:`Agg.from_list`.
"""

from __future__ import annotations

from operator import attrgetter
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
        # version 3
        "day_net",
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
        # [day, net spend, orders] per purchase date, ascending, the last 366 days;
        # entries are replaced, never mutated in place (copies share them)
        self.day_net: list[list[int]] = []

    def copy(self) -> Agg:
        new = _copy_slots(self)
        # Order and lot entries are shared and copied on write (a refund changes
        # an order, a redemption or clawback a lot: scoring.rewards); feedback
        # entries are never mutated.
        new.orders = dict(self.orders)
        new.pdays = self.pdays[:]
        new.fb_counts = self.fb_counts[:]
        new.fb_recent = self.fb_recent[:]
        new.fb_tp = self.fb_tp[:]  # rows are replaced, never mutated in place
        new.day_net = self.day_net[:]  # likewise
        new.lots = self.lots[:]
        return new

    def to_list(self) -> list[Any]:
        out = list(_get_slots(self))
        # dicts keep insertion (= canonical) order through orjson; store as pairs to be explicit.
        out[_ORDERS_SLOT] = [[k, v] for k, v in self.orders.items()]
        return out

    @classmethod
    def from_list(cls, data: list[Any]) -> Agg:
        """Decode :meth:`to_list` output, of this version or of version 1 or 2.

        A version-1 aggregate never recorded detractor runs nor touchpoints;
        they are rebuilt from what it has (see :func:`_upgrade_v1`). Before
        version 3 there was no ``day_net``: it is rebuilt from the orders.
        Raises ValueError for a list of any other length.
        """
        new = cls.__new__(cls)
        if len(data) in (V1_SLOTS, V2_SLOTS):
            for name, value in zip(Agg.__slots__[:len(data)], data, strict=True):
                setattr(new, name, value)
            if len(data) == V1_SLOTS:
                _upgrade_v1(new)
            new.orders = {k: v for k, v in new.orders}  # type: ignore[misc]
            _upgrade_v2(new)
            return new
        else:
            if len(data) != len(Agg.__slots__):
                raise ValueError(f"aggregate has {len(data)} slots, expected {len(Agg.__slots__)}")
            _set_slots(new, data)
        new.orders = {k: v for k, v in new.orders}  # type: ignore[misc]
        return new

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Agg) and self.to_list() == other.to_list()

    @property
    def points_balance(self) -> int:
        # Conservation (earned = balance + redeemed + expired + clawed) makes the
        # balance derivable in O(1); the property tests check it against the lots.
        return self.earned - self.redeemed - self.expired - self.clawed


V2_SLOTS = len(Agg.__slots__) - 1
_ORDERS_SLOT = Agg.__slots__.index("orders")
V1_SLOTS = V2_SLOTS - 3


def _slot_copier() -> Any:
    """A function that copies every slot of an Agg by plain assignment.

    The fold copies an aggregate for every event; a loop of getattr/setattr
    over 34 slots costs several times more than straight-line assignments,
    which are generated here from ``__slots__`` so the slot list stays the
    only place that names them.
    """
    lines = ["def copy_slots(self):", "    new = new_agg(Agg)"]
    lines += [f"    new.{name} = self.{name}" for name in Agg.__slots__]
    lines.append("    return new")
    namespace: dict[str, Any] = {"Agg": Agg, "new_agg": Agg.__new__}
    exec("\n".join(lines), namespace)  # noqa: S102 - generated from __slots__ only
    return namespace["copy_slots"]


def _slot_setter() -> Any:
    """A function that sets every slot of an Agg from a list of as many values.

    Every decoded state and every kept head goes through it: one unpacking
    instead of a ``setattr`` call per slot (generated like :func:`_slot_copier`).
    """
    targets = ", ".join(f"new.{name}" for name in Agg.__slots__)
    namespace: dict[str, Any] = {}
    exec(f"def set_slots(new, data):\n    ({targets},) = data", namespace)  # noqa: S102
    return namespace["set_slots"]


_copy_slots = _slot_copier()
_set_slots = _slot_setter()
_get_slots = attrgetter(*Agg.__slots__)
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


def _upgrade_v2(agg: Agg) -> None:
    """Fill ``day_net`` of an aggregate written before version 3: exact, since
    the orders of the last 730 days are kept and it needs 366."""
    agg.day_net = []
    if agg.t_us is None:
        return
    keep_from = agg.t_us // US_PER_DAY - DAY_NET_DAYS
    for order in agg.orders.values():
        if order[O_DAY] >= keep_from:
            add_order_day(agg, order[O_DAY], order[O_AMOUNT] - order[O_REFUNDED], 1)


#: purchase dates ``day_net`` keeps behind the aggregate's own date (windows reach 365 back)
DAY_NET_DAYS = 366


def add_order_day(agg: Agg, day: int, net: int, orders: int) -> None:
    """Add ``net`` spend and ``orders`` orders to purchase date ``day`` of ``day_net``.

    A change to a date no longer kept (a refund of an order older than 366
    days) is dropped: no window can reach it again.
    """
    rows = agg.day_net
    i = len(rows)
    while i and rows[i - 1][0] > day:  # in-order purchases stop at once
        i -= 1
    if i and rows[i - 1][0] == day:
        old = rows[i - 1]
        rows[i - 1] = [day, old[1] + net, old[2] + orders]
    elif orders:
        rows.insert(i, [day, net, orders])


def window_totals(agg: Agg, day: int, window: int) -> tuple[int, int]:
    """(net spend, orders) of purchase dates d with ``day - window < d <= day``."""
    lo = day - window
    net = orders = 0
    for row in reversed(agg.day_net):
        d = row[0]
        if d <= lo:
            break
        if d <= day:
            net += row[1]
            orders += row[2]
    return net, orders
