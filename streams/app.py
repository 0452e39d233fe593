"""The composition root: builds one worker's Faust app from :class:`Settings`.

:func:`create_service` returns a :class:`LoyaltyService`: the typed
:class:`streams.context.ServiceContext` (the ``faust.App`` plus everything
the agent, the sweep and the web views share: tables, topics, metrics,
policies) and the parts built on it (the agent's processor, the sweeper, the
CLV service). This is the only module that imports every runtime module; none
of them imports it. Nothing is created at import time, so tests can build
several independent services in one process (``memory://`` store).

State layout (the single source of truth is the changelog):

* ``customers`` table - key ``b"shop|customer"``, value
  the state's bytes (``scoring.engine``). One row per customer, so every processed
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
partition ``murmur2(key) % partitions`` (Kafka's default partitioner,
:func:`streams.topics.partition_for`). The agent only processes a record on
that partition (see :mod:`streams.planning`), so a customer's row always
lives in that partition's store and changelog.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust

from schemas.policy import PolicyBook
from scoring.engine import READABLE_VERSIONS
from scoring.native import engine_named
from streams.agent import Processor, register_agents
from streams.clv_service import ClvService, register_clv
from streams.compat import (
    harden_producer_flush,
    leave_group_on_stop,
    resolve_hot_settings,
    start_tables_without_delay,
)
from streams.context import ServiceContext
from streams.metrics import Metrics
from streams.publish import Publisher
from streams.restore import install_bulk_restore
from streams.security import faust_credentials
from streams.settings import Settings
from streams.store import row_store
from streams.sweep import Sweeper, register_sweep
from streams.topics import (
    CUSTOMERS_TABLE,
    TALLIES_TABLE,
    all_topic_specs,
    changelog_topic_specs,
    input_topics,
    partition_for,
    rekey_topic_name,
    rekey_topic_spec,
)
from streams.web import register_web

# Re-exported: the registry and key rules used to live here, and the CLI,
# tooling and integration tests still name them through this module.
__all__ = [
    "CUSTOMERS_TABLE", "SESSION_TIMEOUT_S", "TALLIES_TABLE", "LoyaltyService", "all_topic_specs",
    "app_data_dir", "canonical_url", "changelog_topic_specs", "create_service",
    "group_instance_id", "partition_for",
    "rekey_topic_name", "rekey_topic_spec", "rocksdb_options",
]

MiB = 1024 * 1024
#: consumer group session timeout: how long a killed worker stays a group member
SESSION_TIMEOUT_S = 10.0


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


def group_instance_id(settings: Settings) -> str | None:
    """This worker's static group membership id (KIP-345), or None for dynamic membership.

    Default: ``<host name>-<web port>``. Two workers of one app id never share
    it (on one host they cannot share the port; hosts differ by name) and a
    restarted worker finds it again, so the broker hands it back its
    partitions without a rebalance after a crash. A graceful stop still
    leaves the group at once (:func:`streams.compat.leave_group_on_stop`).
    """
    if settings.group_instance_id is None:
        return f"{socket.gethostname()}-{settings.web_port}"
    return settings.group_instance_id or None


@dataclass(frozen=True, eq=False)
class LoyaltyService:
    """One worker: its context and the parts built on it, all set at construction."""

    context: ServiceContext
    #: the state agent's record processor
    processor: Processor
    #: the time sweep (registered as a timer only with ``sweep_enabled``)
    sweeper: Sweeper
    #: the CLV refit and model reader (None unless ``sweep_enabled``)
    clv: ClvService | None

    @property
    def app(self) -> faust.App:
        return self.context.app


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
        # Faust's own endpoints (/router, /table: raw table rows, /graph, /stats)
        # would answer without the API token and outside /openapi.json. Faust
        # still serves its index "/" ({"status": "OK"}), which the description lists.
        web_router_enabled=False,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,  # changelog topics are created by Faust
        topic_disable_leader=True,  # no __assignor-__leader topic: nothing uses it
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # A commit's records for one partition in one batch (settings.py): aiokafka
        # sends one batch per partition per produce request.
        producer_max_batch_size=settings.producer_batch_bytes,
        producer_compression_type=(None if settings.producer_compression == "none"
                                   else settings.producer_compression),
        processing_guarantee="at_least_once",
        table_standby_replicas=1,
        broker_commit_interval=1.0,
        # A worker killed with -9 keeps its group membership until the session
        # times out; the default 60 s would stall its restart's rebalance (with
        # dynamic membership) or its partitions (static: until it is back).
        broker_session_timeout=SESSION_TIMEOUT_S,
        # Static membership: a restart within the session takes the partitions
        # back at once, without a rebalance of the group.
        consumer_group_instance_id=group_instance_id(settings),
        broker_heartbeat_interval=2.0,
    )
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw",
           "value_serializer": "raw"}
    harden_producer_flush(app)
    resolve_hot_settings(app)  # before the conductor compiles its handlers
    leave_group_on_stop()  # static membership for crash restarts only
    # Tables take key/value *types* only; with bytes types Faust passes the raw
    # bytes through (the app-wide serializers are "raw").
    tbl = {"key_type": bytes, "value_type": bytes, "default": None,
           "partitions": settings.partitions}
    customers = app.Table(CUSTOMERS_TABLE, options=rocksdb_options(settings),
                          help="customer state", **tbl)
    tallies = app.Table(TALLIES_TABLE, options=rocksdb_options(settings),
                        help="per-shop figures per partition", **tbl)
    start_tables_without_delay(app)  # every table is defined above
    names = tuple(input_topics(settings))
    rekey_name = rekey_topic_name(settings)
    engine = engine_named(settings.engine)
    context = ServiceContext(
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
        rows=row_store(customers, settings.partitions),
        tally_rows=row_store(tallies, settings.partitions),
        publisher=Publisher(app),
        metrics=Metrics(settings.exported_shops),
        engine=engine,
        states=engine.state_cache(settings.state_cache_size, settings.head_cache_mb << 20,
                                  settings.state_cache_mb << 20),
    )
    context.metrics.set_build(_version(), context.engine.name, settings.state_write_format,
                              READABLE_VERSIONS)
    context.metrics.watch_state_cache(context.states)
    # The sweeper exists even without its timer: the agent tells it about
    # every write, and tests drive it directly.
    sweeper = Sweeper(context)
    processor, aligned = register_agents(context, on_change=sweeper.note_change)
    sweeper.input_time = aligned.input_time_us
    sweeper.agent_load = processor.load.share
    install_bulk_restore(context)
    clv = None
    if sweep_enabled:
        register_sweep(context, sweeper)
        clv = register_clv(context)  # periodic refit + model reader
    if web_enabled:
        register_web(context)
    return LoyaltyService(context=context, processor=processor, sweeper=sweeper, clv=clv)


def _version() -> str:
    """The installed package's version ("unknown" when run from a tree not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("loyalty-scorer")
    except PackageNotFoundError:
        return "unknown"
