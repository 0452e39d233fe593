"""Publishing a batch of output records with one delivery future per partition batch.

Why not ``Topic.send``: Faust wraps every record in a ``FutureMessage`` with
callbacks and hands it through its own producer layer to aiokafka's per-record
``send``, which allocates another future: per input event (a score record
plus effects each) that was the largest CPU cost after the fold (figures in
the README's Performance section). Here records are appended to aiokafka
``BatchBuilder`` s per (topic, partition) and each builder is submitted with
``send_batch``: one future per builder, and no per-record callbacks.

Guarantees:

* Same partitioning as Kafka's default partitioner (and ``Topic.send``): a
  keyed record goes to ``murmur2(key) % partitions`` of its topic; an unkeyed
  one to a random partition.
* A record may name its partition (a changelog record goes to its store's
  partition, whatever its key hashes to).
* Records for the same (topic, partition) keep their order: they are appended
  to builders in call order and builders are submitted in that order, so
  their offsets are contiguous within a builder and increasing across them
  (:func:`last_offsets`).
* :meth:`Publisher.publish` returns only after every builder is queued; the
  caller awaits the returned batches' futures to know the broker acknowledged them
  (with the app's ``acks=-1``). A failed future raises there; nothing is
  retried here, the caller (the agent) retries or dead-letters its records.
  Needs the Faust producer started (it runs with the app).
* Uses Faust's own aiokafka producer (:func:`streams.compat.aiokafka_producer`),
  so ``app.producer.flush()`` (run by Faust before every offset commit) also
  waits for these records.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import faust

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
    """Batch publisher over the Faust app's aiokafka producer."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    async def publish(self, records: Iterable[OutRecord]) -> list[Sent]:
        """Queue the records; return one :class:`Sent` per submitted batch."""
        producer = compat.aiokafka_producer(self.app)
        counts: dict[str, int] = {}
        builders: dict[tuple[str, int], list[Any]] = {}  # tp -> [builder, records in it]
        sent: list[Sent] = []
        for topic, key, value, headers, partition in records:
            if partition is None:
                n = counts.get(topic)
                if n is None:
                    # Waits for metadata only the first time a topic is seen.
                    n = counts[topic] = len(await producer.partitions_for(topic))
                partition = partition_for(key, n) if key is not None else random.randrange(n)
            tp = (topic, partition)
            slot = builders.get(tp)
            if slot is None:
                slot = builders[tp] = [producer.create_batch(), 0]
            if slot[0].append(key=key, value=value, timestamp=None,
                              headers=headers or []) is None:
                # Builder full: submit it and start the next one for this partition.
                sent.append(Sent(topic, partition, slot[1],
                                 await producer.send_batch(slot[0], topic, partition=partition)))
                slot[0], slot[1] = producer.create_batch(), 0
                if slot[0].append(key=key, value=value, timestamp=None,
                                  headers=headers or []) is None:
                    raise ValueError(f"record of {len(value or b'')} bytes does not fit a batch "
                                     f"of {topic}")
            slot[1] += 1
        for (topic, partition), (builder, count) in builders.items():
            sent.append(Sent(topic, partition, count,
                             await producer.send_batch(builder, topic, partition=partition)))
        return sent
