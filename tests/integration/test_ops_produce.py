"""``loyalty produce`` through the real CLI: routing counts, --skip, outages, messages.

The outage test runs a private broker, stops it while a produce runs and
starts it again: within the delivery timeout every line arrives exactly once;
with a short delivery timeout the command names the first line not
acknowledged, and a second run with ``--skip`` completes the file such that
the topics hold every line at least once and the acknowledged prefix exactly
once.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.private_broker import PrivateBroker, running_broker
from tests.integration.service_harness import REPO, ServiceEnv

CLI = [sys.executable, "-m", "streams.cli", "produce"]
TYPES = ("purchase", "visit", "feedback", "redemption", "refund")


def _write(path: Path, n: int, tag: str) -> list[bytes]:
    """``n`` unique lines (the service would reject them; routing only needs the ids)."""
    lines = [json.dumps({"type": TYPES[i % len(TYPES)], "shop_id": "shop-a",
                         "customer_id": f"c{i % 37}", "event_id": f"{tag}-{i}"}).encode()
             for i in range(n)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return lines


def _expected_counts(env: ServiceEnv, lines: list[bytes]) -> dict[str, int]:
    from streams.commands.produce import route

    s = env.settings()
    return dict(collections.Counter(route(line, s)[0] for line in lines))


def _run(env: ServiceEnv, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**os.environ, **env.env, "PYTHONUNBUFFERED": "1"})


def _start(env: ServiceEnv, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO,
                            env={**os.environ, **env.env, "PYTHONUNBUFFERED": "1"})


def _stdout_counts(out: str) -> dict[str, int]:
    return {t: int(c) for t, c in (line.split("\t") for line in out.splitlines() if "\t" in line)}


def _in_topics(env: ServiceEnv, topics: list[str]) -> collections.Counter[bytes]:
    """Every record value in ``topics``, read up to their end offsets (one consumer)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def read() -> collections.Counter[bytes]:
        c = AIOKafkaConsumer(bootstrap_servers=env.bootstrap, group_id=None,
                             enable_auto_commit=False)
        await c.start()
        got: collections.Counter[bytes] = collections.Counter()
        try:
            n = env.settings().partitions  # every project topic has this many
            tps = [TopicPartition(t, p) for t in topics for p in range(n)]
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            end = await c.end_offsets(tps)
            deadline = time.monotonic() + 30
            async def behind() -> bool:
                return any([await c.position(tp) < end[tp] for tp in tps])

            while await behind():
                assert time.monotonic() < deadline, "topics not read to their end in 30 s"
                for msgs in (await c.getmany(timeout_ms=500)).values():
                    got.update(m.value for m in msgs)
        finally:
            await c.stop()
        return got

    return asyncio.run(read())


def _topics(env: ServiceEnv) -> list[str]:
    s = env.settings()
    return [s.topic_purchases, s.topic_visits, s.topic_feedback, s.topic_redemptions]


@pytest.mark.timeout(120)
def test_counts_skip_and_messages(bootstrap: str, tmp_path: Path) -> None:
    env = ServiceEnv(bootstrap, tmp_path)
    env.create_topics()
    lines = _write(tmp_path / "events.jsonl", 200, "a")
    done = _run(env, str(tmp_path / "events.jsonl"), "--quiet")
    assert done.returncode == 0, done.stderr
    assert _stdout_counts(done.stdout) == _expected_counts(env, lines)
    assert "Traceback" not in done.stderr

    # --skip 150: only the last 50 lines, once more.
    done = _run(env, str(tmp_path / "events.jsonl"), "--quiet", "--skip", "150")
    assert done.returncode == 0, done.stderr
    assert _stdout_counts(done.stdout) == _expected_counts(env, lines[150:])
    got = _in_topics(env, _topics(env))
    assert got == collections.Counter(lines) + collections.Counter(lines[150:])

    missing = _run(env, str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 1
    assert missing.stderr.strip() == (f"loyalty produce: cannot read {tmp_path / 'nope.jsonl'}: "
                                      "No such file or directory")
    down = subprocess.run([*CLI, str(tmp_path / "events.jsonl"), "--quiet"], text=True,
                          capture_output=True, timeout=60, cwd=REPO,
                          env={**os.environ, "LOYALTY_BROKER": "kafka://127.0.0.1:1"})
    assert down.returncode == 1
    assert "cannot reach the broker at kafka://127.0.0.1:1" in down.stderr
    assert "nothing was sent" in down.stderr and "Traceback" not in down.stderr


def _stop_after(broker: PrivateBroker, proc: subprocess.Popen[str], seconds: float,
                then_start: bool) -> threading.Thread:
    def act() -> None:
        time.sleep(seconds)
        if proc.poll() is None:
            broker.stop()
            if then_start:
                broker.start()

    t = threading.Thread(target=act, daemon=True)
    t.start()
    return t


@pytest.fixture(scope="module")
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    """One private broker for the outage tests (a start costs 15-30 s); each test
    leaves it running and uses its own topics (ServiceEnv names)."""
    with running_broker(tmp_path_factory.mktemp("broker")) as broker:
        yield broker


def _produce_through_outage(broker: PrivateBroker, tmp_path: Path, tag: str,
                            delivery_timeout: float, restart: bool,
                            ) -> tuple[ServiceEnv, list[bytes], subprocess.Popen[str], str, str]:
    """Produce 1500 lines at 300/s and stop the broker 1.5 s in (restart it if asked)."""
    broker.start()  # a no-op when running; restarts it if an earlier test left it stopped
    env = ServiceEnv(broker.bootstrap, tmp_path)
    env.create_topics()
    lines = _write(tmp_path / "events.jsonl", 1500, tag)
    proc = _start(env, str(tmp_path / "events.jsonl"), "--quiet", "--rate", "300",
                  "--delivery-timeout", str(delivery_timeout))
    actor = _stop_after(broker, proc, 1.5, then_start=restart)
    out, err = proc.communicate(timeout=150)
    actor.join(60)
    assert "Traceback" not in err
    return env, lines, proc, out, err


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_an_outage_within_the_delivery_timeout_loses_and_duplicates_nothing(
        private_broker: PrivateBroker, tmp_path: Path) -> None:
    env, lines, proc, out, err = _produce_through_outage(private_broker, tmp_path, "first",
                                                         90, restart=True)
    assert proc.returncode == 0, err
    assert _stdout_counts(out) == _expected_counts(env, lines)
    assert _in_topics(env, _topics(env)) == collections.Counter(lines)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_longer_outage_names_the_first_line_and_skip_resumes(
        private_broker: PrivateBroker, tmp_path: Path) -> None:
    env, lines, proc, out, err = _produce_through_outage(private_broker, tmp_path, "second",
                                                         3, restart=False)
    assert proc.returncode == 1, err
    found = re.search(r"line (\d+) was not acknowledged", err)
    assert found, err
    line = int(found.group(1))
    assert 1 < line <= len(lines), err
    assert f"resume with --skip {line - 1}" in err
    # The counts on stdout are those of the acknowledged prefix.
    assert _stdout_counts(out) == _expected_counts(env, lines[:line - 1])

    private_broker.start()
    resumed = _run(env, str(tmp_path / "events.jsonl"), "--quiet", "--skip", str(line - 1))
    assert resumed.returncode == 0, resumed.stderr
    got = _in_topics(env, _topics(env))
    assert set(got) == set(lines)  # every line at least once ...
    assert all(got[v] == 1 for v in lines[:line - 1])  # ... the prefix exactly once
