"""Batches of what is queued (streams.compat.batches) on a real Faust stream.

The stream reads an in-memory Faust channel (the app is never started, so no
broker is involved); ``within`` is 5 s everywhere, so a batch that waited for
it would show in the elapsed times.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from streams.compat.batches import take_batches

WITHIN_S = 5.0


async def run_stream(feed: Callable[[Any], Awaitable[None]], take: int,
                     on_batch: Callable[[list[Any]], Awaitable[None]] | None = None
                     ) -> tuple[list[tuple[list[int], float]], Any]:
    """Feed a fresh stream with ``feed(channel)`` and take batches of at most
    ``take`` until 10 values came; returns ``[(values, seconds since start)]``."""
    app = faust.App("unit-compat-batches", store="memory://")
    app.flow_control.resume()
    stream = app.stream(app.channel())
    got: list[tuple[list[int], float]] = []
    async with stream:
        feeder = asyncio.ensure_future(feed(stream.channel))
        started = time.monotonic()
        batches = take_batches(stream, take, WITHIN_S)
        async for batch in batches:
            got.append(([e.value for e in batch], time.monotonic() - started))
            if on_batch is not None:
                await on_batch(batch)
            if sum(len(values) for values, _ in got) >= 10:
                break
        await batches.aclose()
        await feeder
    return got, stream


async def test_queued_records_go_at_once_in_batches_of_at_most_max() -> None:
    async def feed(channel: Any) -> None:
        for i in range(10):
            await channel.send(value=i)

    got, stream = await run_stream(feed, take=4)
    assert [values for values, _ in got] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    # The last batch is not full and went without waiting for more.
    assert got[-1][1] < 1.0
    # The stream is as it was: acks back on, the batch processor gone.
    assert stream.enable_acks is True and stream._processors == []


async def test_a_lone_record_goes_without_lingering() -> None:
    async def feed(channel: Any) -> None:
        await asyncio.sleep(0.3)
        await channel.send(value=0)
        await asyncio.sleep(0.3)
        for i in range(1, 10):
            await channel.send(value=i)

    got, _ = await run_stream(feed, take=50)
    assert got[0][0] == [0] and 0.25 < got[0][1] < 1.0
    assert [v for values, _ in got for v in values] == list(range(10))
    assert got[-1][1] < 2.0


async def test_records_that_arrive_while_a_batch_is_out_wait_for_the_next_one() -> None:
    channel_of: dict[str, Any] = {}
    seen_acked: list[list[bool]] = []
    earlier: list[Any] = []

    async def feed(channel: Any) -> None:
        channel_of["c"] = channel
        await channel.send(value=0)

    async def on_batch(batch: list[Any]) -> None:
        # Nothing of this batch, nor of the last one, is acknowledged by Faust
        # while it is out; the one before is, once this one was asked for.
        seen_acked.append([e.message.acked for e in batch])
        if earlier:
            assert all(e.message.acked for e in earlier[-1])
        earlier.append(batch)
        if batch[0].value == 0:
            for i in range(1, 10):  # sent while the first batch is out
                await channel_of["c"].send(value=i)
            await asyncio.sleep(0.1)

    got, _ = await run_stream(feed, take=50, on_batch=on_batch)
    assert [values for values, _ in got] == [[0], list(range(1, 10))]
    assert seen_acked == [[False], [False] * 9]
