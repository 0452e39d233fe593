"""The customer rows of one worker, per partition: one small interface, two implementations.

The agent and the time sweep read and write customer rows through a
:class:`RowStore`, never through Faust's table API: Faust's table path costs
two lookups per read and a buffered changelog message plus a
persisted-offset write per write, and it has no batch write. The changelog
records are published by the commit protocol (:mod:`streams.commit`) before
the rows are written here. The agent's commits write the shop tally rows
they logged through a second :class:`RowStore` over the tallies table.

* :class:`RocksDBRows` - production: the ``rocksdict`` partition databases
  behind the Faust table (reached through :mod:`streams.compat`), so Faust's
  recovery, standbys and web reads see exactly what was written.
* :class:`MemoryRows` - unit tests (``memory://``): the rows live in the
  Faust memory table's mapping, so table reads see them too, and the
  persisted offsets in a dict.

Guarantees, the same for both (tests/streams/test_store.py runs one suite
over both):

* :meth:`RowStore.write` puts the rows and the partition's persisted
  changelog offset in one atomic write: after a crash either all of them are
  there or none, so the store never claims a changelog offset whose rows it
  lacks. It returns False and writes nothing when the partition is not open
  here (revoked: its new owner restores the rows from the changelog).
* :meth:`RowStore.keys_after` yields a partition's keys in byte order,
  strictly after a cursor, and never the persisted-offset key. The result
  may be consumed across an ``await`` only for :class:`MemoryRows`; for
  RocksDB read it within one synchronous slice.
* :meth:`RowStore.stamp`, when not None, is equal to an earlier one of the
  same partition only if nothing but this store's own writes changed the
  partition in between: the agent trusts its live states kept with that
  stamp without reading their rows (:class:`scoring.state.StateCache`). A
  store that cannot tell gives None (:class:`MemoryRows`: the Faust memory
  table writes its mapping behind its back), and every row is read.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterator, MutableMapping, Sequence
from typing import Protocol

from faust.types import CollectionT
from rocksdict import Rdict, WriteBatch

from streams import compat
from streams.topics import partition_for


class RowStore(Protocol):
    """Customer rows by partition, with the partition's persisted changelog offset."""

    def is_open(self, partition: int) -> bool:
        """True when ``partition``'s rows can be read and written here."""
        ...

    def get(self, partition: int, key: bytes) -> bytes | None:
        """The row of ``key`` in ``partition``, or None (no such row)."""
        ...

    def get_many(self, partition: int, keys: Sequence[bytes]) -> list[bytes | None]:
        """The rows of ``keys`` in ``partition``, in order: :meth:`get` of each, in one call."""
        ...

    def write(self, partition: int, rows: Sequence[tuple[bytes, bytes | None]],
              offset: int | None) -> bool:
        """Write ``rows`` (a None value deletes the row) and the persisted offset (None:
        leave it) atomically; False if not open."""
        ...

    def keys_after(self, partition: int, cursor: bytes | None) -> Iterator[bytes]:
        """Keys of ``partition`` after ``cursor`` (None: from the start), in byte order."""
        ...

    def stamp(self, partition: int) -> Hashable | None:
        """A token for ``partition``'s rows as they are now: equal to an earlier token
        only if nothing but this store's :meth:`write` changed them in between;
        None when the store cannot tell (or the partition is not open)."""
        ...

    def persisted_offset(self, partition: int) -> int | None:
        """The changelog offset the rows of ``partition`` are complete up to, or None."""
        ...


#: stamps of :class:`RocksDBRows`: every change of a partition's stamp takes a new number
_STAMPS = itertools.count()


