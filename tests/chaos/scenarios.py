"""The chaos scenarios: real workers against a real broker, judged by ``loyalty replay``.

Each scenario builds its own :class:`tests.integration.service_harness.ServiceEnv`
(unique topics, group and data dirs), produces a synthetic stream while it
hurts the service, and then compares, for every customer, the served
snapshot with ``replay`` of the same input, and the rewards topic upserted
by id with the offline fold's ledger. It returns an :class:`Outcome` (the
figures of its one-line report); it never raises for a mismatch, so every
scenario runs and reports.

A :class:`Profile` sets the sizes: ``FULL`` (``make chaos``) and ``SHORT``
(CI, ``tests/chaos/test_chaos.py``).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas import codec
from streams import synthetic
from tests.chaos.poison import catalogue, interleave
from tests.integration.service_harness import (
    AS_OF,
    LATENESS_DAYS,
    ServiceEnv,
    Worker,
    expected_snapshots,
    ledger_diffs,
    metric_sum,
    settle,
)


@dataclass(frozen=True)
class Profile:
    name: str
    kills: int  # kill -9s of the worker while the stream is produced
    churn_cycles: int  # two workers: graceful stop + kill -9 per cycle
    backlog_kills: int  # kill -9s while a backlog is folded
    broker_bounces: tuple[str, ...]  # "stop" (clean) and/or "kill" (kill -9)
    customers_per_shop: int
    #: two workers on a history import: kill -9s, each waited out until the other
    #: worker owns every partition (takes the dead one's over mid-backlog)
    takeover_kills: int = 0
    settle_timeout_s: float = 240.0
    #: scenarios the profile leaves out
    skip: frozenset[str] = frozenset()


FULL = Profile("full", kills=20, churn_cycles=4, backlog_kills=4,
               broker_bounces=("stop", "kill"), customers_per_shop=120, takeover_kills=3)
# CI: fewer kills and a smaller stream; no broker bounce (a private broker's
# JVM start and stop are most of that scenario's minute or two; the worker
# through a private broker's outage is also in tests/integration/test_ops_health.py);
# no takeover (one is tests/integration/test_aligned_input.py's backlog with a kill).
SHORT = Profile("short", kills=3, churn_cycles=1, backlog_kills=1,
                broker_bounces=("kill",), customers_per_shop=40,
                skip=frozenset({"broker", "takeover"}))


@dataclass
class Outcome:
    """What one scenario did and found."""

    name: str
    records: int = 0
    kills: int = 0
    restarts: int = 0
    customers: int = 0
    customers_equal: int = 0
    ledger: int = 0
    ledger_equal: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    #: per restart: seconds from process start to its first consumed event
    first_event_s: list[float] = field(default_factory=list)
    #: seconds from the last disruption (restart, bounce, end of input) to all equal
    catch_up_s: float | None = None
    #: events the last worker life consumed until all equal, per second
    catch_up_rate: float | None = None
    #: redelivered records found already applied (exact duplicates), summed over the
    #: lives (sampled just before each kill): what the crashes made the worker re-fold
    refolded: float = 0.0
    #: of those, the ones told by their input offset, their event ids forgotten
    recognised: float = 0.0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    #: a scenario's own figure for its line
    note: str = ""

    @property
    def ok(self) -> bool:
        return (not self.problems and self.customers > 0
                and self.customers_equal == self.customers and self.ledger_equal == self.ledger)

    def line(self) -> str:
        """The scenario's one-line report."""
        parts = [f"{self.name:<10} {'PASS' if self.ok else 'FAIL'}",
                 f"records={self.records}", f"kills={self.kills}", f"restarts={self.restarts}",
                 f"customers equal={self.customers_equal}/{self.customers}",
                 f"ledger equal={self.ledger_equal}/{self.ledger}"]
        if self.first_event_s:
            fe = sorted(self.first_event_s)
            parts.append(f"start->first event median={fe[len(fe) // 2]:.1f}s max={fe[-1]:.1f}s")
        if self.kills:
            parts.append(f"re-folded={self.refolded:.0f} ({self.recognised:.0f} by offset)")
        if self.catch_up_s is not None:
            rate = f" ({self.catch_up_rate:.0f} ev/s)" if self.catch_up_rate else ""
            parts.append(f"catch-up={self.catch_up_s:.1f}s{rate}")
        if self.dead_letters:
            parts.append("dead letters: " + ",".join(
                f"{r}={n}" for r, n in sorted(self.dead_letters.items())))
        if self.note:
            parts.append(self.note)
        parts.append(f"took {self.seconds:.0f}s")
        if self.problems:
            parts.append("PROBLEMS: " + "; ".join(self.problems))
        return " | ".join(parts)


