"""The one registry of the project's Kafka topics, and the record-key rules.

Everything that names, creates, produces to or consumes from a project topic
takes the name from here (ultimately from :class:`streams.settings.Settings`),
so a rename is one environment variable. That includes the service's internal
topics: the rekey topic and the tables' changelogs (:func:`all_topic_specs`).

Key rules, all here: a customer's record key (:func:`message_key`), the
partition Kafka's default partitioner gives it (:func:`partition_for`), the
key of a shop's tally row (:func:`tally_key`) and the shop of either kind of
key (:func:`shop_of`).

Keying guarantee: every customer-keyed record (all inputs, transitions,
rewards, scores) carries the key ``f"{shop_id}|{customer_id}"`` in UTF-8 and
every topic has ``settings.partitions`` partitions. With Kafka's default
partitioner this puts all records of one customer, on every topic, into the
same partition number - the co-partitioning the Faust tables rely on. A topic
created by hand with a different partition count silently breaks that, which
is why :func:`ensure_topics` reports mismatches instead of ignoring them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # keep the import cheap: the CLI imports this for --help
    from streams.settings import Settings

Role = Literal["input", "output"]

KEY_SEPARATOR = "|"
CUSTOMER_KEY = "utf-8 text '<shop_id>|<customer_id>'"
JSON_VALUE = "utf-8 JSON object"

#: Names of the service's two tables (their changelogs are ``<app_id>-<table>-changelog``).
CUSTOMERS_TABLE = "customers"
TALLIES_TABLE = "shop-tallies"

# Kafka error codes used below (see org.apache.kafka.common.protocol.Errors).
_TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True)
class TopicSpec:
    """One project topic: what to create and how its records are encoded."""

    name: str
    partitions: int
    compacted: bool
    role: Role
    key_codec: str
    value_codec: str
    description: str

    @property
    def config(self) -> dict[str, str]:
        """Topic-level configs to create the topic with."""
        return {"cleanup.policy": "compact" if self.compacted else "delete"}


@dataclass(frozen=True)
class PartitionMismatch:
    """An existing topic whose partition count differs from the registry."""

    topic: str
    existing: int
    configured: int

    def __str__(self) -> str:
        return (
            f"topic {self.topic!r} exists with {self.existing} partitions but "
            f"{self.configured} are configured (LOYALTY_PARTITIONS); co-partitioning with the "
            f"tables is broken - recreate the topic or set LOYALTY_PARTITIONS={self.existing}"
        )


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """All project topics, inputs first, each with ``settings.partitions`` partitions.

    ``topic_scores`` (latest snapshot per customer) and ``topic_clv_params``
    (latest fitted model per shop, read from the beginning by every worker as
    its table of record) are compacted, so their latest value per key survives
    retention; all others use time-based deletion.
    """
    n = settings.partitions

    def spec(name: str, role: Role, description: str, *, compacted: bool = False,
             key: str = CUSTOMER_KEY, value: str = JSON_VALUE) -> TopicSpec:
        return TopicSpec(name, n, compacted, role, key, value, description)

    return [
        spec(settings.topic_purchases, "input", "purchase and refund events"),
        spec(settings.topic_visits, "input", "visit events"),
        spec(settings.topic_feedback, "input", "feedback / NPS events"),
        spec(settings.topic_redemptions, "input", "reward redemption events"),
        spec(settings.topic_forget, "input", "erasure requests (forget commands)"),
        spec(settings.topic_transitions, "output", "loyalty stage transitions"),
        spec(settings.topic_rewards, "output", "rewards granted"),
        spec(settings.topic_scores, "output", "latest customer snapshot", compacted=True),
        spec(settings.topic_dead_letter, "output", "rejected input records with the reason",
             key="the rejected record's original key (raw bytes)"),
        spec(settings.topic_clv_params, "output",
             "fitted CLV model parameters per shop (written by the refit, read by workers)",
             compacted=True, key="utf-8 text '<shop_id>'"),
    ]


def rekey_topic_name(settings: Settings) -> str:
    """Internal topic that carries wrongly keyed input, re-keyed (one per app id)."""
    return f"{settings.app_id}-rekey"


def rekey_topic_spec(settings: Settings) -> TopicSpec:
    """The rekey topic as a :class:`TopicSpec` so ``ensure_topics`` can create it."""
    return TopicSpec(
        name=rekey_topic_name(settings), partitions=settings.partitions, compacted=False,
        role="input", key_codec=CUSTOMER_KEY,
        value_codec="the original input record bytes", description="re-keyed input records",
    )


def changelog_topic_name(settings: Settings, table: str) -> str:
    """The changelog topic of ``table``, named as Faust names it."""
    return f"{settings.app_id}-{table}-changelog"


def changelog_topic_specs(settings: Settings) -> list[TopicSpec]:
    """The tables' changelog topics (compacted), named as Faust names them.

    Created before Faust starts: when Faust creates them itself, the first
    records can be processed before the consumer's metadata knows the new
    topic, and Faust's co-partitioning check then fails with
    ``PartitionsMismatch`` ("changelog has 0 partitions").
    """
    return [TopicSpec(name=changelog_topic_name(settings, table),
                      partitions=settings.partitions, compacted=True, role="output",
                      key_codec="table key", value_codec="table value",
                      description=f"changelog of the {table} table")
            for table in (CUSTOMERS_TABLE, TALLIES_TABLE)]


def all_topic_specs(settings: Settings) -> list[TopicSpec]:
    """Registry topics plus the service's internal rekey and changelog topics."""
    return [*topic_specs(settings), rekey_topic_spec(settings), *changelog_topic_specs(settings)]


