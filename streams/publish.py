"""Publishing a batch of output records with one delivery future per partition batch.

Why not ``Topic.send``: Faust wraps every record in a ``FutureMessage`` with
callbacks and hands it through its own producer layer to aiokafka's per-record
``send``, which allocates another future. Profiled under load that path cost
about 80 us of CPU per input event (a score record plus effects each), the
largest single item after the fold. Here records are appended to aiokafka
``BatchBuilder`` s per (topic, partition) and each builder is submitted with
``send_batch``: one future per builder, and no per-record callbacks.

Guarantees:

* Same partitioning as Kafka's default partitioner (and ``Topic.send``): a
  keyed record goes to ``murmur2(key) % partitions`` of its topic; an unkeyed
  one to a random partition.
* Records for the same (topic, partition) keep their order: they are appended
  to builders in call order and builders are submitted in that order.
* :meth:`Publisher.publish` returns only after every builder is queued; the
  caller awaits the returned futures to know the broker acknowledged them
  (with the app's ``acks=-1``). A failed future raises there; nothing is
  retried here, the caller (the agent) retries or dead-letters its records.
* Uses Faust's own aiokafka producer, so ``app.producer.flush()`` (run by
  Faust before every offset commit) also waits for these records.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from typing import Any

from streams.app import partition_for


class Publisher:
    """Batch publisher over the Faust app's aiokafka producer."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def publish(self, records: Iterable[tuple[str, bytes | None, bytes,
                                                    list[tuple[str, bytes]] | None]]
                      ) -> list[asyncio.Future[Any]]:
        """Queue ``(topic, key, value, headers)`` records; return their delivery futures."""
        producer = self.app.producer._ensure_producer()
        counts: dict[str, int] = {}
        builders: dict[tuple[str, int], Any] = {}
        futures: list[asyncio.Future[Any]] = []
        for topic, key, value, headers in records:
            n = counts.get(topic)
            if n is None:
                # Waits for metadata only the first time a topic is seen.
                n = counts[topic] = len(await producer.partitions_for(topic))
            partition = partition_for(key, n) if key is not None else random.randrange(n)
            tp = (topic, partition)
            builder = builders.get(tp)
            if builder is None:
                builder = builders[tp] = producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None,
                              headers=headers or []) is None:
                # Builder full: submit it and start the next one for this partition.
                futures.append(await producer.send_batch(builder, topic, partition=partition))
                builder = builders[tp] = producer.create_batch()
                if builder.append(key=key, value=value, timestamp=None,
                                  headers=headers or []) is None:
                    raise ValueError(f"record of {len(value)} bytes does not fit a batch "
                                     f"of {topic}")
        for (topic, partition), builder in builders.items():
            futures.append(await producer.send_batch(builder, topic, partition=partition))
        return futures
