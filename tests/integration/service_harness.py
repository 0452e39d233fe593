"""Run real ``loyalty worker`` subprocesses against the real broker, for service tests.

Each :class:`ServiceEnv` has its own app id (consumer group and changelog
prefix), topic names, data directories and web ports, so tests never share
state with each other or with concurrent runs on the same broker. Settings
reach the worker only through ``LOYALTY_*`` environment variables, exactly as
in production.

The test policy sets ``allowed_lateness_days`` to 60 and the synthetic
population spans 45 days: the fold is then independent of the order in which
the worker consumes the four input topics (Kafka orders records only within
one partition of one topic), so HTTP snapshots must equal ``replay`` of the
file whatever the interleaving, restarts or rebalances.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streams.ports import free_port
from tests.leftovers import own_topics

REPO = Path(__file__).resolve().parents[2]
LOYALTY = [sys.executable, "-m", "streams.cli"]
AS_OF = datetime(2026, 1, 1, tzinfo=UTC)
AS_OF_TEXT = "2026-01-01T00:00:00Z"
LATENESS_DAYS = 60


@dataclass
class Worker:
    """One ``loyalty worker`` subprocess."""

    env: ServiceEnv
    index: int
    port: int
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)
    #: monotonic time of the last :meth:`start`
    started_at: float = 0.0

    def __post_init__(self) -> None:
        self.log_path = self.env.tmp / f"worker-{self.index}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Worker:
        env = {**os.environ, **self.env.env, "LOYALTY_WEB_PORT": str(self.port),
               "LOYALTY_DATA_DIR": str(self.data_dir), "PYTHONUNBUFFERED": "1"}
        log = open(self.log_path, "ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen([*LOYALTY, "worker", "--loglevel", "warning"], cwd=REPO,
                                     env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    def wait_ready(self, timeout: float = 90.0) -> dict[str, Any]:
        """Wait until /health answers ready: partitions owned and recovered."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            health = self._ready_health()
            if health is not None:
                return health
            time.sleep(0.5)
        raise AssertionError(f"worker {self.index} not ready in {timeout}s; log tail:\n"
                             + self.log_tail())

    def first_event_s(self, timeout: float = 120.0,
                      idle_after: float | None = None) -> float | None:
        """Seconds from :meth:`start` until this process consumed its first input event.

        With ``idle_after``: None once the worker has been ready that long
        without consuming anything (nothing was left for it to consume).
        """
        deadline = time.monotonic() + timeout
        ready_since: float | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            if metric_sum(self, "loyalty_events_consumed_total") > 0:
                return time.monotonic() - self.started_at
            if idle_after is not None:
                if ready_since is None and self._ready_health() is not None:
                    ready_since = time.monotonic()
                if ready_since is not None and time.monotonic() - ready_since > idle_after:
                    return None
            time.sleep(0.1)
        raise AssertionError(f"worker {self.index} consumed nothing in {timeout}s; log tail:\n"
                             + self.log_tail())

    def _ready_health(self) -> dict[str, Any] | None:
        """/health if it answers ready (partitions owned and recovered), else None."""
        try:
            health = self.get_json("/health")
        except (OSError, ValueError):
            return None
        return health if health.get("owned_partitions") and health.get("ready") else None

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"worker {self.index} exited with {self.proc.returncode}:\n"
                                 + self.log_tail())

    def get(self, path: str, headers: dict[str, str] | None = None,
            timeout: float = 10.0) -> tuple[int, bytes]:
        """GET with the env's bearer token (if any) unless ``headers`` are given."""
        if headers is None:
            token = self.env.env.get("LOYALTY_API_TOKEN")
            headers = {"Authorization": f"Bearer {token}"} if token else {}
        req = urllib.request.Request(self.url + path, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def get_json(self, path: str, **kw: Any) -> Any:
        status, body = self.get(path, **kw)
        if status != 200:
            raise ValueError(f"{path}: HTTP {status} {body[:200]!r}")
        return json.loads(body)

    def stop(self, timeout: float = 60.0) -> None:
        """Graceful stop (SIGTERM), SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def kill(self) -> None:
        """kill -9: no flush, no commit, no cleanup."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def task_stacks(self, settle_s: float = 5.0) -> str:
        """The worker's asyncio tasks that are in the project's code, with their
        frames: where a worker that stopped making progress is waiting.

        Asks the worker for mode's stack dump (SIGUSR1: every thread and task,
        with locals, into the log) and condenses it. For a test's failure
        message, so that a hang seen once can be explained from the CI log.
        """
        if self.proc is None or self.proc.poll() is not None:
            return "(worker not running)"
        start = self.log_path.stat().st_size
        self.proc.send_signal(signal.SIGUSR1)
        deadline, size = time.monotonic() + settle_s, start
        while time.monotonic() < deadline:  # the dump is written in one go: wait until it stops growing
            time.sleep(0.5)
            grown = self.log_path.stat().st_size
            if grown > start and grown == size:
                break
            size = grown
        with open(self.log_path, "rb") as f:
            f.seek(start)
            dump = f.read().decode(errors="replace")
        return condense_task_dump(dump, str(REPO / "streams"))

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


class ServiceEnv:
    """Unique names, topics and directories for one test's service."""

    def __init__(self, bootstrap: str, tmp: Path, *, sweep_interval_s: float = 5.0,
                 extra_env: dict[str, str] | None = None,
                 lateness_days: int = LATENESS_DAYS) -> None:
        self.bootstrap = bootstrap
        self.tmp = tmp
        self.name = f"svc-{uuid.uuid4().hex[:10]}"
        own_topics(bootstrap, self.name)  # deleted after the test (tests/leftovers.py)
        self.policy_file = tmp / "policy.json"
        self.policy_file.write_text(json.dumps(
            {"defaults": {"allowed_lateness_days": lateness_days}}))
        n = self.name
        self.env: dict[str, str] = {
            "LOYALTY_BROKER": f"kafka://{bootstrap}",
            "LOYALTY_APP_ID": n,
            "LOYALTY_POLICY_FILE": str(self.policy_file),
            "LOYALTY_SWEEP_INTERVAL_S": str(sweep_interval_s),
            "LOYALTY_WEB_HOST": "127.0.0.1",
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
            **(extra_env or {}),
        }
        self.workers: list[Worker] = []

    def settings(self) -> Any:
        """The Settings a worker of this env sees."""
        from streams.settings import Settings

        kw = {k[len("LOYALTY_"):].lower(): v for k, v in self.env.items()}
        return Settings(**kw)

    def policies(self) -> Any:
        from schemas.policy import PolicyBook

        return PolicyBook.load(self.policy_file)

    def worker(self, index: int | None = None) -> Worker:
        """A new (not started) worker with its own data dir and port."""
        index = len(self.workers) if index is None else index
        w = Worker(self, index, free_port(), self.tmp / f"data-{index}")
        self.workers.append(w)
        return w

    def create_topics(self) -> None:
        from streams.app import all_topic_specs
        from streams.topics import ensure_topics

        asyncio.run(ensure_topics(self.bootstrap, all_topic_specs(self.settings())))

    def produce(self, records: Iterable[Any], rate: float | None = None) -> int:
        """Produce synthetic records with *their* keys (misrouted ones stay wrong)."""
        from streams.commands.produce import produce_records
        from streams.topics import input_topic_for_event_type

        s = self.settings()

        def topic(r: Any) -> str:
            try:
                return input_topic_for_event_type(s, r.event_type)
            except (ValueError, TypeError):
                return s.topic_purchases

        triples = [(topic(r), r.key, r.value) for r in records]
        return asyncio.run(produce_records(s, triples, rate=rate, show_progress=False))

    def read_topic(self, topic: str, timeout: float = 5.0) -> list[Any]:
        """Every record currently in ``topic`` (from the beginning)."""
        return self.read_topics([topic], timeout)[topic]

    def dead_letters(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Every dead letter so far, decoded (:class:`schemas.outputs.DeadLetter`)."""
        from schemas import codec

        return [codec.loads(m.value)
                for m in self.read_topic(self.settings().topic_dead_letter, timeout)]

    def read_topics(self, topics: list[str], timeout: float = 5.0) -> dict[str, list[Any]]:
        """Every record currently in each of ``topics``, read by one consumer."""
        from aiokafka import AIOKafkaConsumer

        async def read() -> dict[str, list[Any]]:
            c = AIOKafkaConsumer(*topics, bootstrap_servers=self.bootstrap,
                                 auto_offset_reset="earliest", enable_auto_commit=False,
                                 group_id=None)
            await c.start()
            out: dict[str, list[Any]] = {t: [] for t in topics}
            try:
                idle_until = time.monotonic() + timeout
                while time.monotonic() < idle_until:
                    batch = await c.getmany(timeout_ms=500)
                    for msgs in batch.values():
                        for m in msgs:
                            out[m.topic].append(m)
                        idle_until = time.monotonic() + 1.5
            finally:
                await c.stop()
            return out

        return asyncio.run(read())

    def stop_all(self) -> None:
        for w in self.workers:
            w.stop(timeout=20)


def expected_snapshots(env: ServiceEnv, records: Iterable[Any]) -> list[dict[str, Any]]:
    """``loyalty replay`` of the records' lines at :data:`AS_OF` (no CLV model)."""
    from scoring.replay import replay
    from streams import synthetic

    return replay(synthetic.lines(records), policies=env.policies(), as_of=AS_OF,
                  with_clv=False)


def served_snapshots(worker: Worker, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """HTTP snapshot per (shop, customer) at :data:`AS_OF`; ``None`` for non-200."""
    from urllib.parse import quote

    out = {}
    for shop, cust in keys:
        status, body = worker.get(f"/customers/{quote(shop)}/{quote(cust, safe='')}"
                                  f"?as_of={AS_OF_TEXT}")
        out[(shop, cust)] = json.loads(body) if status == 200 else None
    return out


def fold_and_serve(env: ServiceEnv, worker: Worker, records: list[Any]
                   ) -> tuple[list[tuple[str, str]], dict[tuple[str, str], Any]]:
    """Produce ``records``, wait until ``worker`` serves replay's snapshots of them
    (:func:`wait_equal`), and return the customers' keys and what it serves: the
    reference a restarted or rebuilt worker must serve again."""
    env.produce(records)
    expected = expected_snapshots(env, records)
    wait_equal(worker, expected)
    keys = [(s["shop_id"], s["customer_id"]) for s in expected]
    return keys, served_snapshots(worker, keys)


def mismatches(expected: list[dict[str, Any]], served: dict[tuple[str, str], Any]) -> list[str]:
    """Human-readable differences between replay and the service (empty: equal)."""
    diffs = []
    for snap in expected:
        key = (snap["shop_id"], snap["customer_id"])
        got = served.get(key)
        if got is None:
            diffs.append(f"{key}: missing")
        elif got != snap:
            fields = {k: (snap[k], got.get(k)) for k in snap if got.get(k) != snap[k]}
            diffs.append(f"{key}: {fields}")
    return diffs


def settle(worker: Worker, expected: list[dict[str, Any]], timeout: float = 120.0,
           alive: Callable[[], None] | None = None,
           poll_s: float = 1.0) -> tuple[float, list[str]]:
    """Poll until every served snapshot equals ``expected`` or ``timeout`` passes.

    A worker that is alive but not listening yet (just restarted) is polled
    again, not an error: the chaos scenarios judge right after a restart.
    Returns the seconds waited and the differences left (empty: equal).
    """
    started = time.monotonic()
    keys = [(s["shop_id"], s["customer_id"]) for s in expected]
    diffs: list[str] = []
    while time.monotonic() - started < timeout:
        worker._check_alive()
        if alive:
            alive()
        try:
            diffs = mismatches(expected, served_snapshots(worker, keys))
        except urllib.error.URLError as exc:
            if not isinstance(exc.reason, ConnectionRefusedError):
                raise
            diffs = [f"worker {worker.index} not listening yet on {worker.url}"]
        if not diffs:
            break
        time.sleep(poll_s)
    return time.monotonic() - started, diffs


def wait_equal(worker: Worker, expected: list[dict[str, Any]], timeout: float = 120.0,
               alive: Callable[[], None] | None = None) -> float:
    """Poll until every served snapshot equals ``expected``; returns seconds waited.

    On a timeout the failure names the differences, the worker's log tail, its
    /health and the stacks of its tasks in the project's code.
    """
    waited, diffs = settle(worker, expected, timeout, alive)
    if not diffs:
        return waited
    tail = worker.log_tail(30)  # before the stack dump lands in the log
    try:
        health = worker.get("/health", timeout=5.0)[1].decode(errors="replace")
    except OSError as exc:
        health = repr(exc)
    raise AssertionError(f"{len(diffs)} of {len(expected)} snapshots differ after {timeout}s, "
                         f"e.g.:\n" + "\n".join(diffs[:5]) + "\nworker log:\n" + tail
                         + f"\n/health: {health}\ntasks in streams/:\n" + worker.task_stacks())


def condense_task_dump(dump: str, code_dir: str) -> str:
    """From mode's stack dump (``mode.utils.logging.cry``), each task with a frame
    in ``code_dir``: its name and the ``File ...`` line of every frame, no locals.
    A task's frames end where mode's walk stops (at an awaitable that is not a
    coroutine, such as Faust's agent actor)."""
    out: list[str] = []
    task: list[str] = []
    dumping = False  # the task that prints the dump: its frames are the loop thread's

    def flush() -> None:
        if any(code_dir in line for line in task[1:]) and not dumping:
            out.extend(task)

    for line in dump.splitlines():
        if line.startswith("  TASK "):
            flush()
            task, dumping = [line.strip()], False
        elif task and line.startswith("   -> ") and "._cry " in line:
            dumping = True
        elif task and line.startswith('  File "'):
            task.append(line)
    flush()
    if not dump:
        return "(no dump: the worker's event loop did not run its signal handler)"
    return "\n".join(out) if out else f"(no task in {code_dir}; dump of {len(dump)} chars)"


def metric_samples(worker: Worker) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` parsed by prometheus_client: {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = worker.get("/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def ledger_fact(eff: dict[str, Any] | None) -> dict[str, Any] | None:
    """A ledger entry without its running figures: what an upsert by id must end with."""
    if eff is None:
        return None
    return {k: v for k, v in eff.items() if k not in ("balance_after", "restated")}


def offline_ledger(env: ServiceEnv, lines: Iterable[bytes]) -> dict[str, dict[str, Any]]:
    """Ledger entries of the offline fold of the same input lines, upserted by id."""
    from schemas.events import InvalidEvent, parse_event
    from scoring.fold import apply

    policies = env.policies()
    now = datetime.now(UTC)
    states: dict[Any, Any] = {}
    ledger: dict[str, dict[str, Any]] = {}
    for line in lines:
        try:
            event = parse_event(line, now=now, policies=policies)
        except InvalidEvent:
            continue
        key = (event.shop_id, event.customer_id)
        out = apply(states.get(key), event, policies.for_shop(event.shop_id))
        if out.changed:
            states[key] = out.state
        for eff in out.effects:
            if eff.get("kind") == "ledger":
                ledger[eff["id"]] = dict(eff)
    return ledger


def ledger_diffs(env: ServiceEnv, lines: Iterable[bytes]) -> tuple[int, dict[str, Any]]:
    """The rewards topic upserted by id against :func:`offline_ledger`.

    Outputs are at-least-once and may repeat after a crash, with the same id.
    A repeat may even carry another fact: an event redelivered after the
    crash can be folded in another cross-topic order than the first time, so
    its entry is computed with other events already applied, and nothing
    marks it restated (the state that knew of the first publication was
    never written). What holds is what a consumer needs: upserting by id (one
    customer's records share a key, so a partition, so their order) ends with
    exactly the ledger of the offline fold, for every entry the events cause.
    "balance_after" is a running figure of what the fold had seen, not part
    of the fact. Returns (entries of the offline ledger, differing entries).
    """
    from schemas import codec

    served: dict[str, dict[str, Any]] = {}
    for m in env.read_topic(env.settings().topic_rewards):
        eff = codec.loads(m.value)
        served[eff["id"]] = eff
    offline = offline_ledger(env, lines)
    diffs = {i: (ledger_fact(served.get(i)), ledger_fact(f)) for i, f in offline.items()
             if ledger_fact(served.get(i)) != ledger_fact(f)}
    return len(offline), diffs


def metric_sum(worker: Worker, name: str) -> float:
    """The sum of one metric's samples on ``worker``; 0 while it does not answer."""
    try:
        return sum(v for (n, _), v in metric_samples(worker).items() if n == name)
    except (OSError, ValueError, AssertionError):
        return 0.0


def shop_figures(env: ServiceEnv, worker: Worker, records: list[Any], timeout: float = 60.0
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(served, replayed)``: each shop's ``/shops`` figures (without the CLV model)
    and ``loyalty replay``'s tallies of ``records``, as of wall-clock now; polled
    until they agree or ``timeout`` passes (the funnel follows the time sweep)."""
    from scoring.clock import day_of, to_us
    from scoring.replay import fold_lines, snapshots
    from streams import synthetic

    policies = env.policies()
    deadline = time.monotonic() + timeout
    while True:
        now = datetime.now(UTC)
        res = fold_lines(synthetic.lines(records), policies=policies, as_of=now)
        _, _, tallies = snapshots(res, policies, now, with_clv=False)
        want = {shop: t.figures(shop, day_of(to_us(now)), policies.for_shop(shop))
                for shop, t in tallies.items()}
        got = {shop: worker.get_json(f"/shops/{shop}?as_of={now.isoformat()}".replace("+", "%2B"))
               for shop in want}
        # the CLV model description is checked in test_service_clv.py
        assert all("model" in g.pop("clv") for g in got.values())
        if got == want or time.monotonic() > deadline:
            return got, want
        time.sleep(2)

