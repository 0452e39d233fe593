"""The commit protocol: how the agent and the time sweep make a state change durable.

Both writers of the customer table - the agent (:mod:`streams.agent`) and the
time sweep (:mod:`streams.sweep`) - commit through :meth:`Committer.commit`,
so the order the service's guarantees rest on is written once:

1. **stage** - the caller has computed every output record and every new
   customer state (a :class:`Change`); nothing is written yet;
2. **publish the outputs** (effects, snapshots, dead letters, rekeys) and
   wait for every broker acknowledgement. While they travel, the changes
   are computed if the caller handed a function for them (the agent: its
   states are encoded then) and, when none is guarded, step 3's records
   too: both only read, so the broker's round trip is not idle time;
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
5. **apply the tally deltas** of the written changes to their rows' decoded
   tallies, held (:class:`streams.shops.PendingTallies`), and report each
   change. The held tallies are written to their shop tally rows through the
   Faust table, which logs them
   (:meth:`streams.context.ServiceContext.flush_tallies`), by the first
   commit after the oldest delta has been held
   ``settings.tally_flush_interval_s`` (0: by every commit), and before
   anything reads a tally row or the sweep recounts one: a live batch moves
   the rows of most shops of its partitions, and encoding, logging and
   writing them once per interval instead of once per batch is a large part
   of what a batch costs beyond its records.

Steps 4 and 5 run without an ``await``: nothing changes a row between the
compare and the set, and no reader sees a row written whose deltas are
neither held nor applied. A crash between two steps means:

* before 2 or between 2 and 3: no state written; the input is redelivered
  (or the sweep runs again) and the outputs repeat with the same ids;
* between 3 and 4: the changelog holds the new state (and, for the agent,
  the tally rows it moves) but the local store does not; a crash always wipes
  the local store (streams/commands/worker.py), the changelog restores the
  state and the redelivered input is an exact duplicate, so its outputs
  (already acknowledged) are not lost;
* after 4: the held tally deltas (at most one flush interval of changes)
  are lost with the process, and the tally rows restored from their
  changelog lack them until the sweep's next full scan recounts them
  exactly (the first sweep after a restart is one). A rebalance drops the
  held deltas too (:class:`streams.shops.PendingTallies`), with the same
  repair.

The store is never ahead of the changelog and the changelog never ahead of
the outputs, so no state or output is lost and nothing is counted twice; the
tallies, derived data, are at most one flush interval behind the states
after a crash, until the recount.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from scoring.engine import State
from streams.context import ServiceContext
from streams.publish import OutRecord, Sent, futures, last_offsets
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
    state: State | None = None

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
#: the changes of a commit, or a function computing them (called once, in step 2)
Changes = Sequence[Change] | Callable[[], Sequence[Change]]
#: loop steps between queueing step 2's records and computing step 3's: aiokafka's
#: sender needs three to write the request (its waiter's callback, the sender task,
#: the request task); fewer only loses the overlap
SENDER_TURN_STEPS = 3


class Committer:
    """Runs the commit protocol (module docstring) for one worker."""

    def __init__(self, ctx: ServiceContext, timings: StepTimings | None = None) -> None:
        self.ctx = ctx
        #: told the wall time of steps 2 ("outputs"), 3 ("changelog") and 4-5 ("write")
        self.timings = timings
        self.changelog = changelog_topic_name(ctx.settings, CUSTOMERS_TABLE)

    async def commit(self, outputs: Sequence[OutRecord], changes: Changes, *,
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
        ``changes`` may be a function returning them: it is called once, while
        the outputs travel (module docstring, step 2); if it raises, the error
        is raised once the outputs are acknowledged and nothing is written, as
        when step 3 fails.
        Raises the broker's error from steps 2-3 (nothing written then) and
        :class:`WriteFailed` from steps 4-5.
        """
        result = Committed(written=[], yielded=[])
        timings = self.timings
        started = time.perf_counter()
        # 2. publish the outputs, await every acknowledgement; meanwhile compute the
        # changes and, when none is guarded, step 3's records
        sent = await self._queue(list(outputs))
        if sent:
            for _ in range(SENDER_TURN_STEPS):
                await asyncio.sleep(0)
        try:
            changes = list(changes() if callable(changes) else changes)
            prepared = None if any(c.guarded for c in changes) else self._prepare(changes)
        except Exception:
            # A bug (a state its engine cannot encode): the outputs are on their
            # way, so this is a failed step 3 - nothing written, the outputs repeat
            # with the same ids when the input is processed again.
            await asyncio.gather(*futures(sent), return_exceptions=True)
            raise
        await asyncio.gather(*futures(sent))
        if timings is not None:
            started = _timed(timings, "outputs", started)
        if owns is not None and not owns():
            result.complete = False
            return result
        # 3. publish the changelog records, await every acknowledgement
        if prepared is None:
            prepared = self._prepare(self._compare(changes, result, on_compared, on_yielded))
        kept, records = prepared
        if not kept:
            return result
        acked = await self._publish(records)
        offsets = {p: offset for (topic, p), offset in acked.items() if topic == self.changelog}
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
        """Steps 4 and 5: rows with persisted offsets, then each change's tally delta
        applied to its row's held tally (the rows written once the oldest held
        delta is due). Never awaits.

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
        for partition, batch in by_partition.items():
            # The live states kept for these keys are read-checked again until
            # the written ones replace them (on_written), whatever fails between.
            self.ctx.states.untrust([c.key for c in batch])
            # False: the partition moved; its new owner restores from the changelog.
            rows.write(partition, [(c.key, c.value) for c in batch], offsets.get(partition))
        # 5. each tally delta applied to its row's held tally (a row that cannot be
        # read is counted from empty and recounted: tallies never fail a commit),
        # the rows written once the oldest held delta is due; each change reported
        now = time.monotonic()
        self.ctx.hold_tally_deltas(
            ((c.partition, tally_key(shop_of(c.key), c.partition), c.delta) for c in written), now)
        if self.ctx.tally_deltas.due(now, self.ctx.settings.tally_flush_interval_s):
            self.ctx.flush_tallies()
        result.written.extend(written)
        if on_written is not None:
            for change in written:
                on_written(change)
        return result

    # -- the steps' parts --------------------------------------------------------------
    async def _queue(self, records: list[OutRecord]) -> list[Sent]:
        """Hand ``records`` to the producer (its acknowledgements are the returned
        batches' futures, for the caller to await)."""
        return await self.ctx.publisher.publish(records) if records else []

    async def _publish(self, records: list[OutRecord]) -> dict[tuple[str, int], int]:
        """Publish and await every acknowledgement; ``(topic, partition) -> last offset``."""
        sent = await self._queue(records)
        await asyncio.gather(*futures(sent))
        return last_offsets(sent)

    def _prepare(self, kept: list[Change]) -> tuple[list[Change], list[OutRecord]]:
        """Step 3's records for ``kept``: a changelog record per state."""
        return kept, [(self.changelog, c.key, c.value, None, c.partition) for c in kept]

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


def _timed(timings: StepTimings, step: str, started: float) -> float:
    """Report ``step`` as lasting from ``started`` until now; returns now."""
    now = time.perf_counter()
    timings(step, now - started)
    return now
