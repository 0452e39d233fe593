"""Send JSON-lines events to the input topics, keyed ``shop|customer``.

  loyalty produce FILE|- [--rate N] [--delivery-timeout S] [--skip N] [--quiet]

Each line is routed by its ``"type"`` to the input topic from the topic
registry and keyed ``shop_id|customer_id``. Lines that cannot be routed (not
JSON, no known type, no ids) still go to the purchases topic, unkeyed, so the
service dead-letters them with a reason instead of them vanishing here.
Blank lines are ignored. Progress goes to stderr; ``--rate`` caps events per
second.

Delivery: an idempotent producer (``acks=all``) retries every record through
broker outages until it is acknowledged or ``--delivery-timeout`` seconds
(default 120) have passed since it was sent; its retries never duplicate a
record. Exit 0 when every line was acknowledged, with the count routed to
each topic on stdout. Otherwise exit 1 and name the first line (1-based, in
the file) that was not acknowledged: every line before it is in Kafka exactly
once. ``--skip N`` resumes after the first N lines of the file; lines after
the reported one may have been written already, and are then written again,
which the service ignores: the fold deduplicates events by ``event_id``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

DEFAULT_DELIVERY_TIMEOUT_S = 120.0
#: records sent but not yet settled, at most (bounds memory, keeps the pipe full)
WINDOW = 5000


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the produce options."""
    parser.add_argument("file", help="JSON-lines file, or - for stdin")
    parser.add_argument("--rate", type=float, default=None, help="events per second limit")
    parser.add_argument("--delivery-timeout", type=float, default=DEFAULT_DELIVERY_TIMEOUT_S,
                        metavar="S",
                        help="seconds a record may wait for the broker's acknowledgement, "
                        "retrying through outages (default %(default)g)")
    parser.add_argument("--skip", type=int, default=0, metavar="N",
                        help="skip the first N lines of the file (resume after a failed run "
                        "that reported line N+1; the service deduplicates events by event_id "
                        "anyway)")
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


class DeliveryError(Exception):
    """Some records were not acknowledged; ``delivery`` says which and why."""

    def __init__(self, delivery: Delivery) -> None:
        super().__init__(delivery.error)
        self.delivery = delivery


@dataclass
class Delivery:
    """Outcome of :func:`deliver`.

    ``connected`` tells whether the producer reached the broker at all.
    ``acked`` records (a prefix of the input, in order) were acknowledged by
    the broker, each exactly once. ``error`` is None on full success; else the
    record at index ``acked`` is the first one not acknowledged.
    """

    acked: int = 0
    connected: bool = False
    per_topic: collections.Counter[str] = field(default_factory=collections.Counter)
    error: str | None = None


def _describe(exc: BaseException) -> str:
    name, text = type(exc).__name__, str(exc)
    if not text or text == name:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


async def deliver(settings: Any, records: Iterable[tuple[str, bytes | None, bytes]], *,
                  delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT_S,
                  total: int | None = None, rate: float | None = None,
                  show_progress: bool = True) -> Delivery:
    """Produce ``(topic, key, value)`` triples in order with an idempotent producer.

    Never raises for delivery problems: a broker that cannot be reached at
    start, a record not acknowledged within ``delivery_timeout`` seconds of
    being sent, or any send error ends the run and is described in the result.
    """
    from aiokafka import AIOKafkaProducer

    from streams.security import client_kwargs

    out = Delivery()
    timeout_ms = max(1000, int(delivery_timeout * 1000))
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, acks="all", enable_idempotence=True,
        linger_ms=5, request_timeout_ms=timeout_ms, retry_backoff_ms=250,
        **client_kwargs(settings))
    try:
        await asyncio.wait_for(producer.start(), timeout=max(5.0, min(delivery_timeout, 30.0)))
    except Exception as exc:  # noqa: BLE001 - reported, not traced
        out.error = f"cannot reach the broker at {settings.broker} ({_describe(exc)})"
        await _close(producer)
        return out
    out.connected = True
    started = time.monotonic()
    pending: collections.deque[tuple[str, Any, float]] = collections.deque()

    async def settle(oldest_only: bool) -> bool:
        """Await sent records in order; False at the first one not acknowledged."""
        while pending and (not oldest_only or len(pending) >= WINDOW or pending[0][1].done()):
            topic, fut, deadline = pending[0]
            try:
                if not fut.done():
                    await asyncio.wait_for(asyncio.shield(fut),
                                           max(0.0, deadline - time.monotonic()))
                fut.result()  # raises the delivery error, if any
            except TimeoutError:
                out.error = f"not acknowledged within the delivery timeout ({delivery_timeout:g} s)"
                return False
            except Exception as exc:  # noqa: BLE001 - any delivery error ends the run
                out.error = _describe(exc)
                return False
            pending.popleft()
            out.acked += 1
            out.per_topic[topic] += 1
            if show_progress and out.acked % 500 == 0:
                progress(out.acked, total, started, sys.stderr)
        return True

    try:
        n = 0
        for topic, key, value in records:
            if rate:
                ahead = n / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            deadline = time.monotonic() + delivery_timeout
            try:
                fut = await asyncio.wait_for(producer.send(topic, value, key=key),
                                             delivery_timeout)
            except TimeoutError:
                fut = None
                error = f"could not be queued within the delivery timeout ({delivery_timeout:g} s)"
            except Exception as exc:  # noqa: BLE001 - e.g. an unknown topic
                fut, error = None, _describe(exc)
            if fut is None:
                # Records before this one may still be acknowledged: settle them first.
                if await settle(oldest_only=False):
                    out.error = error
                return out
            pending.append((topic, fut, deadline))
            n += 1
            if not await settle(oldest_only=True):
                return out
        await settle(oldest_only=False)
        return out
    finally:
        if show_progress:
            progress(out.acked, total, started, sys.stderr)
            sys.stderr.write("\n")
        await _close(producer)


