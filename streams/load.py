"""How busy the agent has been lately: the share of recent wall time it spent on batches.

The time sweep reads it to give way to a busy agent (:mod:`streams.sweep`):
background work that takes a fixed share of the CPU queues the events of an
agent that needs nearly all of it.
"""

from __future__ import annotations

import math
import time


class BusyShare:
    """The share of the last ``window_s`` seconds spent busy, decayed exponentially.

    :meth:`add` reports one busy interval when it ends; :meth:`share` is the
    busy time of the past, each second weighted ``exp(-age / window_s)``,
    divided by ``window_s``: a task busy all the time converges to 1.0, an
    idle one decays to 0.0 (to ``1/e`` of its value per window). Times are
    ``time.perf_counter()`` seconds unless given; never raises, cheap enough
    to call per batch.
    """

    __slots__ = ("window_s", "_busy", "_at")

    def __init__(self, window_s: float = 1.0) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.window_s = window_s
        self._busy = 0.0  # decayed busy seconds as of ``_at``
        self._at = 0.0

    def add(self, started: float, ended: float) -> None:
        """Count ``[started, ended]`` as busy (intervals reported in order, not overlapping)."""
        busy = max(0.0, ended - started)
        # The interval counts as one lump at its end: exact enough for a
        # window much longer than a batch.
        self._busy = self._decayed(ended) + busy
        self._at = max(self._at, ended)

    def share(self, now: float | None = None) -> float:
        """The busy share as of ``now`` (default: now), between 0.0 and about 1.0."""
        return self._decayed(time.perf_counter() if now is None else now) / self.window_s

    def _decayed(self, now: float) -> float:
        age = now - self._at
        return self._busy * math.exp(-age / self.window_s) if age > 0 else self._busy
