"""The commit protocol: how the agent and the time sweep make a state change durable.

Both writers of the customer table - the agent (:mod:`streams.agent`) and the
time sweep (:mod:`streams.sweep`) - commit through :meth:`Committer.commit`,
so the order the service's guarantees rest on is written once:

1. **stage** - the caller has computed every output record and every new
   customer state (a :class:`Change`); nothing is written yet;
2. **publish the outputs** (effects, snapshots, dead letters, rekeys) and
   wait for every broker acknowledgement;
3. **publish the changelog records** of the new states to the table's
   changelog partition (the row's partition) and wait for their
   acknowledgements; a *guarded* change (one computed by the sweep while the
   agent may write the same key) is dropped here if its row changed since it
   was read or the agent is processing the key;
4. **write each partition's rows and persisted offset** (the offset of the
   partition's last changelog record just acknowledged) in one store write
   batch (:meth:`streams.store.RowStore.write`); a guarded change is dropped
   if its row changed while step 3 waited or the agent took the key
   meanwhile (compare-and-set);
5. **apply the tally deltas** of the written changes (one read-modify-write
   per shop tally row, through the Faust table) and report each change.

Steps 4 and 5 run without an ``await``: no other task sees the rows written
and the tallies not, and nothing changes a row between the compare and the
set. A crash between two steps means:

* before 2 or between 2 and 3: no state written; the input is redelivered
  (or the sweep runs again) and the outputs repeat with the same ids;
* between 3 and 4: the changelog holds the new state but the local store does
  not; a crash always wipes the local store (streams/commands/worker.py), the
  changelog restores the state and the redelivered input is an exact
  duplicate, so its outputs (already acknowledged) are not lost;
* between 4 and 5: the tally rows drift until the sweep's next full scan
  recounts them exactly (the first sweep after a restart is one).

The store is never ahead of the changelog and the changelog never ahead of
the outputs, so nothing is lost and nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from scoring.shop import ShopTally
from scoring.state import CustomerState
from streams.compat import partition_context
from streams.context import ServiceContext
from streams.publish import OutRecord, futures, last_offsets
from streams.shops import TallyDelta
from streams.topics import CUSTOMERS_TABLE, changelog_topic_name, shop_of, tally_key


class WriteFailed(Exception):
    """Steps 4-5 raised: some rows or tallies of the commit may be written."""


@dataclass
class Change:
    """One customer state to commit."""

    partition: int
    key: bytes
    value: bytes | None  # the encoded new state; None: the row is deleted (an erasure)
    delta: TallyDelta
    next_due: int | None
    #: compare-and-set: the row the state was computed from; None: unguarded
    #: (the agent, the only writer that never races itself)
    base: bytes | None = None
    #: the live state ``value`` encodes, for the agent's state cache (never written)
    state: CustomerState | None = None

    @property
    def guarded(self) -> bool:
        return self.base is not None


@dataclass
class Committed:
    """What :meth:`Committer.commit` did."""

    written: list[Change]
    #: guarded changes dropped because the agent wrote or holds the key
    yielded: list[Change]
    #: False: ownership was lost on the way; nothing after that point was written
    complete: bool = True


#: reports a change (written, yielded or, for guarded changes, compared in step 3)
ChangeHook = Callable[[Change], None]
#: told (step name, seconds) after a step of a commit
StepTimings = Callable[[str, float], None]


class Committer:
    """Runs the commit protocol (module docstring) for one worker."""

    def __init__(self, ctx: ServiceContext, timings: StepTimings | None = None) -> None:
        self.ctx = ctx
        #: told the wall time of steps 2 ("outputs"), 3 ("changelog") and 4-5 ("write")
        self.timings = timings
        self.changelog = changelog_topic_name(ctx.settings, CUSTOMERS_TABLE)
        # Partition context for Faust table access (tallies): any topic with
        # the table's partition count; the rekey topic is one.
        self.context_topic = ctx.rekey.get_topic_name()

    async def commit(self, outputs: Sequence[OutRecord], changes: Sequence[Change], *,
                     owns: Callable[[], bool] | None = None,
                     on_compared: ChangeHook | None = None,
                     on_written: ChangeHook | None = None,
                     on_yielded: ChangeHook | None = None) -> Committed:
        """Steps 2-5 of the protocol for ``outputs`` and ``changes`` (step 1 is the caller's).

        ``owns()`` (may this worker still write these partitions?) is asked
        after every wait; once it answers False the commit stops
        (``complete=False``). ``on_compared`` sees every
        guarded change when step 3 compares it, ``on_written`` every written
        change (after its tally delta), ``on_yielded`` every dropped one.
        Raises the broker's error from steps 2-3 (nothing written then) and
        :class:`WriteFailed` from steps 4-5.
        """
        result = Committed(written=[], yielded=[])
        timings = self.timings
        started = time.perf_counter()
        # 2. publish the outputs, await every acknowledgement
        await self._publish(list(outputs))
        if timings is not None:
            started = _timed(timings, "outputs", started)
        if owns is not None and not owns():
            result.complete = False
            return result
        # 3. publish the changelog records, await every acknowledgement
        kept = self._compare(changes, result, on_compared, on_yielded)
        if not kept:
            return result
        offsets = await self._publish([(self.changelog, c.key, c.value, None, c.partition)
                                       for c in kept])
        if timings is not None:
            started = _timed(timings, "changelog", started)
        if owns is not None and not owns():
            result.complete = False
            return result
        # 4.-5. write rows + offsets, then the tallies (no await from here on)
        try:
            self.write(kept, offsets, result, on_written, on_yielded)
        except Exception as exc:
            raise WriteFailed(f"commit of {len(kept)} states failed while writing") from exc
        if timings is not None:
            _timed(timings, "write", started)
        return result

    def write(self, changes: Sequence[Change], offsets: dict[int, int],
              result: Committed | None = None, on_written: ChangeHook | None = None,
              on_yielded: ChangeHook | None = None) -> Committed:
        """Steps 4 and 5: rows with persisted offsets, then tally deltas. Never awaits.

        ``offsets`` maps a partition to the offset of its last acknowledged
        changelog record; a partition missing from it keeps its persisted
        offset (only for states whose changelog record is not published by
        this commit, as in unit tests of the write step).
        """
        result = result if result is not None else Committed(written=[], yielded=[])
        rows, in_flight = self.ctx.rows, self.ctx.in_flight
        # 4. one write batch per partition: the rows and the persisted offset
        by_partition: dict[int, list[Change]] = {}
        for change in changes:
            # The agent may have read the row and taken the key while step 3
            # waited: writing now would leave its tally delta based on a stage
            # the row no longer has, so a guarded change yields then too.
            if change.guarded and (change.key in in_flight
                                   or rows.get(change.partition, change.key) != change.base):
                result.yielded.append(change)  # the agent's (newer) state stays
                if on_yielded is not None:
                    on_yielded(change)
                continue
            by_partition.setdefault(change.partition, []).append(change)
        written = [c for batch in by_partition.values() for c in batch]
        # Every tally row is computed before anything is written, so a failing
        # tally update cannot leave states written and tallies not.
        tally_rows = self._tally_rows(written)
        for partition, batch in by_partition.items():
            # False: the partition moved; its new owner restores from the changelog.
            rows.write(partition, [(c.key, c.value) for c in batch], offsets.get(partition))
        # 5. the tally deltas (summed per tally row), then each change reported
        self._write_tallies(tally_rows)
        result.written.extend(written)
        if on_written is not None:
            for change in written:
                on_written(change)
        return result

    # -- the steps' parts --------------------------------------------------------------
    async def _publish(self, records: list[OutRecord]) -> dict[int, int]:
        """Publish and await every acknowledgement; ``partition -> last offset`` per topic
        partition of the records (only meaningful for one topic: the changelog)."""
        if not records:
            return {}
        sent = await self.ctx.publisher.publish(records)
        await asyncio.gather(*futures(sent))
        return {partition: offset for (_, partition), offset in last_offsets(sent).items()}

    def _compare(self, changes: Sequence[Change], result: Committed,
                 on_compared: ChangeHook | None, on_yielded: ChangeHook | None) -> list[Change]:
        """Step 3's compare: drop guarded changes the agent got to first."""
        kept = []
        rows, in_flight = self.ctx.rows, self.ctx.in_flight
        for change in changes:
            if change.guarded:
                if on_compared is not None:
                    on_compared(change)
                if (change.key in in_flight
                        or rows.get(change.partition, change.key) != change.base):
                    result.yielded.append(change)
                    if on_yielded is not None:
                        on_yielded(change)
                    continue
            kept.append(change)
        return kept

    def _tally_rows(self, changes: Sequence[Change]) -> dict[tuple[int, bytes], bytes]:
        """Each affected tally row, read once with its deltas applied in order, encoded."""
        tallies = self.ctx.tallies
        updated: dict[tuple[int, bytes], ShopTally] = {}
        for change in changes:
            slot = (change.partition, tally_key(shop_of(change.key), change.partition))
            tally = updated.get(slot)
            if tally is None:
                with partition_context(self.context_topic, change.partition):
                    raw = tallies.get(slot[1])
                tally = updated[slot] = ShopTally.decode(raw) if raw else ShopTally.empty()
            change.delta.apply(tally)
        return {slot: bytes(tally.encode()) for slot, tally in updated.items()}

    def _write_tallies(self, rows: dict[tuple[int, bytes], bytes]) -> None:
        """Write tally rows (``(partition, key) -> row``) through the Faust table."""
        for (partition, key), raw in rows.items():
            with partition_context(self.context_topic, partition):
                self.ctx.tallies[key] = raw


def _timed(timings: StepTimings, step: str, started: float) -> float:
    """Report ``step`` as lasting from ``started`` until now; returns now."""
    now = time.perf_counter()
    timings(step, now - started)
    return now
