"""Create or list the project's topics (the registry in streams.topics).

  loyalty topics create   create every missing topic with LOYALTY_PARTITIONS partitions
  loyalty topics list     show the registry and what exists on the broker

`create` is idempotent and never alters an existing topic. If one exists with
a different partition count it prints a warning naming the topic and both
counts and exits 1 (co-partitioning with the tables would be broken);
otherwise it exits 0. Exit 1 as well when the broker is unreachable.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the create/list subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for the broker (default 30)")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("create", parents=[common], help="create all missing project topics")
    sub.add_parser("list", parents=[common],
                   help="list the project topics and their state on the broker")


def _err(message: str) -> None:
    print(f"loyalty topics: {message}", file=sys.stderr, flush=True)


async def _list(settings: Settings, timeout_ms: int) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.security import client_kwargs
    from streams.topics import partition_counts, topic_specs

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                                request_timeout_ms=timeout_ms, **client_kwargs(settings))
    await admin.start()
    try:
        specs = topic_specs(settings)
        existing = set(await admin.list_topics())
        counts = await partition_counts(admin, [s.name for s in specs if s.name in existing])
    finally:
        await admin.close()
    print(f"{'topic':<32} {'role':<7} {'policy':<8} {'want':>4} {'have':>5}  key")
    status = 0
    for s in specs:
        have = counts.get(s.name)
        mark = "-" if have is None else str(have)
        if have is not None and have != s.partitions:
            mark += "!"
            status = 1
        policy = "compact" if s.compacted else "delete"
        print(f"{s.name:<32} {s.role:<7} {policy:<8} {s.partitions:>4} {mark:>5}  {s.key_codec}")
    return status


def run(args: argparse.Namespace) -> int:
    """Execute the action; exit 0 ok, 1 partition mismatch or broker unreachable."""
    import asyncio
    import logging

    from streams.security import client_kwargs
    from streams.settings import get_settings
    from streams.topics import ensure_topics, topic_specs

    # aiokafka logs every failed connection attempt at ERROR; our message is enough.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    settings = get_settings()
    timeout_ms = int(args.timeout * 1000)
    try:
        if args.action == "list":
            return asyncio.run(_list(settings, timeout_ms))
        created, mismatches = asyncio.run(
            ensure_topics(settings.bootstrap_servers, topic_specs(settings),
                          settings.replication_factor, request_timeout_ms=timeout_ms,
                          client=client_kwargs(settings)))
    except Exception as exc:  # noqa: BLE001 - any failure is reported the same way
        from aiokafka.errors import KafkaConnectionError

        if isinstance(exc, KafkaConnectionError):
            _err(f"cannot reach the broker at {settings.broker} ({exc}); "
                 "start it with `loyalty broker start`")
        else:
            _err(f"{type(exc).__name__}: {exc}")
        return 1
    total = len(topic_specs(settings))
    for name in created:
        print(f"created {name} ({settings.partitions} partitions)")
    print(f"{len(created)} created, {total - len(created)} already existed")
    for mismatch in mismatches:
        print(f"WARNING: {mismatch}", file=sys.stderr)
    return 1 if mismatches else 0
