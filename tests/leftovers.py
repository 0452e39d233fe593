"""Topics a test leaves on the shared broker, deleted when the test ends.

Why: every service test makes a dozen topics of four partitions under a
unique name (inputs, outputs, changelogs, the rekey topic), and a developer's
broker (``var/broker``) outlives the test runs. Left there, they add up to
thousands of partitions within a day of runs, and a broker carrying them
spends a third of a core doing nothing useful and serves every produce and
fetch slower: ``loyalty bench`` latency figures on such a broker were several
times worse than on a fresh one (README "Performance").

:func:`own_topics` registers a name part (unique: a random hex suffix, a
``svc-...`` app id) for the running test; the autouse fixture in
``tests/conftest.py`` deletes every topic whose name contains it once the
test and its other fixtures are done. Deletion is best effort: a broker that
is down or gone (a private one stopped by the test) leaves nothing to delete.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterable

#: (bootstrap, name part) registered by the running test, in order
_owned: list[tuple[str, str]] = []


def own_topics(bootstrap: str, part: str) -> None:
    """Delete every topic on ``bootstrap`` whose name contains ``part`` after the current test."""
    _owned.append((bootstrap, part))


def owned_since(mark: int) -> list[tuple[str, str]]:
    """What was registered after ``len(...)`` was ``mark``; forgets it."""
    taken = _owned[mark:]
    del _owned[mark:]
    return taken


def mark() -> int:
    """A position for :func:`owned_since`."""
    return len(_owned)


def delete_registered_since(mark: int) -> None:
    """Delete the topics registered after :func:`mark` gave ``mark``, each on its broker."""
    by_broker: dict[str, list[str]] = {}
    for bootstrap, part in owned_since(mark):
        by_broker.setdefault(bootstrap, []).append(part)
    for bootstrap, parts in by_broker.items():
        delete_topics(bootstrap, containing=parts)


def delete_topics(bootstrap: str, names: Iterable[str] = (), *,
                  containing: Iterable[str] = (), timeout: float = 30.0) -> list[str]:
    """Delete ``names`` and every topic whose name contains one of ``containing``.

    Returns what was asked to be deleted. Never raises: leftovers are
    harmless to correctness (names are unique), only costly to the broker.
    """
    names, parts = list(names), list(containing)

    async def delete() -> list[str]:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        await admin.start()
        try:
            existing = await admin.list_topics()
            doomed = [t for t in existing
                      if t in names or any(part in t for part in parts)]
            if doomed:
                await admin.delete_topics(doomed)
            return doomed
        finally:
            await admin.close()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        try:
            return pool.submit(asyncio.run, delete()).result(timeout=timeout)
        except Exception:  # noqa: BLE001 - see the docstring
            return []
