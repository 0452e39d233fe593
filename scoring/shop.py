"""Shop-level figures: NPS (all time and over a trailing window) and the stage funnel.

:class:`ShopTally` is a mergeable count (per shop, or per shop and partition
in the service): a sum of per-customer contributions. Merging the tallies of
all partitions gives the shop's figures.

* Every accepted feedback event counts once (DOMAIN.md), by its date.
* The funnel counts customers by their current stage.
"""

from __future__ import annotations

from typing import Any

from schemas.codec import dumps, loads
from schemas.policy import ShopPolicy
from scoring import nps
from scoring.aggregate import Agg
from scoring.stages import STAGES


class ShopTally:
    __slots__ = ("funnel", "nps_all", "nps_days")

    def __init__(self) -> None:
        self.funnel: dict[str, int] = {}
        self.nps_all = [0, 0, 0]  # promoters, passives, detractors
        self.nps_days: dict[int, list[int]] = {}  # day -> [p, pa, d], trimmed to the window

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

    def add_feedback(self, day: int, cls: int, n: int = 1) -> None:
        self.nps_all[cls] += n
        self.nps_days.setdefault(day, [0, 0, 0])[cls] += n

    def add_customer(self, head: Agg, stage: str | None) -> None:
        """Add one customer's whole contribution (used by full recounts)."""
        self.move(None, stage)
        for cls in range(3):
            self.nps_all[cls] += head.fb_counts[cls]
        for day, cls in head.fb_recent:
            self.nps_days.setdefault(day, [0, 0, 0])[cls] += 1

    def merge(self, other: ShopTally) -> ShopTally:
        out = ShopTally()
        for t in (self, other):
            for k, v in t.funnel.items():
                out.funnel[k] = out.funnel.get(k, 0) + v
            for i in range(3):
                out.nps_all[i] += t.nps_all[i]
            for d, row in t.nps_days.items():
                acc = out.nps_days.setdefault(d, [0, 0, 0])
                for i in range(3):
                    acc[i] += row[i]
        return out

    def trim(self, day: int, window_days: int) -> None:
        """Forget per-day NPS buckets that can no longer fall in the window."""
        lo = day - window_days
        for d in [d for d in self.nps_days if d <= lo]:
            del self.nps_days[d]

    def figures(self, shop_id: str, as_of_day: int, policy: ShopPolicy) -> dict[str, Any]:
        lo = as_of_day - policy.shop_nps_window_days
        win = [0, 0, 0]
        for d, row in self.nps_days.items():
            if lo < d <= as_of_day:
                for i in range(3):
                    win[i] += row[i]
        all_score = nps.score(*self.nps_all)
        win_score = nps.score(*win)
        return {
            "shop_id": shop_id,
            "nps": {"score": all_score, "band": nps.band(all_score), "responses": sum(self.nps_all),
                    "promoters": self.nps_all[0], "passives": self.nps_all[1],
                    "detractors": self.nps_all[2]},
            f"nps_{policy.shop_nps_window_days}d": {
                "score": win_score, "band": nps.band(win_score), "responses": sum(win),
                "promoters": win[0], "passives": win[1], "detractors": win[2]},
            "funnel": {s: self.funnel.get(s, 0) for s in STAGES},
            "customers": sum(self.funnel.values()),
        }

    def encode(self) -> bytes:
        return dumps([self.funnel, self.nps_all, [[d, *r] for d, r in self.nps_days.items()]])

    @classmethod
    def decode(cls, data: bytes) -> ShopTally:
        funnel, nps_all, days = loads(data)
        out = cls()
        out.funnel, out.nps_all = funnel, nps_all
        out.nps_days = {row[0]: row[1:] for row in days}
        return out