# -- shared steps ----------------------------------------------------------------------
def _stream(profile: Profile, seed: int) -> list[synthetic.SyntheticRecord]:
    return synthetic.generate(seed=seed, customers_per_shop=profile.customers_per_shop,
                              lateness_days=LATENESS_DAYS, end=AS_OF)


class _Producer:
    """Produces records in a thread, chunk by chunk; a failed chunk is sent again
    (at-least-once, as a real producer retrying: repeats are exact duplicates)."""

    def __init__(self, env: ServiceEnv, records: Sequence[Any], rate: float | None,
                 chunk: int = 200) -> None:
        self.env, self.records, self.rate, self.chunk = env, records, rate, chunk
        self.errors: list[BaseException] = []
        self.retries = 0
        self.finished_at: float | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            for start in range(0, len(self.records), self.chunk):
                part = self.records[start:start + self.chunk]
                for attempt in range(60):
                    try:
                        self.env.produce(part, rate=self.rate)
                        break
                    except Exception:  # noqa: BLE001 - broker down: retry the chunk
                        if attempt == 59:
                            raise
                        self.retries += 1
                        time.sleep(1.0)
            self.finished_at = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 - reported by the scenario
            self.errors.append(exc)

    def __enter__(self) -> _Producer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.thread.join(600)

    @property
    def running(self) -> bool:
        return self.thread.is_alive()


def _kill(worker: Worker, out: Outcome) -> None:
    """kill -9, after noting how many redelivered duplicates this life re-folded."""
    _count_refolded(worker, out)
    worker.kill()
    out.kills += 1


def _count_refolded(worker: Worker, out: Outcome) -> None:
    out.refolded += metric_sum(worker, "loyalty_duplicates_ignored_total")
    out.recognised += metric_sum(worker, "loyalty_redeliveries_recognised_total")


def _restart(worker: Worker, out: Outcome, *, measure: bool = True) -> None:
    worker.start()
    out.restarts += 1
    if measure:
        # None: ready for 10 s and nothing left to consume (no figure then).
        first = worker.first_event_s(idle_after=10.0)
        if first is not None:
            out.first_event_s.append(first)


