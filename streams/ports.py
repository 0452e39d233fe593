"""Free TCP ports for the brokers, workers and benches this project starts.

A port the kernel hands out for ``bind(0)`` lies in the ephemeral range, the
range outgoing connections take their local port from: between choosing it
and the server binding it, any client on the machine may take it (a Kafka
client in a parallel test run did, and a broker could not start). These
ports are chosen below that range, where only listeners live, and never twice
in one process.

Guarantee: every port returned was bindable on 127.0.0.1 when checked. A
listener started elsewhere in the meantime can still take it; callers that
start a server report that case themselves (``loyalty broker`` does).
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOWEST = 10_000  # below: well-known and registered services
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_given: set[int] = set()
# Not the global generator: a test that seeds it would give two test processes
# the same sequence of ports.
_rng = random.SystemRandom()


def _ephemeral_floor() -> int:
    """The first port of the ephemeral range (Linux's default when unknown)."""
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int = 1) -> int:
    """The first of ``count`` consecutive free ports (a broker needs two)."""
    top = _ephemeral_floor() - count
    for _ in range(200):
        first = _rng.randrange(_LOWEST, top) if top > _LOWEST else _kernel_port()
        run = range(first, first + count)
        if any(p in _given for p in run) or not all(_bindable(p) for p in run):
            continue
        _given.update(run)
        return first
    raise RuntimeError(f"no {count} consecutive free TCP ports found on 127.0.0.1")


def free_port() -> int:
    """One free port (see :func:`free_ports`)."""
    return free_ports(1)


def _kernel_port() -> int:
    # Only when the ephemeral range starts so low that nothing lies below it.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
