"""Input positions: where a customer's state stands in each input partition.

Each state keeps, per input partition (``"topic:partition"``, :func:`input_source`),
the offset of the last record that changed it (``positions`` of
:class:`scoring.engine.State`). The planner marks every state the fold changes
(the engine's ``at_position``) and asks :func:`redelivered` about records the
fold rejects as ``too_late``: one at or before that offset is a redelivery of
a record applied before, whose id the state no longer remembers, not late
input. Kept apart from the planner so that ``loyalty bench --core-only``
marks states as the agent does without importing the runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scoring.engine import State
    from streams.records import Record


def input_source(record: Record) -> str:
    """The key of ``record``'s partition in a state's ``positions``."""
    return f"{record.topic}:{record.partition}"


def redelivered(state: State | None, source: str, offset: int) -> bool:
    """Whether a record at or before ``offset`` of ``source`` already changed ``state``.

    Sound because every partition's records reach the planner in offset order
    (gaps are read back before later records, streams/gaps.py) and a state is
    written only after the outputs of the records that changed it were
    acknowledged (streams/commit.py): a record at or before that position was
    planned, and whatever it caused was published. Two things break the first
    premise: a topic deleted and created again under the same name (offsets
    restart), and a skipped range the gap reader could not read back in time
    (logged as an error, "could only re-read"), whose records, if they come
    again later, are behind later ones. The planner therefore asks only for
    records the fold rejects as ``too_late``, which change nothing either way:
    such a record loses its dead letter, never an effect.
    """
    return state is not None and offset <= state.positions.get(source, -1)
