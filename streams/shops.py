"""Per-partition shop tallies: how the service maintains ``scoring.shop.ShopTally``.

A tally row (key ``b"shop|<partition>"``) counts the customers of one shop
stored in one partition: the stage funnel, the NPS answers (by date and by
touchpoint) and the rule-v2 KPI sums. It changes in two ways:

* incrementally, by a :class:`TallyDelta` per state change (the agent and the
  sweep; the commit applies them to the rows' decoded tallies held in
  :class:`PendingTallies`, written within ``settings.tally_flush_interval_s``):
  the customer's stage moved from ``stage_before`` to ``stage_after``,
  its KPI contribution (:func:`scoring.shop.contribution`, kept in the state as
  of its clock) changed from ``kpi_before`` to ``kpi_after``, and, for an
  accepted feedback event, one answer of class ``cls`` on ``day`` at a touchpoint;
* exactly, by the engine's ``count_customer`` (:mod:`scoring.engine`) summed over every customer row of
  the partition (the sweep), which repairs any drift left by a crash between
  the state write and the tally write.

The two agree because every accepted feedback event is in the customer's
fold (``head.fb_counts``, ``head.fb_tp``) exactly once, the stage in the state
is the one the last transition moved the customer to, and the KPI
contribution in the state is computed from the same fold as of the same
instant as the recount's. So the figures are as of each customer's last event
or sweep (see :mod:`scoring.shop` for what that means per figure).

Tally row keys (:func:`streams.topics.tally_key`) are one of the key rules of
:mod:`streams.topics`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from schemas.codec import compact
from scoring import nps
from scoring.clock import day_of, to_us
from scoring.shop import ShopTally

if TYPE_CHECKING:
    from schemas.policy import ShopPolicy
    from scoring.engine import Outcome

#: How far from the worker's clock ``GET /shops/{shop}?as_of=`` may be: the tallies
#: hold the present (stages as of the last sweep, every event consumed so far),
#: so they answer only instants near now.
AS_OF_TOLERANCE = timedelta(minutes=15)


@dataclass(frozen=True)
class TallyDelta:
    """One customer's change to its shop's tally."""

    stage_before: str | None
    stage_after: str | None
    # (day number, NPS class, touchpoint) of each accepted answer
    feedbacks: tuple[tuple[int, int, str | None], ...] = ()
    kpi_before: list[Any] | None = None
    kpi_after: list[Any] | None = None
    #: an erased customer's whole share with negative counts (``fold.forget``);
    #: it holds the stage move too, so :meth:`apply` applies only this
    erased: ShopTally | None = None
    #: a sequence of changes applied in order instead of the fields above
    #: (:meth:`then` of changes that include an erasure)
    steps: tuple[TallyDelta, ...] = ()

    def apply(self, tally: ShopTally) -> ShopTally:
        """Apply to ``tally`` in place and return it."""
        if self.steps:
            for step in self.steps:
                step.apply(tally)
            return tally
        if self.erased is not None:
            merged = tally.merge(self.erased)
            for slot in ShopTally.__slots__:
                setattr(tally, slot, getattr(merged, slot))
            return tally
        tally.move(self.stage_before, self.stage_after)
        for day, cls, touchpoint in self.feedbacks:
            tally.add_feedback(day, cls, touchpoint=touchpoint)
        if self.kpi_before != self.kpi_after:
            tally.replace_contribution(self.kpi_before, self.kpi_after)
        return tally

    def then(self, later: TallyDelta) -> TallyDelta:
        """This change followed by ``later`` (the same customer's next change), as one.

        Exact because stage moves and KPI contributions are differences:
        ``before -> mid`` then ``mid -> after`` is ``before -> after``. An
        erasure does not compose that way: with one, the changes are kept as
        steps applied in order.
        """
        if self.erased is None and later.erased is None and not self.steps and not later.steps:
            return TallyDelta(self.stage_before, later.stage_after,
                              self.feedbacks + later.feedbacks, self.kpi_before, later.kpi_after)
        return TallyDelta(self.stage_before, later.stage_after,
                          steps=(*(self.steps or (self,)), *(later.steps or (later,))))


def delta_for_event(outcome: Outcome, event: Any, policy: ShopPolicy, was_new: bool) -> TallyDelta:
    """The tally change of an applied event (``was_new``: the customer had no row)."""
    feedbacks: tuple[tuple[int, int, str | None], ...] = ()
    if event.type == "feedback" and outcome.status == "applied":
        feedbacks = ((day_of(to_us(event.occurred_at)), nps.classify(event.nps, policy),
                      event.touchpoint),)
    before = None if was_new else outcome.stage_before
    return TallyDelta(before, outcome.stage_after, feedbacks,
                      None if was_new else outcome.kpi_before, outcome.kpi_after)


def delta_for_advance(outcome: Outcome) -> TallyDelta:
    """The tally change of a time sweep (stage and KPI contribution)."""
    return TallyDelta(outcome.stage_before, outcome.stage_after,
                      kpi_before=outcome.kpi_before, kpi_after=outcome.kpi_after)


class DecodedTallies:
    """Tally rows this worker wrote, kept decoded, so the next commit that moves a
    row starts from the object instead of decoding the row again.

    The first commit after each flush that moves a row reads it (to hold its
    tally, :class:`PendingTallies`), and the flush encodes and writes it
    again; a shop with a year of history has a row of several KiB whose
    decoding costs more than a customer's fold.

    Guarantee: :meth:`take` returns exactly ``ShopTally.decode(raw)``. An entry
    is served only when the row still holds the very bytes it was kept with;
    any other writer (the sweep's recount, a restore after a rebalance) changes
    them and the row is decoded. The object is handed over, not shared: the
    caller may change it and :meth:`keep` s it only with the encoding it wrote,
    so a commit abandoned on the way leaves no entry behind. At most
    ``capacity`` rows are kept, the least recently kept leave first.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._rows: OrderedDict[Hashable, tuple[bytes, ShopTally]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def take(self, slot: Hashable, raw: bytes | None) -> ShopTally:
        """The tally ``raw`` encodes (``None``: an empty one), now the caller's."""
        kept = self._rows.pop(slot, None)
        if kept is not None and kept[0] == raw:
            self.hits += 1
            return kept[1]
        self.misses += 1
        return ShopTally.decode(raw)

    def keep(self, slot: Hashable, raw: bytes, tally: ShopTally) -> None:
        """``raw`` (``tally.encode()``) is now written to the row of ``slot``; ``tally``
        must not be changed afterwards."""
        if self.capacity <= 0:
            return
        self._rows[slot] = (compact(raw), tally)
        while len(self._rows) > self.capacity:
            self._rows.popitem(last=False)

    def __len__(self) -> int:
        return len(self._rows)


@dataclass
class HeldTally:
    """A tally row's changes held by :class:`PendingTallies`."""

    #: the row the tally was read from (None: no row)
    base: bytes | None
    #: ``base`` decoded, with every delta of :attr:`deltas` applied
    tally: ShopTally
    #: the deltas applied, in order: applied again to the row if another writer
    #: (the sweep's recount) changed it meanwhile
    deltas: list[TallyDelta]
    #: when it was first held (the flush is due an interval after the oldest)
    since: float


class PendingTallies:
    """Tally changes of written customer states that their tally rows do not hold yet.

    The commit protocol (:mod:`streams.commit`, step 5) adds the delta of
    every state it writes: it is applied at once to the row's decoded tally,
    held here (the row is read once per interval), and
    :meth:`streams.context.ServiceContext.flush_tallies` takes the held tallies
    and writes them, at most ``settings.tally_flush_interval_s`` after the
    oldest was added, and before anything reads a tally row. So a batch pays
    for applying its deltas, as before, but no longer for encoding, logging
    and writing the rows it moves. A row another writer changed meanwhile
    gets the held deltas applied to what it holds then: deltas commute
    (counts and sums of differences), so the rows are those that applying
    each delta at once would have given.

    Guarantee: each delta added is written once, or dropped with every other
    delta of its consumer generation: the rows of a partition may have moved
    and come back with a rebalance, so deltas of an older generation are not
    applied to them; the first full scan of the new generation recounts those
    partitions exactly (:mod:`streams.sweep`). No Kafka, no clock of its own.
    """

    def __init__(self) -> None:
        self._held: dict[tuple[int, bytes], HeldTally] = {}
        #: the consumer generation the deltas held were written in
        self.generation: int | None = None
        #: when the oldest delta held was added (None: nothing held)
        self.since: float | None = None
        #: partitions whose deltas were dropped by a generation change, until their
        #: next recount (:meth:`recounted`)
        self.dropped: set[int] = set()

    def add(self, slot: tuple[int, bytes], delta: TallyDelta) -> bool:
        """Apply ``delta`` to the held tally of ``slot`` (``(partition, tally key)``);
        False, with nothing applied, when none is held (:meth:`hold` one first)."""
        held = self._held.get(slot)
        if held is None:
            return False
        delta.apply(held.tally)
        held.deltas.append(delta)
        return True

    def hold(self, slot: tuple[int, bytes], base: bytes | None, tally: ShopTally,
             now: float) -> None:
        """Hold ``tally``, decoded from the row ``base`` (now this object's), for ``slot``."""
        self._held[slot] = HeldTally(base, tally, [], now)
        if self.since is None:
            self.since = now

    def check_generation(self, generation: int) -> None:
        """Drop everything held when ``generation`` is not its generation (the
        caller's, once per commit or flush, before :meth:`add`)."""
        if generation != self.generation:
            self.dropped.update(partition for partition, _ in self._held)
            self._held.clear()
            self.since = None
            self.generation = generation

    def due(self, now: float, interval_s: float) -> bool:
        """Whether the oldest delta held was added ``interval_s`` or more before ``now``."""
        return self.since is not None and now - self.since >= interval_s

    def take(self, partitions: Iterable[int] | None = None) -> dict[tuple[int, bytes], HeldTally]:
        """Hand over the tallies held for ``partitions`` (None: all)."""
        if partitions is None:
            taken, self._held = self._held, {}
        else:
            wanted = set(partitions)
            taken = {slot: h for slot, h in self._held.items() if slot[0] in wanted}
            for slot in taken:
                del self._held[slot]
        # The oldest of what is left sets the next flush (None: nothing left).
        self.since = min((h.since for h in self._held.values()), default=None)
        return taken

    def recounted(self, partition: int) -> bool:
        """The sweep recounted ``partition``; True when deltas of it had been dropped."""
        if partition in self.dropped:
            self.dropped.discard(partition)
            return True
        return False

    def __len__(self) -> int:
        return sum(len(h.deltas) for h in self._held.values())
