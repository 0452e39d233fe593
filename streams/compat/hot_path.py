"""Faust's per-record settings lookups, resolved once while the app is built."""

from __future__ import annotations

import asyncio
from typing import Any

import faust


def resolve_hot_settings(app: faust.App) -> None:
    """Answer two per-record questions of Faust without reading its settings registry.

    Works around: Faust reads ``app.conf`` (a Python ``__getattribute__`` in
    its settings registry) twice for every fetched record (README
    "Performance" has what it cost); neither setting changes after the app
    is built:

    * the conductor awaits ``producer.buffer.wait_until_ebb()``, whose
      ``size`` looks up ``conf.producer_threaded``. With the unthreaded
      producer (ours) ``size`` is the length of the buffer's ``pending``
      queue, so the replacement compares ``pending.qsize()`` with
      ``max_messages`` and awaits Faust's own method only when the buffer is
      over it (same flush, same warning). A threaded producer keeps Faust's.
    * ``app.create_event`` builds ``conf.Event``; the replacement builds the
      class it was at install time.

    Must run before the conductor and the topics' schemas compile their
    handlers (they look both methods up once), i.e. while the app is built.
    Reads the buffer's undocumented ``pending`` and ``max_messages``.
    """
    if not app.conf.producer_threaded:
        buffer = app.producer.buffer
        faust_wait = buffer.wait_until_ebb
        pending: asyncio.Queue = buffer.pending

        async def wait_until_ebb() -> None:
            if pending.qsize() > buffer.max_messages:
                await faust_wait()

        buffer.wait_until_ebb = wait_until_ebb  # type: ignore[method-assign]

    event_class = app.conf.Event

    def create_event(key: Any, value: Any, headers: Any, message: Any) -> Any:
        return event_class(app, key, value, headers, message)

    app.create_event = create_event  # type: ignore[method-assign]
