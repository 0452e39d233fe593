"""Rate limit for repeated log lines (a broker outage must not flood the log).

During a broker outage aiokafka and Faust log the same connection error for
every request they retry: thousands of ERROR lines per second. The
:class:`RepeatFilter` lets the first record of each *cause* through per
interval and drops the rest; the first record of the cause after the interval
carries the count of what was suppressed, e.g.
``Unable connect to node ... [1234 similar lines suppressed in the last 30 s]``.

A cause is ``(logger name, level, message template)``. The template is the
record's unformatted ``msg``; digits in it are ignored, so messages that were
formatted before logging (ports, node ids, offsets in the text) still count
as one cause. Only WARNING and above are limited: info and debug lines are
never dropped.

Guarantees: thread-safe; one instance may sit on several handlers (the
decision is made once per record, so every handler shows the same lines);
suppressed lines are counted, never silently lost: the count appears on the
next line of the same cause (not on a timer, so a cause that stops recurring
reports nothing more).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

_DIGITS = re.compile(r"\d+")
_DECIDED = "_loyalty_repeat_filter"


class RepeatFilter(logging.Filter):
    """Pass one record per cause per ``interval_s``; then report the suppressed count."""

    def __init__(self, interval_s: float, *, clock: Callable[[], float] = time.monotonic,
                 min_level: int = logging.WARNING, max_causes: int = 10_000) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.min_level = min_level
        self._clock = clock
        self._max_causes = max_causes
        self._lock = threading.Lock()
        # cause -> [start of its current window, records suppressed in it]
        self._windows: dict[tuple[str, int, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        decided = getattr(record, _DECIDED, None)
        if decided is not None:  # already seen by this filter on another handler
            return bool(decided)
        keep = self._decide(record)
        setattr(record, _DECIDED, keep)
        return keep

    def _decide(self, record: logging.LogRecord) -> bool:
        if self.interval_s <= 0 or record.levelno < self.min_level:
            return True
        cause = (record.name, record.levelno, _DIGITS.sub("#", str(record.msg))[:300])
        now = self._clock()
        with self._lock:
            window = self._windows.get(cause)
            if window is None:
                if len(self._windows) >= self._max_causes:
                    self._windows.clear()  # bound memory for unbounded distinct messages
                self._windows[cause] = [now, 0]
                return True
            start, suppressed = window
            if now - start < self.interval_s:
                window[1] = suppressed + 1
                return False
            window[0], window[1] = now, 0
        if suppressed:
            # Appended to the template, so a '%' in it must be escaped when args follow.
            note = (f" [{int(suppressed)} similar lines suppressed in the last "
                    f"{now - start:.0f} s]")
            record.msg = f"{record.msg}{note.replace('%', '%%') if record.args else note}"
        return True


def install(interval_s: float, logger: logging.Logger | None = None) -> RepeatFilter:
    """Put one :class:`RepeatFilter` on every handler of ``logger`` (default: root).

    Handlers see the records propagated from every child logger (aiokafka,
    Faust), which a filter on the logger itself would not. Call it again after
    something replaced the handlers; a handler never gets two of these filters.
    """
    logger = logger or logging.getLogger()
    flt = RepeatFilter(interval_s)
    for handler in logger.handlers:
        for old in [f for f in handler.filters if isinstance(f, RepeatFilter)]:
            handler.removeFilter(old)
        handler.addFilter(flt)
    return flt
