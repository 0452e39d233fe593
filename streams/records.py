"""What the agent reads and writes besides state: input records, output records, dead letters.

:class:`Record` is the part of a Kafka message the agent needs, decoupled
from Faust. :class:`Outgoing` is one output record to publish.
:func:`dead_letter_record` is the format of the dead-letter topic, and
:func:`effect_messages` turns fold effects into their output records (used by
the agent and the time sweep alike).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from schemas import codec
from scoring.clock import rfc3339, to_us
from scoring.engine import effect_values

if TYPE_CHECKING:
    from faust.types import TopicT

    from streams.context import ServiceContext

#: header carrying where a re-keyed record first entered (JSON)
ORIGIN_HEADER = "loyalty-origin"

@dataclass(frozen=True)
class Record:
    """The parts of a Kafka message the processor needs (decoupled from Faust)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float | None = None  # seconds since the epoch (Kafka record timestamp)
    headers: tuple[tuple[str, bytes], ...] = ()
    #: the engine's reading of ``value`` (:meth:`scoring.engine.Engine.read`), kept by
    #: :meth:`remember_reading` so the value is parsed once; None: not read, or left
    #: to the full parser
    event: Any = field(default=None, compare=False, repr=False)

    def remember_reading(self, event: Any) -> None:
        """Keep ``event``, the engine's reading of ``value``. A memo of a pure function
        of the value: the record is otherwise immutable."""
        object.__setattr__(self, "event", event)

    @classmethod
    def from_message(cls, message: Any) -> Record:
        headers = message.headers or ()
        if isinstance(headers, dict):
            headers = tuple(headers.items())
        return cls(topic=message.topic, partition=message.partition, offset=message.offset,
                   key=message.key, value=message.value, timestamp=message.timestamp,
                   headers=tuple((str(k), bytes(v or b"")) for k, v in headers))

    def origin(self) -> dict[str, Any]:
        """Where the record first entered the system (follows a rekey hop)."""
        for name, value in self.headers:
            if name == ORIGIN_HEADER:
                try:
                    data = codec.loads(value)
                    if isinstance(data, dict):
                        return data
                except ValueError:
                    break
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset,
                "timestamp": self.timestamp}


@dataclass
class Outgoing:
    """One record to publish."""

    topic: TopicT
    key: bytes | None
    value: bytes | None  # None: a tombstone (a forgotten customer's scores record)
    headers: list[tuple[str, bytes]] | None = None


def dead_letter_record(record: Record, reason: str, detail: str) -> bytes:
    """The JSON value written to the dead-letter topic for ``record``.

    Carries the original value (UTF-8 text, or base64 with
    ``value_encoding="base64"``), the original key the same way, the reason
    code, a human detail, the source topic/partition/offset/timestamp where
    the record first entered (before any rekey hop) and when it was rejected.
    The contract is :class:`schemas.outputs.DeadLetter`; ``timestamp`` is in
    milliseconds, Kafka's unit (:attr:`Record.timestamp` and the origin header
    hold seconds, as Faust gives them).
    """
    value, value_enc = codec.text_or_base64(record.value)
    key, key_enc = codec.text_or_base64(record.key)
    origin = record.origin()
    seconds = origin.get("timestamp", record.timestamp)
    return codec.dumps({
        "reason": reason,
        "detail": detail[:4000],
        "topic": origin.get("topic", record.topic),
        "partition": origin.get("partition", record.partition),
        "offset": origin.get("offset", record.offset),
        "timestamp": None if seconds is None else round(seconds * 1000),
        "via_topic": record.topic if origin.get("topic") != record.topic else None,
        "key": key,
        "key_encoding": key_enc,
        "value": value,
        "value_encoding": value_enc,
        "dead_lettered_at": rfc3339(to_us(datetime.now(UTC))),
    })


def effect_messages(ctx: ServiceContext, key: bytes,
                    effects: Sequence[Mapping[str, Any]]) -> list[Outgoing]:
    """Output records for the effects of customer ``key``'s fold (every effect names
    that customer): ledger -> rewards, the others (transitions, alerts) -> transitions."""
    rewards, transitions = ctx.rewards, ctx.transitions
    return [Outgoing(rewards if kind == "ledger" else transitions, key, value)
            for kind, value in effect_values(effects)]