def _slices(records: Sequence[Any], n: int) -> list[Sequence[Any]]:
    """``records`` cut into ``n`` consecutive slices (the stream of one life each)."""
    size = -(-len(records) // n)
    return [records[i:i + size] for i in range(0, len(records), size)]


def _judge(env: ServiceEnv, worker: Worker, lines: list[bytes], out: Outcome,
           profile: Profile, since: float | None = None) -> None:
    """Compare with replay: every customer's snapshot (after settling) and the ledger."""
    from scoring.replay import replay

    expected = replay(lines, policies=env.policies(), as_of=AS_OF, with_clv=False)
    waited, diffs = settle(worker, expected, profile.settle_timeout_s, poll_s=0.5)
    if since is not None:
        out.catch_up_s = time.monotonic() - since
        consumed = metric_sum(worker, "loyalty_events_consumed_total")
        life = time.monotonic() - worker.started_at
        out.catch_up_rate = consumed / life if consumed and life > 0 else None
    if out.kills:
        _count_refolded(worker, out)
    out.customers = len(expected)
    out.customers_equal = len(expected) - len(diffs)
    out.examples.extend(diffs[:3])
    out.ledger, ldiffs = ledger_diffs(env, lines)
    out.ledger_equal = out.ledger - len(ldiffs)
    out.examples.extend(f"ledger {i}: {d}" for i, d in list(ldiffs.items())[:3])
    out.dead_letters = Counter(d["reason"] for d in env.dead_letters())
    if out.dead_letters.get("internal_error"):
        out.problems.append(f"{out.dead_letters['internal_error']} internal_error dead letters")
    if worker.proc is None or worker.proc.poll() is not None:
        out.problems.append("worker died")


@contextmanager
def _scenario(name: str, bootstrap: str, tmp: Path,
              **env_kw: Any) -> Iterator[tuple[ServiceEnv, Outcome]]:
    out = Outcome(name)
    started = time.monotonic()
    env = ServiceEnv(bootstrap, tmp, **env_kw)
    try:
        yield env, out
    except AssertionError as exc:
        out.problems.append(str(exc).splitlines()[0][:300])
    finally:
        env.stop_all()
        out.seconds = time.monotonic() - started


# -- the scenarios ---------------------------------------------------------------------
def kills(bootstrap: str, tmp: Path, profile: Profile) -> Outcome:
    """kill -9 the worker ``profile.kills`` times while the stream is produced.

    The stream is produced in slices, one per life, so every life has input
    to fold when it is killed, however long a restart takes.
    """
    rnd = random.Random(31)
    records = _stream(profile, seed=31)
    with _scenario("kills", bootstrap, tmp, sweep_interval_s=2.0) as (env, out):
        out.records = len(records)
        env.create_topics()
        w = env.worker().start()
        w.wait_ready()
        # Each life restarts while its slice is produced, folds some, is killed.
        for i, part in enumerate(_slices(records, profile.kills + 1)):
            with _Producer(env, part, rate=len(part) / 3.0) as producer:
                if i:
                    _restart(w, out)
                else:
                    w.first_event_s()
                if i < profile.kills:
                    time.sleep(rnd.uniform(0.5, 2.5))  # mid-slice, or just after it
                    _kill(w, out)
                    if not (w.data_dir / env.name / ".running").exists():
                        out.problems.append("no unclean-stop marker after kill -9")
            if producer.errors:
                out.problems.append(f"producer: {producer.errors[0]!r}")
        _judge(env, w, synthetic.lines(records), out, profile, since=w.started_at)
    return out


def churn(bootstrap: str, tmp: Path, profile: Profile) -> Outcome:
    """Two workers; per cycle one stops gracefully and comes back, the other is killed -9
    and comes back, each while a slice of the stream is produced."""
    records = _stream(profile, seed=41)
    with _scenario("churn", bootstrap, tmp) as (env, out):
        out.records = len(records)
        env.create_topics()
        a, b = env.worker().start(), env.worker().start()
        a.wait_ready()
        b.wait_ready()
        # Per cycle: b stops gracefully, a is killed; each comes back while the
        # next slice is produced.
        down: Worker | None = None
        for i, part in enumerate(_slices(records, 2 * profile.churn_cycles + 1)):
            with _Producer(env, part, rate=100.0):
                if down is not None:
                    _restart(down, out)
                    down = None
                if i == 2 * profile.churn_cycles:
                    break
                time.sleep(1.5)
                if i % 2 == 0:
                    b.stop()
                    if b.proc is not None and b.proc.returncode != 0:
                        out.problems.append(f"graceful stop exited {b.proc.returncode}")
                    down = b
                else:
                    _kill(a, out)
                    down = a
        _judge(env, a, synthetic.lines(records), out, profile, since=a.started_at)
        _, diffs = settle(b, expected_snapshots(env, records), 30.0)
        if diffs:  # the other worker serves (and routes) the same answers
            out.problems.append(f"worker b: {len(diffs)} snapshots differ, e.g. {diffs[0]}")
    return out


def broker(bootstrap: str, tmp: Path, profile: Profile) -> Outcome:
    """A private broker stopped cleanly and/or killed -9 while the stream is produced."""
    from tests.integration.private_broker import running_broker

    records = _stream(profile, seed=61)
    with running_broker(tmp / "broker") as kafka, \
            _scenario("broker", kafka.bootstrap, tmp) as (env, out):
        out.records = len(records)
        env.create_topics()
        w = env.worker().start()
        w.wait_ready()
        rate = len(records) / (25.0 * len(profile.broker_bounces))
        last = time.monotonic()
        with _Producer(env, records, rate=rate, chunk=100):
            for how in profile.broker_bounces:
                time.sleep(6.0)
                if how == "stop":
                    kafka.stop()
                else:
                    pid = int((kafka.dir / "broker.pid").read_text().strip())
                    os.kill(pid, signal.SIGKILL)
                    _wait_gone(pid)
                out.kills += how == "kill"
                time.sleep(4.0)
                kafka.start()
                last = time.monotonic()
                if w.proc is not None and w.proc.poll() is not None:
                    _restart(w, out, measure=False)  # a worker may give up: it is restarted
        _judge(env, w, synthetic.lines(records), out, profile, since=last)
    return out


def _wait_gone(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def backlog(bootstrap: str, tmp: Path, profile: Profile) -> Outcome:
    """The whole stream is waiting before the worker starts; it is killed while folding it."""
    records = _stream(profile, seed=71)
    with _scenario("backlog", bootstrap, tmp) as (env, out):
        out.records = len(records)
        env.create_topics()
        env.produce(records)
        w = env.worker().start()
        out.first_event_s.append(w.first_event_s())
        for _ in range(profile.backlog_kills):
            time.sleep(1.5)
            _kill(w, out)
            _restart(w, out)
        _judge(env, w, synthetic.lines(records), out, profile, since=w.started_at)
    return out


#: takeover: the production lateness over a year of events, so that the order in
#: which the workers fold matters (the other scenarios' stream spans less than
#: the harness' forgiving lateness: any order gives replay's result)
TAKEOVER_LATENESS_DAYS = 7
TAKEOVER_SPAN_DAYS = 400.0


def takeover(bootstrap: str, tmp: Path, profile: Profile) -> Outcome:
    """A history import waits in Kafka; two workers fold it; one at a time is killed -9
    and restarted only once the other owns every partition, so partitions change
    hands mid-backlog. With the production lateness, a record folded out of its
    event-time order shows as a customer unequal to replay or a missing ``too_late``.

    The ``too_late`` dead letters must be exactly the records replay rejects so.
    Records a killed worker had folded are redelivered to the survivor, often
    behind more of the customer's events than its remembered ids cover; the
    positions kept with the states (streams/positions.py) must tell them from
    late input (README "Duplicates beyond retention").
    """
    from scoring.replay import fold_lines

    records = synthetic.generate(seed=81, shops=5,
                                 customers_per_shop=profile.customers_per_shop * 5 // 2,
                                 span_days=TAKEOVER_SPAN_DAYS,
                                 lateness_days=TAKEOVER_LATENESS_DAYS, end=AS_OF)
    with _scenario("takeover", bootstrap, tmp, lateness_days=TAKEOVER_LATENESS_DAYS,
                   sweep_interval_s=2.0) as (env, out):
        out.records = len(records)
        env.create_topics()
        env.produce(records)
        workers = [env.worker().start(), env.worker().start()]
        out.first_event_s.append(workers[0].first_event_s())
        for i in range(profile.takeover_kills):
            time.sleep(1.0)
            down, up = workers[i % 2], workers[(i + 1) % 2]
            _kill(down, out)
            _wait_owner_of_all(env, up)  # the dead member's session ends: a takeover
            _restart(down, out, measure=False)
        lines = synthetic.lines(records)
        _judge(env, workers[0], lines, out, profile, since=workers[0].started_at)
        replay_late: set[bytes] = set()

        def on_reject(_lineno: int, line: bytes, reason: str, _detail: str) -> None:
            if reason == "too_late":
                replay_late.add(line)

        fold_lines(lines, policies=env.policies(), as_of=AS_OF, on_reject=on_reject)
        served_late = _too_late_values(env)
        missing, extra = replay_late - served_late, served_late - replay_late
        _count_refolded(workers[1], out)  # _judge counted workers[0]'s last life
        out.note = f"too_late: {len(replay_late & served_late)} as replay"
        if extra:
            out.problems.append(f"{len(extra)} records dead-lettered as too_late that replay "
                                "applies (redelivered records taken for late ones)")
        if missing:
            out.problems.append(f"{len(missing)} records replay rejects as too_late were not "
                                "dead-lettered so")
    return out


def _wait_owner_of_all(env: ServiceEnv, worker: Worker, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            owned = worker.get_json("/health").get("owned_partitions") or []
        except (OSError, ValueError):
            owned = []
        if len(owned) == env.settings().partitions:
            return
        time.sleep(0.2)
    raise AssertionError(f"worker {worker.index} did not take every partition in {timeout}s")


def _too_late_values(env: ServiceEnv) -> set[bytes]:
    """The input records dead-lettered ``too_late`` (their values; a crash may repeat a letter)."""
    return {_letter_value(d) for d in env.dead_letters() if d["reason"] == "too_late"}


def duplicates(bootstrap: str, tmp: Path, profile: Profile) -> Outcome:
    """10 % of the stream re-sent late, after the rest (a producer retrying, a replay)."""
    records = _stream(profile, seed=81)
    rnd = random.Random(81)
    again = rnd.sample(records, len(records) // 10)
    with _scenario("duplicates", bootstrap, tmp) as (env, out):
        sent = records + again
        out.records = len(sent)
        env.create_topics()
        w = env.worker().start()
        w.wait_ready()
        env.produce(records)
        env.produce(again)
        _judge(env, w, synthetic.lines(sent), out, profile, since=time.monotonic())
        # Reported, not judged (replay is the judge): re-sent invalid records are
        # dead-lettered again, not counted as duplicates.
        out.note = (f"{metric_sum(w, 'loyalty_duplicates_ignored_total'):.0f} of {len(again)} "
                    "re-sent ignored as exact duplicates")
    return out




def poison(bootstrap: str, tmp: Path, profile: Profile) -> Outcome:
    """Every poison kind interleaved with valid events: each dead-lettered with its reason
    and source coordinates; the worker keeps serving, and its HTTP API keeps its contract."""
    from streams.topics import input_topic_for_event_type

    valid = _stream(profile, seed=51)
    kinds = catalogue(synthetic.SHOP_NAMES[0], AS_OF)
    records = interleave(valid, kinds)
    # the catalogue's kinds and the synthetic stream's own invalid records
    expected = [(p.kind, p.value, p.reason, p.event_type) for p in kinds] + [
        (r.kind, r.value, r.reason, r.event_type) for r in valid if r.is_invalid]
    with _scenario("poison", bootstrap, tmp,
                   extra_env={"LOYALTY_API_TOKEN": "s3cret-token"}) as (env, out):
        out.records = len(records)
        env.create_topics()
        w = env.worker().start()
        w.wait_ready()
        env.produce(records)
        _judge(env, w, synthetic.lines(records), out, profile, since=time.monotonic())
        all_letters = env.dead_letters()
        letters = {_letter_value(d): d for d in all_letters}
        # Besides the expected ones only the stream's rejections may be dead-lettered.
        others = sum(1 for d in all_letters
                     if d["reason"] not in ("conflicting_duplicate", "too_late"))
        if others != len(expected):
            out.problems.append(f"{others} invalid-record dead letters for {len(expected)} "
                                "invalid records")
        wrong = []
        for kind, value, reason, event_type in expected:
            d = letters.get(value)
            try:
                topic = input_topic_for_event_type(env.settings(), event_type)
            except (ValueError, TypeError):
                topic = env.settings().topic_purchases
            if d is None or d["reason"] != reason or d["topic"] != topic or not d["detail"] \
                    or not isinstance(d["partition"], int) or not isinstance(d["offset"], int):
                wrong.append(f"{kind}: {d and (d['reason'], d['topic'])} (want {reason})")
        if wrong:
            out.problems.append(f"{len(wrong)} of {len(expected)} poison records wrong: "
                                f"{wrong[:3]}")
        if not any(d["value_encoding"] == "base64" for d in letters.values()):
            out.problems.append("no base64 dead letter for the non-UTF-8 record")
        cust = next(codec.loads(r.value)["customer_id"] for r in valid if r.kind == "valid")
        out.problems.extend(_http_contract(w, synthetic.SHOP_NAMES[0], cust))
        out.note = (f"{len(kinds)} poison kinds + {len(expected) - len(kinds)} synthetic "
                    f"invalid records, {len(expected) - len(wrong)} with their reason")
    return out


def _http_contract(w: Worker, shop: str, cust: str) -> list[str]:
    """After the poison the worker still serves: clean 4xx answers for bad or
    unauthorised requests. Returns what failed."""
    path = f"/customers/{shop}/{cust}"
    checks = {
        "authorised": (w.get(path)[0], (200,)),
        "no token": (w.get(path, headers={})[0], (401,)),
        "wrong token": (w.get(path, headers={"Authorization": "Bearer wrong"})[0], (401,)),
        "shops without token": (w.get(f"/shops/{shop}", headers={})[0], (401,)),
        "as_of not a time": (w.get(path + "?as_of=yesterday")[0], (400,)),
        "as_of of 300 digits": (w.get(path + "?as_of=" + "9" * 300)[0], (400,)),
        "as_of in 2000": (w.get(path + "?as_of=2000-01-01T00:00:00Z")[0], (200, 400)),
        "unknown customer": (w.get(f"/customers/{shop}/nobody-here")[0], (404,)),
        "shop id too long": (w.get(f"/customers/{'x' * 65}/{cust}")[0], (400,)),
        "/metrics": (w.get("/metrics")[0], (200,)),
    }
    failed = [f"{name}: HTTP {got}" for name, (got, want) in checks.items() if got not in want]
    if w.get_json("/health")["status"] != "ok":
        failed.append("/health not ok")
    if codec.loads(w.get(path)[1])["customer_id"] != cust:
        failed.append("wrong customer served")
    return failed


def _letter_value(letter: dict[str, Any]) -> bytes:
    import base64

    if letter["value_encoding"] == "base64":
        return base64.b64decode(letter["value"])
    return str(letter["value"]).encode()


SCENARIOS: dict[str, Callable[[str, Path, Profile], Outcome]] = {
    "kills": kills, "churn": churn, "broker": broker, "backlog": backlog,
    "takeover": takeover, "duplicates": duplicates, "poison": poison,
}
