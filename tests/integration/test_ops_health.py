"""Health endpoints of a real worker through a real broker outage (private broker).

The worker runs against a private broker which the test stops and starts
again: /health/ready must turn 503 within the configured broker age (plus
one probe interval), /health/live must stay 200, the worker's log must not
flood during the outage (the repeat filter), and readiness must come back
after the broker does. Before the outage, the worker's stack dump on SIGUSR1
(the harness's failure explanation uses it) and that SIGUSR2 leaves it running.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.private_broker import PrivateBroker, running_broker
from tests.integration.service_harness import ServiceEnv

MAX_AGE_S = 4.0  # LOYALTY_READY_BROKER_MAX_AGE_S: probe every 4/3 s
REPEAT_S = 5.0  # LOYALTY_LOG_REPEAT_INTERVAL_S


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    with running_broker(tmp_path / "broker") as broker:
        yield broker


def _wait_status(worker, path: str, status: int, timeout: float) -> tuple[float, dict]:
    started = time.monotonic()
    last: tuple[int, bytes] = (0, b"")
    while time.monotonic() - started < timeout:
        worker._check_alive()
        try:
            last = worker.get(path, timeout=2)
        except OSError:
            last = (0, b"")
        if last[0] == status:
            return time.monotonic() - started, json.loads(last[1])
        time.sleep(0.2)
    raise AssertionError(f"{path} not {status} within {timeout}s (last {last}); log:\n"
                         + worker.log_tail(30))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ready_follows_the_broker_and_the_log_does_not_flood(private_broker, tmp_path) -> None:
    env = ServiceEnv(private_broker.bootstrap, tmp_path, extra_env={
        "LOYALTY_READY_BROKER_MAX_AGE_S": str(MAX_AGE_S),
        "LOYALTY_LOG_REPEAT_INTERVAL_S": str(REPEAT_S)})
    env.create_topics()
    worker = env.worker().start()
    try:
        worker.wait_ready()
        _, ready = _wait_status(worker, "/health/ready", 200, 30)
        assert ready["ready"] is True and ready["reason"] is None
        assert all(c["ok"] for c in ready["checks"].values())
        assert worker.get("/health/live")[0] == 200

        # kill -USR1: stacks into the log, and the worker goes on; SIGUSR2 is ignored.
        stacks = worker.task_stacks()
        assert "streams/health.py" in stacks, stacks  # the broker probe, between probes
        worker.proc.send_signal(signal.SIGUSR2)
        _wait_status(worker, "/health/ready", 200, 10)
        assert "SIGUSR2 ignored" in worker.log_tail(5)

        log_before = worker.log_path.stat().st_size
        private_broker.stop()
        stopped = time.monotonic()
        # The broker's last answer came at most one probe interval before the stop.
        waited, body = _wait_status(worker, "/health/ready", 503, MAX_AGE_S + 10)
        assert waited <= MAX_AGE_S + 2.5, waited
        assert body["ready"] is False and body["checks"]["broker"]["ok"] is False
        assert "no successful broker request" in body["reason"]
        summary = worker.get_json("/health")  # the summary still answers 200
        assert summary["ready"] is False and summary["reason"] == body["reason"]
        assert worker.get("/health/live")[0] == 200

        # Stay down for more than two repeat intervals, then count the log lines.
        time.sleep(max(0.0, 2.5 * REPEAT_S - (time.monotonic() - stopped)))
        outage_s = time.monotonic() - stopped
        with open(worker.log_path, "rb") as fh:
            fh.seek(log_before)
            outage_log = fh.read().decode(errors="replace").splitlines()
        # Without the filter this is thousands of lines per second; with it, each
        # cause logs about once per interval (a few dozen causes at most).
        assert len(outage_log) < 40 * (outage_s / REPEAT_S + 1), (
            len(outage_log), "\n".join(outage_log[-20:]))
        assert any("similar lines suppressed" in line for line in outage_log), \
            "\n".join(outage_log[-20:])

        private_broker.start()
        back, body = _wait_status(worker, "/health/ready", 200, 60)
        assert body["ready"] is True
    finally:
        env.stop_all()
