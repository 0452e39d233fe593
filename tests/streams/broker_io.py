"""Helpers for the tests/streams tests that use the real broker."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import faust
from aiokafka import AIOKafkaConsumer

from streams import compat
from tests.conftest import run_async

T = TypeVar("T")


async def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 20.0) -> list[Any]:
    """The records of ``topic`` from the start, once ``expected`` arrived (or at the timeout)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    out: list[Any] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(out) < expected and asyncio.get_running_loop().time() < deadline:
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                out.extend(batch)
    finally:
        await consumer.stop()
    return out


def with_producer(app: faust.App, body: Callable[[], Awaitable[T]]) -> T:
    """Run ``body`` with the app's producer started (the app itself is not)."""
    async def main() -> T:
        await app.producer.start()
        try:
            return await body()
        finally:
            # Faust's producer service stops with a running app only; stop
            # the aiokafka producer under it.
            await compat.aiokafka_producer(app).stop()

    # On a helper thread's loop: the test's own thread keeps its event loop.
    return run_async(main())
