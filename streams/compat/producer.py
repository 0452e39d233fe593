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


class PrebuiltBatch:
    """A closed Kafka record batch built outside aiokafka, in the shape aiokafka's
    accumulator and sender use a ``BatchBuilder`` (for ``send_batch``).

    Works around: aiokafka appends records one Python call at a time and computes
    the batch's CRC-32C in software; :mod:`streams.publish` builds whole batches in
    one native call (``loyalty_native.record_batches``). Relies on the undocumented
    ``BatchBuilder`` protocol of ``MessageBatch``: ``append`` (None: the batch
    takes no more, so a ``send`` goes to a new batch), ``close``, ``closed``,
    ``record_count``, ``size``, ``_build`` and ``_set_producer_state``, which only
    an idempotent or transactional producer calls (:func:`prebuilt_batch_bytes`
    says whether the producer is one).
    """

    __slots__ = ("_data", "_count")

    def __init__(self, data: bytes, count: int) -> None:
        self._data = data
        self._count = count

    def append(self, *args: object, **kwargs: object) -> None:
        return None  # closed

    def close(self) -> None:
        return None

    def closed(self) -> bool:
        return True

    def record_count(self) -> int:
        return self._count

    def size(self) -> int:
        return len(self._data)

    def _build(self) -> bytes:
        return self._data

    def _set_producer_state(self, producer_id: int, producer_epoch: int,
                            base_sequence: int) -> None:
        raise RuntimeError("a prebuilt batch carries no producer id or sequence: "
                           "streams.publish must not use it with this producer")


def prebuilt_batch_bytes(producer: AIOKafkaProducer) -> int | None:
    """The most bytes of a :class:`PrebuiltBatch` for ``producer`` (its
    ``max_batch_size``), or None when it must build its batches itself: an
    idempotent or transactional producer stamps producer ids and sequences into
    each batch, a compressing one compresses it. Reads the private
    ``_message_accumulator`` and its ``_txn_manager``, ``_compression_type`` and
    ``_batch_size``."""
    accumulator = producer._message_accumulator
    if accumulator._txn_manager is not None or accumulator._compression_type:
        return None
    size: int = accumulator._batch_size
    return size
