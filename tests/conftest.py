"""Fixtures shared by every test tier.

Kafka fixtures (``bootstrap``, ``create_topic``) talk to the real local broker
(``make test`` / ``loyalty broker start``). If it does not answer, tests that
need it FAIL with instructions - they are never skipped, so CI cannot go
green without having exercised the broker. Any test using ``bootstrap`` is
marked ``integration`` automatically, and with ``CI_FORBID_INTEGRATION_SKIPS=1``
(set by ``.ci/run``) a skipped integration test is reported as a failure.

Isolation: tests share one broker, and other people's test runs may share it
at the same time, so every topic and consumer group a test creates must come
from ``unique_name``. Hygiene: the topics a test creates are deleted when it
ends (``create_topic``'s, and every topic named after a ``unique_name`` or a
:func:`tests.leftovers.own_topics` registration).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from collections.abc import Callable, Coroutine, Generator, Iterator
from typing import Any, TypeVar

import pytest

from tests import leftovers

T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run ``coro`` to completion on a fresh event loop in a helper thread.

    Works from sync tests and from inside async tests (where ``asyncio.run``
    would refuse to nest); it blocks the calling loop, which is fine for setup.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout=timeout)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A test that needs the broker is an integration test wherever it lives.
    for item in items:
        if "bootstrap" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
    # Modules with a slow test first (stable otherwise, and whole, so that a
    # module's fixtures are set up once per process): with several test
    # processes (`make test` runs two) the short tests then fill the gaps,
    # instead of one process starting a long test when the other is done.
    slow = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None]:
    # CI (.ci/run sets CI_FORBID_INTEGRATION_SKIPS=1) must never go green with
    # integration tests skipped, whoever wrote the skip: report them as failures.
    outcome = yield
    report = outcome.get_result()
    if (os.environ.get("CI_FORBID_INTEGRATION_SKIPS") == "1" and report.skipped
            and not hasattr(report, "wasxfail")
            and item.get_closest_marker("integration") is not None):
        report.outcome = "failed"
        report.longrepr = (f"integration test skipped in CI ({report.longrepr}); "
                           "skips are forbidden here (CI_FORBID_INTEGRATION_SKIPS=1)")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None]:
    # Same rule for a whole integration module skipped at import (importorskip,
    # allow_module_level skips); changed before any reporter sees the report.
    outcome = yield
    report = outcome.get_result()
    if (os.environ.get("CI_FORBID_INTEGRATION_SKIPS") == "1" and report.skipped
            and "/integration/" in f"/{report.nodeid}"):
        report.outcome = "failed"
        report.longrepr = f"integration module skipped in CI: {report.longrepr}"


@pytest.fixture(scope="session")
def bootstrap() -> str:
    """``"127.0.0.1:PORT"`` of the local broker (port from settings); fails if it is down."""
    from streams.broker import probe_metadata
    from streams.settings import get_settings

    settings = get_settings()
    host, port = settings.broker_host, settings.broker_port
    # A few tries: a broker started a moment ago by `make test` is already up,
    # but a loaded machine can make the first request slow.
    for _ in range(3):
        if probe_metadata(host, port, timeout=3.0) is not None:
            return f"{host}:{port}"
    pytest.fail(
        f"no Kafka broker answers a metadata request on {host}:{port} "
        f"(LOYALTY_BROKER={settings.broker}). Integration tests need the real broker: "
        "run `make test` (starts and stops it for you) or `.venv/bin/loyalty broker start` "
        "first.",
        pytrace=False,
    )


def _default_bootstrap() -> str:
    from streams.settings import get_settings

    settings = get_settings()
    return f"{settings.broker_host}:{settings.broker_port}"


@pytest.fixture(autouse=True)
def _delete_owned_topics() -> Iterator[None]:
    """After each test (and its other fixtures), delete the topics it registered
    (:mod:`tests.leftovers`: why). A test that registered nothing costs nothing."""
    mark = leftovers.mark()
    yield
    leftovers.delete_registered_since(mark)


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Factory of collision-free topic / group names: ``unique_name("scores")``.

    Names embed the test name (for debugging leftovers on the broker) and a
    random suffix (for concurrent runs against the same broker). Topics whose
    names contain the suffix (also derived ones: an app id's changelogs) are
    deleted from the default broker after the test.
    """
    test = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40].strip("-")

    def make(prefix: str = "t") -> str:
        suffix = uuid.uuid4().hex[:10]
        leftovers.own_topics(_default_bootstrap(), suffix)
        return f"test.{prefix}.{test}.{suffix}"

    return make


class TopicFactory:
    """Creates topics via the admin client and deletes them at teardown.

    Call it: ``name = create_topic(partitions=4)``; ``track(name)`` registers a
    topic created some other way (e.g. by the CLI) for deletion too.
    """

    def __init__(self, bootstrap: str, unique_name: Callable[[str], str]) -> None:
        self.bootstrap = bootstrap
        self._unique_name = unique_name
        self.created: list[str] = []

    def __call__(self, partitions: int = 1, *, name: str | None = None,
                 compacted: bool = False, prefix: str = "topic",
                 configs: dict[str, str] | None = None) -> str:
        """Create one topic (replication 1) and return its name once it has leaders.

        ``configs``: more topic configs (``max.message.bytes``, ...). Raises
        :class:`RuntimeError` on a broker error (e.g. the name exists).
        """
        name = name or self._unique_name(prefix)
        configs = {"cleanup.policy": "compact" if compacted else "delete", **(configs or {})}

        async def create() -> None:
            from aiokafka.admin import AIOKafkaAdminClient, NewTopic

            from streams.topics import partition_counts

            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await admin.start()
            try:
                resp = await admin.create_topics(
                    [NewTopic(name, partitions, 1, topic_configs=configs)])
                for topic, code, *rest in resp.topic_errors:
                    if code != 0:
                        raise RuntimeError(f"creating {topic}: error {code} {rest}")
                # Return only once the topic has leaders in the metadata, so the
                # test's first produce/describe does not race topic creation.
                await partition_counts(admin, [name])
            finally:
                await admin.close()

        run_async(create())
        self.created.append(name)
        return name

    def track(self, *names: str) -> None:
        """Delete these topics at teardown as well."""
        self.created.extend(names)

    def cleanup(self) -> None:
        """Best-effort deletion of every created/tracked topic that exists."""
        if self.created:
            leftovers.delete_topics(self.bootstrap, self.created)


@pytest.fixture
def create_topic(bootstrap: str, unique_name: Callable[[str], str]) -> Iterator[TopicFactory]:
    """Create topics with N partitions on the real broker; deleted after the test."""
    factory = TopicFactory(bootstrap, unique_name)
    yield factory
    factory.cleanup()
