"""The agent's consume step: one batch from Faust's stream to the processor.

Kept as one small function so a stage can be inserted between receiving a
batch and handling it.
"""

from __future__ import annotations

from typing import Any, Protocol

from streams.gaps import GapReader, Progress
from streams.records import Record
from streams.settings import Settings


class BatchHandler(Protocol):
    """What handles a batch (:class:`streams.agent.Processor`)."""

    async def handle_batch(self, records: list[Record]) -> None:
        """Process ``records`` in order; never raises for a record."""
        ...


async def consume(stream: Any, processor: BatchHandler, progress: Progress, reader: GapReader,
                  settings: Settings) -> None:
    """Take batches from ``stream``, repair gaps, handle each batch, mark it done.

    Per batch: each event becomes a :class:`Record`; a gap before it
    (:meth:`Progress.find_gap`) is read back first, so the batch is
    contiguous; :meth:`BatchHandler.handle_batch` (never raises for a record)
    processes it; then every record counts as done. Faust acknowledges the
    events of a batch only when the next batch is taken, and offset commits
    are capped at :attr:`Progress.done` (contiguous progress).
    """
    async for events in stream.take_events(settings.batch_max, within=settings.batch_within_s):
        batch: list[Record] = []
        for event in events:
            record = Record.from_message(event.message)
            gap = progress.find_gap(record, event.message.generation_id)
            if gap is not None:
                batch.extend(await reader.fetch(record.topic, record.partition, *gap))
            batch.append(record)
        await processor.handle_batch(batch)
        progress.processed(batch)
