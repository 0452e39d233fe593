"""The startup check: every private Faust/aiokafka name this package touches still exists,
and aiokafka can decompress every codec a Kafka record batch may carry."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import version


class CompatError(RuntimeError):
    """A private name streams/compat relies on is missing from the installed library."""


@dataclass(frozen=True)
class Touch:
    """One private (or patched) name: ``module``'s ``owner`` has attribute ``name``."""

    module: str
    owner: str | None  # a class in ``module``; None: a module-level name
    name: str
    used_by: str  # the streams.compat function that relies on it
    #: an undeclared instance attribute that ``owner.__init__`` sets (checked there)
    set_in_init: bool = False


#: Every name touched by streams/compat (keep in step with the modules).
TOUCHES: tuple[Touch, ...] = (
    Touch("faust.streams", None, "_current_event", "events.partition_context"),
    Touch("faust.transport.producer", "Producer", "flush", "producer.harden_producer_flush"),
    Touch("faust.types.transports", "ProducerT", "buffer", "producer.harden_producer_flush"),
    Touch("faust.transport.producer", "ProducerBuffer", "size", "producer.harden_producer_flush"),
    Touch("faust.transport.producer", "ProducerBuffer", "flush",
          "producer.harden_producer_flush"),
    *(Touch("faust.transport.producer", "ProducerBuffer", name, "hot_path.resolve_hot_settings")
      for name in ("wait_until_ebb", "max_messages", "pending")),
    Touch("faust.app.base", "App", "create_event", "hot_path.resolve_hot_settings"),
    Touch("faust.transport.drivers.aiokafka", "Producer", "_ensure_producer",
          "producer.aiokafka_producer"),
    Touch("aiokafka", "AIOKafkaProducer", "create_batch", "publish.Publisher"),
    Touch("aiokafka", "AIOKafkaProducer", "send_batch", "publish.Publisher"),
    Touch("aiokafka", "AIOKafkaProducer", "partitions_for", "publish.Publisher"),
    Touch("aiokafka", "AIOKafkaProducer", "_message_accumulator",
          "producer.prebuilt_batch_bytes", set_in_init=True),
    *(Touch("aiokafka.producer.message_accumulator", "MessageAccumulator", name,
            "producer.prebuilt_batch_bytes", set_in_init=True)
      for name in ("_txn_manager", "_compression_type", "_batch_size")),
    *(Touch("aiokafka.producer.message_accumulator", "BatchBuilder", name,
            "producer.PrebuiltBatch")
      for name in ("append", "close", "closed", "record_count", "size", "_build",
                   "_set_producer_state")),
    Touch("faust.transport.consumer", "Consumer", "seek_to_committed",
          "consumer.on_seek_to_committed"),
    Touch("faust.transport.consumer", "Consumer", "_commit", "consumer.cap_commits"),
    *(Touch("aiokafka.consumer.subscription_state", owner, name, used_by)
      for owner, name in (("SubscriptionState", "subscription"), ("Subscription", "assignment"),
                          ("Assignment", "all_consumed_offsets"))
      for used_by in ("consumer.consumed_positions", "consumer.track_fetches")),
    *(Touch("aiokafka", "AIOKafkaConsumer", "_subscription", used_by, set_in_init=True)
      for used_by in ("consumer.consumed_positions", "consumer.track_fetches")),
    Touch("faust.transport.consumer", "ThreadDelegateConsumer", "_thread",
          "consumer.set_fetching"),
    Touch("faust.transport.drivers.aiokafka", "AIOKafkaConsumerThread", "_ensure_consumer",
          "consumer.set_fetching"),
    Touch("faust.transport.drivers.aiokafka", "AIOKafkaConsumerThread", "call_thread",
          "consumer.set_fetching"),
    Touch("aiokafka.consumer.group_coordinator", "GroupCoordinator", "_maybe_leave_group",
          "consumer.leave_group_on_stop"),
    Touch("aiokafka", "AIOKafkaConsumer", "_coordinator", "consumer.apply_fetching",
          set_in_init=True),
    Touch("aiokafka.consumer.group_coordinator", "GroupCoordinator", "generation",
          "consumer.apply_fetching", set_in_init=True),
    Touch("aiokafka", "AIOKafkaConsumer", "pause", "consumer.set_fetching"),
    Touch("aiokafka", "AIOKafkaConsumer", "resume", "consumer.set_fetching"),
    Touch("faust.transport.consumer", "Consumer", "highwater", "consumer.highwater"),
    *(Touch("faust.transport.drivers.aiokafka", "AIOKafkaConsumerThread", name,
            "consumer.track_fetches") for name in ("_fetch_records", "getmany")),
    Touch("faust.transport.consumer", "ThreadDelegateConsumer", "_getmany",
          "consumer.track_fetches"),
    *(Touch("faust.transport.drivers.aiokafka", "AIOKafkaConsumerThread",
            "_create_worker_consumer", used_by)
      for used_by in ("consumer.batch_fetches", "consumer.read_committed")),
    *(Touch("aiokafka", "AIOKafkaConsumer", "_isolation_level", used_by, set_in_init=True)
      for used_by in ("consumer.read_committed", "consumer.track_fetches")),
    Touch("aiokafka", "AIOKafkaConsumer", "_fetcher", "consumer.batch_fetches",
          set_in_init=True),
    *(Touch("aiokafka.consumer.fetcher", "Fetcher", name, "consumer.batch_fetches",
            set_in_init=True)
      for name in ("_proc_fetch_request", "_get_actions_per_node", "_records",
                   "_fetch_min_bytes", "_fetch_max_wait_ms")),
    Touch("faust.transport.consumer", "Consumer", "callback", "intake.deliver_to_intake",
          set_in_init=True),
    Touch("faust.sensors.monitor", "Monitor", "stream_inbound_time", "intake.Intake.batches",
          set_in_init=True),
    Touch("faust.transport.consumer", "Consumer", "_drain_messages", "delivery.deliver_directly"),
    Touch("faust.transport.consumer", "Consumer", "wait_first", "delivery.deliver_directly"),
    Touch("faust.transport.consumer", "Consumer", "suspend_flow", "delivery.deliver_directly"),
    Touch("faust.stores.rocksdb", "Store", "_dbs", "tables.rocksdict_partition"),
    Touch("faust.stores.rocksdb", "Store", "_db_for_partition",
          "tables.open_rocksdict_partition"),
    Touch("faust.stores.rocksdb", "Store", "offset_key", "tables.persisted_offset_key"),
    Touch("faust.tables.recovery", "Recovery", "tp_to_table", "tables.recovery_table"),
    Touch("faust.tables.manager", "TableManager", "_update_channels",
          "tables.start_tables_without_delay"),
    Touch("faust.tables.recovery", "Recovery", "_build_offsets", "tables.on_recovery_offsets"),
    Touch("aiokafka.admin", "AIOKafkaAdminClient", "_client", "clients.delete_consumer_group",
          set_in_init=True),
    Touch("aiokafka.client", "AIOKafkaClient", "send", "clients.delete_consumer_group"),
    Touch("aiokafka", "AIOKafkaConsumer", "_client", "clients.refresh_topic_metadata",
          set_in_init=True),
    Touch("aiokafka.client", "AIOKafkaClient", "add_topic", "clients.refresh_topic_metadata"),
    Touch("aiokafka.client", "AIOKafkaClient", "set_topics", "clients.track_only"),
    Touch("aiokafka.client", "AIOKafkaClient", "force_metadata_update",
          "clients.refresh_topic_metadata"),
)


