"""A private Kafka broker for outage tests: started and stopped through the real CLI.

Its own free port pair and directory (under the test's tmp dir), the shared
jar cache; the shared broker other tests use is never touched. Stopping it
signals only the pid in its own pid file (``loyalty broker stop``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from streams.ports import free_ports

CLI = [sys.executable, "-m", "streams.cli"]


class PrivateBroker:
    """``loyalty broker start/stop --port P --dir D`` for one test."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.started = False
        self._choose_port()

    def _choose_port(self) -> None:
        self.port = free_ports(2)
        self.flags = ["--port", str(self.port), "--dir", str(self.dir)]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, "broker", *args, *self.flags], capture_output=True,
                              text=True, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def start(self, attempts: int = 3) -> None:
        """Start (or restart on the same data); raises with the CLI's output on failure.

        A restart right after a stop can find the controller port not yet
        released by the kernel ("Address already in use"): it is retried. A
        first start whose port was taken since it was chosen takes another.
        """
        for attempt in range(attempts):
            done = self._cli("start")
            if done.returncode == 0:
                self.started = True
                return
            if "already in use" not in done.stdout + done.stderr or attempt == attempts - 1:
                break
            if self.started:
                time.sleep(2.0)
            else:
                self._choose_port()
        raise AssertionError(f"private broker did not start:\n{done.stdout}{done.stderr}")

    def stop(self) -> None:
        """Graceful stop; idempotent."""
        self._cli("stop", timeout=60)


@contextmanager
def running_broker(directory: Path) -> Iterator[PrivateBroker]:
    """A started :class:`PrivateBroker`, stopped on exit whatever happened."""
    broker = PrivateBroker(directory)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
