"""Private reads of Faust's RocksDB table store and a hook into its changelog recovery.

The agent, the time sweep and the bulk restore read and write a table's
RocksDB partition databases themselves (see :mod:`streams.store`); these
functions are the only code that knows where Faust keeps them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import faust
from faust.stores.rocksdb import Store as RocksDBStore
from faust.types import TP, CollectionT
from rocksdict import Rdict

#: ``(tps, destination offsets, title) -> None``, run when Faust has computed
#: the offsets its recovery resumes from; may move them forward
RecoveryHook = Callable[[Any, MutableMapping[TP, int], str], Awaitable[None]]


def _rocksdb_store(table: CollectionT) -> RocksDBStore | None:
    store = table.data
    return store if isinstance(store, RocksDBStore) else None


def rocksdict_partition(table: CollectionT, partition: int) -> Rdict | None:
    """The open ``rocksdict.Rdict`` of ``partition`` behind ``table``, or None.

    None for any other store (``memory://``, the python-rocksdb driver) and
    for a partition whose database is not open here (not assigned).

    Works around: Faust's table API reads through a key index and writes one
    buffered changelog message plus a persisted-offset write per key; it has
    no batch write and no per-partition access. Reads the private
    ``Store._dbs`` map.
    """
    store = _rocksdb_store(table)
    if store is None:
        return None
    db = store._dbs.get(partition)
    return db if isinstance(db, Rdict) else None


def open_rocksdict_partition(table: CollectionT, partition: int) -> Rdict | None:
    """Open (or return the open) ``rocksdict.Rdict`` of ``partition``; None if not rocksdict.

    Works around: no public way to open a partition's database before Faust's
    recovery does. Calls the private ``Store._db_for_partition``.
    """
    store = _rocksdb_store(table)
    if store is None:
        return None
    db = store._db_for_partition(partition)
    return db if isinstance(db, Rdict) else None


def persisted_offset_key(table: CollectionT) -> bytes:
    """The key under which Faust's RocksDB store keeps a partition's persisted changelog offset.

    The value is the offset in decimal ASCII, as ``Store.set_persisted_offset``
    writes it. Reads the undocumented ``Store.offset_key`` class attribute.
    """
    return bytes(RocksDBStore.offset_key)


def recovery_table(app: faust.App, tp: TP) -> CollectionT | None:
    """The table whose changelog partition ``tp`` Faust's recovery is restoring, if any.

    Reads the undocumented ``Recovery.tp_to_table`` map.
    """
    table: CollectionT | None = app.tables.recovery.tp_to_table.get(tp)
    return table


def on_recovery_offsets(app: faust.App, hook: RecoveryHook) -> None:
    """Run ``hook`` right after Faust computed the offsets its recovery resumes from.

    Works around: Faust's recovery applies a changelog one record per event
    loop turn and offers no way to restore in bulk; the one safe moment is
    after the start offsets are known and before Faust seeks to them.
    Wraps the instance's private ``Recovery._build_offsets(consumer, tps,
    destination, title)``; ``hook(tps, destination, title)`` may move
    ``destination`` offsets forward (Faust then replays only the rest).
    """
    recovery = app.tables.recovery
    original = recovery._build_offsets

    async def build_offsets(consumer: Any, tps: Any, destination: Any, title: str) -> None:
        await original(consumer, tps, destination, title)
        await hook(tps, destination, title)

    recovery._build_offsets = build_offsets  # type: ignore[method-assign]


def start_tables_without_delay(app: faust.App) -> None:
    """Start the table manager without Faust's fixed one-second wait.

    Works around: ``TableManager.on_start`` sleeps a second before it
    registers the tables' changelog channels and starts the recovery, so that
    tables defined while the worker starts are included; the consumer does
    not subscribe before that. The service defines all its tables when it
    builds the app (:func:`streams.app.create_service`), so the second was
    pure delay in every start and restart. Replaces the instance's
    ``on_start`` with the same steps minus the sleep: the private
    ``TableManager._update_channels``, then the public ``recovery.start``.
    Faust refuses tables added after the recovery started, as before.
    """
    tables = app.tables

    async def on_start() -> None:
        if not tables.should_stop:
            await tables._update_channels()
            await tables.recovery.start()

    tables.on_start = on_start  # type: ignore[method-assign]
