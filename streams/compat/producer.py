"""Patches and private reads of Faust's producer."""

from __future__ import annotations

import asyncio

import faust
from aiokafka import AIOKafkaProducer


def harden_producer_flush(app: faust.App) -> None:
    """Make ``producer.flush()`` really drain Faust's send buffer.

    Works around: Faust commits offsets right after ``producer.flush()``, and
    its buffer flush gives up as soon as no message left the buffer for
    0.1 s, so a slow broker round could let an offset be committed while that
    record's changelog write still sat in the buffer - and a kill -9 then
    would lose the write. The commit path looks the method up on the
    instance, so wrapping it here keeps "flushed before committed" true.
    Reads the producer's undocumented ``buffer`` (``size``, ``flush``).
    """
    producer = app.producer
    original = producer.flush

    async def flush() -> None:
        while producer.buffer.size:
            await producer.buffer.flush()
            if producer.buffer.size:
                await asyncio.sleep(0.01)
        await original()

    producer.flush = flush  # type: ignore[method-assign]


def aiokafka_producer(app: faust.App) -> AIOKafkaProducer:
    """The started aiokafka producer under Faust's producer.

    Works around: Faust has no batch send; :mod:`streams.publish` appends
    records to aiokafka batches itself, and must use Faust's own producer so
    that ``app.producer.flush()`` (before every offset commit) covers them.
    Calls the private ``Producer._ensure_producer`` of Faust's aiokafka driver.
    """
    producer: AIOKafkaProducer = app.producer._ensure_producer()
    return producer
