"""The agent's intake: its topics' messages straight from Faust's fetcher, in batches.

Works around: every fetched message of a stream's topic passes Faust's
conductor (an ``Event`` built, a queue put with pressure callbacks), the
stream's iterator (sensors, the current-event context variable, processors)
and its acknowledgement path, one message at a time, with a task switch per
queue handover: a large share of the worker's CPU per event (README
"Performance"), for guarantees the agent does not use (it batches, aligns
and commits itself).

:func:`deliver_to_intake` routes the messages of the agent's topics from the
consumer's callback into an :class:`Intake`; every other topic (table
changelogs) still goes through Faust's conductor. The agent takes batches
with :meth:`Intake.batches`. The agent's Faust stream is still created and
registered with the conductor (so Faust subscribes to the topics and assigns
their partitions as before), but receives nothing.

Guarantees (those of Faust's stream path that the agent relies on):

* messages of a topic-partition come in fetch (offset) order; a batch holds at
  most ``max_records``, handed over as soon as what the fetcher has delivered
  is in it (a backlog gives full batches, a lone message goes without waiting);
* a message is acknowledged to Faust's consumer (``Consumer.ack``: what its
  offset commits follow) only when the next batch is asked for, i.e. after the
  agent has handled it; offset commits are capped at the agent's progress
  anyway (:mod:`streams.gaps`);
* back-pressure: at most ``max_buffered`` messages wait; a full intake blocks
  the fetcher's delivery, and Faust abandons a blocked delivery when a
  rebalance suspends the flow, as with a full stream queue;
* a rebalance clears the intake, and a message fetched in an earlier consumer
  generation is never handed over: Faust seeks every assigned partition back
  to its committed offset after a rebalance, so those messages come again
  (or go to the partition's new owner);
* Faust's "stream idle" check (``Monitor.stream_inbound_time``) sees every
  batch, so it does not report the agent's partitions as stuck.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Collection
from typing import Any

import faust


class Intake:
    """Fetched messages of the agent's topics, waiting to be taken in batches."""

    def __init__(self, app: faust.App, max_buffered: int) -> None:
        if max_buffered < 1:
            raise ValueError("max_buffered must be at least 1")
        self.app = app
        self.max_buffered = max_buffered
        self._messages: deque[Any] = deque()
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def __len__(self) -> int:
        return len(self._messages)

    async def put(self, message: Any) -> None:
        """Append ``message``; waits while ``max_buffered`` messages wait already."""
        while len(self._messages) >= self.max_buffered:
            self._room.clear()
            await self._room.wait()
        self._messages.append(message)
        self._arrived.set()

    def partitions(self) -> set[tuple[str, int]] | None:
        """``(topic, partition)`` of every waiting message; None while the intake is
        full (more may then be waiting in front of it, in the fetcher's delivery)."""
        if len(self._messages) >= self.max_buffered:
            return None
        return {(message.topic, message.partition) for message in self._messages}

    def clear(self) -> int:
        """Drop every waiting message (a rebalance); returns how many."""
        dropped = len(self._messages)
        self._messages.clear()
        self._room.set()
        return dropped

    async def batches(self, max_records: int, within_s: float) -> AsyncIterator[list[Any]]:
        """Yield lists of at most ``max_records`` messages (module docstring).

        ``within_s`` only bounds how long it waits for a first message before
        looking again (it never delays a batch).
        """
        messages = self._messages
        ack = self.app.consumer.ack
        monitor = self.app.monitor
        inbound: dict[Any, float] = monitor.stream_inbound_time if monitor is not None else {}
        while True:
            if not messages:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), within_s)
                except TimeoutError:
                    continue
            # Let the fetcher deliver what it holds: stop when a step of the
            # event loop added nothing (nothing more without waiting) or the
            # batch is full.
            size = -1
            while len(messages) != size and len(messages) < max_records:
                size = len(messages)
                await asyncio.sleep(0)
            generation = self.app.consumer_generation_id
            batch = []
            while messages and len(batch) < max_records:
                message = messages.popleft()
                if message.generation_id == generation:
                    batch.append(message)
            self._room.set()
            if not batch:
                continue
            now = time.monotonic()
            for tp in {message.tp for message in batch}:
                inbound[tp] = now
            try:
                yield batch
            finally:
                for message in batch:
                    ack(message)


def deliver_to_intake(app: faust.App, topics: Collection[str], intake: Intake) -> None:
    """Route the messages of ``topics`` from ``app``'s consumer into ``intake``.

    Must run while the app is built, before the consumer's fetcher starts (it
    reads the callback once). What Faust's conductor does first for every
    message is kept: wait while the flow is suspended (a rebalance). A
    rebalance clears the intake (module docstring).
    """
    consumer = app.consumer
    conductor_callback = consumer.callback
    flow = app.flow_control
    ours = frozenset(topics)

    async def on_message(message: Any) -> None:
        if message.topic not in ours:
            return await conductor_callback(message)
        if not flow.is_active():
            await flow.acquire()
        await intake.put(message)
        return None

    consumer.callback = on_message

    @app.on_partitions_revoked.connect
    async def clear_intake(sender: Any, revoked: Any, **kwargs: Any) -> None:
        intake.clear()
