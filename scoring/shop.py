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


def record_outcome(tally: ShopTally, event_type: str | None, event_day: int | None, nps_value: int | None,
                   stage_before: str | None, stage_after: str | None, applied: bool,
                   policy: ShopPolicy) -> None:
    """Fold one fold outcome into a shop tally (the service's incremental path).

    Only ``applied`` outcomes count: a duplicate or rejected event changed
    nothing. Feedback acceptance never depends on arrival order, so counting
    it when it is applied is exact.
    """
    if not applied:
        return
    tally.move(stage_before, stage_after)
    if event_type == "feedback" and nps_value is not None and event_day is not None:
        tally.add_feedback(event_day, nps.classify(nps_value, policy))


class Contribution:
    """One customer's part of a shop tally: a pure function of the state."""

    __slots__ = ("stage", "fb_counts", "fb_recent")

    def __init__(self, stage: str | None, fb_counts: list[int], fb_recent: list[list[int]]) -> None:
        self.stage, self.fb_counts, self.fb_recent = stage, fb_counts, fb_recent


def contribution(state: Any, as_of: Any, policy: ShopPolicy) -> Contribution:
    """The customer's contribution as of ``as_of`` (None: the state's own clock).

    Pure: the same state (and as_of) always gives the same contribution, so
    ``tally.remove(contribution(old)); tally.add(contribution(new))`` is exact.
    It re-folds the open buffer; :func:`record_outcome` is the cheaper exact
    incremental path when the fold's Outcome is at hand.
    """
    from scoring.snapshot import head_as_of

    as_of_us = state.clock if as_of is None else (as_of if isinstance(as_of, int) else _to_us(as_of))
    head = head_as_of(state, as_of_us, policy)
    return Contribution(state.stage if as_of is None else _stage(head, as_of_us, policy),
                        head.fb_counts[:], [x[:] for x in head.fb_recent])


def _to_us(dt: Any) -> int:
    from scoring.clock import to_us

    return to_us(dt)


def _stage(head: Agg, as_of_us: int, policy: ShopPolicy) -> str | None:
    from scoring.clock import day_of
    from scoring.stages import stage_on

    return stage_on(head, day_of(as_of_us), policy) if head.first_seen_us is not None else None


def _apply_contribution(tally: ShopTally, c: Contribution, sign: int) -> None:
    if c.stage is not None:
        tally.funnel[c.stage] = tally.funnel.get(c.stage, 0) + sign
    for cls in range(3):
        tally.nps_all[cls] += sign * c.fb_counts[cls]
    for day, cls in c.fb_recent:
        tally.nps_days.setdefault(day, [0, 0, 0])[cls] += sign


def _add(self: ShopTally, c: Contribution) -> None:
    _apply_contribution(self, c, 1)


def _remove(self: ShopTally, c: Contribution) -> None:
    _apply_contribution(self, c, -1)


ShopTally.add = _add  # type: ignore[attr-defined]
ShopTally.remove = _remove  # type: ignore[attr-defined]
