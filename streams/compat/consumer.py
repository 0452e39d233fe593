"""Hooks into Faust's consumer: where it seeks, what it commits, how far it has read.

Also the public pause/resume/high-water calls on the app's consumer, wrapped
so that every consumer control the service uses is named in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import faust
from faust.types import TP

#: ``(committed offsets by partition) -> None``, run after every seek to committed
SeekListener = Callable[[Mapping[TP, int | None]], None]
#: ``(offsets Faust wants to commit) -> offsets to commit`` (may drop or lower entries)
CommitCap = Callable[[Mapping[TP, int]], dict[TP, int]]


def on_seek_to_committed(app: faust.App, listener: SeekListener) -> None:
    """Call ``listener`` with the committed offsets each time Faust positions its consumer.

    Works around: Faust offers no hook at the moment it positions every
    assigned partition at its committed offset (``Consumer.perform_seek``,
    after each rebalance's recovery); the first record the agent then sees
    must be that offset, and the known rebalance bugs (faust-streaming#216,
    #221, #606) break exactly that. Wraps the instance's ``perform_seek`` and
    reads its private ``_committed_offset`` map afterwards.
    """
    consumer = app.consumer
    original = consumer.perform_seek

    async def perform_seek() -> None:
        await original()
        listener(dict(consumer._committed_offset))

    consumer.perform_seek = perform_seek  # type: ignore[method-assign]


def cap_commits(app: faust.App, cap: CommitCap) -> None:
    """Pass every offset commit of Faust's consumer through ``cap`` first.

    Works around: Faust acknowledges records it drops around rebalances
    (faust-streaming#216, #221), so its committable offset can run ahead of
    what the agent processed; there is no public hook on the commit. Wraps the
    instance's private ``Consumer._commit``. When ``cap`` leaves nothing to
    commit, the commit reports success without a broker round trip.
    """
    consumer = app.consumer
    original = consumer._commit

    async def commit(offsets: Mapping[TP, int]) -> bool:
        capped = cap(offsets)
        if not capped:
            return True
        return bool(await original(capped))

    consumer._commit = commit  # type: ignore[method-assign]


def read_offsets(app: faust.App) -> Mapping[TP, int | None]:
    """Per input partition, the offset of the last record Faust's consumer has read.

    Works around: Faust does not expose how far its fetcher got, which is the
    only evidence that records were read and then dropped before reaching the
    agent (see :func:`streams.gaps.redrive_idle_partitions`). Reads the
    private ``Consumer._read_offset`` map (a read-only view is returned).
    """
    offsets: Mapping[TP, int | None] = app.consumer._read_offset
    return offsets


def generation(app: faust.App) -> int:
    """The consumer group generation of the current assignment (changes on every rebalance)."""
    return int(app.consumer_generation_id)


def pause(app: faust.App, tps: Iterable[TP]) -> None:
    """Stop fetching from input partitions ``tps`` until :func:`resume`.

    Faust's public ``Consumer.pause_partitions``: records already fetched may
    still be delivered; nothing new is fetched for those partitions.
    """
    app.consumer.pause_partitions(tps)


def resume(app: faust.App, tps: Iterable[TP]) -> None:
    """Fetch again from input partitions ``tps`` (Faust's public ``resume_partitions``)."""
    app.consumer.resume_partitions(tps)


def highwater(app: faust.App, tp: TP) -> int | None:
    """The offset after the last record of ``tp`` as of the consumer's last fetch.

    Faust's public ``Consumer.highwater``; None while the consumer has not
    fetched from ``tp`` yet (aiokafka knows no high-water mark then).
    """
    value: Any = app.consumer.highwater(tp)
    return None if value is None else int(value)
