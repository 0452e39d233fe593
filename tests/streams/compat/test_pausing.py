"""Pausing the worker's partitions in aiokafka (streams.compat.consumer.apply_fetching),
against the real broker, with consumers in a real consumer group.

The aligned input pauses a partition whose held records reach its bound and
forgets its pauses when it sees a new group generation, because a new
assignment starts every partition unpaused. A pause decided before a
rebalance and applied after it would stop that partition for good, so a
decision of an earlier generation must change nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.compat.consumer import apply_fetching
from tests.conftest import run_async


async def _assigned(consumer: AIOKafkaConsumer, count: int, timeout: float = 30.0) -> int:
    """Drive ``consumer`` until it holds ``count`` partitions; its group generation."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await consumer.getmany(timeout_ms=100)
        if len(consumer.assignment()) == count:
            return int(consumer._coordinator.generation)  # type: ignore[union-attr]
    raise AssertionError(f"not assigned {count} partitions: {consumer.assignment()}")


def test_a_pause_decided_in_an_earlier_generation_changes_nothing(
        bootstrap: str, create_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    topic = create_topic(2)
    group = unique_name("pausing")

    def member() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False, session_timeout_ms=10_000,
                                heartbeat_interval_ms=300)

    async def run() -> dict[str, object]:
        seen: dict[str, object] = {}
        first, second = member(), member()
        await first.start()
        try:
            before = await _assigned(first, 2)
            tp0, tp1 = sorted(first.assignment())
            elsewhere = TopicPartition(topic + "-other", 0)
            seen["old"] = apply_fetching(first, [tp0], [], before - 1)
            seen["paused_after_old"] = set(first.paused())
            seen["current"] = apply_fetching(first, [tp0, elsewhere], [], before)
            seen["paused_after_current"] = set(first.paused())
            seen["resumed"] = apply_fetching(first, [], [tp0, elsewhere], before)
            seen["paused_after_resume"] = set(first.paused())
            apply_fetching(first, [tp0, tp1], [], before)

            await second.start()  # a rebalance: one partition each
            try:
                after = await asyncio.wait_for(
                    asyncio.gather(_assigned(first, 1), _assigned(second, 1)), 40)
                seen["generations"] = (before, *after)
                seen["paused_in_new_assignment"] = set(first.paused())
                # The aligned input's decision of the old generation, landing now.
                seen["late"] = apply_fetching(first, list(first.assignment()), [], before)
                seen["paused_after_late"] = set(first.paused())
            finally:
                await second.stop()
        finally:
            await first.stop()
        seen["tp0"] = tp0
        return seen

    seen = run_async(run(), timeout=120)
    tp0 = seen["tp0"]
    assert seen["old"] is False and seen["paused_after_old"] == set()
    # A partition not assigned (here: another topic) is left out, the rest applied.
    assert seen["current"] is True and seen["paused_after_current"] == {tp0}
    assert seen["resumed"] is True and seen["paused_after_resume"] == set()
    before, first_gen, second_gen = seen["generations"]  # type: ignore[misc]
    assert first_gen == second_gen > before
    # What the aligned input relies on when it forgets its pauses: a new
    # assignment starts unpaused, and a late decision leaves it so.
    assert seen["paused_in_new_assignment"] == set()
    assert seen["late"] is False and seen["paused_after_late"] == set()
