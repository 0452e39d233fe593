"""The gap reader against the real broker (streams/gaps.py ``GapReader``): ranges of
records read back by offset, first and end offsets, and callers that race."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka import AIOKafkaProducer
from faust.types import TP

from streams.gaps import GapReader
from streams.settings import Settings
from tests.conftest import run_async

pytestmark = pytest.mark.integration


def test_concurrent_callers_each_get_their_own_range(bootstrap: str, create_topic) -> None:
    # The agent's gap repair and the re-drive timer can read back at the same
    # time, right after a rebalance: each must get exactly its own records.
    topic = create_topic(partitions=2)

    async def main() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for p in (0, 1):
                for i in range(40):
                    await producer.send(topic, f"{p}:{i}".encode(), partition=p)
            await producer.flush()
        finally:
            await producer.stop()
        reader = GapReader(SimpleNamespace(settings=Settings(broker=f"kafka://{bootstrap}")))
        try:
            a, b, first, ends = await asyncio.gather(
                reader.fetch(topic, 0, 5, 30), reader.fetch(topic, 1, 12, 40),
                reader.beginning_offsets([TP(topic, 0), TP(topic, 1)]),
                reader.end_offsets([TP(topic, 0), TP(topic, 1)]))
        finally:
            await reader.close()
        assert [(r.partition, r.offset, r.value) for r in a] == [
            (0, o, f"0:{o}".encode()) for o in range(5, 30)]
        assert [(r.partition, r.offset, r.value) for r in b] == [
            (1, o, f"1:{o}".encode()) for o in range(12, 40)]
        assert first == {TP(topic, 0): 0, TP(topic, 1): 0}
        assert {tp.partition: end for tp, end in ends.items()} == {0: 40, 1: 40}

    run_async(main(), timeout=90)