async def _close(producer: Any) -> None:
    # stop() flushes what is still queued; with the broker gone that would wait
    # forever, and whatever is unsettled has been reported as not acknowledged.
    try:
        await asyncio.wait_for(producer.stop(), timeout=5.0)
    except Exception:  # noqa: BLE001 - closing after a failure
        pass


async def produce_records(settings: Any, records: Iterable[tuple[str, bytes | None, bytes]], *,
                          total: int | None = None, rate: float | None = None,
                          show_progress: bool = True,
                          delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT_S) -> int:
    """:func:`deliver`, returning the count acknowledged (all of them).

    Raises :class:`DeliveryError` when some record was not acknowledged.
    """
    result = await deliver(settings, records, delivery_timeout=delivery_timeout, total=total,
                           rate=rate, show_progress=show_progress)
    if result.error is not None:
        raise DeliveryError(result)
    return result.acked


def read_lines(fh: IO[bytes], skip: int) -> list[tuple[int, bytes]]:
    """``(line number, line)`` of the non-blank lines after the first ``skip`` lines."""
    out = []
    for number, line in enumerate(fh, start=1):
        if number > skip and line.strip():
            out.append((number, line.rstrip(b"\r\n")))
    return out


def run(args: argparse.Namespace) -> int:
    """Read the lines and produce them. Exit 1 with the first unacknowledged line."""
    from streams.logfilter import install
    from streams.settings import get_settings

    if args.skip < 0:
        print("loyalty produce: --skip must be 0 or more", file=sys.stderr)
        return 2
    if args.delivery_timeout <= 0:
        print("loyalty produce: --delivery-timeout must be more than 0", file=sys.stderr)
        return 2
    settings = get_settings()
    # aiokafka logs every failed retry during an outage: one line per cause per 10 s.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    install(10.0)
    try:
        if args.file == "-":
            lines = read_lines(sys.stdin.buffer, args.skip)
        else:
            with open(args.file, "rb") as fh:
                lines = read_lines(fh, args.skip)
    except OSError as exc:
        print(f"loyalty produce: cannot read {args.file}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    triples = ((*route(line, settings), line) for _, line in lines)
    result = asyncio.run(deliver(settings, triples, delivery_timeout=args.delivery_timeout,
                                 total=len(lines), rate=args.rate,
                                 show_progress=not args.quiet))
    for topic, count in sorted(result.per_topic.items()):
        print(f"{topic}\t{count}")
    if result.error is None:
        print(f"produced {result.acked} events", file=sys.stderr)
        return 0
    if not result.connected:
        print(f"loyalty produce: {result.error}; nothing was sent", file=sys.stderr)
    elif result.acked < len(lines):
        first = lines[result.acked][0]
        print(f"loyalty produce: line {first} was not acknowledged: {result.error}\n"
              f"loyalty produce: {result.acked} events acknowledged (every line before "
              f"line {first} exactly once); resume with --skip {first - 1}", file=sys.stderr)
    else:
        print(f"loyalty produce: {result.error}", file=sys.stderr)
    return 1
