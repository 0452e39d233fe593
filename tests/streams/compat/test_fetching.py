"""How long the broker holds the worker's fetches (streams.compat.consumer.batch_fetches).

Against the real broker, with the consumer Faust builds for a worker: after
a quiet spell a record comes at once (a long poll, as Faust's own); while
records flow the next fetch is held for ``min_bytes`` or the wait, which is
what lets a live feed arrive in fewer, fuller fetches; once a held fetch
brings nothing, the consumer long-polls again; but never while partitions
are left out of the request, or they wait for the long poll to end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from typing import Any

import faust
from aiokafka import AIOKafkaProducer, TopicPartition

from streams.compat import batch_fetches
from streams.compat.consumer import IDLE_FETCH_WAIT_MS
from tests.conftest import run_async

HOLD_MS = 600  # long enough to tell a held fetch from an answer at once on a busy machine
MIN_BYTES = 1 << 20  # far more than the test's records: a held fetch waits the whole HOLD_MS


def _worker_consumer(bootstrap: str, read_topics: Collection[str], min_bytes: int = MIN_BYTES,
                     hold_ms: int = HOLD_MS) -> Any:
    """The aiokafka consumer Faust creates for a worker of a new app, not started."""
    app = faust.App(f"fetch-test-{time.monotonic_ns()}", broker=f"kafka://{bootstrap}",
                    autodiscover=False, web_enabled=False)
    batch_fetches(app, min_bytes, hold_ms, read_topics)
    return app.consumer._thread._create_worker_consumer(app.transport)  # type: ignore[attr-defined]


def test_fetches_long_poll_when_quiet_and_are_held_while_records_flow(
        bootstrap: str, create_topic: Callable[..., str]) -> None:
    topic = create_topic(1)

    async def run() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        consumer = _worker_consumer(bootstrap, {topic})
        await producer.start()
        await consumer.start()
        fetcher = consumer._fetcher
        try:
            consumer.assign([TopicPartition(topic, 0)])
            await consumer.seek_to_beginning()

            async def after(value: bytes) -> float:
                await producer.send_and_wait(topic, value)
                sent = time.monotonic()
                record = await consumer.getone()
                assert record.value == value
                return time.monotonic() - sent

            await asyncio.sleep(0.5)  # nothing there: the consumer long-polls
            seen["quiet_mode"] = (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms)
            seen["first"] = await after(b"first")  # answered at once
            seen["flowing_mode"] = (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms)
            seen["second"] = await after(b"second")  # the fetch sent meanwhile is held
            # Waiting for records (as Faust's fetcher always is), a held fetch comes back empty.
            seen["meanwhile"] = await consumer.getmany(timeout_ms=int(HOLD_MS * 2.5))
            seen["quiet_again_mode"] = (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms)
            seen["third"] = await after(b"third")
        finally:
            await consumer.stop()
            await producer.stop()
        return seen

    seen = run_async(run(), timeout=60)
    idle, flowing = (1, IDLE_FETCH_WAIT_MS), (MIN_BYTES, HOLD_MS)
    assert seen["quiet_mode"] == idle
    assert seen["flowing_mode"] == flowing
    assert seen["meanwhile"] == {} and seen["quiet_again_mode"] == idle
    # Faust's consumer alone answers every one of these at once (min_bytes 1).
    assert seen["first"] < HOLD_MS / 1000 * 0.6, seen
    assert seen["second"] >= HOLD_MS / 1000 * 0.6, seen
    assert seen["third"] < HOLD_MS / 1000 * 0.6, seen


def test_no_long_poll_leaves_out_a_partition_whose_records_wait(
        bootstrap: str, create_topic: Callable[..., str]) -> None:
    """A busy partition's records wait unconsumed (a worker busy with a batch) while
    its neighbour is quiet: once they are consumed, the busy partition's next
    record comes at once, not when a long poll of the quiet partition alone ends."""
    topic = create_topic(2)
    busy, quiet = TopicPartition(topic, 0), TopicPartition(topic, 1)
    hold_ms = 20  # the wait while records flow: short, so only a long poll can be slow

    async def run() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        consumer = _worker_consumer(bootstrap, {topic}, 1, hold_ms)
        await producer.start()
        await consumer.start()
        try:
            consumer.assign([busy, quiet])
            await consumer.seek_to_beginning()
            await producer.send_and_wait(topic, b"waits", partition=0)
            # Longer than aiokafka's prefetch backoff (0.1 s): the consumer now
            # fetches the quiet partition alone, the busy one's record unconsumed.
            await asyncio.sleep(0.6)
            first = await consumer.getmany(busy, timeout_ms=1000)
            seen["first"] = [r.value for r in first.get(busy, [])]
            await producer.send_and_wait(topic, b"next", partition=0)
            sent = time.monotonic()
            record = await consumer.getone(busy)
            seen["next_after_s"] = time.monotonic() - sent
            seen["next"] = record.value
        finally:
            await consumer.stop()
            await producer.stop()
        return seen

    seen = run_async(run(), timeout=60)
    assert seen["first"] == [b"waits"] and seen["next"] == b"next"
    # Before the fix the quiet partition's long poll (IDLE_FETCH_WAIT_MS) was in
    # flight here and the record came 0.9-1.5 s late.
    assert seen["next_after_s"] < IDLE_FETCH_WAIT_MS / 1000 / 3, seen


def test_records_of_a_topic_the_agent_does_not_read_do_not_stop_the_long_poll(
        bootstrap: str, create_topic: Callable[..., str]) -> None:
    """Records wait for good in a partition of a topic the agent does not read (a
    table's changelog, fetched during its recovery): an idle consumer still
    long-polls the rest instead of fetching every ``PARTIAL_FETCH_WAIT_MS``."""
    read, changelog = create_topic(1), create_topic(1)
    asked, ignored = TopicPartition(read, 0), TopicPartition(changelog, 0)

    async def run() -> int:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        consumer = _worker_consumer(bootstrap, {read}, 1, 20)
        await producer.start()
        await consumer.start()
        fetcher = consumer._fetcher
        handle = fetcher._proc_fetch_request
        responses = 0

        async def counted(*args: Any) -> Any:
            nonlocal responses
            responses += 1
            return await handle(*args)

        fetcher._proc_fetch_request = counted
        try:
            consumer.assign([asked, ignored])
            await consumer.seek_to_beginning()
            await producer.send_and_wait(changelog, b"never asked for")
            deadline = time.monotonic() + 0.8
            while time.monotonic() < deadline:  # settle: the record is fetched and waits
                await consumer.getmany(asked, timeout_ms=100)
            responses = 0
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                assert await consumer.getmany(asked, timeout_ms=100) == {}
            return responses
        finally:
            await consumer.stop()
            await producer.stop()

    responses = run_async(run(), timeout=60)
    # Long polls of IDLE_FETCH_WAIT_MS: two or three in 2 s; one every
    # PARTIAL_FETCH_WAIT_MS would be about 40.
    assert responses <= 4, responses
