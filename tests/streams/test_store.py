"""One conformance suite over both row stores: RocksDB (production) and memory (unit tests)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams import compat
from streams.app import create_service
from streams.settings import Settings
from streams.store import MemoryRows, RocksDBRows, RowStore
from streams.topics import message_key, partition_for

PARTITIONS = 4
OPEN = (0, 1, 2)  # partition 3 is not open here (as if revoked)
CLOSED = 3


def keys_of(partition: int, n: int) -> list[bytes]:
    """``n`` customer keys that live in ``partition``."""
    out: list[bytes] = []
    i = 0
    while len(out) < n:
        key = message_key("s1", f"c{i}")
        if partition_for(key, PARTITIONS) == partition:
            out.append(key)
        i += 1
    return out


@pytest.fixture(params=["rocksdb", "memory"])
def rows(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RowStore]:
    kind = request.param
    settings = Settings(app_id=f"unit-store-{kind}", store=f"{kind}://", partitions=PARTITIONS,
                        data_dir=tmp_path)
    ctx = create_service(settings, web_enabled=False, sweep_enabled=False).context
    store = ctx.rows
    if isinstance(store, RocksDBRows):
        for p in OPEN:
            compat.open_rocksdict_partition(ctx.customers, p)
    else:
        assert isinstance(store, MemoryRows)
        store.closed.add(CLOSED)
    yield store


def test_a_written_row_is_read_back_with_its_offset(rows: RowStore) -> None:
    key = keys_of(1, 1)[0]
    assert rows.get(1, key) is None and rows.persisted_offset(1) is None
    assert rows.write(1, [(key, b"state-1")], 41) is True
    assert rows.get(1, key) == b"state-1"
    assert rows.persisted_offset(1) == 41
    assert rows.write(1, [(key, b"state-2")], 42)
    assert rows.get(1, key) == b"state-2" and rows.persisted_offset(1) == 42


def test_no_offset_keeps_the_persisted_one(rows: RowStore) -> None:
    a, b = keys_of(0, 2)
    rows.write(0, [(a, b"x")], 7)
    rows.write(0, [(b, b"y")], None)
    assert rows.get(0, b) == b"y" and rows.persisted_offset(0) == 7


def test_a_partition_not_open_here_writes_nothing(rows: RowStore) -> None:
    key = keys_of(CLOSED, 1)[0]
    assert not rows.is_open(CLOSED) and rows.is_open(0)
    assert rows.write(CLOSED, [(key, b"lost")], 5) is False
    assert rows.persisted_offset(CLOSED) is None


def test_keys_after_a_cursor_are_in_byte_order_without_the_offset_key(rows: RowStore) -> None:
    keys = keys_of(2, 12)
    rows.write(2, [(k, b"v") for k in reversed(keys)], 11)
    rows.write(0, [(k, b"v") for k in keys_of(0, 3)], 2)  # another partition's rows
    ordered = sorted(keys)
    assert list(rows.keys_after(2, None)) == ordered
    assert list(rows.keys_after(2, ordered[4])) == ordered[5:]
    assert list(rows.keys_after(2, ordered[-1])) == []
    between = ordered[4] + b"\x00"  # a cursor that is not itself a key
    assert list(rows.keys_after(2, between)) == ordered[5:]


def test_get_many_reads_each_key_in_order_and_none_for_missing_rows(rows: RowStore) -> None:
    a, b, c = keys_of(2, 3)
    rows.write(2, [(a, b"row-a"), (c, b"row-c")], 3)
    assert rows.get_many(2, [c, b, a]) == [b"row-c", None, b"row-a"]
    assert rows.get_many(2, [b, c]) == [rows.get(2, b), rows.get(2, c)]
    assert rows.get_many(2, []) == []


def test_a_stamp_holds_through_the_store_s_own_writes_and_no_other(rows: RowStore) -> None:
    a, b = keys_of(0, 2)
    assert rows.stamp(CLOSED) is None  # not open here: nothing to promise
    before = rows.stamp(0)
    if isinstance(rows, MemoryRows):
        # The memory table writes its mapping behind the store's back: no promise.
        assert before is None and rows.write(0, [(a, b"x")], 1) and rows.stamp(0) is None
        return
    assert before is not None and rows.stamp(0) == before
    assert rows.write(0, [(a, b"x")], 1) and rows.write(0, [(b, b"y")], None)
    assert rows.stamp(0) == before  # its own writes
    assert rows.stamp(1) != before  # each partition its own
    assert isinstance(rows, RocksDBRows)
    db = compat.rocksdict_partition(rows.table, 0)
    db[a] = b"from Faust"  # another writer (a restore, a standby update, Faust's table API)
    moved = rows.stamp(0)
    assert moved != before and rows.stamp(0) == moved
    # Another writer between two of the store's own writes is not hidden by the second.
    db.delete(b)
    assert rows.write(0, [(b, b"z")], 2)
    after = rows.stamp(0)
    assert after not in (before, moved)
    # A rebalance: whatever Faust did to the databases meanwhile, a new stamp.
    rows.table.app.consumer_generation_id += 1
    assert rows.stamp(0) not in (before, moved, after)
