"""The Faust application of the loyalty scorer, built from :class:`Settings`.

:func:`create_service` returns a :class:`LoyaltyService`: the ``faust.App``
plus everything the agents, the sweep and the web views share (tables,
output topics, metrics, policies). Nothing is created at import time, so tests
can build several independent services in one process (``memory://`` store).

State layout (the single source of truth is the changelog):

* ``customers`` table - key ``b"shop|customer"``, value
  ``CustomerState.encode()`` bytes. One row per customer, so every processed
  event makes exactly one changelog write for the customer.
* ``shop-tallies`` table - key ``b"shop|<partition>"``, value
  ``ShopTally.encode()`` bytes: the per-shop figures of the customers stored
  in that partition. It is maintained incrementally by the agent (a second
  changelog write) and recomputed exactly from the customer table by the time
  sweep, which repairs any drift left by a crash between the two writes.

Both tables use raw bytes for keys and values (no Faust model layer): the
scoring core owns the encoding, and a schema change there cannot be silently
re-interpreted by Faust's serializer registry.

Partitioning: all input topics, the internal rekey topic and both changelogs
have ``settings.partitions`` partitions, and a customer's key always maps to
partition ``murmur2(key) % partitions`` (Kafka's default partitioner). The
agent only processes a record on that partition (see :mod:`streams.agents`),
so a customer's row always lives in that partition's store and changelog.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faust
from aiokafka.partitioner import murmur2

from streams.metrics import Metrics
from streams.settings import Settings
from streams.topics import TopicSpec, input_topics, topic_specs

if TYPE_CHECKING:
    from schemas.policy import PolicyBook

CUSTOMERS_TABLE = "customers"
TALLIES_TABLE = "shop-tallies"
MiB = 1024 * 1024
#: consumer group session timeout: how long a killed worker stays a group member
SESSION_TIMEOUT_S = 10.0


def partition_for(key: bytes, partitions: int) -> int:
    """Partition Kafka's default partitioner (Java and aiokafka) picks for ``key``."""
    return _key_hash(key) % partitions


@lru_cache(maxsize=1 << 16)
def _key_hash(key: bytes) -> int:
    # aiokafka's murmur2 is pure Python (~4 us); an event hashes its customer
    # key for its own partition and for each output record, and active
    # customers come back, so a bounded cache pays for itself.
    return murmur2(key) & 0x7FFFFFFF


def rekey_topic_name(settings: Settings) -> str:
    """Internal topic that carries wrongly keyed input, re-keyed (one per app id)."""
    return f"{settings.app_id}-rekey"


def rekey_topic_spec(settings: Settings) -> TopicSpec:
    """The rekey topic as a :class:`TopicSpec` so ``ensure_topics`` can create it."""
    return TopicSpec(
        name=rekey_topic_name(settings), partitions=settings.partitions, compacted=False,
        role="input", key_codec="utf-8 text '<shop_id>|<customer_id>'",
        value_codec="the original input record bytes", description="re-keyed input records",
    )


def changelog_topic_specs(settings: Settings) -> list[TopicSpec]:
    """The tables' changelog topics (compacted), named as Faust names them.

    Created before Faust starts: when Faust creates them itself, the first
    records can be processed before the consumer's metadata knows the new
    topic, and Faust's co-partitioning check then fails with
    ``PartitionsMismatch`` ("changelog has 0 partitions").
    """
    return [TopicSpec(name=f"{settings.app_id}-{table}-changelog",
                      partitions=settings.partitions, compacted=True, role="output",
                      key_codec="table key", value_codec="table value",
                      description=f"changelog of the {table} table")
            for table in (CUSTOMERS_TABLE, TALLIES_TABLE)]


def all_topic_specs(settings: Settings) -> list[TopicSpec]:
    """Registry topics plus the service's internal rekey and changelog topics."""
    return [*topic_specs(settings), rekey_topic_spec(settings), *changelog_topic_specs(settings)]


