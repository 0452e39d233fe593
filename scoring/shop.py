"""Shop-level figures: NPS, the stage funnel and the shop KPIs of rule v2.

:class:`ShopTally` is a mergeable count (per shop, or per shop and partition
in the service): a sum of per-customer contributions. Merging the tallies of
all partitions gives the shop's figures.

* Every accepted feedback event counts once (DOMAIN.md), by its date, and,
  all time, under its touchpoint.
* The funnel counts customers by their current stage.
* The KPIs (buyers, repeat buyers, loyalty types, wallet bands, detractor
  statuses, spend and order sums, net spend per purchase date of the last
  365 days split by "attached or loyal") are sums of one
  :func:`contribution` per customer, taken from the customer's folded value.

What ``as of`` means for a tally: every contribution is the customer's as of
the instant its state was last changed by an event or by the time sweep, and
every event the tally has seen counts. The 90-day NPS window and the 365-day
spend window are placed exactly at the requested day (the tally keeps the
per-day sums); everything that depends on the stage (funnel, loyal share,
loyalty types, the attached group of the spend uplift) is as of the last
event or sweep. ``loyalty replay`` computes the same figures as of its
``--as-of`` from the events up to then; the two agree whenever no event
after that instant has been seen and the sweep has run at it.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from schemas.codec import Fragment, dumps, loads
from schemas.policy import ShopPolicy
from scoring import nps
from scoring.aggregate import Agg
from scoring.clock import day_of
from scoring.ltv import round_half_even
from scoring.stages import (
    ATTACHED,
    LOYAL,
    STAGES,
    detractor_status,
    loyalty_type,
    wallet_band,
)

LOYALTY_TYPES = ("true", "latent", "spurious", "none", "unknown")
WALLET_BANDS = ("committed", "moderate", "vulnerable")
DETRACTOR_STATUSES = ("detractor", "recovered", "none")
SPEND_WINDOW_DAYS = 365  # attached_spend_uplift compares spend_365d
#: per-day rows are encoded in blocks of 2**DAY_BLOCK_SHIFT consecutive days,
#: each kept encoded until one of its days changes (see ShopTally.encode)
DAY_BLOCK_SHIFT = 5

# Contribution slots: [buyer, repeater, loyalty type, wallet band, detractor
# status, spend_total, purchase_count, attached-or-loyal, [[day, net], ...]]
C_BUYER, C_REPEAT, C_TYPE, C_WALLET, C_DET, C_SPEND, C_COUNT, C_ATTACHED, C_DAYS = range(9)


def contribution(head: Agg, stage: str | None, day: int, policy: ShopPolicy) -> list[Any] | None:
    """One customer's share of the shop KPIs as of calendar date ``day`` (None: no customer).

    ``head`` is the fold of the customer's events as of that date and
    ``stage`` its stage then. Net spend is kept per purchase date for the
    dates of the last 365 days, so the spend window can later be placed at any
    date from ``day`` on. A JSON-ready list (it is stored in the state).
    """
    if head.first_seen_us is None:
        return None
    lo = day - SPEND_WINDOW_DAYS
    days = [[d, net] for d, net, _ in head.day_net if lo < d <= day and net]
    return [int(head.purchase_count > 0), int(head.purchase_days >= 2),
            loyalty_type(stage, head.nps_last, policy) if stage else "unknown",
            wallet_band(head.sow_last, policy), detractor_status(head, policy),
            head.spend_total, head.purchase_count, int(stage in (ATTACHED, LOYAL)),
            days]


def _key(value: str | None) -> str:
    return "null" if value is None else value


def _ratio(num: int, den: int) -> float | None:
    """num / den rounded half-even to 4 decimals (exact until then); None when den is 0."""
    return None if den == 0 else float(round(Fraction(num, den), 4))


class TallyFormatError(ValueError):
    """The bytes are not a shop tally row this code can read (damage: tallies are
    derived data, rebuilt exactly by a recount of the customer rows)."""


class ShopTally:
    """A mergeable count of a shop's figures (see the module); encodes to one JSON row.

    The per-day rows (``nps_days``, ``spend_days``) change only through the
    methods: :meth:`encode` keeps them encoded per block of days and
    re-encodes only the blocks a method changed since the last encode (a
    year of spend rows is encoded with every batch that moves the row, and
    one batch changes a day or two of it). A tally fresh from
    :meth:`decode`, :meth:`merge` or the constructor encodes every row once.
    """

    __slots__ = ("funnel", "nps_all", "nps_days", "nps_tp", "buyers", "repeaters", "types",
                 "wallets", "detractors", "spend_sum", "count_sum", "spend_days",
                 "_nps_blocks", "_spend_blocks")

    def __init__(self) -> None:
        self.funnel: dict[str, int] = {}
        self.nps_all = [0, 0, 0]  # promoters, passives, detractors
        # Per-day rows are kept as they are encoded, the day first, so that an
        # encode is one C-level copy of the values, not a Python list per day
        # (a year of spend rows is encoded with every batch that moves the row).
        self.nps_days: dict[int, list[int]] = {}  # day -> [day, p, pa, d], trimmed to the window
        self.nps_tp: dict[str | None, list[int]] = {}  # touchpoint -> [p, pa, d], all time
        self.buyers = 0
        self.repeaters = 0
        self.types: dict[str, int] = {}  # loyalty type -> customers
        self.wallets: dict[str, int] = {}  # wallet band ("null": none) -> customers
        self.detractors: dict[str, int] = {}  # detractor status ("null": none) -> customers
        self.spend_sum = 0  # sum of spend_total
        self.count_sum = 0  # sum of purchase_count
        #: purchase date -> [date, net all, net attached/loyal]
        self.spend_days: dict[int, list[int]] = {}
        #: block -> its rows encoded, None: changed since (None: not encoded yet)
        self._nps_blocks: dict[int, bytes | None] | None = None
        self._spend_blocks: dict[int, bytes | None] | None = None

    @classmethod
    def empty(cls) -> ShopTally:
        return cls()

    def move(self, stage_from: str | None, stage_to: str | None) -> None:
        """A customer moved between stages (None: entered or left the tally)."""
        if stage_from == stage_to:
            return
        if stage_from is not None:
            self.funnel[stage_from] = self.funnel.get(stage_from, 0) - 1
        if stage_to is not None:
            self.funnel[stage_to] = self.funnel.get(stage_to, 0) + 1

    def add_feedback(self, day: int, cls: int, n: int = 1, touchpoint: str | None = None) -> None:
        self.nps_all[cls] += n
        self._nps_row(day)[cls + 1] += n
        self.nps_tp.setdefault(touchpoint, [0, 0, 0])[cls] += n

    def _nps_row(self, day: int) -> list[int]:
        """The NPS row of ``day`` (created empty), its block marked changed for :meth:`encode`."""
        if self._nps_blocks is not None:
            self._nps_blocks[day >> DAY_BLOCK_SHIFT] = None
        return self.nps_days.setdefault(day, [day, 0, 0, 0])

    def add_contribution(self, contrib: list[Any] | None, sign: int = 1) -> None:
        """Add (``sign`` 1) or remove (-1) one customer's :func:`contribution`."""
        if contrib is None:
            return
        self._add_counts(contrib, sign)
        attached = contrib[C_ATTACHED]
        for day, net in contrib[C_DAYS]:
            self._add_spend(day, sign * net, attached)

    def replace_contribution(self, before: list[Any] | None, after: list[Any] | None) -> None:
        """``add_contribution(before, -1)`` then ``add_contribution(after)``: the same
        figures, touching only the purchase dates whose net spend differs.

        A regular's contribution lists a year of purchase dates and one event
        changes one or two of them; removing and adding every date cost two
        dict updates per date per event. (Rows may end in another insertion
        order than remove-then-add leaves; no figure depends on it.)
        """
        if before is None or after is None or before[C_ATTACHED] != after[C_ATTACHED]:
            self.add_contribution(before, -1)
            self.add_contribution(after)
            return
        self._add_counts(before, -1)
        self._add_counts(after, 1)
        old, new = dict(before[C_DAYS]), dict(after[C_DAYS])
        attached = after[C_ATTACHED]
        for day in sorted({day for day, _ in old.items() ^ new.items()}):
            self._add_spend(day, new.get(day, 0) - old.get(day, 0), attached)

    def _add_counts(self, contrib: list[Any], sign: int) -> None:
        """The customer counts and sums of a contribution (all but its dates)."""
        self.buyers += sign * contrib[C_BUYER]
        self.repeaters += sign * contrib[C_REPEAT]
        for counts, value in ((self.types, contrib[C_TYPE]), (self.wallets, _key(contrib[C_WALLET])),
                              (self.detractors, _key(contrib[C_DET]))):
            left = counts.get(value, 0) + sign
            if left:
                counts[value] = left
            else:
                del counts[value]
        self.spend_sum += sign * contrib[C_SPEND]
        self.count_sum += sign * contrib[C_COUNT]

    def _add_spend(self, day: int, net: int, attached: int) -> None:
        if self._spend_blocks is not None:
            self._spend_blocks[day >> DAY_BLOCK_SHIFT] = None
        row = self.spend_days.get(day)
        if row is None:
            row = self.spend_days[day] = [day, 0, 0]
        row[1] += net
        if attached:
            row[2] += net
        if not row[1] and not row[2]:
            del self.spend_days[day]  # keeps rows small: quiet days leave

    def add_customer(self, head: Agg, stage: str | None, policy: ShopPolicy, sign: int = 1) -> None:
        """Add (``sign`` 1: full recounts) or remove (-1: erasure) one customer's
        whole contribution as of ``head.t_us``."""
        if sign > 0:
            self.move(None, stage)
        else:
            self.move(stage, None)
        for cls in range(3):
            self.nps_all[cls] += sign * head.fb_counts[cls]
        for day, cls in head.fb_recent:
            self._nps_row(day)[cls + 1] += sign
        for tp, *counts in head.fb_tp:
            acc = self.nps_tp.setdefault(tp, [0, 0, 0])
            for i in range(3):
                acc[i] += sign * counts[i]
        if head.t_us is not None:
            self.add_contribution(contribution(head, stage, day_of(head.t_us), policy), sign)

    def merge(self, other: ShopTally) -> ShopTally:
        out = ShopTally()
        for t in (self, other):
            for k, v in t.funnel.items():
                out.funnel[k] = out.funnel.get(k, 0) + v
            for i in range(3):
                out.nps_all[i] += t.nps_all[i]
            for k, row in t.nps_tp.items():
                acc = out.nps_tp.setdefault(k, [0, 0, 0])
                for i in range(3):
                    acc[i] += row[i]
            for table, acc_table in ((t.nps_days, out.nps_days), (t.spend_days, out.spend_days)):
                for k, row in table.items():  # rows led by their day
                    acc = acc_table.get(k)
                    if acc is None:
                        acc_table[k] = row[:]
                        continue
                    for i in range(1, len(row)):
                        acc[i] += row[i]
            for counts, acc in ((t.types, out.types), (t.wallets, out.wallets),
                                (t.detractors, out.detractors)):
                for k, v in counts.items():
                    acc[k] = acc.get(k, 0) + v
            out.buyers += t.buyers
            out.repeaters += t.repeaters
            out.spend_sum += t.spend_sum
            out.count_sum += t.count_sum
        return out

    def trim(self, day: int, window_days: int) -> None:
        """Forget per-day NPS buckets that can no longer fall in the window."""
        lo = day - window_days
        for d in [d for d in self.nps_days if d <= lo]:
            del self.nps_days[d]
            if self._nps_blocks is not None:
                self._nps_blocks[d >> DAY_BLOCK_SHIFT] = None

    def _spend_365d(self, as_of_day: int) -> tuple[int, int]:
        lo = as_of_day - SPEND_WINDOW_DAYS
        total = attached = 0
        for d, row in self.spend_days.items():
            if lo < d <= as_of_day:
                total += row[1]
                attached += row[2]
        return total, attached

    def figures(self, shop_id: str, as_of_day: int, policy: ShopPolicy) -> dict[str, Any]:
        lo = as_of_day - policy.shop_nps_window_days
        win = [0, 0, 0]
        for d, row in self.nps_days.items():
            if lo < d <= as_of_day:
                for i in range(3):
                    win[i] += row[i + 1]
        spend_all, spend_attached = self._spend_365d(as_of_day)
        n_attached = self.funnel.get(ATTACHED, 0) + self.funnel.get(LOYAL, 0)
        uplift = None
        if n_attached and self.buyers and spend_all:
            uplift = float(round(Fraction(spend_attached * self.buyers, n_attached * spend_all) - 1, 4))
        recovered = self.detractors.get("recovered", 0)
        return {
            "shop_id": shop_id,
            "nps": _nps(self.nps_all, policy),
            f"nps_{policy.shop_nps_window_days}d": _nps(win, policy),
            "funnel": {s: self.funnel.get(s, 0) for s in STAGES},
            "customers": sum(self.funnel.values()),
            "buyers": self.buyers,
            "repeat_rate": _ratio(self.repeaters, self.buyers),
            "loyal_share_of_buyers": _ratio(self.funnel.get(LOYAL, 0), self.buyers),
            "attached_spend_uplift": uplift,
            "average_check": (round_half_even(Fraction(self.spend_sum, self.count_sum))
                              if self.count_sum else None),
            "loyalty_types": {t: self.types.get(t, 0) for t in LOYALTY_TYPES},
            "wallet_bands": {b: self.wallets.get(b, 0) for b in (*WALLET_BANDS, "null")},
            "detractor_statuses": {s: self.detractors.get(s, 0) for s in (*DETRACTOR_STATUSES, "null")},
            "detractors_recovered_rate": _ratio(recovered, recovered + self.detractors.get("detractor", 0)),
            "nps_by_touchpoint": [
                {"touchpoint": tp, **_nps(counts, policy)}
                for tp, counts in sorted(self.nps_tp.items(), key=lambda kv: (kv[0] is not None, kv[0] or ""))
                if any(counts)],
        }

    def encode(self) -> bytes:
        """The row: JSON, the per-day rows in blocks of days (ascending within a block);
        :meth:`decode` reads it, and so does every earlier build's (the order of
        the per-day rows carries nothing)."""
        if self._nps_blocks is None:
            self._nps_blocks = _blocks_of(self.nps_days)
        if self._spend_blocks is None:
            self._spend_blocks = _blocks_of(self.spend_days)
        counts = [self.funnel, self.nps_all, _encode_days(self.nps_days, self._nps_blocks),
                  [[tp, *r] for tp, r in self.nps_tp.items()], self.buyers, self.repeaters,
                  self.types, self.wallets, self.detractors]
        try:
            return dumps([*counts, self.spend_sum, self.count_sum,
                          _encode_days(self.spend_days, self._spend_blocks)])
        except TypeError:
            # A shop's sum of customer totals may leave 64 bits (orjson's integer
            # range) where no single customer's can: then the money sums are
            # written as decimal strings. :meth:`decode` reads both forms (rows
            # of earlier builds hold strings), and so did every earlier decode.
            return dumps([*counts, str(self.spend_sum), str(self.count_sum),
                          [[d, str(a), str(b)] for d, a, b in self.spend_days.values()]])

    @classmethod
    def decode(cls, data: bytes | None) -> ShopTally:
        """Read :meth:`encode` output (no row, ``None`` or empty: an empty tally); a row
        written before rule v2 (funnel and NPS only) decodes with empty KPI counts,
        which the next full recount fills."""
        if not data:
            return cls()
        try:
            return cls._decode(loads(data))
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise TallyFormatError(f"unreadable shop tally: {exc!r}") from None

    @classmethod
    def _decode(cls, raw: Any) -> ShopTally:
        funnel, nps_all, days = raw[:3]
        # The containers' types, checked once here (cheap), so that a damaged row
        # fails at its decoding and not in a later merge or figure.
        if not (isinstance(funnel, dict) and isinstance(nps_all, list) and len(nps_all) == 3
                and isinstance(days, list)):
            raise TypeError("funnel, NPS counts or NPS days of the wrong shape")
        out = cls()
        out.funnel, out.nps_all = funnel, nps_all
        out.nps_days = {row[0]: row for row in days}
        if len(raw) > 3:
            (tps, out.buyers, out.repeaters, out.types, out.wallets, out.detractors, spend_sum,
             count_sum, spend_days) = raw[3:]
            if not (isinstance(out.buyers, int) and isinstance(out.repeaters, int)
                    and all(isinstance(d, dict) for d in (out.types, out.wallets, out.detractors))):
                raise TypeError("KPI counts of the wrong shape")
            out.nps_tp = {row[0]: row[1:] for row in tps}
            if isinstance(spend_sum, int):
                out.spend_sum, out.count_sum = spend_sum, count_sum
                out.spend_days = {row[0]: row for row in spend_days}
            else:  # decimal strings: see encode()
                out.spend_sum, out.count_sum = int(spend_sum), int(count_sum)
                out.spend_days = {row[0]: [row[0], int(row[1]), int(row[2])] for row in spend_days}
        return out


