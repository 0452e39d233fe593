"""The one place that touches private Faust and aiokafka names.

Every use of a name that faust-streaming or aiokafka do not document (a
private attribute read, a method replaced on an instance, a context variable
set from outside) lives in this subpackage, behind a small named function.
Each function's docstring says which upstream limitation or issue it works
around. :func:`check` verifies every touched name once at worker startup
(:mod:`streams.commands.worker` calls it) and fails with
:class:`CompatError` naming the installed faust-streaming and aiokafka
versions and the missing name, so an upgrade cannot silently drop a
guarantee. The names it checks are listed in :data:`TOUCHES`; a new touch
must be added there.

Modules: :mod:`.events` (a stand-in current event for table access outside a
stream), :mod:`.producer` (flush hardening, the raw aiokafka producer,
batches built outside aiokafka), :mod:`.hot_path`
(Faust's per-record settings lookups, resolved once),
:mod:`.consumer` (seek and commit hooks, read offsets, pausing and batching
fetches, high-water marks and offsets passed over, committed-only reads), :mod:`.delivery` (records to the streams without a task
race per record), :mod:`.intake` (the agent's topics straight from the
fetcher, in batches of what is queued), :mod:`.tables` (RocksDB partition databases, the
persisted-offset key, the recovery hook), :mod:`.clients` (plain aiokafka
clients of tools such as ``loyalty bench`` and of the broker probe: deleting a
consumer group, fetching a topic's metadata, tracking only some topics).
"""

from __future__ import annotations

from streams.compat.check import TOUCHES, CompatError, check
from streams.compat.clients import delete_consumer_group, refresh_topic_metadata, track_only
from streams.compat.consumer import (
    assignment,
    batch_fetches,
    cap_commits,
    consumed_positions,
    generation,
    highwater,
    leave_group_on_stop,
    on_seek_to_committed,
    read_committed,
    set_fetching,
    skipped_offsets,
    track_fetches,
)
from streams.compat.delivery import deliver_directly
from streams.compat.events import partition_context
from streams.compat.hot_path import resolve_hot_settings
from streams.compat.intake import Intake, deliver_to_intake
from streams.compat.producer import (
    PrebuiltBatch,
    aiokafka_producer,
    harden_producer_flush,
    prebuilt_batch_bytes,
)
from streams.compat.tables import (
    on_recovery_offsets,
    open_rocksdict_partition,
    persisted_offset_key,
    recovery_table,
    rocksdict_partition,
    start_tables_without_delay,
)

__all__ = [
    "TOUCHES", "CompatError", "Intake", "PrebuiltBatch", "aiokafka_producer", "assignment",
    "batch_fetches", "cap_commits", "check", "consumed_positions", "delete_consumer_group",
    "deliver_directly", "deliver_to_intake", "generation", "harden_producer_flush", "highwater",
    "leave_group_on_stop", "on_recovery_offsets", "on_seek_to_committed",
    "open_rocksdict_partition", "partition_context", "persisted_offset_key",
    "prebuilt_batch_bytes", "read_committed", "recovery_table", "refresh_topic_metadata",
    "resolve_hot_settings", "rocksdict_partition", "set_fetching", "skipped_offsets",
    "start_tables_without_delay", "track_fetches", "track_only",
]
