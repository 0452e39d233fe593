"""The one JSON codec of the project (orjson).

Every byte string that crosses Kafka, the HTTP API, the CLI or a state table is
produced and read here, so encoding rules live in one place:

* ``dumps`` emits compact UTF-8 JSON; dict keys are kept in insertion order
  (outputs are built in a deliberate field order), non-str keys are rejected.
* ``loads`` rejects NaN and Infinity (orjson never accepts them) and invalid
  UTF-8, raising :class:`CodecError` (a ``ValueError``).
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["CodecError", "dumps", "dumps_pretty", "dumps_sorted", "loads"]


class CodecError(ValueError):
    """The bytes are not one well-formed JSON document."""


def dumps(obj: Any) -> bytes:
    """Encode ``obj`` as compact JSON bytes."""
    return orjson.dumps(obj)


def dumps_sorted(obj: Any) -> bytes:
    """Encode with sorted keys: a canonical form, for digests and stable files."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def dumps_pretty(obj: Any) -> bytes:
    """Indented, key-sorted JSON for files humans read (JSON Schema, policy dumps)."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Decode one JSON document; raise :class:`CodecError` with orjson's reason."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CodecError(str(exc)) from None