def _blocks_of(days: dict[int, list[int]]) -> dict[int, bytes | None]:
    """Every block that holds a row of ``days``, none encoded yet."""
    return dict.fromkeys(day >> DAY_BLOCK_SHIFT for day in days)


def _encode_days(days: dict[int, list[int]], blocks: dict[int, bytes | None]) -> Fragment:
    """The JSON list of the rows of ``days``: the blocks encoded before as they are, the
    blocks marked None encoded now (and kept; a block left without rows is dropped).

    Raises TypeError, as ``dumps`` does, for a value beyond 64 bits.
    """
    parts: list[bytes] = []
    emptied: list[int] = []
    for block, encoded in blocks.items():
        if encoded is None:
            first = block << DAY_BLOCK_SHIFT
            rows = [row for day in range(first, first + (1 << DAY_BLOCK_SHIFT))
                    if (row := days.get(day)) is not None]
            # the slice is an exact-size copy: kept bytes do not hold orjson's buffer
            encoded = blocks[block] = dumps(rows)[1:-1]
        if encoded:
            parts.append(encoded)
        else:
            emptied.append(block)
    for block in emptied:
        del blocks[block]
    return Fragment(b"[" + b",".join(parts) + b"]")


def _nps(counts: list[int], policy: ShopPolicy) -> dict[str, Any]:
    score = nps.score(*counts)
    return {"score": score, "band": nps.band(score, policy), "responses": sum(counts),
            "promoters": counts[0], "passives": counts[1], "detractors": counts[2]}