def input_topics(settings: Settings) -> list[str]:
    """Names of the input topics, in registry order."""
    return [s.name for s in topic_specs(settings) if s.role == "input"]


_EVENT_TOPIC_FIELD = {
    "purchase": "topic_purchases",
    "refund": "topic_purchases",  # refunds must be ordered with the purchases they undo
    "visit": "topic_visits",
    "feedback": "topic_feedback",
    "redemption": "topic_redemptions",
    # Its own topic, so that who may erase customers is one ACL; the aligned
    # input orders it with the customer's events by occurred_at like any input.
    "forget": "topic_forget",
}

EVENT_TYPES: tuple[str, ...] = tuple(_EVENT_TOPIC_FIELD)


def input_topic_for_event_type(settings: Settings, event_type: str) -> str:
    """The input topic an event of ``event_type`` must be produced to.

    Raises :class:`ValueError` for an unknown event type.
    """
    try:
        field = _EVENT_TOPIC_FIELD[event_type]
    except KeyError:
        raise ValueError(
            f"unknown event type {event_type!r}; expected one of {', '.join(EVENT_TYPES)}"
        ) from None
    return str(getattr(settings, field))


def message_key(shop_id: str, customer_id: str) -> bytes:
    """The Kafka record key of a customer: ``f"{shop_id}|{customer_id}"`` in UTF-8.

    The key is unambiguous because ``shop_id`` may not contain ``|`` (the
    customer id may). Raises :class:`ValueError` for an empty id or a ``|`` in
    ``shop_id``.
    """
    if not shop_id or not customer_id:
        raise ValueError("shop_id and customer_id must be non-empty")
    if KEY_SEPARATOR in shop_id:
        raise ValueError(f"shop_id may not contain {KEY_SEPARATOR!r}: {shop_id!r}")
    return f"{shop_id}{KEY_SEPARATOR}{customer_id}".encode()


def parse_message_key(key: bytes | str) -> tuple[str, str]:
    """Inverse of :func:`message_key`: ``(shop_id, customer_id)``.

    Raises :class:`ValueError` if the key has no separator or is not UTF-8.
    """
    text = key.decode() if isinstance(key, bytes) else key
    shop_id, sep, customer_id = text.partition(KEY_SEPARATOR)
    if not sep or not shop_id or not customer_id:
        raise ValueError(f"not a '<shop_id>|<customer_id>' key: {text!r}")
    return shop_id, customer_id


def partition_for(key: bytes, partitions: int) -> int:
    """Partition Kafka's default partitioner (Java and aiokafka) picks for ``key``."""
    return (_key_hash or _load_key_hash())(key) % partitions


#: ``murmur2(key) & 0x7fffffff``, bound on first use (:func:`_load_key_hash`)
_key_hash: Callable[[bytes], int] | None = None


def _load_key_hash() -> Callable[[bytes], int]:
    """The native engine's hash when it is built, else aiokafka's behind a bounded cache.

    An event hashes its customer key for its own partition and for each
    output record. aiokafka's murmur2 is pure Python: a cache spares active
    customers, but a population larger than the cache pays it on almost
    every event; the native hash costs less than the cache's lookup. Bound
    here, not at import, because importing aiokafka is slow and the CLI
    imports this module for ``--help``.
    """
    global _key_hash
    try:
        from loyalty_native import partition_hash
    except ImportError:  # no Rust toolchain, or a build older than the hash
        from aiokafka.partitioner import murmur2

        @lru_cache(maxsize=1 << 16)
        def partition_hash(key: bytes) -> int:
            return int(murmur2(key)) & 0x7FFFFFFF

    _key_hash = partition_hash
    return partition_hash


