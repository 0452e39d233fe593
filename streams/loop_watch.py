"""How late the worker's event loop runs, and where it was stuck when it ran very late.

Why: the agent, the time sweep, the web views and Faust's consumer share one
event loop; whatever holds it (a long slice of work, a blocking call) delays
every event queued meanwhile. The end-to-end latency shows *that* something
stalled (``loyalty bench`` groups its slow events into bursts); this shows
whether the worker's loop was the cause, and what it was running.

:class:`LoopWatch`, installed once per worker process:

* a task sleeps ``PROBE_INTERVAL_S`` at a time and records how much later
  than asked it woke up (``loyalty_event_loop_lag_seconds``): the wait an
  event arriving at that moment had before the loop could look at it;
* a watchdog thread looks at the task's last wake-up; when the loop has not
  come back for ``stall_report_s``, it logs one warning per stall with the
  loop thread's Python stack at that moment, and the stall's length when it
  ends. Blocking inside a C call that holds the GIL is reported when the
  call returns (the thread cannot run before), with the stack then.

Guarantees: nothing the worker computes changes; the task never raises into
the loop; the thread only reads the loop thread's frames. With
``stall_report_s`` 0 there is no thread (the lag histogram stays).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING

from streams.metrics import Metrics

if TYPE_CHECKING:
    import faust

log = logging.getLogger(__name__)

#: seconds the probe task sleeps between measurements: its own cost stays
#: negligible (ten wake-ups a second) and a stall shorter than this can go unseen
PROBE_INTERVAL_S = 0.1


class LoopWatch:
    """Measures the event loop's lag and reports stalls (module docstring)."""

    def __init__(self, metrics: Metrics, stall_report_s: float) -> None:
        self.metrics = metrics
        #: 0: no watchdog thread, no stall warnings
        self.stall_report_s = stall_report_s
        self._beat = time.monotonic()  # the probe's last wake-up
        self._loop_thread: int | None = None
        self._stop = threading.Event()

    def install(self, app: faust.App) -> None:
        """Run the probe as a task of ``app`` (and the watchdog with it). Once per process."""

        @app.task
        async def loyalty_loop_watch() -> None:
            await self.probe()

    async def probe(self) -> None:
        """Measure until cancelled; starts the watchdog thread first (if enabled)."""
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        if self.stall_report_s > 0:
            threading.Thread(target=self._watch, name="loyalty-loop-watch",
                             daemon=True).start()
        try:
            while True:
                asked = time.monotonic() + PROBE_INTERVAL_S
                await asyncio.sleep(PROBE_INTERVAL_S)
                now = time.monotonic()
                self._beat = now
                self.metrics.loop_lag.observe(max(0.0, now - asked))
        finally:
            self._stop.set()

    def _watch(self) -> None:
        """The watchdog thread: one warning per stall longer than ``stall_report_s``."""
        reported_beat: float | None = None
        while not self._stop.wait(min(0.05, self.stall_report_s / 4)):
            beat = self._beat
            stuck_for = time.monotonic() - beat
            if reported_beat is not None and beat != reported_beat:
                log.warning("event loop: back after %.3f s", beat - reported_beat)
                reported_beat = None
            if reported_beat is None and stuck_for >= self.stall_report_s + PROBE_INTERVAL_S:
                reported_beat = beat
                log.warning("event loop: no turn for %.3f s; it is running:\n%s",
                            stuck_for, self._loop_stack())

    def _loop_stack(self) -> str:
        frame = sys._current_frames().get(self._loop_thread or 0)
        if frame is None:
            return "  (the loop thread has no Python frame)"
        return "".join(traceback.format_stack(frame, limit=25))