class RocksDBRows:
    """:class:`RowStore` over the ``rocksdict`` partition databases of a Faust table.

    :meth:`stamp` follows each database's latest sequence number, which every
    write to it moves, whoever writes (Faust's recovery and standby
    updates, its table API, another store): a number other than the one this
    store's last write left, another database object or another consumer
    generation (a rebalance, after which Faust may have reopened or restored
    the database) is a new stamp.
    """

    def __init__(self, table: CollectionT) -> None:
        self.table = table
        #: partition -> (consumer generation, id of its database, sequence number it
        #: was seen at, stamp)
        self._seen: dict[int, tuple[int, int, int, int]] = {}

    def is_open(self, partition: int) -> bool:
        return compat.rocksdict_partition(self.table, partition) is not None

    def get(self, partition: int, key: bytes) -> bytes | None:
        value = self._db(partition).get(key)
        return None if value is None else bytes(value)

    def get_many(self, partition: int, keys: Sequence[bytes]) -> list[bytes | None]:
        # Single reads, not one MultiGet: rocksdict releases the GIL around a
        # MultiGet (and around no single read), and taking it back waits for
        # whatever thread took it meanwhile (Faust's consumer thread), while
        # the reads themselves cost about the same either way.
        get = self._db(partition).get
        return [None if (value := get(key)) is None else bytes(value) for key in keys]

    def _db(self, partition: int) -> Rdict:
        # A database not open yet is opened, as Faust's own table read would:
        # "no row" must never be answered for a row that is on disk.
        db = compat.rocksdict_partition(self.table, partition)
        if db is None:
            db = compat.open_rocksdict_partition(self.table, partition)
        if db is None:
            raise KeyError(f"partition {partition} has no rocksdict database")
        return db

    def write(self, partition: int, rows: Sequence[tuple[bytes, bytes | None]],
              offset: int | None) -> bool:
        db = compat.rocksdict_partition(self.table, partition)
        if db is None:
            return False
        batch = WriteBatch(raw_mode=True)
        for key, value in rows:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        if offset is not None:
            # Faust's Store.set_persisted_offset encoding, in the same batch.
            batch.put(compat.persisted_offset_key(self.table), str(offset).encode())
        # Any other writer since the last look moves the stamp first; this
        # write keeps it (no await in between: nothing else writes here).
        stamp = self._look(partition, db)
        db.write(batch)
        seen = self._seen[partition]
        self._seen[partition] = (seen[0], seen[1], db.latest_sequence_number(), stamp)
        return True

    def stamp(self, partition: int) -> int | None:
        db = compat.rocksdict_partition(self.table, partition)
        return None if db is None else self._look(partition, db)

    def _look(self, partition: int, db: Rdict) -> int:
        """The partition's stamp: a new one in a new consumer generation, or when
        ``db`` is not the database last seen or was written since (by anything
        but :meth:`write`)."""
        now = (compat.generation(self.table.app), id(db), db.latest_sequence_number())
        seen = self._seen.get(partition)
        if seen is not None and seen[:3] == now:
            return seen[3]
        stamp = next(_STAMPS)
        self._seen[partition] = (*now, stamp)
        return stamp

    def keys_after(self, partition: int, cursor: bytes | None) -> Iterator[bytes]:
        db = compat.rocksdict_partition(self.table, partition)
        if db is None:
            raise KeyError(f"partition {partition} is not open here")
        offset_key = compat.persisted_offset_key(self.table)
        keys = db.keys() if cursor is None else db.keys(from_key=cursor)
        return (k for k in keys if k != cursor and k != offset_key)

    def persisted_offset(self, partition: int) -> int | None:
        db = compat.rocksdict_partition(self.table, partition)
        raw = None if db is None else db.get(compat.persisted_offset_key(self.table))
        return None if raw is None else int(raw)


class MemoryRows:
    """:class:`RowStore` over one mapping holding every partition's rows (unit tests).

    ``rows`` is normally the Faust memory table's store, so ``table.get``
    sees what was written. Every partition counts as open unless listed in
    :attr:`closed` (tests revoke a partition that way).
    """

    def __init__(self, rows: MutableMapping[bytes, bytes], partitions: int) -> None:
        self.rows = rows
        self.partitions = partitions
        self.offsets: dict[int, int] = {}
        self.closed: set[int] = set()

    def is_open(self, partition: int) -> bool:
        return partition not in self.closed

    def get(self, partition: int, key: bytes) -> bytes | None:
        if not self.is_open(partition):
            return None
        return self.rows.get(key)

    def get_many(self, partition: int, keys: Sequence[bytes]) -> list[bytes | None]:
        return [self.get(partition, key) for key in keys]

    def write(self, partition: int, rows: Sequence[tuple[bytes, bytes | None]],
              offset: int | None) -> bool:
        if not self.is_open(partition):
            return False
        for key, value in rows:  # no await in between: atomic for every reader
            if value is None:
                self.rows.pop(key, None)
            else:
                self.rows[key] = value
        if offset is not None:
            self.offsets[partition] = offset
        return True

    def keys_after(self, partition: int, cursor: bytes | None) -> Iterator[bytes]:
        if not self.is_open(partition):
            raise KeyError(f"partition {partition} is not open here")
        # A sorted copy: safe to consume across an await.
        keys = sorted(k for k in list(self.rows)
                      if partition_for(k, self.partitions) == partition
                      and (cursor is None or k > cursor))
        return iter(keys)

    def persisted_offset(self, partition: int) -> int | None:
        return self.offsets.get(partition)

    def stamp(self, partition: int) -> None:
        return None  # the memory table writes the mapping without telling this store


def row_store(table: CollectionT, partitions: int) -> RowStore:
    """The :class:`RowStore` for ``table``'s store: RocksDB, or memory for ``memory://``.

    Raises :class:`ValueError` for any other store (the service writes rows
    itself, so it must know where they live).
    """
    url = str(table.app.conf.store)
    if url.startswith("rocksdb:"):
        return RocksDBRows(table)
    if url.startswith("memory:"):
        return MemoryRows(table.data, partitions)
    raise ValueError(f"unsupported table store {url!r}: use rocksdb:// or memory://")
