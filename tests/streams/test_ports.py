"""Ports for servers we start: below the ephemeral range, free, consecutive, never twice."""

from __future__ import annotations

import socket

import pytest

from streams import ports


def test_ports_lie_below_the_ephemeral_range_and_are_bindable() -> None:
    floor = ports._ephemeral_floor()
    for _ in range(20):
        first = ports.free_ports(2)
        assert 10_000 <= first and first + 1 < floor
        for port in (first, first + 1):
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))  # raises if taken


def test_a_process_never_gets_the_same_port_twice() -> None:
    got = [ports.free_ports(2) for _ in range(200)]
    numbers = [p for first in got for p in (first, first + 1)]
    assert len(numbers) == len(set(numbers))


def test_a_listening_port_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    # The block lies below the ephemeral range, so no client connection of a
    # parallel test can take its other ports (a kernel-chosen ``bind(0)`` port's
    # neighbours can be, and were, taken: the test then ran out of picks).
    first = ports.free_ports(4)
    busy = first + 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", busy))
        taken.listen()
        picks = iter([first, busy, busy + 1])  # the first two runs touch ``busy``
        monkeypatch.setattr(ports._rng, "randrange", lambda lo, hi: next(picks))
        monkeypatch.setattr(ports, "_given", set())
        assert ports.free_ports(2) == busy + 1


def test_without_room_below_the_range_the_kernel_chooses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "_ephemeral_floor", lambda: 10_001)
    port = ports.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
