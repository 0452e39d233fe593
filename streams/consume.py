"""The agent's consume step: batches from Faust's stream, through the aligned input,
to the processor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from streams import compat
from streams.gaps import GapReader, Progress
from streams.records import Record
from streams.settings import Settings

if TYPE_CHECKING:
    from streams.aligned_input import AlignedInput


class BatchHandler(Protocol):
    """What handles a batch (:class:`streams.agent.Processor`)."""

    async def handle_batch(self, records: list[Record]) -> None:
        """Process ``records`` in order; never raises for a record."""
        ...


async def consume(stream: Any, aligned: AlignedInput, progress: Progress, reader: GapReader,
                  settings: Settings) -> None:
    """Take batches from ``stream`` (:func:`streams.compat.take_batches`: what is
    queued, without a fixed wait), repair gaps, hand them to the aligned input.

    Per batch: each event becomes a :class:`Record`; a gap before it
    (:meth:`Progress.find_gap`) is read back first, so each partition's
    records arrive contiguous; :meth:`AlignedInput.receive` holds them and
    :meth:`AlignedInput.drain` processes what may go now, in event-time order
    (it marks them done). The events of a batch are acknowledged to Faust when
    the next batch is taken, but offset commits are capped at
    :attr:`Progress.done`: held records are never committed.
    """
    async for events in compat.take_batches(stream, settings.batch_max, settings.batch_within_s):
        batch: list[Record] = []
        for event in events:
            record = Record.from_message(event.message)
            gap = progress.find_gap(record, event.message.generation_id)
            if gap is not None:
                batch.extend(await reader.fetch(record.topic, record.partition, *gap))
            batch.append(record)
        aligned.receive(batch)
        await aligned.drain()
