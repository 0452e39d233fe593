"""Bulk changelog restore (streams/restore.py) against the real broker and real RocksDB.

The database after a restore must equal a plain last-write-wins replay of the
changelog, carry Faust's persisted offset atomically with the rows, resume
from a given offset, and stop at its time budget without losing its place.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from rocksdict import Options, Rdict

from streams.restore import Target, bulk_restore

OFFSET_KEY = b"__faust\0offset__"  # faust.stores.rocksdb.Store.offset_key


def _produce(bootstrap: str, topic: str, records: list[tuple[int, bytes, bytes | None]]) -> None:
    async def run() -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            futures = [await producer.send(topic, key=k, value=v, partition=p)
                       for p, k, v in records]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(run())


def _open(path: Path) -> Rdict:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    return Rdict(str(path), options=opts)


def _rows(db: Rdict) -> dict[bytes, bytes]:
    return {k: v for k, v in db.items() if k != OFFSET_KEY}


def _changelog(seed: int, n: int) -> tuple[list[tuple[int, bytes, bytes | None]],
                                           dict[int, dict[bytes, bytes]]]:
    """Random writes and deletes over two partitions, and the last-write-wins result."""
    rng = random.Random(seed)
    records: list[tuple[int, bytes, bytes | None]] = []
    expected: dict[int, dict[bytes, bytes]] = {0: {}, 1: {}}
    for i in range(n):
        p = rng.randrange(2)
        key = f"shop|c{rng.randrange(60)}".encode()
        value = None if rng.random() < 0.1 else f"state-{i}".encode() * rng.randint(1, 20)
        records.append((p, key, value))
        if value is None:
            expected[p].pop(key, None)
        else:
            expected[p][key] = value
    return records, expected


def test_bulk_restore_equals_last_write_wins_replay(bootstrap: str, create_topic,
                                                    tmp_path: Path) -> None:
    topic = create_topic(partitions=2, compacted=True, prefix="changelog")
    records, expected = _changelog(seed=7, n=3000)
    _produce(bootstrap, topic, records)
    ends = {p: sum(1 for r in records if r[0] == p) for p in (0, 1)}
    dbs = {p: _open(tmp_path / f"p{p}") for p in (0, 1)}
    progress: list[tuple[tuple[str, int], int]] = []
    try:
        stats = asyncio.run(bulk_restore(
            [bootstrap], {(topic, p): Target(dbs[p], None) for p in (0, 1)},
            offset_key=OFFSET_KEY, budget_s=60, on_progress=lambda tp, o: progress.append((tp, o))))
        assert stats.complete and stats.records == len(records) and stats.partitions == 2
        for p in (0, 1):
            assert _rows(dbs[p]) == expected[p]
            # Faust resumes after this offset: the last record of the partition.
            assert dbs[p][OFFSET_KEY] == str(ends[p] - 1).encode()
            assert max(o for (t, q), o in progress if q == p) == ends[p] - 1
    finally:
        for db in dbs.values():
            db.close()


def test_bulk_restore_resumes_after_applied_offset(bootstrap: str, create_topic,
                                                   tmp_path: Path) -> None:
    topic = create_topic(partitions=1, compacted=True, prefix="changelog")
    first = [(0, b"k1", b"v1"), (0, b"k2", b"v2")]
    second = [(0, b"k1", b"v1b"), (0, b"k3", b"v3"), (0, b"k2", None)]
    _produce(bootstrap, topic, first + second)
    db = _open(tmp_path / "p0")
    try:
        # The store already holds offsets 0-1, plus a marker row that only a
        # re-read of offset 0 or 1 could not explain: it must survive.
        db[b"k1"] = b"v1"
        db[b"k2"] = b"v2"
        db[b"marker"] = b"kept"
        db[OFFSET_KEY] = b"1"
        stats = asyncio.run(bulk_restore([bootstrap], {(topic, 0): Target(db, 1)},
                                         offset_key=OFFSET_KEY, budget_s=60))
        assert stats.records == 3
        assert _rows(db) == {b"k1": b"v1b", b"k3": b"v3", b"marker": b"kept"}
        assert db[OFFSET_KEY] == b"4"
        # Nothing left to do: a second call reads nothing and changes nothing.
        again = asyncio.run(bulk_restore([bootstrap], {(topic, 0): Target(db, 4)},
                                         offset_key=OFFSET_KEY, budget_s=60))
        assert again.records == 0 and again.partitions == 0 and again.complete
    finally:
        db.close()


def test_bulk_restore_stops_at_budget_with_consistent_offset(bootstrap: str, create_topic,
                                                             tmp_path: Path) -> None:
    topic = create_topic(partitions=1, compacted=True, prefix="changelog")
    records, _ = _changelog(seed=11, n=500)
    records = [(0, k, v) for _, k, v in records]
    _produce(bootstrap, topic, records)
    db = _open(tmp_path / "p0")
    try:
        stats = asyncio.run(bulk_restore([bootstrap], {(topic, 0): Target(db, None)},
                                         offset_key=OFFSET_KEY, budget_s=0))
        assert not stats.complete and stats.records == 0
        assert OFFSET_KEY not in db and _rows(db) == {}
        # Whatever a stopped restore wrote is a prefix with a matching offset,
        # so resuming from it gives the full result.
        stats = asyncio.run(bulk_restore([bootstrap], {(topic, 0): Target(db, None)},
                                         offset_key=OFFSET_KEY, budget_s=60))
        assert stats.complete
        replay: dict[bytes, bytes] = {}
        for _, k, v in records:
            if v is None:
                replay.pop(k, None)
            else:
                replay[k] = v
        assert _rows(db) == replay
        assert db[OFFSET_KEY] == str(len(records) - 1).encode()
    finally:
        db.close()


def test_cancelled_bulk_restore_leaves_a_consistent_prefix(bootstrap: str, create_topic,
                                                           tmp_path: Path, monkeypatch) -> None:
    """A rebalance cancels the bulk restore mid-way (Faust's RebalanceAgain).

    Whatever was written must be exactly the changelog up to the persisted
    offset, so Faust's recovery can resume there. Small fetches force many
    write batches; the task is cancelled after the third one.
    """
    import streams.restore as restore

    monkeypatch.setattr(restore, "FETCH_MAX_BYTES", 8 * 1024)
    monkeypatch.setattr(restore, "PARTITION_FETCH_MAX_BYTES", 8 * 1024)
    topic = create_topic(partitions=1, compacted=True, prefix="changelog")
    records, _ = _changelog(seed=13, n=4000)
    records = [(0, k, v) for _, k, v in records]
    _produce(bootstrap, topic, records)
    db = _open(tmp_path / "p0")
    batches: list[int] = []

    async def run() -> None:
        task = asyncio.current_task()
        assert task is not None

        def progress(_tp: tuple[str, int], offset: int) -> None:
            batches.append(offset)
            if len(batches) == 3:
                task.cancel()

        try:
            await bulk_restore([bootstrap], {(topic, 0): Target(db, None)},
                               offset_key=OFFSET_KEY, budget_s=60, on_progress=progress)
        except asyncio.CancelledError:
            return
        raise AssertionError("the restore was not cancelled")

    try:
        asyncio.run(run())
        assert len(batches) == 3 and batches[-1] < len(records) - 1, batches
        persisted = int(db[OFFSET_KEY])
        assert persisted == batches[-1]
        prefix: dict[bytes, bytes] = {}
        for _, k, v in records[:persisted + 1]:
            if v is None:
                prefix.pop(k, None)
            else:
                prefix[k] = v
        assert _rows(db) == prefix
    finally:
        db.close()