def rocksdb_options(settings: Settings) -> dict[str, Any]:
    """Per-partition RocksDB options so each *table* stays within the settings budget.

    Faust opens one RocksDB database per table partition, each with its own
    block cache and memtables, so the per-table budget from settings is split
    across ``partitions`` databases. With the defaults (64 MiB cache, 16 MiB
    write buffer per table, 4 partitions, 2 tables) the stores use at most
    about 2 x (64 + 2 x 16) MiB = 192 MiB, well inside a 24 GiB machine shared
    with the broker and the tests. A fresh dict is returned each call because
    Faust's store mutates the dict it is given.
    """
    n = max(1, settings.partitions)
    return {
        "block_cache_size": max(1 * MiB, settings.rocksdb_block_cache_mb * MiB // n),
        "block_cache_compressed_size": 1 * MiB,
        "write_buffer_size": max(1 * MiB, settings.rocksdb_write_buffer_mb * MiB // n),
        "max_write_buffer_number": 2,
        "max_open_files": 256,
    }


def app_data_dir(settings: Settings) -> Path:
    """Local table data of this app id (safe to delete: rebuilt from the changelogs)."""
    return Path(settings.data_dir) / settings.app_id


def canonical_url(settings: Settings) -> str:
    """URL other workers use to reach this worker's web server (request routing)."""
    host = settings.web_host
    if host in ("0.0.0.0", "::", ""):
        # Bound to every interface: peers need a resolvable name, not 0.0.0.0.
        host = socket.gethostname()
    return f"http://{host}:{settings.web_port}"


@dataclass
class LoyaltyService:
    """Everything one worker shares between agents, sweep and web views."""

    settings: Settings
    app: faust.App
    customers: Any  # faust Table[bytes, bytes]
    tallies: Any  # faust Table[bytes, bytes]
    inputs: Any  # faust Topic over the four input topics and the rekey topic
    rekey: Any
    transitions: Any
    rewards: Any
    scores: Any
    dead_letter: Any
    policies: PolicyBook
    metrics: Metrics = field(default_factory=Metrics)
    sweeper: Any = None
    clv: Any = None  # streams.clv_service.ClvService when CLV is enabled
    input_topic_names: tuple[str, ...] = ()

    @property
    def partitions(self) -> int:
        return self.settings.partitions

    def clv_model(self, shop_id: str) -> Any:
        """The shop's fitted CLV model, or None (snapshot CLV fields are then null)."""
        return self.clv.models.get(shop_id) if self.clv is not None else None

    def owned_partitions(self) -> list[int]:
        """Partitions of the customer table this worker actively owns (not standbys)."""
        changelog = self.customers.changelog_topic.get_topic_name()
        try:
            actives = self.app.assignor.assigned_actives()
        except Exception:  # assignor not ready (before the first rebalance)
            return []
        return sorted(tp.partition for tp in actives if tp.topic == changelog)


def _harden_producer_flush(app: faust.App) -> None:
    """Make ``producer.flush()`` really drain Faust's send buffer.

    Faust commits offsets right after ``producer.flush()``. Its buffer flush
    gives up as soon as no message left the buffer for 0.1 s, so a slow
    broker round could let an offset be committed while that record's
    changelog write still sat in the buffer - and a kill -9 then would lose
    the write. The commit path looks the method up on the instance, so
    wrapping it here keeps "flushed before committed" true.
    """
    producer = app.producer
    original = producer.flush

    async def flush() -> None:
        while producer.buffer.size:
            await producer.buffer.flush()
            if producer.buffer.size:
                await asyncio.sleep(0.01)
        await original()

    producer.flush = flush  # type: ignore[method-assign]


def create_service(
    settings: Settings,
    *,
    policies: PolicyBook | None = None,
    web_enabled: bool = True,
    sweep_enabled: bool = True,
) -> LoyaltyService:
    """Build the Faust app, tables, topics, agents, sweep timer and web views.

    Raises whatever :meth:`PolicyBook.load` raises for a bad policy file, so a
    misconfigured worker fails at startup, not at the first event.
    """
    from schemas.policy import PolicyBook
    from streams.security import faust_credentials

    if policies is None:
        policies = PolicyBook.load(settings.policy_file)
    app = faust.App(
        settings.app_id,
        broker=settings.broker,
        # SSL/SASL for managed Kafka (LOYALTY_SECURITY_PROTOCOL ...); None = PLAINTEXT.
        broker_credentials=faust_credentials(settings),
        store=settings.store,
        # One directory per app id: Faust names local stores after the table
        # only, so two apps sharing a data dir would share (corrupt) stores.
        datadir=str(app_data_dir(settings)),
        autodiscover=False,
        web_enabled=web_enabled,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_host=settings.web_host,
        canonical_url=canonical_url(settings),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,  # changelog topics are created by Faust
        topic_disable_leader=True,  # no __assignor-__leader topic: nothing uses it
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        processing_guarantee="at_least_once",
        table_standby_replicas=1,
        broker_commit_interval=1.0,
        # A worker killed with -9 keeps its group membership until the session
        # times out; the default 60 s would stall its restart's rebalance.
        broker_session_timeout=SESSION_TIMEOUT_S,
        broker_heartbeat_interval=2.0,
    )
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw",
           "value_serializer": "raw"}
    _harden_producer_flush(app)
    # Tables take key/value *types* only; with bytes types Faust passes the raw
    # bytes through (the app-wide serializers are "raw").
    tbl = {"key_type": bytes, "value_type": bytes, "default": None,
           "partitions": settings.partitions}
    customers = app.Table(CUSTOMERS_TABLE, options=rocksdb_options(settings),
                          help="customer state", **tbl)
    tallies = app.Table(TALLIES_TABLE, options=rocksdb_options(settings),
                        help="per-shop figures per partition", **tbl)
    names = tuple(input_topics(settings))
    rekey_name = rekey_topic_name(settings)
    service = LoyaltyService(
        settings=settings,
        app=app,
        customers=customers,
        tallies=tallies,
        inputs=app.topic(*names, rekey_name, **raw),
        rekey=app.topic(rekey_name, partitions=settings.partitions, **raw),
        transitions=app.topic(settings.topic_transitions, **raw),
        rewards=app.topic(settings.topic_rewards, **raw),
        scores=app.topic(settings.topic_scores, **raw),
        dead_letter=app.topic(settings.topic_dead_letter, **raw),
        policies=policies,
        input_topic_names=names,
    )
    from streams.agents import register_agents
    from streams.restore import install_bulk_restore
    from streams.sweep import Sweeper, register_sweep

    service.sweeper = Sweeper(service)
    register_agents(service)
    install_bulk_restore(service)
    if sweep_enabled:
        register_sweep(service)
        from streams.clv_service import register_clv

        register_clv(service)  # periodic refit + model reader (streams/clv_service.py)
    if web_enabled:
        from streams.web import register_web

        register_web(service)
    return service
