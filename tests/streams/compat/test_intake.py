"""The agent's intake (streams.compat.intake) on a real, unstarted Faust app.

Messages are Faust's own ``ConsumerMessage`` objects, acknowledged through the
app's real consumer; no broker is involved (the service and chaos suites run
the intake in workers against the local broker). ``within`` is 5 s
everywhere, so a batch that waited for it would show in the elapsed times.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import faust
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from streams.compat.intake import Intake, deliver_to_intake

WITHIN_S = 5.0
TOPIC = "loyalty.visits"


def app_with_generation(generation: int = 1) -> faust.App:
    app = faust.App("unit-compat-intake", store="memory://")
    app.consumer_generation_id = generation
    return app


def message(offset: int, generation: int = 1, topic: str = TOPIC) -> ConsumerMessage:
    return ConsumerMessage(topic, 0, offset, None, 0, [], b"k", b"v", None, 1, 1,
                           TP(topic, 0), generation_id=generation)


async def take(intake: Intake, max_records: int, count: int,
               on_batch: Any = None) -> list[tuple[list[int], float]]:
    """Batches of at most ``max_records`` until ``count`` messages came:
    ``[(offsets, seconds since start)]``."""
    got: list[tuple[list[int], float]] = []
    started = time.monotonic()
    batches = intake.batches(max_records, WITHIN_S)
    async for batch in batches:
        got.append(([m.offset for m in batch], time.monotonic() - started))
        if on_batch is not None:
            await on_batch(batch)
        if sum(len(offsets) for offsets, _ in got) >= count:
            break
    await batches.aclose()
    return got


async def test_queued_messages_go_at_once_in_batches_of_at_most_max() -> None:
    intake = Intake(app_with_generation(), max_buffered=100)
    for offset in range(10):
        await intake.put(message(offset))
    got = await take(intake, 4, 10)
    assert [offsets for offsets, _ in got] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert got[-1][1] < 1.0  # the last batch is not full and did not wait for more


async def test_a_lone_message_goes_without_lingering() -> None:
    intake = Intake(app_with_generation(), max_buffered=100)

    async def feed() -> None:
        await asyncio.sleep(0.3)
        await intake.put(message(0))
        await asyncio.sleep(0.3)
        for offset in range(1, 10):
            await intake.put(message(offset))

    feeder = asyncio.ensure_future(feed())
    got = await take(intake, 50, 10)
    await feeder
    assert got[0][0] == [0] and 0.25 < got[0][1] < 1.0
    assert [o for offsets, _ in got for o in offsets] == list(range(10))
    assert got[-1][1] < 2.0


async def test_a_batch_is_acknowledged_when_the_next_one_is_asked_for() -> None:
    intake = Intake(app_with_generation(), max_buffered=100)
    earlier: list[list[ConsumerMessage]] = []

    async def on_batch(batch: list[ConsumerMessage]) -> None:
        # Nothing of this batch is acknowledged while it is out; the one before is.
        assert not any(m.acked for m in batch)
        assert all(m.acked for batch in earlier for m in batch)
        earlier.append(batch)
        if batch[0].offset == 0:
            for offset in range(1, 10):  # delivered while the first batch is out
                await intake.put(message(offset))

    await intake.put(message(0))
    got = await take(intake, 50, 10, on_batch)
    assert [offsets for offsets, _ in got] == [[0], list(range(1, 10))]
    assert all(m.acked for m in earlier[0])


async def test_a_full_intake_holds_the_fetcher_back_until_a_batch_is_taken() -> None:
    intake = Intake(app_with_generation(), max_buffered=3)
    for offset in range(3):
        await intake.put(message(offset))
    blocked = asyncio.ensure_future(intake.put(message(3)))
    await asyncio.sleep(0.05)
    assert not blocked.done() and len(intake) == 3
    got = await take(intake, 2, 4)
    await blocked
    assert [o for offsets, _ in got for o in offsets] == [0, 1, 2, 3]


async def test_the_partitions_waiting_are_known_and_unknown_while_full() -> None:
    # What the read-back of dropped records asks (streams.gaps.reread_dropped).
    intake = Intake(app_with_generation(), max_buffered=3)
    assert intake.partitions() == set()
    await intake.put(message(0))
    await intake.put(message(0, topic="loyalty.feedback"))
    assert intake.partitions() == {(TOPIC, 0), ("loyalty.feedback", 0)}
    await intake.put(message(1))
    assert intake.partitions() is None  # full: more may wait in front of it


async def test_messages_of_an_earlier_generation_are_never_handed_over() -> None:
    app = app_with_generation(1)
    intake = Intake(app, max_buffered=100)
    await intake.put(message(0, generation=1))
    await intake.put(message(1, generation=1))
    app.consumer_generation_id = 2  # a rebalance: Faust seeks back, they come again
    await intake.put(message(0, generation=2))
    got = await take(intake, 50, 1)
    assert got[0][0] == [0] and len(intake) == 0
    await intake.put(message(1, generation=2))
    assert intake.clear() == 1 and len(intake) == 0


async def test_only_the_agents_topics_bypass_faust_and_a_rebalance_clears_the_intake() -> None:
    app = app_with_generation()
    consumer = app.consumer
    to_conductor: list[str] = []

    async def conductor(msg: ConsumerMessage) -> None:
        to_conductor.append(msg.topic)

    consumer.callback = conductor
    intake = Intake(app, max_buffered=100)
    deliver_to_intake(app, {TOPIC}, intake)
    app.flow_control.resume()
    await consumer.callback(message(0))
    await consumer.callback(message(0, topic="loyalty-customers-changelog"))
    assert len(intake) == 1 and to_conductor == ["loyalty-customers-changelog"]
    await app.on_partitions_revoked.send(set())
    assert len(intake) == 0
