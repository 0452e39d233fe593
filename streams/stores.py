"""Direct access to the RocksDB partition databases behind a Faust table.

The agent and the sweep read and write customer rows in the partition's
database themselves: Faust's table path costs two lookups per read and a
buffered changelog message plus a persisted-offset write per write. Where
Faust keeps those databases is known only to :mod:`streams.compat`.

Guarantee of :func:`write_rows`: the rows and Faust's persisted offset go in
one RocksDB write batch, so a crash leaves either all of them or none, and
the store never claims a changelog offset whose rows it lacks.
"""

from __future__ import annotations

from typing import Any

from faust.types import CollectionT
from rocksdict import WriteBatch

from streams import compat


def partition_db(table: CollectionT, partition: int) -> Any | None:
    """The open ``rocksdict`` database of ``partition`` behind ``table``, or None.

    None for any other store (``memory://`` in unit tests, the python-rocksdb
    driver) and for a partition whose database is not open (not assigned
    here): callers then go through the Faust table.
    """
    return compat.rocksdict_partition(table, partition)


def write_rows(table: CollectionT, partition: int, rows: list[tuple[bytes, bytes]],
               changelog_offset: int) -> bool:
    """Write ``rows`` and Faust's persisted offset in one batch; False if not open.

    ``changelog_offset`` is the offset of the last changelog record of these
    rows, already acknowledged by the broker; Faust's recovery resumes after
    it. False (nothing written) if the partition's database is not open: the
    partition moved, and its new owner restores the rows from the changelog.
    """
    db = partition_db(table, partition)
    if db is None:
        return False
    batch = WriteBatch(raw_mode=True)
    for key, value in rows:
        batch.put(key, value)
    # Faust's Store.set_persisted_offset encoding, in the same batch.
    batch.put(compat.persisted_offset_key(table), str(changelog_offset).encode())
    db.write(batch)
    return True
