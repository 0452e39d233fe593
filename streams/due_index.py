"""Pure bookkeeping of the time sweep: the due index, the running recount, a sweep's stats.

Nothing here reads a table, a clock or Kafka: :class:`DueIndex` and
:class:`Recount` are plain data structures the sweeper
(:mod:`streams.sweep`) fills and queries, unit-tested on their own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scoring.shop import ShopTally


@dataclass
class DueIndex:
    """One partition's due index: customer key -> ``next_due`` for keys due before a horizon.

    Guarantee: every key whose ``next_due`` is before ``horizon_us`` and that
    was filed since the index was built is in :attr:`due` with its latest
    filed value, and no value in :attr:`due` is smaller than
    :attr:`earliest` (a lower bound; None: nothing filed). Keys due at or after
    the horizon are left out: the next full scan finds them.
    """

    #: keys due at or after this instant are left to the next full scan
    horizon_us: int
    #: customer key -> next_due (microseconds), for keys due before ``horizon_us``
    due: dict[bytes, int] = field(default_factory=dict)
    #: no value in ``due`` is smaller (a lower bound: lets a sweep skip the partition)
    earliest: int | None = None
    #: the full scan that built the index finished (else the next sweep scans again)
    complete: bool = False
    #: customer rows of the partition (counted by the full scan, then new rows added)
    rows: int = 0

    def file(self, key: bytes, next_due: int | None) -> None:
        """Record ``key``'s current ``next_due`` (None: nothing is ever due)."""
        if next_due is None or next_due >= self.horizon_us:
            self.due.pop(key, None)
            return
        self.due[key] = next_due
        self.lower_earliest(next_due)

    def lower_earliest(self, t: int | None) -> None:
        """Make :attr:`earliest` at most ``t`` (None: no change)."""
        if t is not None and (self.earliest is None or t < self.earliest):
            self.earliest = t

    def select_due(self, keys: Iterable[bytes], now_us: int) -> tuple[list[bytes], int | None]:
        """Of ``keys``, those filed with a ``next_due`` at or before ``now_us``, in input order,
        and the smallest ``next_due`` of the others (None: no other).

        Keys no longer in the index are skipped. Reads only; the caller
        resets and lowers :attr:`earliest` (a due pass selects from a copy of
        the keys, in slices, while new keys are filed).
        """
        get = self.due.get
        due: list[bytes] = []
        rest: int | None = None
        for key in keys:
            t = get(key)
            if t is None:
                continue
            if t <= now_us:
                due.append(key)
            elif rest is None or t < rest:
                rest = t
        return due, rest


@dataclass
class Recount:
    """A full scan of one partition in progress: the exact tally recount.

    The scan reads keys in byte order; ``cursor`` is the last key it has
    reached. A key is *pending* (its current state will be counted when the
    scan gets there) if it is after the cursor, or if the scan holds it
    uncounted while its new state is being acknowledged (``held``).
    """

    cursor: bytes | None = None
    held: set[bytes] = field(default_factory=set)
    acc: dict[str, ShopTally] = field(default_factory=dict)
    #: re-derive every state under the running policy (the engine's ``rederive``) as it is read
    recheck: bool = False
    #: rows passed over because they hold no readable state (the recount is then not written)
    unreadable: int = 0

    def pending(self, key: bytes) -> bool:
        if key in self.held:
            return True
        return self.cursor is None or key > self.cursor


@dataclass
class SweepStats:
    """What one sweep did."""

    #: the wall clock the sweep started at
    now: datetime
    #: the instant due customers were advanced to: ``now``, or earlier while the
    #: input is behind (None: nothing processed yet since the last rebalance)
    advanced_to: datetime | None = None
    #: customer rows in the swept partitions (as counted by the due index)
    customers: int = 0
    #: customer states read and advanced (every row in a full scan, due keys otherwise)
    visited: int = 0
    #: partitions that got a full scan (index rebuild and tally recount)
    full_scans: int = 0
    #: keys in the due indexes of the swept partitions after the sweep
    indexed: int = 0
    changed: int = 0
    skipped: int = 0
    tallies_repaired: int = 0
    seconds: float = 0.0

    @property
    def full_scan(self) -> bool:
        return self.full_scans > 0
