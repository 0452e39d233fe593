"""The worker's garbage-collector policy: live customer states are not walked by it.

Why: CPython's cyclic collector decides when to run from a count of
allocations minus deallocations of the objects it tracks. The agent replaces
every state it folds, so each batch frees old objects (the states' previous
versions) about as fast as it allocates young ones. The count stays low while
the youngest generation keeps every state written since the last collection,
and a young collection then walks all of them: pauses that grow with the
state cache and with the time between collections (README "Performance").
Customer states hold no reference cycles; reference counting frees them, so
the collector only has to look at what a batch allocated.

The policy, applied by :class:`Collector`:

* at startup (:meth:`Collector.install`): :func:`scoring.replay.tune_gc`
  (everything the imports made is frozen; collections are rare);
* after every batch the agent processed (:meth:`Collector.batch_done`):
  ``gc.freeze()``, which moves every tracked object into the collector's
  permanent generation in constant time, so a collection only ever walks
  what was allocated since the last batch;
* every ``gc_reclaim_interval_s`` (:meth:`Collector.reclaim`, a timer):
  ``gc.unfreeze()``, one full collection, freeze again. A reference cycle
  that became garbage after its objects were frozen (an exception's
  traceback, a finished task; rare) is freed there, so memory only
  the collector can free is bounded by one interval's worth. That one
  collection walks every live object: its pause grows with the state cache
  (``loyalty_gc_reclaim_seconds``).

Guarantees: nothing computed changes, only when cyclic garbage is freed. With
``gc_reclaim_interval_s`` 0 the policy is off: no freezing after batches and no
reclaim, Python's collector as tuned at startup.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import TYPE_CHECKING

from scoring.replay import tune_gc
from streams.metrics import Metrics

if TYPE_CHECKING:
    import faust

    from streams.agent import Processor

log = logging.getLogger(__name__)


class Collector:
    """Runs the policy of the module docstring for one worker process."""

    def __init__(self, metrics: Metrics, reclaim_interval_s: float) -> None:
        self.metrics = metrics
        #: 0: the policy is off (:meth:`batch_done` and :meth:`reclaim` do nothing)
        self.reclaim_interval_s = reclaim_interval_s

    @property
    def enabled(self) -> bool:
        return self.reclaim_interval_s > 0

    def install(self, app: faust.App, processor: Processor) -> None:
        """Apply the policy to this process, ``processor``'s batches and ``app``'s timers.

        Once per worker process, before the app runs: it changes the whole
        process's collector (tests that build apps in-process do not call it).
        """
        tune_gc()
        if not self.enabled:
            return
        processor.after_batch = self.batch_done

        async def loyalty_gc_reclaim() -> None:
            self.reclaim()

        app.timer(interval=self.reclaim_interval_s, on_leader=False,
                  name="loyalty-gc-reclaim")(loyalty_gc_reclaim)

    def batch_done(self) -> None:
        """A batch is processed: what it left alive is never walked again before a reclaim."""
        if self.enabled:
            gc.freeze()

    def reclaim(self) -> int:
        """Free the cyclic garbage among frozen objects; returns how many objects were freed.

        Blocks the event loop for one full collection. Never raises.
        """
        if not self.enabled:
            return 0
        started = time.perf_counter()
        try:
            gc.unfreeze()
            freed = gc.collect()
        except Exception:  # noqa: BLE001 - memory hygiene must never stop the worker
            log.exception("garbage collector: reclaim failed")
            freed = 0
        finally:
            gc.freeze()
        seconds = time.perf_counter() - started
        self.metrics.gc_reclaim_seconds.observe(seconds)
        self.metrics.gc_reclaimed_objects.inc(freed)
        log.info("garbage collector: reclaimed %d objects in %.3f s", freed, seconds)
        return freed
