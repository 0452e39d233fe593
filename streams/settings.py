"""The one settings model of the loyalty scorer.

Every tunable of the service, the CLI and the local development broker lives in
:class:`Settings`. Values come from (highest priority first) keyword arguments,
environment variables prefixed ``LOYALTY_`` (``LOYALTY_WEB_PORT=7000``), and
the defaults below. There is deliberately no ``.env`` file support: hidden
state in a file next to the checkout is a classic source of "works on my
machine" in tests.

Guarantees:

* :func:`get_settings` returns the same instance for the life of the process
  (cached), so every module sees one consistent configuration. Tests that
  change the environment must build ``Settings()`` themselves or call
  ``get_settings.cache_clear()``.
* Construction validates everything up front and raises
  :class:`pydantic.ValidationError` naming the offending ``LOYALTY_*`` field,
  instead of failing later inside a worker.
* Relative paths are kept as given and are resolved against the current
  working directory at the point of use (the Makefile and CI always run from
  the repository root).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_KAFKA_VERSION = "3.9.1"


def _default_cache_root() -> Path:
    # Honour XDG so CI runners with a read-only or tiny $HOME can redirect it.
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) if xdg else Path.home() / ".cache"


class Settings(BaseSettings):
    """All configuration of the loyalty scorer (env prefix ``LOYALTY_``)."""

    model_config = SettingsConfigDict(
        env_prefix="LOYALTY_",
        extra="ignore",
        validate_default=True,
        frozen=True,
    )

    # --- Kafka / Faust application -------------------------------------------------
    broker: str = Field(
        "kafka://127.0.0.1:9092",
        description="Default kafka://127.0.0.1:9092. Kafka bootstrap URL (Faust syntax; several "
        "hosts separated by ';'). The local broker listens on the port of the first host.",
    )
    app_id: str = Field(
        "loyalty-scorer",
        description="Default loyalty-scorer. Faust application id: consumer group id and prefix "
        "of the changelog/repartition topics. Changing it starts from empty tables.",
    )
    data_dir: Path = Field(
        Path("./var/data"),
        description="Default ./var/data. Directory for Faust table data (RocksDB stores).",
    )
    web_host: str = Field(
        "127.0.0.1",
        description="Default 127.0.0.1. Interface the worker's HTTP API and /metrics bind to "
        "(use 0.0.0.0 in containers).",
    )
    web_port: int = Field(
        6066, ge=1, le=65535,
        description="Default 6066. Port of the worker's HTTP API and Prometheus /metrics.",
    )
    group_instance_id: str | None = Field(
        None,
        description="Default <host name>-<web port>. Static consumer-group membership "
        "(Kafka KIP-345): a worker restarted with the same id within the session timeout "
        "takes its partitions back without a rebalance. Must be unique among the workers of "
        "one app id and stable across restarts of one worker; set it to the pod or host name "
        "where the host name changes on restart. A graceful stop still leaves the group at once. "
        "Empty: no static membership (a restart after kill -9 then waits the session timeout "
        "out before joining).",
    )
    api_token: str | None = Field(
        None,
        description="Default unset. Bearer token required by the HTTP API; unset means no "
        "authentication (local development only).",
    )
    policy_file: Path | None = Field(
        None,
        description="Default unset. JSON file with per-shop scoring policy overrides "
        "(read by schemas.policy); unset means built-in policy for every shop.",
    )
    store: str = Field(
        "rocksdb://",
        description="Default rocksdb://. Faust table store URL (memory:// for tests).",
    )
    rocksdb_block_cache_mb: int = Field(
        64, ge=1,
        description="Default 64. RocksDB block cache size per table, in MiB.",
    )
    rocksdb_write_buffer_mb: int = Field(
        16, ge=1,
        description="Default 16. RocksDB write buffer (memtable) size per table, in MiB.",
    )
    partitions: int = Field(
        4, ge=1,
        description="Default 4. Partition count of every project topic and table changelog. "
        "Inputs and tables must be co-partitioned, so this is one number for all of them.",
    )
    replication_factor: int = Field(
        1, ge=1,
        description="Default 1. Replication factor of the project topics (1 for the local "
        "single-node broker; 3 in production).",
    )
    producer_compression: Literal["none", "gzip", "lz4", "zstd"] = Field(
        "none",
        description="Default none. Compression of every record the worker writes (outputs and "
        "changelogs). See README \"Performance\" for what it costs and saves.",
    )
    producer_batch_bytes: int = Field(
        524_288, ge=16_384, le=1_048_576,
        description="Default 524288 (512 KiB; at least 16384, Kafka's default, at most 1 MiB). "
        "Most bytes of one batch of records the worker writes to one topic-partition. A batch "
        "is one produce request's share for its partition, so each commit's outputs and "
        "changelog records for a partition go in one round trip instead of one per 16 KiB. "
        "Keep it at or below the broker's message.max.bytes and the topics' "
        "max.message.bytes (1 MiB by default): a batch they refuse fails the commit before "
        "anything is written, and the agent then folds those records one at a time (logged), "
        "much slower but losing nothing.",
    )

    # --- Topic names -----------------------------------------------------------------
    topic_purchases: str = Field(
        "loyalty.purchases",
        description="Default loyalty.purchases. Input: purchase and refund events.",
    )
    topic_visits: str = Field(
        "loyalty.visits", description="Default loyalty.visits. Input: visit events."
    )
    topic_feedback: str = Field(
        "loyalty.feedback", description="Default loyalty.feedback. Input: feedback/NPS events."
    )
    topic_redemptions: str = Field(
        "loyalty.redemptions",
        description="Default loyalty.redemptions. Input: reward redemption events.",
    )
    topic_forget: str = Field(
        "loyalty.forget",
        description="Default loyalty.forget. Input: erasure requests (forget commands) "
        "of `loyalty forget` and DELETE /customers/{shop}/{customer}.",
    )
    topic_transitions: str = Field(
        "loyalty.stage-transitions",
        description="Default loyalty.stage-transitions. Output: loyalty stage changes.",
    )
    topic_rewards: str = Field(
        "loyalty.rewards", description="Default loyalty.rewards. Output: rewards granted."
    )
    topic_scores: str = Field(
        "loyalty.scores",
        description="Default loyalty.scores. Output (compacted): latest snapshot per customer.",
    )
    topic_dead_letter: str = Field(
        "loyalty.dead-letter",
        description="Default loyalty.dead-letter. Output: rejected input records with the reason.",
    )
    topic_clv_params: str = Field(
        "loyalty.clv-params",
        description="Default loyalty.clv-params. Output (compacted): fitted CLV model "
        "parameters per shop, written by the periodic refit and read back by the workers.",
    )

    # --- Processing ------------------------------------------------------------------
    batch_max: int = Field(
        1_000, ge=1,
        description="Default 1000. Most records the state agent folds per batch: their outputs "
        "are acknowledged by the broker together, then their states written, one changelog "
        "record and one snapshot per customer (1 = one round trip per record). A batch is what "
        "is queued, so this bounds only a backlog's batches.",
    )
    state_cache_size: int = Field(
        100_000, ge=0,
        description="Default 100000. Most customers whose live state the agent keeps in memory "
        "between their events (least recently written dropped first), so an event that "
        "arrives in order is appended to the customer's folded history instead of decoding "
        "the state and re-folding its open buffer. Only a cache: the table stays the truth "
        "(an entry is used only while its row holds exactly the bytes it encoded to; the agent's "
        "own writes keep it so, and it reads the row again once anything else wrote the "
        "partition). "
        "state_cache_mb is what bounds it normally; this caps the count as well. Customers "
        "that come back after more than the cache holds miss it every time. 0 disables it.",
    )
    state_cache_mb: int = Field(
        160, ge=0,
        description="Default 160. MiB of memory for the state cache (state_cache_size), by "
        "the engine's estimate of each live state from its row's size: about 2 KiB plus 1.6 "
        "times the row with the native engine, 3 KiB plus 5 times the row with the Python "
        "one, within about a third of measured (a customer with a year of history weighs "
        "several times a newcomer). 160 MiB holds about 44 000 typical customers (rows of "
        "about 1.1 KiB) with the native engine and 19 000 with the Python one. Every entry of "
        "the Python engine also lengthens the periodic full garbage collection "
        "(gc_reclaim_interval_s; see README \"Performance\"). 0 disables the cache.",
    )
    head_cache_mb: int = Field(
        64, ge=0,
        description="Default 64. MiB of memory for the folded history (the head) of customers "
        "whose live state left the state cache, kept as bytes, which the garbage collector "
        "does not walk: when such a customer's next event comes, its state is decoded and given "
        "its head back instead of re-folding its open buffer. Validated like the state cache "
        "(only while the row holds exactly the bytes the head was kept for); oldest dropped "
        "first. 0 disables it. The Python engine's only: the native engine re-folds such a "
        "buffer in Rust instead.",
    )
    gc_reclaim_interval_s: float = Field(
        21_600.0, ge=0,
        description="Default 21600 (6 hours). The worker keeps the objects alive after each batch out of "
        "Python's garbage collector (gc.freeze: the live states are never walked, so no "
        "collection pause grows with the state cache) and every this many seconds runs one "
        "full collection to free the reference cycles among them (few; a pause of its own that "
        "grows with the state cache, loyalty_gc_reclaim_seconds). 0 turns this off: Python's "
        "collector as tuned at startup.",
    )
    loop_stall_report_s: float = Field(
        1.0, ge=0,
        description="Default 1. When the worker's event loop has not come back for this many "
        "seconds (something holds it: every event waits meanwhile), log one warning with "
        "what it is running, and one when it is back. loyalty_event_loop_lag_seconds "
        "measures the loop's lag either way. 0 turns the warnings off.",
    )
    batch_within_s: float = Field(
        0.02, gt=0,
        description="Default 0.02. Seconds the agent sleeps, with no record queued, before it "
        "looks again whether it must stop. It never waits to fill a batch: a batch is what is "
        "queued when the previous one is done (up to batch_max), or the first record to arrive.",
    )
    fetch_max_wait_ms: int = Field(
        10, ge=1, le=1_500,
        description="Default 10 (at most 1500, Faust's own). While records flow, milliseconds "
        "the broker may hold the worker's next fetch for fetch_min_bytes of new records: a live "
        "feed then comes in a few fetches per round of the agent instead of one fetch per round "
        "trip, each of which costs CPU in the consumer thread. A fetch that brings nothing makes "
        "the next one a long poll answered by the first record, so an idle worker fetches no "
        "more often than Faust's and a record after a quiet spell is not held; that poll lasts at "
        "most 50 ms while fetched records of partitions the worker reads still wait to be "
        "consumed (aiokafka leaves those out of the request and sends no other while it is in "
        "flight).",
    )
    fetch_min_bytes: int = Field(
        16_384, ge=1,
        description="Default 16384. While records flow, bytes of new records at which the "
        "broker answers the worker's fetch without waiting fetch_max_wait_ms (1: at once, as "
        "Faust does by itself).",
    )
    sweep_interval_s: float = Field(
        30.0, gt=0,
        description="Default 30. Seconds between sweeps that apply time-based changes "
        "(e.g. stage decay of inactive customers).",
    )
    restore_budget_s: float = Field(
        60.0, ge=0,
        description="Default 60. Seconds a recovery may spend bulk-restoring the changelogs "
        "of newly assigned partitions into RocksDB (large fetches, one write batch per fetch) "
        "before Faust's record-at-a-time recovery replays the rest; capped at 80% of Faust's "
        "broker request timeout. 0 disables the bulk restore.",
    )
    tally_flush_interval_s: float = Field(
        1.0, ge=0,
        description="Default 1. Seconds the shop tally rows changed by written customer states "
        "may be held in memory before they are written (and logged to their changelog): rows "
        "are rewritten once per interval instead of once per batch. Anything that reads a "
        "tally writes the held rows first; a crash loses at most this interval of changes "
        "from the logged rows until the sweep's first full scan after the restart recounts "
        "them. 0 writes them at every commit.",
    )
    tally_recount_interval_s: float = Field(
        3600.0, ge=0,
        description="Default 3600. Seconds between full scans of a partition by the time sweep, "
        "which recount the shop tallies exactly from the customer rows (repairing drift a crash "
        "left) and rebuild the index of due customers; in between, a sweep visits only "
        "customers whose next change is due. A partition is also fully scanned on its first "
        "sweep after every restart or rebalance. 0 scans every row on every sweep.",
    )
    max_idle_ms: int = Field(
        10000, ge=0,
        description="Default 10000. Event-time alignment of the input topics: how long, in "
        "milliseconds, an input partition with nothing received yet but records waiting in the "
        "broker may hold the others back, so that its older records go first (see Aligned "
        "input). A caught-up partition never holds anything back; the wait normally lasts one "
        "fetch, this is the bound for a fetch that is slow or stuck.",
    )
    engine: Literal["auto", "python", "native"] = Field(
        "auto",
        description="Default auto. The scoring engine (README, Engines): `native` is the fold in "
        "Rust (built by `make venv` where a Rust toolchain is), `python` the reference fold; both "
        "write the same bytes, so workers of a group may run either. `auto`: native when it is "
        "built, else python.",
    )
    state_write_format: int = Field(
        4, ge=3, le=4,
        description="Default 4. The customer-state format this worker writes (it reads 1-4). "
        "For a rolling upgrade from a build that reads at most format 3, start the new workers "
        "with 3 and switch to 4 once no older worker runs: an old worker cannot read format 4. "
        "Format 4 keeps the input positions that tell a redelivered record from a late one "
        "(see Duplicates beyond retention).",
    )
    align_max_buffered: int = Field(
        1000, ge=2,
        description="Default 1000. Records the alignment holds per input partition before it "
        "pauses fetching that partition (resumed at half); bounds the memory of a backlog.",
    )
    clv_refit_interval_s: float = Field(
        3600.0, gt=0,
        description="Default 3600. Seconds between refits of the predictive CLV models.",
    )
    clv_min_customers: int = Field(
        200, ge=1,
        description="Default 200. Minimum customers a shop needs before its CLV models are fitted.",
    )
    max_event_bytes: int = Field(
        65536, ge=256,
        description="Default 65536. Input records larger than this go to the dead-letter topic.",
    )

    # --- Local development broker (`loyalty broker ...`) ------------------------------
    kafka_version: str = Field(
        DEFAULT_KAFKA_VERSION,
        description=f"Default {DEFAULT_KAFKA_VERSION}. Apache Kafka version of the local broker "
        "(resolved from Maven Central).",
    )
    kafka_cache_dir: Path | None = Field(
        None,
        description="Default ~/.cache/loyalty-scorer/kafka-<kafka_version> ($XDG_CACHE_HOME "
        "honoured). Where the broker jars are kept, outside the repository, reused across runs.",
    )
    broker_dir: Path = Field(
        Path("./var/broker"),
        description="Default ./var/broker. Local broker state: pid file, config, logs, KRaft data.",
    )
    broker_heap: str = Field(
        "512m",
        pattern=r"^[0-9]+[kKmMgG]?$",
        description="Default 512m. JVM heap (-Xms/-Xmx) of the local broker; modest because "
        "the worker and the tests share the machine.",
    )
    broker_start_timeout_s: float = Field(
        60.0, gt=0,
        description="Default 60. Seconds `loyalty broker start` waits for the broker to answer "
        "a metadata request before killing it and failing.",
    )

    # --- Operations: health and logging ------------------------------------------------
    ready_broker_max_age_s: float = Field(
        15.0, gt=0,
        description="Default 15. /health/ready answers 503 when the worker's last successful "
        "request to the broker (a metadata and end-offsets probe every third of this, at most "
        "every 5 s) is older than this many seconds.",
    )
    shop_metrics: str = Field(
        "", description="Default empty: every shop. Comma-separated shop ids whose per-shop "
        "series the worker exports (loyalty_customers, loyalty_shop_*, loyalty_clv_model, "
        "loyalty_clv_fit_degenerate); '-' exports none. Each shop adds about 27 series per "
        "worker: with hundreds of shops, list the ones dashboards and alerts need. The other "
        "shops' figures stay in GET /shops/{shop}.",
    )
    log_repeat_interval_s: float = Field(
        30.0, ge=0,
        description="Default 30. The worker logs a repeated message (same logger, same "
        "template, e.g. a connection error during a broker outage) at most once per this "
        "many seconds, then reports how many it suppressed. 0 disables the rate limit.",
    )

    # --- Kafka security (managed Kafka: Confluent Cloud, MSK, Aiven ...) ----------------
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="Default PLAINTEXT. Kafka security protocol: PLAINTEXT, SSL, "
        "SASL_PLAINTEXT or SASL_SSL.",
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN",
        description="Default PLAIN. SASL mechanism for the SASL_* protocols: PLAIN, "
        "SCRAM-SHA-256 or SCRAM-SHA-512.",
    )
    sasl_username: str | None = Field(
        None, description="Default unset. SASL user name (required by the SASL_* protocols).",
    )
    sasl_password: SecretStr | None = Field(
        None,
        description="Default unset. SASL password (required by the SASL_* protocols); a "
        "secret: never logged or printed.",
    )
    ssl_cafile: Path | None = Field(
        None,
        description="Default unset (the system CAs). PEM file of the CAs that sign the "
        "broker certificates (SSL and SASL_SSL).",
    )
    ssl_certfile: Path | None = Field(
        None,
        description="Default unset. PEM client certificate for mutual TLS (SSL and SASL_SSL); "
        "needs LOYALTY_SSL_KEYFILE unless the key is in the same file.",
    )
    ssl_keyfile: Path | None = Field(
        None,
        description="Default unset. PEM private key of LOYALTY_SSL_CERTFILE.",
    )

    @field_validator("broker")
    @classmethod
    def _check_broker(cls, value: str) -> str:
        # Fail at startup rather than deep inside aiokafka with an opaque error.
        hosts = _split_hosts(value)
        if not hosts:
            raise ValueError("broker must name at least one host:port")
        for host in hosts:
            _parse_host_port(host)
        return value

    @field_validator("producer_compression")
    @classmethod
    def _check_codec(cls, value: str) -> str:
        # aiokafka would fail only when the producer starts, with a traceback.
        import importlib.util

        if value in ("lz4", "zstd") and importlib.util.find_spec("cramjam") is None:
            raise ValueError(f"{value} needs the cramjam package, a dependency of "
                             "loyalty-scorer: reinstall it with its dependencies")
        return value

    @field_validator("policy_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        # `LOYALTY_POLICY_FILE=` in a shell or compose file means "unset".
        return None if value == "" else value

    @model_validator(mode="after")
    def _default_cache_dir(self) -> Settings:
        if self.kafka_cache_dir is None:
            path = _default_cache_root() / "loyalty-scorer" / f"kafka-{self.kafka_version}"
            # frozen model: bypass the frozen check exactly once, during validation.
            object.__setattr__(self, "kafka_cache_dir", path)
        return self

    @field_validator("sasl_username", "ssl_cafile", "ssl_certfile", "ssl_keyfile", mode="before")
    @classmethod
    def _empty_security_is_none(cls, value: object) -> object:
        # An empty variable in a ConfigMap or compose file means "unset".
        return None if value == "" else value

    @model_validator(mode="after")
    def _check_engine(self) -> Settings:
        from scoring.native import NATIVE

        if self.engine == "native" and NATIVE is None:
            raise ValueError("LOYALTY_ENGINE=native, but this build has no native engine: build it "
                             "with `make native` (it needs a Rust toolchain) or use python")
        return self

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        # Fail at startup naming the variables, not at the first connection with
        # an opaque handshake error (see streams/security.py for the clients).
        protocol = self.security_protocol
        password = self.sasl_password.get_secret_value() if self.sasl_password else ""
        if protocol.startswith("SASL_"):
            missing = [name for name, value in (("LOYALTY_SASL_USERNAME", self.sasl_username),
                                                ("LOYALTY_SASL_PASSWORD", password))
                       if not value]
            if missing:
                raise ValueError(f"LOYALTY_SECURITY_PROTOCOL={protocol} needs "
                                 + " and ".join(missing))
        elif self.sasl_username or password:
            raise ValueError("LOYALTY_SASL_USERNAME/LOYALTY_SASL_PASSWORD are set but "
                             f"LOYALTY_SECURITY_PROTOCOL={protocol} does not use SASL "
                             "(use SASL_PLAINTEXT or SASL_SSL)")
        files = {"LOYALTY_SSL_CAFILE": self.ssl_cafile, "LOYALTY_SSL_CERTFILE": self.ssl_certfile,
                 "LOYALTY_SSL_KEYFILE": self.ssl_keyfile}
        if protocol not in ("SSL", "SASL_SSL"):
            given = [name for name, path in files.items() if path is not None]
            if given:
                raise ValueError(f"{', '.join(given)} set but LOYALTY_SECURITY_PROTOCOL="
                                 f"{protocol} does not use TLS (use SSL or SASL_SSL)")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("LOYALTY_SSL_KEYFILE needs LOYALTY_SSL_CERTFILE")
        for name, path in files.items():
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}={path}: no such file")
        return self

    @field_validator("shop_metrics")
    @classmethod
    def _shop_list(cls, value: str) -> str:
        value = value.strip()
        if value in ("", "-"):
            return value
        ids = [part.strip() for part in value.split(",")]
        if any(not part for part in ids):
            raise ValueError(f"{value!r}: an empty shop id in the list (write 'a,b', or '-' "
                             "for none)")
        return ",".join(ids)

    # --- Derived values ----------------------------------------------------------------
    @property
    def exported_shops(self) -> frozenset[str] | None:
        """The shops whose per-shop series are exported (``shop_metrics``); None: every shop."""
        if self.shop_metrics == "":
            return None
        return frozenset() if self.shop_metrics == "-" else frozenset(self.shop_metrics.split(","))

    @property
    def bootstrap_servers(self) -> list[str]:
        """``broker`` as aiokafka bootstrap servers: ``["127.0.0.1:9092", ...]``."""
        return [f"{h}:{p}" for h, p in (_parse_host_port(x) for x in _split_hosts(self.broker))]

    @property
    def broker_host(self) -> str:
        """Host of the first bootstrap server."""
        return _parse_host_port(_split_hosts(self.broker)[0])[0]

    @property
    def broker_port(self) -> int:
        """Port of the first bootstrap server; the local broker's PLAINTEXT port."""
        return _parse_host_port(_split_hosts(self.broker)[0])[1]

    @property
    def controller_port(self) -> int:
        """KRaft controller port of the local broker: always broker port + 1."""
        return self.broker_port + 1

    @property
    def kafka_jars_dir(self) -> Path:
        """Resolved jar cache directory (never None after validation)."""
        assert self.kafka_cache_dir is not None  # set by the model validator
        return self.kafka_cache_dir


def broker_addresses(url: str) -> list[tuple[str, int]]:
    """``(host, port)`` pairs of a broker URL such as ``kafka://h1:9092;h2:9092``.

    A missing port means 9092. Raises :class:`ValueError` for a bad port.
    """
    return [_parse_host_port(x) for x in _split_hosts(url)]


def _split_hosts(url: str) -> list[str]:
    # Faust accepts "kafka://h1:9092;h2:9092"; aiokafka wants "h1:9092,h2:9092".
    rest = url.split("://", 1)[1] if "://" in url else url
    return [part.strip() for part in rest.replace(",", ";").split(";") if part.strip()]


def _parse_host_port(hostport: str) -> tuple[str, int]:
    host, sep, port = hostport.rpartition(":")
    if not sep or not host:
        # Kafka's conventional default port when none is given.
        return hostport, 9092
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"invalid port in broker address {hostport!r}") from None
    if not 1 <= number <= 65534:  # 65535 would leave no room for the controller port
        raise ValueError(f"port out of range in broker address {hostport!r}")
    return host, number


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, read from the environment once.

    Raises :class:`pydantic.ValidationError` if a ``LOYALTY_*`` variable is invalid.
    """
    return Settings()
