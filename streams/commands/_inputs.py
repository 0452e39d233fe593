"""What the offline commands share: the policy book, --as-of, and the input stream.

Each function prints a one-line error naming the command and returns None
on failure, so the command exits 2 with a message a user can act on.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import BinaryIO

from schemas.policy import PolicyBook, PolicyError


def load_policies(command: str, path: str | None) -> PolicyBook | None:
    try:
        return PolicyBook.load(path)
    except PolicyError as exc:
        print(f"loyalty {command}: {exc}", file=sys.stderr)
        return None


def parse_as_of(command: str, text: str | None) -> datetime | None | bool:
    """The instant, None when not given, or False (after printing why) when invalid."""
    if not text:
        return None
    from scoring.clock import parse_instant

    try:
        return parse_instant(text)
    except ValueError as exc:
        print(f"loyalty {command}: --as-of {text!r}: {exc}", file=sys.stderr)
        return False


def open_events(command: str, path: str) -> BinaryIO | None:
    """The JSON-lines input: a file, or stdin for ``-``."""
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")  # noqa: SIM115 - the caller closes it
    except OSError as exc:
        print(f"loyalty {command}: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return None
