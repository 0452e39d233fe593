"""Tests leave no topics on the shared broker (tests/leftovers.py: why it matters)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests import leftovers
from tests.integration.service_harness import ServiceEnv


async def _topics(bootstrap: str) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return await admin.list_topics()
    finally:
        await admin.close()


@pytest.mark.timeout(90)
def test_a_service_env_topics_are_registered_and_deleted(bootstrap: str, tmp_path,
                                                         request: pytest.FixtureRequest) -> None:
    # Every test runs the fixture that deletes what it registered.
    assert "_delete_owned_topics" in request.fixturenames
    mark = leftovers.mark()
    env = ServiceEnv(bootstrap, tmp_path)
    env.create_topics()
    made = [t for t in asyncio.run(_topics(bootstrap)) if env.name in t]
    # inputs, outputs, dead letters, both changelogs and the rekey topic
    assert len(made) >= 12, made
    owned = leftovers.owned_since(mark)
    assert owned == [(bootstrap, env.name)]

    deleted = leftovers.delete_topics(bootstrap, containing=[part for _, part in owned])
    assert sorted(deleted) == sorted(made)
    deadline = time.monotonic() + 30
    while (left := [t for t in asyncio.run(_topics(bootstrap)) if env.name in t]) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == []


def test_deleting_on_a_broker_that_is_gone_does_not_raise() -> None:
    from streams.ports import free_port

    started = time.monotonic()
    assert leftovers.delete_topics(f"127.0.0.1:{free_port()}", containing=["x"], timeout=20) == []
    assert time.monotonic() - started < 20
