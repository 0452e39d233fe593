"""Faust's per-record settings lookups resolved once (streams.compat.hot_path), on a real app.

No broker: the producer buffer's queue is filled directly, and Faust's flush
is recorded instead of sending (it is the only thing Faust's wait does).
"""

from __future__ import annotations

import asyncio

import faust

from streams.compat.hot_path import resolve_hot_settings


def _app() -> faust.App:
    return faust.App("compat-hot-path-test", broker="kafka://127.0.0.1:1")


def test_waits_through_faust_exactly_when_the_producer_buffer_is_over_its_limit() -> None:
    app = _app()
    buffer = app.producer.buffer
    flushed: list[int] = []

    async def flush_atmost(n: int) -> int:
        flushed.append(n)
        return 0

    buffer.flush_atmost = flush_atmost  # what Faust's wait_until_ebb awaits when full
    faust_wait = buffer.wait_until_ebb
    resolve_hot_settings(app)
    assert buffer.wait_until_ebb != faust_wait

    async def main() -> list[tuple[int, bool, int]]:
        seen = []
        for size in (0, 1, buffer.max_messages, buffer.max_messages + 1, buffer.max_messages + 5):
            while buffer.pending.qsize() < size:
                buffer.pending.put_nowait(object())
            before = len(flushed)
            await buffer.wait_until_ebb()
            seen.append((size, buffer.size > buffer.max_messages, len(flushed) - before))
        return seen

    for size, faust_says_full, flushes in asyncio.run(main()):
        assert flushes == (1 if faust_says_full else 0), size
    assert flushed == [buffer.max_messages, buffer.max_messages]


def test_a_threaded_producer_keeps_faust_s_check() -> None:
    app = _app()
    app.conf.producer_threaded = True
    faust_wait = app.producer.buffer.wait_until_ebb
    resolve_hot_settings(app)
    assert app.producer.buffer.wait_until_ebb == faust_wait


def test_events_are_built_as_faust_builds_them() -> None:
    app = _app()
    message = faust.types.Message("t", 0, 7, 0.0, 0, [], b"k", b"v", None, None)
    before = app.create_event(b"k", b"v", [], message)
    resolve_hot_settings(app)
    after = app.create_event(b"k", b"v", [], message)
    assert type(after) is type(before) is app.conf.Event
    assert (after.app, after.key, after.value, after.headers, after.message) == (
        before.app, before.key, before.value, before.headers, before.message)
