"""Hand fetched records to the streams without a task race per record.

Works around: Faust's fetcher (``Consumer._drain_messages``) delivers every
record with ``self.wait_first(callback(message), self.suspend_flow.wait())``,
so that a delivery blocked on a full (or flow-suspended) stream queue is
abandoned when a rebalance suspends the flow. ``wait_first`` wraps each of
its arguments plus the service's stop and crash events in a task and waits
for the first: four tasks and their cancellation per record, a large part
of Faust's per-record cost, though almost every delivery completes without
ever blocking.

:func:`deliver_directly` replaces ``wait_first`` on the consumer instance
for exactly that call shape: the delivery coroutine is stepped once in the
fetcher's own task. If it completes there (the queue had room), no task is
created and the unstarted suspension wait is closed. If it blocks, its
remainder is handed to Faust's own ``wait_first`` together with the
suspension wait, so a blocked delivery behaves exactly as in Faust. Any
other call of ``wait_first`` goes to Faust's unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine, Generator
from typing import Any

import faust


class _Reyield:
    """Yield a value the stepped coroutine yielded to the task that awaits this."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, Any, Any]:
        return (yield self.value)


async def _resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    """Drive the rest of ``coro``, which has yielded ``yielded`` once already.

    What a task would do: hand each yielded future to the event loop through
    the awaiting task, send its result back, and throw an exception (a
    cancellation included) into the coroutine.
    """
    while True:
        try:
            result = await _Reyield(yielded)
        except BaseException as exc:  # noqa: BLE001 - forwarded, as a task would
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            yielded = coro.send(result)
        except StopIteration as stop:
            return stop.value


def deliver_directly(app: faust.App) -> None:
    """Install the direct delivery (module docstring) on ``app``'s consumer."""
    consumer = app.consumer
    original = consumer.wait_first
    suspension_wait = type(consumer.suspend_flow).wait.__code__

    async def wait_first(*coros: Any, timeout: Any = None) -> Any:
        if (len(coros) != 2 or timeout is not None
                or not isinstance(coros[0], Coroutine) or not isinstance(coros[1], Coroutine)
                or coros[1].cr_code is not suspension_wait or consumer.suspend_flow.is_set()):
            return await original(*coros, timeout=timeout)
        delivery, suspension = coros
        try:
            yielded = delivery.send(None)
        except StopIteration:
            suspension.close()
            return None  # the fetcher ignores the result
        except BaseException:
            suspension.close()
            raise
        remainder: Awaitable[Any] = _resume(delivery, yielded)
        return await original(remainder, suspension)

    consumer.wait_first = wait_first  # type: ignore[method-assign]
