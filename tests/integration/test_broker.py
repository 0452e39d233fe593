"""The local broker: real round trip on the shared broker, lifecycle on a private one.

Lifecycle tests run a SECOND broker (own free port pair, own --dir under
tmp_path, shared jar cache) through the real CLI, so the shared broker other
tests use is never touched.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.bench.harness import local_broker_pid
from streams.broker import BrokerConfig, probe_metadata
from streams.ports import free_ports
from streams.settings import Settings

CLI = [sys.executable, "-m", "streams.cli"]


@pytest.mark.timeout(120)
async def test_produce_and_consume_one_message(bootstrap: str, create_topic, unique_name) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = create_topic(partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, b'{"hello": 1}', key=b"shop|cust")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=unique_name("g"),
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        batch = {}
        for _ in range(4):  # a fetch can return empty while the group joins
            batch = await consumer.getmany(timeout_ms=15000, max_records=1)
            if batch:
                break
    finally:
        await consumer.stop()
    records = [r for rs in batch.values() for r in rs]
    assert [(r.key, r.value, r.partition) for r in records] == [
        (b"shop|cust", b'{"hello": 1}', meta.partition)]


def _java_processes_for(properties: Path) -> list[int]:
    """Pids of JVMs whose command line names this broker's server.properties."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and "kafka.Kafka" in cmd and str(properties) in cmd:
            pids.append(int(entry.name))
    return pids


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.fixture
def second_broker(tmp_path: Path) -> Iterator[tuple[list[str], BrokerConfig]]:
    """CLI flags and config of a private broker; stopped (by pid file) at teardown."""
    port = free_ports(2)
    directory = tmp_path / "broker2"
    flags = ["--port", str(port), "--dir", str(directory)]
    yield flags, BrokerConfig.from_settings(Settings(), port=port, directory=directory)
    _cli("broker", "stop", *flags)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_second_broker_start_twice_then_stop(second_broker) -> None:
    flags, cfg = second_broker
    assert _cli("broker", "status", *flags).returncode == 3

    first = _cli("broker", "start", *flags)
    assert first.returncode == 0, first.stderr
    assert "broker up on" in first.stdout
    assert probe_metadata(cfg.host, cfg.port) is not None

    second = _cli("broker", "start", *flags)
    assert second.returncode == 0, second.stderr
    assert "already running" in second.stdout
    pids = _java_processes_for(cfg.properties_path)
    assert len(pids) == 1, pids
    assert cfg.pid_path.read_text().strip() == str(pids[0])

    status = _cli("broker", "status", *flags)
    assert status.returncode == 0 and status.stdout.startswith("up:"), status.stdout

    # The bench reads this broker's CPU only when its settings point at it.
    here = Settings(broker=f"kafka://{cfg.bootstrap}", broker_dir=cfg.dir)
    assert local_broker_pid(here) == pids[0]
    for other in (f"127.0.0.1:{cfg.port + 7}", f"kafka.example:{cfg.port}"):
        assert local_broker_pid(Settings(broker=f"kafka://{other}", broker_dir=cfg.dir)) is None

    logs = _cli("broker", "logs", "-n", "5", *flags)
    assert logs.returncode == 0 and len(logs.stdout.splitlines()) == 5

    stop = _cli("broker", "stop", *flags)
    assert stop.returncode == 0, stop.stderr
    assert f"broker pid {pids[0]} stopped" in stop.stdout
    assert _java_processes_for(cfg.properties_path) == []
    assert not cfg.pid_path.exists()
    assert _cli("broker", "status", *flags).returncode == 3

    # A stale pid file naming a live process that is not the broker (this test
    # process) must be discarded, never signalled.
    cfg.pid_path.write_text(f"{os.getpid()}\n")
    again = _cli("broker", "stop", *flags)
    assert again.returncode == 0 and "no broker running" in again.stdout
    assert "stale pid file" in again.stderr
    assert not cfg.pid_path.exists()


@pytest.mark.timeout(120)
def test_start_refuses_a_port_taken_by_something_else(tmp_path: Path) -> None:
    port = free_ports(2)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        result = _cli("broker", "start", "--port", str(port), "--dir", str(tmp_path / "b"))
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "already in use" in result.stderr
    assert _java_processes_for(tmp_path / "b" / "server.properties") == []


@pytest.mark.timeout(120)
def test_start_timeout_kills_what_it_started(tmp_path: Path) -> None:
    port = free_ports(2)
    directory = tmp_path / "b"
    result = _cli("broker", "start", "--port", str(port), "--dir", str(directory),
                  "--timeout", "0.05")
    assert result.returncode == 1
    assert "did not answer a metadata request" in result.stderr
    assert "last" in result.stderr  # the log excerpt is shown
    assert _java_processes_for(directory.resolve() / "server.properties") == []
    assert not (directory / "broker.pid").exists()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_private_broker_whose_port_was_taken_first_takes_another(tmp_path: Path) -> None:
    from tests.integration.private_broker import PrivateBroker

    broker = PrivateBroker(tmp_path / "b")
    chosen = broker.port
    try:
        with socket.socket() as squatter:  # taken between choosing and starting
            squatter.bind(("127.0.0.1", chosen))
            squatter.listen()
            broker.start()
        assert broker.port != chosen
        assert probe_metadata("127.0.0.1", broker.port) is not None
    finally:
        broker.stop()
