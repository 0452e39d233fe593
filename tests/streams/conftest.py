"""Fixtures shared by the tests of ``streams``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest


@pytest.fixture
def leave_an_event_loop() -> Iterator[None]:
    """pytest-asyncio closes its loop after an async test; a sync test collected
    after the module (test_planning's) creates Faust futures with no running
    loop and needs a current one, as it has when it runs first."""
    yield
    asyncio.set_event_loop(asyncio.new_event_loop())
