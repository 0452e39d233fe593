"""Publishing a batch of output records with one delivery future per partition batch.

Why not ``Topic.send``: Faust wraps every record in a ``FutureMessage`` with
callbacks and hands it through its own producer layer to aiokafka's per-record
``send``, which allocates another future: per input event (a score record
plus effects each) that was the largest CPU cost after the fold (figures in
the README's Performance section). Here the records of each (topic,
partition) become whole record batches submitted with ``send_batch``: one
future per batch, and no per-record callbacks. The batches are built in one
native call per topic-partition (``loyalty_native.record_batches``: no
per-record Python call, the CRC-32C in hardware) when the extension is built
and the producer sends batches as built
(:func:`streams.compat.prebuilt_batch_bytes`: not idempotent, not
compressing); otherwise records are appended to aiokafka ``BatchBuilder`` s.
Both kinds hold at most the producer's ``max_batch_size`` bytes, or one
larger record.

Guarantees:

* Same partitioning as Kafka's default partitioner (and ``Topic.send``): a
  keyed record goes to ``murmur2(key) % partitions`` of its topic; an unkeyed
  one to a random partition.
* A record may name its partition (a changelog record goes to its store's
  partition, whatever its key hashes to).
* Records for the same (topic, partition) keep their order: they go into
  batches in call order and the batches are submitted in that order, so
  their offsets are contiguous within a batch and increasing across them
  (:func:`last_offsets`).
* :meth:`Publisher.publish` returns only after every builder is queued; the
  caller awaits the returned batches' futures to know the broker acknowledged them
  (with the app's ``acks=-1``). A failed future raises there; nothing is
  retried here, the caller (the agent) retries or dead-letters its records.
  Needs the Faust producer started (it runs with the app).
* In the worker it uses Faust's own aiokafka producer
  (:func:`streams.compat.aiokafka_producer`), so ``app.producer.flush()`` (run
  by Faust before every offset commit) also waits for these records; the
  bench's load generator hands it a plain ``AIOKafkaProducer``
  (:meth:`Publisher.over`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import faust
from aiokafka import AIOKafkaProducer

from streams import compat
from streams.topics import partition_for

#: ``(topic, key, value, headers, partition)``; value None: a tombstone;
#: partition None: Kafka's default
OutRecord = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None, int | None]


@dataclass
class Sent:
    """One submitted batch: ``count`` records of one topic-partition."""

    topic: str
    partition: int
    count: int
    future: asyncio.Future[Any]


def futures(sent: list[Sent]) -> list[asyncio.Future[Any]]:
    """The delivery futures of ``sent`` (await them all before relying on the records)."""
    return [s.future for s in sent]


def last_offsets(sent: list[Sent]) -> dict[tuple[str, int], int]:
    """``(topic, partition) -> offset of the last record`` of acknowledged batches.

    Only valid once every future is done: a batch's future resolves to the
    offset of its first record, and its records are contiguous.
    """
    out: dict[tuple[str, int], int] = {}
    for s in sent:
        last = s.future.result().offset + s.count - 1
        tp = (s.topic, s.partition)
        if last > out.get(tp, -1):
            out[tp] = last
    return out


class Publisher:
    """Batch publisher over the Faust app's aiokafka producer (or another, :meth:`over`)."""

    def __init__(self, app: faust.App | None = None, *,
                 producer: AIOKafkaProducer | None = None) -> None:
        """Over the Faust ``app``'s producer, or a started plain ``producer``: one of them."""
        if (app is None) == (producer is None):
            raise ValueError("a Publisher publishes through a Faust app or a producer: give one")
        self.app = app
        #: the plain producer (:meth:`over`); None: the app's
        self._producer = producer
        #: ``loyalty_native.record_batches`` and the producer's batch size when it
        #: takes batches built so, else None; decided on the first publish (the
        #: producer starts with the app)
        self._native: tuple[Callable[..., list[tuple[bytes, int]]], int] | None = None
        self._decided = False

    @classmethod
    def over(cls, producer: AIOKafkaProducer) -> Publisher:
        """A publisher over a started plain ``producer`` (no Faust app)."""
        return cls(producer=producer)

    async def publish(self, records: Iterable[OutRecord]) -> list[Sent]:
        """Queue the records; return one :class:`Sent` per submitted batch."""
        producer = self._producer if self._producer is not None \
            else compat.aiokafka_producer(self.app)
        if not self._decided:
            self._native = _native_builder(producer)
            self._decided = True
        counts: dict[str, int] = {}
        by_tp: dict[tuple[str, int], list[tuple[bytes | None, bytes | None,
                                              list[tuple[str, bytes]] | None]]] = {}
        for topic, key, value, headers, partition in records:
            if partition is None:
                n = counts.get(topic)
                if n is None:
                    # Waits for metadata only the first time a topic is seen.
                    n = counts[topic] = len(await producer.partitions_for(topic))
                partition = partition_for(key, n) if key is not None else random.randrange(n)
            tp = (topic, partition)
            batch = by_tp.get(tp)
            if batch is None:
                batch = by_tp[tp] = []
            batch.append((key, value, headers))
        sent: list[Sent] = []
        if self._native is not None:
            build, max_bytes = self._native
            now_ms = int(time.time() * 1000)
            for (topic, partition), batch in by_tp.items():
                for data, count in build(batch, now_ms, max_bytes):
                    future = await producer.send_batch(compat.PrebuiltBatch(data, count), topic,
                                                       partition=partition)
                    sent.append(Sent(topic, partition, count, future))
            return sent
        for (topic, partition), batch in by_tp.items():
            builder, count = producer.create_batch(), 0
            for key, value, headers in batch:
                if builder.append(key=key, value=value, timestamp=None,
                                  headers=headers or []) is None:
                    # Builder full: submit it and start the next one for this partition.
                    sent.append(Sent(topic, partition, count,
                                     await producer.send_batch(builder, topic, partition=partition)))
                    builder, count = producer.create_batch(), 0
                    if builder.append(key=key, value=value, timestamp=None,
                                      headers=headers or []) is None:
                        raise ValueError(f"record of {len(value or b'')} bytes does not fit a "
                                         f"batch of {topic}")
                count += 1
            sent.append(Sent(topic, partition, count,
                             await producer.send_batch(builder, topic, partition=partition)))
        return sent


def _native_builder(producer: Any) -> tuple[Callable[..., list[tuple[bytes, int]]], int] | None:
    """``loyalty_native.record_batches`` and the batch size if it is built and
    ``producer`` sends batches as built (:func:`streams.compat.prebuilt_batch_bytes`),
    else None."""
    try:
        from loyalty_native import record_batches
    except ImportError:  # no Rust toolchain, or a build older than the batches
        return None
    max_bytes = compat.prebuilt_batch_bytes(producer)
    return None if max_bytes is None else (record_batches, max_bytes)