def _has(owner: object, name: str, set_in_init: bool = False) -> bool:
    """``name`` is an attribute of ``owner`` or an instance attribute declared on its classes.

    With ``set_in_init``, also one that ``owner``'s own ``__init__`` names
    (aiokafka sets ``self._client`` there without declaring it).
    """
    if hasattr(owner, name):
        return True
    mro = getattr(owner, "__mro__", ())
    if any(name in vars(cls).get("__annotations__", {}) for cls in mro):
        return True
    code = getattr(getattr(owner, "__init__", None), "__code__", None)
    return set_in_init and code is not None and name in code.co_names


def versions() -> str:
    """The installed faust-streaming and aiokafka versions, for error messages."""
    return f"faust-streaming {version('faust-streaming')}, aiokafka {version('aiokafka')}"


def check(touches: tuple[Touch, ...] = TOUCHES) -> None:
    """Verify every touched name exists; raise :class:`CompatError` naming the first missing one.

    Run once at worker startup, before anything is patched, so an upgrade that
    renames a private name fails loudly instead of silently losing a guarantee.
    Then :func:`check_codecs`.
    """
    for touch in touches:
        where = touch.module if touch.owner is None else f"{touch.module}.{touch.owner}"
        try:
            owner: object = importlib.import_module(touch.module)
            if touch.owner is not None:
                owner = getattr(owner, touch.owner)
        except (ImportError, AttributeError) as exc:
            raise CompatError(f"{versions()}: {where} is missing ({exc}); "
                              f"streams.compat.{touch.used_by} relies on it") from exc
        if not _has(owner, touch.name, touch.set_in_init):
            raise CompatError(f"{versions()}: {where}.{touch.name} is missing; "
                              f"streams.compat.{touch.used_by} relies on it")
    check_codecs()


def check_codecs() -> None:
    """Raise :class:`CompatError` unless aiokafka can decompress snappy, lz4 and zstd.

    A producer or a topic's ``compression.type`` decides how input arrives;
    without the library the consumer would crash on the first such batch.
    """
    from aiokafka import codec

    missing = [name for name, has in (("snappy", codec.has_snappy), ("lz4", codec.has_lz4),
                                      ("zstd", codec.has_zstd)) if not has()]
    if missing:
        raise CompatError(f"aiokafka cannot decompress {', '.join(missing)}: the cramjam "
                          "package, a dependency of loyalty-scorer, is missing (reinstall "
                          "with its dependencies)")
