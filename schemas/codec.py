"""The one JSON codec of the project (orjson).

Every byte string that crosses Kafka, the HTTP API, the CLI or a state table is
produced and read here, so encoding rules live in one place:

* ``dumps`` emits compact UTF-8 JSON; dict keys are kept in insertion order
  (outputs are built in a deliberate field order), non-str keys are rejected.
* ``loads`` rejects NaN and Infinity (orjson never accepts them) and invalid
  UTF-8, raising :class:`CodecError` (a ``ValueError``).
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

__all__ = ["CodecError", "Fragment", "compact", "dumps", "dumps_pretty", "dumps_sorted",
           "loads", "text_or_base64"]

#: JSON already encoded, embedded as it is by ``dumps`` (the caller vouches for it)
Fragment = orjson.Fragment


class CodecError(ValueError):
    """The bytes are not one well-formed JSON document."""


def dumps(obj: Any) -> bytes:
    """Encode ``obj`` as compact JSON bytes."""
    return orjson.dumps(obj)


def compact(data: bytes) -> bytes:
    """An exact-size copy of ``data``, for bytes kept in memory for long.

    A ``dumps`` result keeps orjson's whole output buffer (about 8 KiB of
    memory for a 1 KiB document, measured with orjson 3.13); a cache holding
    thousands of them would hold eight times the memory it accounts for.
    """
    return memoryview(data).tobytes()


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


def text_or_base64(data: bytes | None) -> tuple[str | None, str]:
    """``(text, encoding)`` of raw bytes carried inside JSON: UTF-8 text if they decode
    (``"utf-8"``), else base64 (``"base64"``); ``(None, "none")`` for no bytes.

    The one form of a rejected record's original bytes, on the dead-letter topic
    and in ``loyalty replay --rejects``.
    """
    if data is None:
        return None, "none"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"
