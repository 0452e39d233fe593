"""Per-partition shop tallies: how the service maintains ``scoring.shop.ShopTally``.

A tally row (key ``b"shop|<partition>"``) counts the customers of one shop
stored in one partition: the stage funnel and the NPS answers. It changes in
two ways:

* incrementally, by a :class:`TallyDelta` per state change (the agent and the
  sweep): the customer's stage moved from ``stage_before`` to ``stage_after``,
  and, for an accepted feedback event, one answer of class ``cls`` on ``day``;
* exactly, by :func:`recount_contribution` summed over every customer row of
  the partition (the sweep), which repairs any drift left by a crash between
  the state write and the tally write.

The two agree because every accepted feedback event is in the customer's
fold (``head.fb_counts``) exactly once, and the stage in the state is the one
the last transition moved the customer to.

Tally row keys (:func:`streams.topics.tally_key`) are one of the key rules of
:mod:`streams.topics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scoring import nps
from scoring.clock import day_of, to_us
from scoring.shop import ShopTally
from scoring.snapshot import head_as_of

if TYPE_CHECKING:
    from schemas.policy import ShopPolicy
    from scoring.state import CustomerState


@dataclass(frozen=True)
class TallyDelta:
    """One customer's change to its shop's tally."""

    stage_before: str | None
    stage_after: str | None
    feedback: tuple[int, int] | None = None  # (day number, NPS class) of an accepted answer

    def apply(self, tally: ShopTally) -> ShopTally:
        """Apply to ``tally`` in place and return it."""
        tally.move(self.stage_before, self.stage_after)
        if self.feedback is not None:
            tally.add_feedback(self.feedback[0], self.feedback[1])
        return tally


def delta_for_event(outcome: Any, event: Any, policy: ShopPolicy, was_new: bool) -> TallyDelta:
    """The tally change of an applied event (``was_new``: the customer had no row)."""
    feedback = None
    if event.type == "feedback" and outcome.status == "applied":
        feedback = (day_of(to_us(event.occurred_at)), nps.classify(event.nps, policy))
    before = None if was_new else outcome.stage_before
    return TallyDelta(before, outcome.stage_after, feedback)


def delta_for_advance(outcome: Any) -> TallyDelta:
    """The tally change of a time sweep (stage only)."""
    return TallyDelta(outcome.stage_before, outcome.stage_after)


def recount_contribution(tally: ShopTally, state: CustomerState, policy: ShopPolicy) -> None:
    """Add one customer's whole contribution to ``tally`` (exact recount)."""
    head = head_as_of(state, state.clock if state.clock is not None else 0, policy)
    tally.add_customer(head, state.stage)


def update_row(raw: bytes | None, delta: TallyDelta) -> bytes:
    """Apply ``delta`` to an encoded tally row (``None``: empty) and encode it."""
    tally = ShopTally.decode(raw) if raw else ShopTally.empty()
    return bytes(delta.apply(tally).encode())
