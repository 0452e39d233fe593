"""Bulk changelog restore: rebuild table partitions at Kafka fetch speed.

Why this exists: Faust's recovery applies a changelog one record per event
loop turn (an ``asyncio.wait_for`` on a queue, then a scan of every
partition's progress, per record), so a worker whose local store was wiped
spends minutes - with a million customers, many minutes - before it serves
its first event (figures in the README's Performance section).

:func:`bulk_restore` reads the same changelog partitions with a private
consumer (no group, no commits) in large fetches and writes each fetched run
of records to the partition's RocksDB database as one write batch.
:func:`install_bulk_restore` runs it at the one point in Faust's recovery
where that is safe: after the start offsets of the active changelog
partitions are known, before Faust seeks its own consumer to them. Faust then
finds the partitions already at (or near) their high-water mark and only
replays what is left.

Guarantees:

* Each write batch also sets the partition's Faust *persisted offset*
  (``Store.offset_key``), atomically with the rows it covers. At every
  instant, including after kill -9, the local database equals the changelog
  prefix up to its persisted offset, which is exactly what Faust's recovery
  assumes when it resumes from that offset.
* Records of a partition are applied in offset order; a ``None`` value
  (tombstone) deletes the key. Re-applying a record is harmless (last write
  wins), so a restart that re-reads part of a range is safe.
* It never reads past the end offsets sampled when it starts; anything newer
  is replayed by Faust's recovery as usual.

Failure modes: any error (broker unavailable, a store that is not a
``rocksdict`` RocksDB store) stops the bulk restore for that recovery, is
logged, and leaves the partitions to Faust's ordinary recovery from whatever
offset was reached - slower, never wrong. A new rebalance cancels the bulk
restore through Faust's own ``RebalanceAgain`` handling (the progress of
completed batches is kept). The bulk restore stops after
``settings.restore_budget_s`` and hands over the same way, so it can never
hold recovery longer than that.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP
from rocksdict import WriteBatch

from streams import compat
from streams.context import ServiceContext
from streams.security import client_kwargs

log = logging.getLogger(__name__)

# Fetch sizes of the private consumer. Bigger fetches amortise the per-request
# cost; these bound the memory one fetch can take (a changelog record is a
# customer state, a few hundred bytes to a few KiB).
FETCH_MAX_BYTES = 32 * 1024 * 1024
PARTITION_FETCH_MAX_BYTES = 8 * 1024 * 1024


@dataclass
class Target:
    """One changelog partition to restore into ``db`` (a rocksdict ``Rdict``)."""

    db: Any
    #: offset of the last record already in ``db`` (-1 or None: nothing yet)
    applied: int | None


@dataclass
class RestoreStats:
    """What one :func:`bulk_restore` call did."""

    records: int = 0
    partitions: int = 0
    seconds: float = 0.0
    #: False if it stopped at the budget, leaving records to Faust's recovery
    complete: bool = True


async def bulk_restore(bootstrap_servers: list[str], targets: Mapping[tuple[str, int], Target],
                       *, offset_key: bytes, budget_s: float,
                       on_progress: Callable[[tuple[str, int], int], None] | None = None,
                       client: Mapping[str, Any] | None = None) -> RestoreStats:
    """Apply changelog records after each target's ``applied`` offset to its db.

    ``on_progress(tp, offset)`` is called after every committed write batch
    with the last offset it applied (used to hand the position to Faust).
    Stops when every partition reached the end offset it had at the start, or
    when ``budget_s`` has passed (``complete=False``).
    """
    started = time.monotonic()
    stats = RestoreStats()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", client_id="loyalty-bulk-restore",
        fetch_max_bytes=FETCH_MAX_BYTES, max_partition_fetch_bytes=PARTITION_FETCH_MAX_BYTES,
        **(client or {}))
    await consumer.start()
    try:
        tps = {TopicPartition(t, p): (t, p) for t, p in targets}
        ends = await consumer.end_offsets(list(tps))
        begins = await consumer.beginning_offsets(list(tps))
        pending: dict[Any, int] = {}
        starts: dict[Any, int] = {}
        for tp, key in tps.items():
            applied = targets[key].applied
            start = max(begins[tp], applied + 1 if applied is not None and applied >= 0 else 0)
            if start < ends[tp]:
                pending[tp] = ends[tp]
                starts[tp] = start
        stats.partitions = len(pending)
        if not pending:
            return stats
        consumer.assign(list(pending))
        for tp, start in starts.items():
            consumer.seek(tp, start)
        deadline = started + budget_s
        while pending:
            if time.monotonic() > deadline:
                stats.complete = False
                break
            fetched = await consumer.getmany(*pending, timeout_ms=500)
            for tp, messages in fetched.items():
                end = pending.get(tp)
                if end is None:
                    continue
                batch = WriteBatch(raw_mode=True)
                last = None
                applied = 0
                for m in messages:
                    if m.offset >= end:
                        break
                    applied += 1
                    if m.key is not None:  # Faust never writes unkeyed changelog records
                        if m.value is None:
                            batch.delete(m.key)
                        else:
                            batch.put(m.key, m.value)
                    last = m.offset
                if last is None:
                    continue
                # Same encoding as Faust's Store.set_persisted_offset, same batch.
                batch.put(offset_key, str(last).encode())
                targets[tps[tp]].db.write(batch)
                stats.records += applied
                if on_progress is not None:
                    on_progress(tps[tp], last)
            for tp in list(pending):
                # position() also steps over offsets removed by compaction.
                if await consumer.position(tp) >= pending[tp]:
                    del pending[tp]
    finally:
        stats.seconds = time.monotonic() - started
        await consumer.stop()
    return stats


def install_bulk_restore(service: ServiceContext) -> None:
    """Run :func:`bulk_restore` for the active changelog partitions of every recovery.

    Hooks Faust's recovery (:func:`streams.compat.on_recovery_offsets`) right
    after it computed the offsets it will resume from, before it seeks to
    them; Faust makes that call outside the rebalance callback, so group
    heartbeats keep flowing. For the ``"active"`` call, every RocksDB-backed
    partition is bulk-restored from there and its offset moved to the last
    record restored. Standby partitions keep Faust's ordinary path (they are
    read continuously anyway).
    """
    settings = service.settings
    if settings.restore_budget_s <= 0:
        return
    app = service.app

    async def restore(tps: Any, destination: MutableMapping[TP, int], title: str) -> None:
        if title != "active" or not tps:
            return
        targets: dict[tuple[str, int], Target] = {}
        by_key: dict[tuple[str, int], TP] = {}
        offset_key = b""
        for tp in tps:
            table = compat.recovery_table(app, tp)
            db = None if table is None else compat.open_rocksdict_partition(table, tp.partition)
            if table is None or db is None:
                continue
            offset_key = compat.persisted_offset_key(table)
            targets[(tp.topic, tp.partition)] = Target(db, destination[tp])
            by_key[(tp.topic, tp.partition)] = tp
        if not targets:
            return

        def progress(key: tuple[str, int], offset: int) -> None:
            destination[by_key[key]] = offset

        budget = min(settings.restore_budget_s, 0.8 * float(app.conf.broker_request_timeout))
        try:
            stats = await bulk_restore(settings.bootstrap_servers, targets,
                                       offset_key=offset_key, budget_s=budget,
                                       on_progress=progress,
                                       client=client_kwargs(settings))
        except Exception:  # noqa: BLE001 - Faust's recovery resumes from `destination`
            log.exception("bulk restore failed; Faust's recovery continues from the "
                          "offsets reached")
            return
        service.metrics.restored_records.inc(stats.records)
        log.info("bulk restore: %d changelog records into %d partitions in %.2f s%s",
                 stats.records, stats.partitions, stats.seconds,
                 "" if stats.complete else " (budget reached: Faust's recovery does the rest)")

    compat.on_recovery_offsets(app, restore)
