"""The direct delivery of fetched records (streams.compat.delivery) on a real mode Service.

The service stands in for Faust's consumer: it has Faust's ``wait_first``
(mode's ``Service.wait_first``) and a ``suspend_flow`` event of mode's type.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from mode import Service
from mode.utils.locks import Event

from streams.compat.delivery import deliver_directly


class FakeConsumer(Service):
    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = Event()
        self.original_calls = 0
        original = self.wait_first

        async def counting(*coros, timeout=None):  # noqa: ANN001, ANN202
            self.original_calls += 1
            return await original(*coros, timeout=timeout)

        self.wait_first = counting  # what deliver_directly wraps


def run(coro):  # noqa: ANN001, ANN201
    """Run ``coro`` on a loop of its own, leaving the thread's current loop alone
    (``asyncio.run`` would unset it for the synchronous tests that follow)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


@pytest.fixture
def consumer() -> FakeConsumer:
    c = FakeConsumer()
    deliver_directly(SimpleNamespace(consumer=c))
    return c


def test_a_delivery_that_does_not_block_creates_no_task(consumer: FakeConsumer) -> None:
    async def main() -> tuple[list[int], int]:
        got: list[int] = []

        async def deliver(n: int) -> None:
            got.append(n)

        before = len(asyncio.all_tasks())
        for n in range(3):
            await consumer.wait_first(deliver(n), consumer.suspend_flow.wait())
        return got, len(asyncio.all_tasks()) - before

    got, new_tasks = run(main())
    assert got == [0, 1, 2] and new_tasks == 0 and consumer.original_calls == 0


def test_a_blocked_delivery_finishes_under_fausts_wait(consumer: FakeConsumer) -> None:
    async def main() -> list[str]:
        steps: list[str] = []
        room = asyncio.get_running_loop().create_future()

        async def deliver() -> None:
            steps.append("started")
            steps.append(await room)  # a full queue: blocks
            await asyncio.sleep(0)
            steps.append("delivered")

        asyncio.get_running_loop().call_later(0.01, room.set_result, "room")
        await consumer.wait_first(deliver(), consumer.suspend_flow.wait())
        return steps

    assert run(main()) == ["started", "room", "delivered"]
    assert consumer.original_calls == 1


def test_a_blocked_delivery_is_abandoned_when_the_flow_is_suspended(consumer: FakeConsumer) -> None:
    async def main() -> tuple[list[str], bool]:
        steps: list[str] = []
        never = asyncio.get_running_loop().create_future()

        async def deliver() -> None:
            try:
                await never
            except asyncio.CancelledError:
                steps.append("cancelled")
                raise

        asyncio.get_running_loop().call_later(0.01, consumer.suspend_flow.set)
        await asyncio.wait_for(consumer.wait_first(deliver(), consumer.suspend_flow.wait()), 2)
        await asyncio.sleep(0.01)
        return steps, never.cancelled()

    steps, cancelled = run(main())
    assert steps == ["cancelled"] and cancelled


def test_while_the_flow_is_suspended_faust_decides(consumer: FakeConsumer) -> None:
    async def main() -> None:
        consumer.suspend_flow.set()

        async def deliver() -> None:
            return None

        await consumer.wait_first(deliver(), consumer.suspend_flow.wait())

    run(main())
    assert consumer.original_calls == 1
