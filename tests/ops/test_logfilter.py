"""The repeated-log-line rate limit, through real loggers and handlers."""

from __future__ import annotations

import io
import logging
import uuid

from streams.logfilter import RepeatFilter, install


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _logger() -> tuple[logging.Logger, io.StringIO, logging.Handler]:
    log = logging.getLogger(f"test.logfilter.{uuid.uuid4().hex}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.addHandler(handler)
    return log, out, handler


def test_one_line_per_cause_per_interval_then_the_count() -> None:
    log, out, handler = _logger()
    clock = Clock()
    handler.addFilter(RepeatFilter(30, clock=clock))
    for i in range(1000):
        log.error("Unable connect to node %d: %r", 1, ConnectionRefusedError(111, f"try {i}"))
    clock.t += 10
    log.error("Unable connect to node %d: %r", 1, ConnectionRefusedError(111, "late"))
    assert out.getvalue().count("\n") == 1
    clock.t += 21  # 31 s after the first line: a new window
    log.error("Unable connect to node %d: %r", 1, ConnectionRefusedError(111, "again"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("ERROR Unable connect to node 1: ConnectionRefusedError(111, 'again')")
    assert lines[1].endswith("[1000 similar lines suppressed in the last 31 s]")
    clock.t += 31  # nothing suppressed in the last window: no note
    log.error("Unable connect to node %d: %r", 1, "x")
    assert "suppressed" not in out.getvalue().splitlines()[2]


def test_causes_are_separate_and_preformatted_numbers_do_not_split_them() -> None:
    log, out, handler = _logger()
    handler.addFilter(RepeatFilter(30, clock=Clock()))
    for port in range(9000, 9100):
        log.warning(f"Connection to 127.0.0.1:{port} lost")  # formatted before logging
        log.error("Commit failed: %s", port)
    other = logging.getLogger(log.name + ".child")
    other.error("Commit failed: %s", 1)  # another logger: another cause (propagates)
    lines = out.getvalue().splitlines()
    assert lines == ["WARNING Connection to 127.0.0.1:9000 lost", "ERROR Commit failed: 9000",
                     "ERROR Commit failed: 1"]


def test_info_and_debug_are_never_limited_and_zero_disables() -> None:
    log, out, handler = _logger()
    handler.addFilter(RepeatFilter(30, clock=Clock()))
    for _ in range(5):
        log.info("progress %d", 1)
    assert out.getvalue().count("\n") == 5
    log2, out2, handler2 = _logger()
    handler2.addFilter(RepeatFilter(0, clock=Clock()))
    for _ in range(5):
        log2.error("same")
    assert out2.getvalue().count("\n") == 5


def test_one_filter_on_two_handlers_decides_once_per_record() -> None:
    log, out, handler = _logger()
    out2 = io.StringIO()
    second = logging.StreamHandler(out2)
    log.addHandler(second)
    install(30, log)
    install(30, log)  # idempotent: still one filter per handler
    assert [len(h.filters) for h in log.handlers] == [1, 1]
    for _ in range(50):
        log.error("broker down")
    assert out.getvalue().count("\n") == 1 and out2.getvalue().count("\n") == 1


def test_a_percent_in_the_note_cannot_break_formatting() -> None:
    log, out, handler = _logger()
    clock = Clock()
    handler.addFilter(RepeatFilter(1, clock=clock))
    log.error("at %s%%", 50)
    log.error("at %s%%", 50)
    clock.t += 2
    log.error("at %s%%", 60)
    assert out.getvalue().splitlines()[-1] == \
        "ERROR at 60% [1 similar lines suppressed in the last 2 s]"
