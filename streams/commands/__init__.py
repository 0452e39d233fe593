"""The ``loyalty`` subcommands (see :mod:`streams.cli`)."""

from __future__ import annotations


class CommandError(Exception):
    """An error the user can fix; :func:`streams.cli.main` prints it as one line and exits ``code``.

    The message should say what is wrong and, when it is not obvious, what to do.
    """

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
