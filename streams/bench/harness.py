"""Plumbing of one benchmark run: unique names, preload, worker subprocess, probes, cleanup.

Isolation: every run gets an app id ``bench-<10 hex>``; every topic it creates
(inputs, outputs, rekey, changelogs, the baseline's output) starts with that
id, and its files live under ``/tmp/bench_<id>/``. Several runs, and the test
suite, can share one broker. :meth:`BenchEnv.cleanup` deletes exactly those
topics, consumer groups and files.

The worker is the real ``loyalty worker`` started as a subprocess with
``LOYALTY_*`` environment variables only (as in production and in
``tests/integration/service_harness.py``). It runs in its own session, so a
Ctrl-C in the terminal reaches only the bench, which then stops the worker
itself (gracefully, then SIGKILL); on Linux the worker also gets SIGTERM if
the bench process dies without cleaning up (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.bench.generator import Triple
from streams.ports import free_port
from streams.settings import Settings

#: Passes of the baseline loop per run, each over the whole preloaded input;
#: the ratios use the median pass of each measure. One pass is short, so one
#: burst of other load on a shared machine moves it far (README "Performance").
BASELINE_PASSES = 3


class BenchError(RuntimeError):
    """A benchmark step failed or timed out; the message says what to do."""


def check_broker(settings: Settings) -> None:
    """Raise :class:`BenchError` with instructions if the broker does not answer.

    The bench measures a worker beside its broker (the local one): its own
    clients connect in PLAINTEXT, so a secured broker is refused by name.
    """
    from streams.broker import probe_metadata

    if settings.security_protocol != "PLAINTEXT":
        raise BenchError(
            f"it measures against a PLAINTEXT broker only (the local one, `loyalty broker "
            f"start`), and LOYALTY_SECURITY_PROTOCOL is {settings.security_protocol}: unset it")

    host, port = settings.broker_host, settings.broker_port
    for _ in range(3):  # a loaded machine can make the first request slow
        if probe_metadata(host, port, timeout=3.0) is not None:
            return
    raise BenchError(
        f"no Kafka broker answers on {host}:{port} (LOYALTY_BROKER={settings.broker}); "
        "start the local one with `loyalty broker start` and run the bench again")


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child before exec
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: die with the bench
    except Exception:  # noqa: BLE001 - not Linux / no libc: the finally still stops it
        pass


def read_proc_status(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of ``pid`` in KiB, from ``/proc/<pid>/status``."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    out[name] = int(value.split()[0])
    except OSError:
        pass
    return out


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far (``/proc/<pid>/stat``), None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def local_broker_pid(settings: Settings) -> int | None:
    """The pid of the local broker (``loyalty broker``) when ``settings`` point at it, else None.

    Only the broker of ``LOYALTY_BROKER_DIR`` answering on the configured
    bootstrap address counts (:func:`streams.broker.status`): a remote
    broker's CPU cannot be read here, and another local instance is not the
    one the bench loads.
    """
    from streams import broker

    cfg = broker.BrokerConfig.from_settings(settings)
    if cfg.bootstrap not in settings.bootstrap_servers:
        return None
    state = broker.status(cfg)
    return state.pid if state.ours else None


class CpuMeter:
    """CPU used by the worker, this process (the bench's clients) and the local broker
    over a stretch of wall clock, in cores (CPU seconds per second).

    On a shared machine these three compete for the same cores, so a phase's
    latency reads differently when the load generator takes a third of one.
    A process that is gone or unknown gives None, never an error.
    """

    def __init__(self, worker_pid: int, broker_pid: int | None) -> None:
        self.pids = {"worker": worker_pid, "broker": broker_pid}
        self.started = time.monotonic()
        self.first = self._read()

    def _read(self) -> dict[str, float | None]:
        own = os.times()
        out: dict[str, float | None] = {"bench": own.user + own.system}
        for name, pid in self.pids.items():
            out[name] = cpu_seconds(pid) if pid is not None else None
        return out

    def cores(self) -> dict[str, float | None]:
        """``{"worker", "bench", "broker"} -> cores`` since the meter was made (rounded)."""
        wall = time.monotonic() - self.started
        last = self._read()
        out: dict[str, float | None] = {}
        for name in ("worker", "bench", "broker"):
            a, b = self.first[name], last[name]
            out[name] = round((b - a) / wall, 3) if a is not None and b is not None and wall > 0 \
                else None
        return out


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {sample name: sum over label sets} (only what the bench needs)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


def batch_profile(before: str, after: str) -> dict[str, Any]:
    """The worker's batches between two ``/metrics`` scrapes (``before`` may be empty).

    ``batches`` and ``records_per_batch`` from ``loyalty_batch_records``;
    ``ms_per_batch``: for each step of ``loyalty_batch_step_seconds``, its mean
    wall time in milliseconds over the batches that took it (None: none did);
    ``cpu_us_per_record``: for each step, the agent thread's CPU in it
    (``loyalty_batch_step_cpu_seconds``) in microseconds per record of the
    batches (None: no batch); ``wall_s``: the wall seconds of every step of
    every batch, the time the agent spent on batches.
    """
    def totals(text: str) -> tuple[float, float, dict[str, float], dict[str, float],
                                   dict[str, float]]:
        m = parse_metrics(text)
        return (m.get("loyalty_batch_records_count", 0.0), m.get("loyalty_batch_records_sum", 0.0),
                parse_labelled(text, "loyalty_batch_step_seconds_sum"),
                parse_labelled(text, "loyalty_batch_step_seconds_count"),
                parse_labelled(text, "loyalty_batch_step_cpu_seconds_total"))

    def step_of(label: str) -> str:
        return label.split("=", 1)[1].strip('"')

    n0, r0, sums0, counts0, cpu0 = totals(before)
    n1, r1, sums1, counts1, cpu1 = totals(after)
    batches, records = n1 - n0, r1 - r0
    steps: dict[str, float | None] = {}
    wall_s = 0.0
    for label, total in sums1.items():
        taken = counts1.get(label, 0.0) - counts0.get(label, 0.0)
        seconds = total - sums0.get(label, 0.0)
        wall_s += seconds
        steps[step_of(label)] = round(seconds / taken * 1000, 2) if taken else None
    cpu = {step_of(label): round((total - cpu0.get(label, 0.0)) / records * 1e6, 1)
           if records else None for label, total in cpu1.items()}
    return {"batches": int(batches),
            "records_per_batch": round(records / batches, 1) if batches else None,
            "ms_per_batch": steps, "cpu_us_per_record": cpu, "wall_s": round(wall_s, 3)}


#: lateness thresholds (ms) of :func:`loop_lag_profile`: buckets of loyalty_event_loop_lag_seconds
LOOP_LAG_MS = (50, 100, 250, 500, 1000)


def loop_lag_profile(before: str, after: str) -> dict[str, Any]:
    """The worker's event-loop lag between two ``/metrics`` scrapes (``before`` may be empty).

    ``probes``: the loop watch's 0.1 s sleeps in between; ``late_ms``: how many
    of them woke up more than that many milliseconds late (``streams/loop_watch.py``).
    A burst of slow events with no late probe was not the worker's loop holding them.
    """
    metric = "loyalty_event_loop_lag_seconds"

    def counts(text: str) -> tuple[float, dict[float, float]]:
        # bucket bound (seconds) -> probes within it; bounds read as numbers, not as
        # the exporter's spelling of them ("1.0", "0.05")
        buckets = parse_labelled(text, metric + "_bucket")
        return (parse_metrics(text).get(metric + "_count", 0.0),
                {float(label.split('"')[1]): n for label, n in buckets.items()})

    n0, b0 = counts(before)
    n1, b1 = counts(after)
    late = {}
    for ms in LOOP_LAG_MS:
        within = b1.get(ms / 1000, 0.0) - b0.get(ms / 1000, 0.0)
        late[str(ms)] = int((n1 - n0) - within)
    return {"probes": int(n1 - n0), "late_ms": late}


def parse_labelled(text: str, metric: str) -> dict[str, float]:
    """Samples of one metric keyed by their label text (e.g. ``type="purchase"``)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(metric + "{"):
            labels, _, value = line[len(metric) + 1:].rpartition("} ")
            try:
                out[labels] = float(value)
            except ValueError:
                pass
    return out


@dataclass
class WorkerProc:
    """One ``loyalty worker`` subprocess and its probes."""

    env: dict[str, str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, wrapper: list[str] | None = None) -> None:
        """Launch the worker (optionally under ``wrapper``, e.g. ``py-spy record ... --``)."""
        cmd = [*(wrapper or []), sys.executable, "-m", "streams.cli", "worker",
               "--loglevel", "warning"]
        with open(self.log_path, "ab") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(cmd, cwd=self.log_path.parent, env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=_set_pdeathsig)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"the worker exited with code {self.proc.returncode}; log tail:\n"
                             + self.log_tail())

    def stop(self, timeout: float = 60.0) -> None:
        """Graceful stop (SIGTERM: flush + commit), SIGKILL if it hangs. Idempotent."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


@dataclass
class BenchEnv:
    """Names, settings and resources of one run."""

    base: Settings
    partitions: int
    keep: bool = False
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    workers: list[WorkerProc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.app_id = f"bench-{self.run_id}"
        self.tmp = Path(f"/tmp/bench_{self.run_id}")
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.tmp / "data"
        n = self.app_id
        self.env: dict[str, str] = {
            "LOYALTY_BROKER": self.base.broker,
            "LOYALTY_APP_ID": n,
            "LOYALTY_DATA_DIR": str(self.data_dir),
            "LOYALTY_WEB_HOST": "127.0.0.1",
            "LOYALTY_PARTITIONS": str(self.partitions),
            "LOYALTY_REPLICATION_FACTOR": "1",
            "LOYALTY_TOPIC_PURCHASES": f"{n}.purchases",
            "LOYALTY_TOPIC_VISITS": f"{n}.visits",
            "LOYALTY_TOPIC_FEEDBACK": f"{n}.feedback",
            "LOYALTY_TOPIC_REDEMPTIONS": f"{n}.redemptions",
            "LOYALTY_TOPIC_FORGET": f"{n}.forget",
            "LOYALTY_TOPIC_TRANSITIONS": f"{n}.stage-transitions",
            "LOYALTY_TOPIC_REWARDS": f"{n}.rewards",
            "LOYALTY_TOPIC_SCORES": f"{n}.scores",
            "LOYALTY_TOPIC_DEAD_LETTER": f"{n}.dead-letter",
            "LOYALTY_TOPIC_CLV_PARAMS": f"{n}.clv-params",
        }
        self.settings = Settings(**{k[len("LOYALTY_"):].lower(): v for k, v in self.env.items()})
        self.baseline_topic = f"{n}.baseline-out"
        self.baseline_group = f"{n}-baseline"

    def baseline_group_of(self, run: int) -> str:
        """The consumer group of the baseline loop's ``run``-th pass (each reads from the start)."""
        return f"{self.baseline_group}-{run}"

    @property
    def bootstrap(self) -> list[str]:
        return self.settings.bootstrap_servers

    @property
    def input_topics(self) -> list[str]:
        from streams.topics import input_topics

        return input_topics(self.settings)

    @property
    def changelog_topic(self) -> str:
        """Faust's changelog of the customer table: ``<app id>-<table>-changelog``."""
        from streams.topics import CUSTOMERS_TABLE

        return f"{self.app_id}-{CUSTOMERS_TABLE}-changelog"

    @property
    def rekey_topic(self) -> str:
        from streams.topics import rekey_topic_name

        return rekey_topic_name(self.settings)

    # -- topics and data ----------------------------------------------------------------
    async def broker_partitions(self) -> int:
        """Partitions the broker holds (every topic, internal ones included).

        A condition of every figure, like the machine's load: a local broker
        carrying thousands of partitions (topics that earlier runs left)
        spends CPU on them and serves every request slower.
        """
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=20000)
        await admin.start()
        try:
            topics = await admin.list_topics()
            described = await admin.describe_topics(topics) if topics else []
            return sum(len(d["partitions"]) for d in described)
        finally:
            await admin.close()

    async def create_topics(self) -> None:
        """All project topics of this run plus the baseline output, with P partitions."""
        from streams.topics import TopicSpec, all_topic_specs, ensure_topics

        specs = all_topic_specs(self.settings)
        specs.append(TopicSpec(self.baseline_topic, self.partitions, False, "output",
                               "bench", "bench", "baseline loop output"))
        _, mismatches = await ensure_topics(self.bootstrap, specs)
        if mismatches:
            raise BenchError("; ".join(str(m) for m in mismatches))
        # Wait for partition leaders, so the preload does not start with a burst of
        # NotLeaderForPartition retries (noise on stderr, and a slower first second).
        from aiokafka.admin import AIOKafkaAdminClient

        from streams.topics import partition_counts

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await partition_counts(admin, [s.name for s in specs], wait_s=30)
        finally:
            await admin.close()

    async def preload(self, stream: Iterable[Triple], *, compression: str | None = None,
                      ) -> int:
        """Produce ``stream`` to the input topics (routed by type); returns the count."""
        from streams.topics import input_topic_for_event_type

        topic_of = {t: input_topic_for_event_type(self.settings, t)
                    for t in ("purchase", "refund", "visit", "feedback", "redemption")}
        return await self.produce(
            ((topic_of.get(typ, self.settings.topic_purchases), key or None, value, None)
             for typ, key, value in stream), compression=compression)

    async def produce(self, records: Iterable[tuple[str, bytes | None, bytes, int | None]],
                      *, compression: str | None = None) -> int:
        """Produce ``(topic, key, value, partition or None)`` records; returns the count.

        Batching (linger 20 ms, 256 KiB batches) and many un-awaited sends keep
        it fast; every record is acknowledged (acks=all) before return.
        """
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all",
                                    linger_ms=20, max_batch_size=256 * 1024,
                                    compression_type=compression)
        await producer.start()
        n = 0
        pending: list[Any] = []
        try:
            for topic, key, value, partition in records:
                pending.append(await producer.send(topic, value, key=key, partition=partition))
                n += 1
                if len(pending) >= 20000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
        finally:
            await producer.stop()
        return n

    # -- broker probes ------------------------------------------------------------------
    async def end_offsets(self, topics: list[str]) -> dict[Any, int]:
        """End offset of every partition of ``topics``."""
        from aiokafka import AIOKafkaConsumer

        c = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await c.start()
        try:
            tps = [tp for t in topics for tp in await topic_partitions(c, t)]
            return dict(await c.end_offsets(tps)) if tps else {}
        finally:
            await c.stop()

    async def committed(self, admin: Any, group: str) -> dict[Any, int]:
        """Committed offsets of consumer group ``group`` (empty before its first commit)."""
        got = await admin.list_consumer_group_offsets(group)
        return {tp: om.offset for tp, om in got.items() if om.offset >= 0}

    # -- worker -------------------------------------------------------------------------
    def new_worker(self, name: str) -> WorkerProc:
        """A worker (not started) on a free port with this run's settings."""
        port = free_port()
        env = {**os.environ, **self.env, "LOYALTY_WEB_PORT": str(port),
               "PYTHONUNBUFFERED": "1"}
        w = WorkerProc(env=env, port=port, log_path=self.tmp / f"worker-{name}.log")
        self.workers.append(w)
        return w

    def stop_workers(self) -> None:
        for w in self.workers:
            w.stop(timeout=30)

    def wipe_data(self) -> None:
        """Delete the worker's local table stores (rebuilt from the changelogs)."""
        shutil.rmtree(self.data_dir, ignore_errors=True)

    # -- cleanup ------------------------------------------------------------------------
    async def cleanup_broker(self) -> list[str]:
        """Delete this run's topics and consumer groups (best effort); returns topics deleted."""
        from aiokafka.admin import AIOKafkaAdminClient

        from streams.compat import delete_consumer_group

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=20000)
        await admin.start()
        try:
            mine = sorted(t for t in await admin.list_topics() if t.startswith(self.app_id))
            if mine:
                await admin.delete_topics(mine)
            groups = [self.baseline_group_of(i) for i in range(BASELINE_PASSES)]
            for group in (self.app_id, *groups):
                try:
                    await delete_consumer_group(admin, group)
                except Exception:  # noqa: BLE001 - an empty group expires on its own
                    pass
            return mine
        finally:
            await admin.close()

    def cleanup_files(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


async def topic_partitions(consumer: Any, topic: str, wait_s: float = 10.0) -> list[Any]:
    """Partitions of ``topic`` as seen by ``consumer`` (refreshing metadata until known).

    A consumer that never subscribed to the topic has no metadata for it yet.
    """
    from aiokafka import TopicPartition

    from streams.compat import refresh_topic_metadata

    deadline = time.monotonic() + wait_s
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
        if time.monotonic() > deadline:
            raise BenchError(f"topic {topic!r} has no partitions in the broker metadata")
        await refresh_topic_metadata(consumer, topic)
        await asyncio.sleep(0.1)


async def http_get(session: Any, url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """``(status, body)``; ``(0, b"")`` when nothing answers (worker starting or busy)."""
    import aiohttp

    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            return resp.status, await resp.read()
    except (TimeoutError, aiohttp.ClientError, OSError):
        return 0, b""