def tally_key(shop_id: str, partition: int) -> bytes:
    """Key of a shop's tally row for one partition: ``b"shop|<partition>"``."""
    return f"{shop_id}{KEY_SEPARATOR}{partition}".encode()


def shop_of(key: bytes) -> str:
    """Shop id of a customer key or tally key (the shop id never contains ``|``)."""
    return key.split(b"|", 1)[0].decode()


async def partition_counts(admin: Any, names: list[str], wait_s: float = 10.0) -> dict[str, int]:
    """Partition count of each topic in ``names``, waiting for fresh metadata.

    A topic created moments ago (by anyone) can be missing from the broker's
    metadata, or listed without partition leaders, for a short while; comparing
    against that would hide a mismatch. So retry until every topic has a clean
    answer or ``wait_s`` passes; topics still unresolved are left out.
    """
    import asyncio

    counts: dict[str, int] = {}
    deadline = asyncio.get_running_loop().time() + wait_s
    pending = list(names)
    while pending:
        for d in await admin.describe_topics(pending):
            parts = d["partitions"]
            if d["error_code"] == 0 and parts and all(
                    p["error_code"] == 0 and p["leader"] >= 0 for p in parts):
                counts[d["topic"]] = len(d["partitions"])
        pending = [n for n in pending if n not in counts]
        if not pending or asyncio.get_running_loop().time() >= deadline:
            break
        await asyncio.sleep(0.2)
    return counts


async def _await_leaders(bootstrap_servers: str | list[str], partitions: Mapping[str, int],
                         client: Mapping[str, Any] | None, wait_s: float = 10.0) -> None:
    """Return once every partition of ``partitions`` (topic -> count) answers for its
    end offset, or after ``wait_s``.

    The metadata names a new partition's leader before that broker serves it:
    a producer sending then gets NotLeaderForPartition, which aiokafka logs
    and retries. A ListOffsets request to each leader is answered only once it
    does (aiokafka's consumer retries it quietly). Best effort: a client
    retries anyway, so a timeout here is not an error.
    """
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    if not partitions:
        return
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None,
                                retry_backoff_ms=20, **(client or {}))
    await consumer.start()
    try:
        await asyncio.wait_for(consumer.end_offsets(
            [TopicPartition(name, p) for name, count in partitions.items() for p in range(count)]),
            wait_s)
    except (TimeoutError, KafkaError):
        pass  # best effort (docstring)
    finally:
        await consumer.stop()


async def ensure_topics(
    bootstrap_servers: str | list[str],
    specs: Iterable[TopicSpec],
    replication_factor: int = 1,
    *,
    request_timeout_ms: int = 30000,
    client: Mapping[str, Any] | None = None,
) -> tuple[list[str], list[PartitionMismatch]]:
    """Create the missing topics of ``specs``; never alters an existing topic.

    Returns ``(created, mismatches)``: the names created by this call and the
    existing topics whose partition count differs from the spec; it returns
    once the created topics serve requests (:func:`_await_leaders`). Idempotent
    and safe to run concurrently with another creator (a topic created in
    between is treated as existing). Raises :class:`RuntimeError` for any other
    broker-side error (e.g. replication factor larger than the cluster) and
    aiokafka's connection errors if the broker is unreachable. ``client``:
    extra aiokafka client arguments (security, :func:`streams.security.client_kwargs`).
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    specs = list(specs)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=request_timeout_ms,
        **(client or {}),
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        created: list[str] = []
        if missing:
            response = await admin.create_topics(
                [NewTopic(s.name, s.partitions, replication_factor, topic_configs=s.config)
                 for s in missing]
            )
            errors = []
            for topic, code, *rest in response.topic_errors:
                if code == 0:
                    created.append(topic)
                elif code != _TOPIC_ALREADY_EXISTS:
                    message = rest[0] if rest else ""
                    errors.append(f"{topic}: error {code} {message}".strip())
            if errors:
                raise RuntimeError("could not create topics: " + "; ".join(errors))
        mismatches = []
        # The created topics too: a client that sends right after this returns
        # must find them in the metadata (else aiokafka logs "not found in
        # cluster metadata" and retries).
        counts = await partition_counts(admin, [s.name for s in specs])
        if created:
            await _await_leaders(bootstrap_servers, {n: counts[n] for n in created if n in counts},
                                 client)
        for s in specs:
            have = counts.get(s.name)
            if have is not None and have != s.partitions:
                mismatches.append(PartitionMismatch(s.name, have, s.partitions))
        return created, mismatches
    finally:
        await admin.close()
