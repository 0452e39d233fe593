"""Print the records of a topic as JSON lines: key, partition, offset, value.

  loyalty tail TOPIC [-n N] [--from-beginning] [--follow]

TOPIC is a topic name or a registry alias (purchases, visits, feedback,
redemptions, forget, transitions, rewards, scores, dead-letter). Without
--from-beginning only the last N records of each partition are shown.
Values that are JSON are printed as JSON, others as a string.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

ALIASES = {"purchases": "topic_purchases", "visits": "topic_visits",
           "feedback": "topic_feedback", "redemptions": "topic_redemptions",
           "forget": "topic_forget",
           "transitions": "topic_transitions", "stage-transitions": "topic_transitions",
           "rewards": "topic_rewards", "scores": "topic_scores",
           "dead-letter": "topic_dead_letter", "clv-params": "topic_clv_params"}


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the tail options."""
    parser.add_argument("topic", help="topic name or alias (rewards, scores, dead-letter, ...)")
    parser.add_argument("-n", type=int, default=10, help="records per partition (default 10)")
    parser.add_argument("--from-beginning", action="store_true", help="print every record")
    parser.add_argument("--follow", "-f", action="store_true", help="keep printing new records")


def _render(msg: Any) -> bytes:
    from schemas import codec

    try:
        value: Any = codec.loads(msg.value) if msg.value is not None else None
    except ValueError:
        value = msg.value.decode("utf-8", "replace")
    key = msg.key.decode("utf-8", "replace") if msg.key is not None else None
    return codec.dumps({"partition": msg.partition, "offset": msg.offset, "key": key,
                        "value": value})


async def _tail(settings: Any, topic: str, n: int, from_beginning: bool, follow: bool) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.security import client_kwargs

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                                **client_kwargs(settings))
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    parts = [p["partition"] for d in described if d["error_code"] == 0 for p in d["partitions"]]
    if not parts:
        print(f"loyalty tail: no such topic {topic!r}", file=sys.stderr)
        return 1
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers,
                                enable_auto_commit=False, group_id=None,
                                **client_kwargs(settings))
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        for tp in tps:
            start = begins[tp] if from_beginning else max(begins[tp], ends[tp] - n)
            consumer.seek(tp, start)
        remaining = {tp for tp in tps if consumer_position_lt(ends[tp], begins[tp])}
        out = sys.stdout.buffer
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, msgs in batch.items():
                for m in msgs:
                    out.write(_render(m) + b"\n")
                    if m.offset + 1 >= ends[tp]:
                        remaining.discard(tp)
            out.flush()
            if not follow and (not remaining or not batch):
                return 0
    finally:
        await consumer.stop()


def consumer_position_lt(end: int, begin: int) -> bool:
    """True when a partition has records to read."""
    return end > begin


def run(args: argparse.Namespace) -> int:
    """Print the records."""
    import asyncio
    import logging

    from streams.settings import get_settings

    settings = get_settings()
    # aiokafka logs every failed connection attempt; the CLI reports an
    # unreachable broker once, as one line (streams.cli.explain).
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    topic = args.topic
    if topic in ALIASES:
        topic = getattr(settings, ALIASES[topic])
    try:
        return asyncio.run(_tail(settings, topic, args.n, args.from_beginning, args.follow))
    except KeyboardInterrupt:
        return 130
