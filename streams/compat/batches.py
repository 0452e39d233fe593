"""Batches of what is queued, without a fixed wait per batch.

Works around: Faust's ``Stream.take_events(max_, within)`` waits the full
``within`` after every batch unless ``max_`` records arrive first. On a live
feed that wait is pure latency in every batch, and shortening it also makes
the batches of a backlog small (the stream moves records into the batch
only while the agent waits), which costs throughput (README, Performance).

:func:`take_batches` keeps what Faust's ``take_events`` guarantees and
changes only when a batch is handed over:

* when records are queued, as soon as the stream has moved every queued
  record into the batch (or ``max_records`` of them): a backlog still gives
  full batches, and records that arrived while the previous batch was
  processed go together in the next one;
* when nothing is queued, it waits for the first record and hands it over
  with whatever came with it, without lingering; ``within_s`` only bounds
  how long it sleeps before looking at the stream's stop flag again.

Guarantees (as ``take_events``): at most ``max_records`` events per batch,
in stream order; no event of a batch is acknowledged before the consumer
of the generator asks for the next batch (or stops); while a batch is out
the stream moves no record past the batch, so the stream's queue (bounded
by Faust) holds the rest. Uses the stream's private ``_enable_passive`` and
``_processors``, as Faust's own buffering generators do.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any


async def take_batches(stream: Any, max_records: int,
                       within_s: float) -> AsyncIterator[list[Any]]:
    """Yield lists of at most ``max_records`` events of ``stream`` (module docstring)."""
    held: list[Any] = []
    arrived = asyncio.Event()  # set by the first record held while the taker waits
    room = asyncio.Event()  # clear while a batch is out or ``max_records`` are held
    room.set()

    async def hold(value: Any) -> Any:
        # The stream runs this for every record, in order, in its drainer task.
        while not room.is_set():
            await stream.wait(room)
            if stream.should_stop:
                return value
        event = stream.current_event
        if event is None:
            raise RuntimeError("take_batches: a record without a current event")
        held.append(event)
        arrived.set()
        if len(held) >= max_records:
            room.clear()
        return value

    acks_were = stream.enable_acks
    stream.enable_acks = False  # acknowledged here, once the batch is processed
    stream.add_processor(hold)
    stream._enable_passive(aiter(stream.channel))
    try:
        while not stream.should_stop:
            if not held:
                arrived.clear()
                await stream.wait_for_stopped(arrived, timeout=within_s)
                if not held:
                    continue
            # Let the stream move what is queued already; stop when a step
            # of the event loop moved nothing more (nothing left to take
            # without waiting) or the batch is full.
            size = -1
            while len(held) != size and len(held) < max_records:
                size = len(held)
                await asyncio.sleep(0)
            room.clear()
            batch = held[:]
            try:
                yield batch
            finally:
                del held[:len(batch)]
                for event in batch:
                    await stream.ack(event)
                room.set()
    finally:
        stream.enable_acks = acks_were
        stream._processors.remove(hold)
