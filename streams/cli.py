"""The ``loyalty`` command line.

Each subcommand lives in its own module under :mod:`streams.commands` and
exposes two functions:

* ``configure(parser: argparse.ArgumentParser) -> None`` adds its arguments;
* ``run(args: argparse.Namespace) -> int`` does the work and returns the exit code.

Command modules must keep their import cheap (no Faust, no aiokafka, no scipy
at module level) because ``loyalty --help`` imports all of them; heavy imports
go inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
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
    "demo": ("streams.commands.demo", "start broker, topics and worker and stream a synthetic shop through them"),
    "bench": ("streams.commands.bench", "measure throughput, latency, memory and recovery against the local broker"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loyalty",
        description="Streaming loyalty scorer: folds shop events into per-customer loyalty state.",
    )
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


if __name__ == "__main__":
    sys.exit(main())
