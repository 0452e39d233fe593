"""RFM: recency, frequency and monetary scores 1-5 by quintiles of the shop's buyers.

Pure (no I/O, no clock). The definition (docs/domain.md, "RFM"):

* **Values** of a buyer (a customer with at least one purchase) as of an
  instant A: recency = whole days since the last purchase (the snapshot's
  ``recency_days``), frequency = days with a purchase (``purchase_days``),
  monetary = net spend (``spend_total``). :func:`values` reads them from the
  fold's head.
* **Cut points** (:func:`fit`): per dimension, the 20th, 40th, 60th and 80th
  percentiles by nearest rank of the shop's buyers' values, each dimension
  oriented so that more is better (recency is negated: recent is better):
  with the oriented values sorted ascending ``v[1..n]``, cut ``k`` is
  ``v[ceil(k * n / 5)]``, k = 1..4. Fitted with the CLV models, from the
  same per-customer summaries, as of the refit (the replay: as of ``as_of``).
* **Score** of a value (:func:`score`): 1 + the number of cut points strictly
  below the oriented value, so 1..5, monotone in the value, equal values
  always score the same (ties are never split, so the five groups need not
  be equal in size) and a value beyond every cut point scores 5.
* **Segment** (:data:`SEGMENTS`): named from the R and F scores.
* **Null**: a customer without purchases, or a shop that had fewer buyers
  than the minimum when it was fitted (the CLV minimum, ``clv_min_customers``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from scoring.clock import day_of

#: snapshot fields, all null without a score
RFM_FIELDS = ("rfm_recency", "rfm_frequency", "rfm_monetary", "rfm_segment")

#: (segment, R scores, F scores): every (R, F) pair is in exactly one row
SEGMENT_TABLE: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = (
    ("champions", (5,), (4, 5)),
    ("loyal", (3, 4), (4, 5)),
    ("potential_loyalists", (4, 5), (2, 3)),
    ("new_customers", (5,), (1,)),
    ("promising", (4,), (1,)),
    ("need_attention", (3,), (3,)),
    ("about_to_sleep", (3,), (1, 2)),
    ("cannot_lose_them", (1, 2), (5,)),
    ("at_risk", (1, 2), (3, 4)),
    ("hibernating", (1, 2), (1, 2)),
)
SEGMENTS: dict[tuple[int, int], str] = {
    (r, f): name for name, rs, fs in SEGMENT_TABLE for r in rs for f in fs}

#: (recency_days, purchase_days, spend_total) of one buyer
Values = tuple[int, int, int]


@dataclass(frozen=True)
class RfmModel:
    """A shop's cut points: four non-decreasing oriented values per dimension."""

    customers: int
    recency: tuple[int, ...]  # negated days since the last purchase
    frequency: tuple[int, ...]
    monetary: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"customers": self.customers, "recency": list(self.recency),
                "frequency": list(self.frequency), "monetary": list(self.monetary)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RfmModel:
        """Raises :class:`ValueError` (or ``KeyError``/``TypeError``) for a malformed dict."""
        cuts = [tuple(int(x) for x in raw[name]) for name in ("recency", "frequency", "monetary")]
        if any(len(c) != 4 or list(c) != sorted(c) for c in cuts):
            raise ValueError("RFM cut points must be four non-decreasing integers per dimension")
        return cls(int(raw["customers"]), *cuts)


def values(head: Any, day: int) -> Values | None:
    """A buyer's RFM values as of ``day`` from the fold's head; None without purchases."""
    if head.purchase_count == 0:
        return None
    return day - day_of(head.last_purchase_us), head.purchase_days, head.spend_total


def cut_points(oriented: Iterable[int]) -> tuple[int, ...]:
    """The 20/40/60/80th nearest-rank percentiles of ``oriented`` (non-empty)."""
    v = sorted(oriented)
    n = len(v)
    return tuple(v[-(-k * n // 5) - 1] for k in range(1, 5))


def fit(buyers: list[Values], min_customers: int) -> RfmModel | None:
    """The shop's cut points, or None with fewer than ``min_customers`` buyers (or none)."""
    if not buyers or len(buyers) < min_customers:
        return None
    return RfmModel(len(buyers), cut_points(-r for r, _, _ in buyers),
                    cut_points(f for _, f, _ in buyers), cut_points(m for _, _, m in buyers))


def score(cuts: tuple[int, ...], oriented: int) -> int:
    """1 + the number of cut points strictly below ``oriented``: 1..5."""
    return 1 + bisect_left(cuts, oriented)


def scores(model: RfmModel | None, buyer: Values | None) -> dict[str, Any]:
    """The snapshot's RFM fields: all null without a model or without purchases."""
    if model is None or buyer is None:
        return dict.fromkeys(RFM_FIELDS)
    recency_days, frequency, monetary = buyer
    r, f = score(model.recency, -recency_days), score(model.frequency, frequency)
    return {"rfm_recency": r, "rfm_frequency": f,
            "rfm_monetary": score(model.monetary, monetary), "rfm_segment": SEGMENTS[(r, f)]}


def fit_shops(by_shop: dict[str, list[Values]], min_customers: int) -> dict[str, RfmModel | None]:
    """:func:`fit` for every shop (None: too few buyers)."""
    return {shop: fit(buyers, min_customers) for shop, buyers in by_shop.items()}
