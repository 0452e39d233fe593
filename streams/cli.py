"""The ``loyalty`` command line.

Each subcommand lives in its own module under :mod:`streams.commands` and
exposes two functions:

* ``configure(parser: argparse.ArgumentParser) -> None`` adds its arguments;
* ``run(args: argparse.Namespace) -> int`` does the work and returns the exit code.

Command modules must keep their import cheap (no Faust, no aiokafka, no scipy
at module level) because ``loyalty --help`` imports all of them; heavy imports
go inside ``run``.

Errors a user can cause (an invalid ``LOYALTY_*`` variable, a bad policy
file, an unreachable broker, an unreadable file, a taken port, a
:class:`~streams.commands.CommandError`) are turned into one line on stderr
and an exit code by :func:`explain`, here and nowhere else; only a bug in the
program itself shows a traceback. Exit codes: 0 success, 1 the operation
failed (broker down, port taken), 2 bad input or settings, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help). Order is the order shown by --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "broker": ("streams.commands.broker", "run a local single-node Apache Kafka (KRaft) for development and CI"),
    "topics": ("streams.commands.topics", "create the project's input and output topics"),
    "replay": ("streams.commands.replay", "fold a JSON-lines event file offline and print customer snapshots"),
    "clv": ("streams.commands.clv", "fit the predictive lifetime-value models (BG/NBD + Gamma-Gamma)"),
    "worker": ("streams.commands.worker", "run the streaming scorer (Faust worker)"),
    "produce": ("streams.commands.produce", "send JSON-lines events to the input topics, keyed correctly"),
    "tail": ("streams.commands.tail", "print the records of a topic"),
    "customer": ("streams.commands.customer", "show one customer's snapshot from the running service"),
    "forget": ("streams.commands.forget", "forget a customer (right to erasure): request its deletion"),
    "demo": ("streams.commands.demo", "start broker, topics and worker and stream a synthetic shop through them"),
    "bench": ("streams.commands.bench", "measure throughput, latency, memory and recovery against the local broker"),
}


def version() -> str:
    """The installed distribution's version ("unknown" when run from a tree that is not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("loyalty-scorer")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loyalty",
        description="Streaming loyalty scorer: folds shop events into per-customer loyalty state.",
    )
    parser.add_argument("--version", action="version", version=f"loyalty {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # command not built yet
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.configure(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - explain() re-raises what it does not know
        message, code = explain(exc)
        print(f"loyalty {args.command}: {one_line(message)}", file=sys.stderr)
        return code


def one_line(message: str) -> str:
    """``message`` on one line: pydantic's multi-line errors joined, its documentation links dropped."""
    lines = [line.strip() for line in message.splitlines()]
    return " ".join(line for line in lines if line and not line.startswith("For further information"))


def _setting_errors(exc: Exception) -> str | None:
    """The invalid LOYALTY_* variables of a settings ValidationError, or None for another error."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError) or exc.title != "Settings":
        return None
    parts = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err.get("loc") else ""
        name = "LOYALTY_" + field.upper()
        value = os.environ.get(name)
        shown = f"={value!r}" if value is not None else ""
        parts.append(f"{name}{shown}: {err['msg']}")
    return "invalid setting " + "; ".join(parts)


def explain(exc: Exception) -> tuple[str, int]:
    """A one-line message and exit code for an error the user can fix; re-raises anything else."""
    from streams.commands import CommandError

    if isinstance(exc, CommandError):
        return str(exc), exc.code
    settings_message = _setting_errors(exc)
    if settings_message is not None:
        return settings_message, 2
    from schemas.policy import PolicyError

    if isinstance(exc, PolicyError):
        return str(exc), 2
    kafka_errors = sys.modules.get("aiokafka.errors")
    if kafka_errors is not None and isinstance(exc, kafka_errors.KafkaConnectionError):
        from streams.settings import get_settings

        return (f"cannot reach the Kafka broker at {get_settings().broker} "
                "(is it running? `loyalty broker start` starts a local one)"), 1
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        code = 2 if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError) else 1
        return f"{exc.strerror}{where}", code
    raise exc


if __name__ == "__main__":
    sys.exit(main())
