"""Send JSON-lines events to the input topics, keyed ``shop|customer``.

  loyalty produce FILE|- [--rate N]

Each line is routed by its ``"type"`` to the input topic from the topic
registry and keyed ``shop_id|customer_id``. Lines that cannot be routed (not
JSON, no known type, no ids) still go to the purchases topic, unkeyed, so the
service dead-letters them with a reason instead of them vanishing here.
Progress goes to stderr; ``--rate`` caps events per second. Exit 0 when every
record was acknowledged by the broker.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from typing import IO, Any


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the produce options."""
    parser.add_argument("file", help="JSON-lines file, or - for stdin")
    parser.add_argument("--rate", type=float, default=None, help="events per second limit")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def route(line: bytes, settings: Any) -> tuple[str, bytes | None]:
    """``(topic, key)`` for one line; unroutable lines go to purchases, unkeyed."""
    from schemas import codec
    from streams.topics import input_topic_for_event_type, message_key

    try:
        obj = codec.loads(line)
        topic = input_topic_for_event_type(settings, obj["type"])
        return topic, message_key(obj["shop_id"], obj["customer_id"])
    except Exception:  # noqa: BLE001 - anything unroutable is the service's to reject
        return settings.topic_purchases, None


def progress(done: int, total: int | None, started: float, out: IO[str]) -> None:
    """Draw a one-line progress bar on ``out``."""
    rate = done / max(1e-9, time.monotonic() - started)
    if total:
        filled = int(30 * done / total)
        bar = "#" * filled + "." * (30 - filled)
        out.write(f"\r[{bar}] {done}/{total} events  {rate:,.0f}/s ")
    else:
        out.write(f"\r{done} events  {rate:,.0f}/s ")
    out.flush()


async def produce_records(settings: Any, records: Iterable[tuple[str, bytes | None, bytes]], *,
                          total: int | None = None, rate: float | None = None,
                          show_progress: bool = True) -> int:
    """Produce ``(topic, key, value)`` triples in order; returns the count acknowledged."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all",
                                linger_ms=5, enable_idempotence=True)
    await producer.start()
    started = time.monotonic()
    n = 0
    pending = []
    try:
        for topic, key, value in records:
            if rate:
                ahead = n / rate - (time.monotonic() - started)
                if ahead > 0:
                    import asyncio

                    await asyncio.sleep(ahead)
            pending.append(await producer.send(topic, value, key=key))
            n += 1
            if len(pending) >= 2000:
                for f in pending:
                    await f
                pending.clear()
            if show_progress and n % 500 == 0:
                progress(n, total, started, sys.stderr)
        for f in pending:
            await f
    finally:
        await producer.stop()
    if show_progress:
        progress(n, total, started, sys.stderr)
        sys.stderr.write("\n")
    return n


def run(args: argparse.Namespace) -> int:
    """Read the lines and produce them."""
    import asyncio

    from streams.settings import get_settings

    settings = get_settings()
    fh = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")
    with fh:
        data = [line.rstrip(b"\r\n") for line in fh if line.strip()]
    triples = ((*route(line, settings), line) for line in data)
    n = asyncio.run(produce_records(settings, triples, total=len(data), rate=args.rate,
                                    show_progress=not args.quiet))
    print(f"produced {n} events", file=sys.stderr)
    return 0
