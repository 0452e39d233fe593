"""The agent's consume step: batches from the intake, through the aligned input,
to the processor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from streams.compat.intake import Intake
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


async def consume(stream: Any, intake: Intake, aligned: AlignedInput, progress: Progress,
                  reader: GapReader, settings: Settings) -> None:
    """Take batches from ``intake`` (:meth:`streams.compat.Intake.batches`: what is
    queued, without a fixed wait), repair gaps, hand them to the aligned input.

    ``stream`` is the agent's Faust stream: iterating its channel once
    registers the agent's topics with Faust's conductor, which subscribes to
    them; the messages themselves come through ``intake``. Per batch: each
    message becomes a :class:`Record`; a gap before it
    (:meth:`Progress.find_gap`) is read back first, so each partition's
    records arrive contiguous; :meth:`AlignedInput.receive` holds them and
    :meth:`AlignedInput.drain` processes what may go now, in event-time order
    (it marks them done). The messages of a batch are acknowledged to Faust
    when the next batch is taken, but offset commits are capped at
    :attr:`Progress.done`: held records are never committed.
    """
    aiter(stream.channel)  # subscribes: Faust's conductor learns the topics here
    async for messages in intake.batches(settings.batch_max, settings.batch_within_s):
        # Every record is seen (Progress) before any read-back awaits: taken from
        # the intake, it must not look dropped to streams.gaps.reread_dropped.
        records = [Record.from_message(message) for message in messages]
        gaps = [progress.find_gap(record, message.generation_id)
                for record, message in zip(records, messages, strict=True)]
        batch: list[Record] = []
        for record, gap in zip(records, gaps, strict=True):
            if gap is not None:
                batch.extend(await reader.fetch(record.topic, record.partition, *gap))
            batch.append(record)
        aligned.receive(batch)
        await aligned.drain()
