"""Fixtures shared by the tests of ``streams``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def leave_an_event_loop() -> Iterator[None]:
    """pytest-asyncio closes its loop after an async test; a sync test that runs
    after it in the same process (test_planning's, test_commit's: which ones
    depends on how pytest-xdist shares the tests out) creates Faust futures with
    no running loop and needs a current one, as it has when it runs first. So
    every test of ``streams`` leaves one, not only those of the modules that
    asked (a module that forgot made test_commit fail in some orders)."""
    yield
    try:
        if not asyncio.get_event_loop_policy().get_event_loop().is_closed():
            return
    except RuntimeError:  # none set: pytest-asyncio's was closed and unset
        pass
    asyncio.set_event_loop(asyncio.new_event_loop())
