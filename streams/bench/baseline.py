"""The baseline: the plain aiokafka loop the service is compared with.

What it does, per ``getmany`` batch: parse every record with
:func:`schemas.codec.loads` (orjson), produce one tiny JSON record per input
record (``{"k": <input offset>, "t": <event type>}``) to an output topic,
wait until the broker has acknowledged all of them (acks=all, as the worker's
producer), then commit the batch's offsets (``consumer.commit()``). That is
the cheapest loop that is still at-least-once: no framework, no state, no
per-record await. The service does strictly more, so it cannot beat it.

What is measured: ``seconds`` from just before the first ``getmany`` (the
consumer has joined its group and been assigned the partitions) to the
acknowledgement of the last output record, for ``expected`` input records;
``events_per_s = expected / seconds``. The process's own CPU seconds over the
same interval are reported too (``cpu_s``), which is less sensitive to other
load on a shared machine.

It runs in its own process (``python -m streams.bench.baseline ...``, JSON on
stdout) so it starts with a clean interpreter like the worker, not one that
has just generated a million events.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from schemas import codec


async def run_baseline(bootstrap: list[str] | str, topics: list[str], out_topic: str,
                       group: str, expected: int, timeout_s: float = 600.0) -> dict[str, Any]:
    """Consume ``expected`` records of ``topics`` through the plain loop; return timings.

    Raises :class:`TimeoutError` if they are not all processed in ``timeout_s``.
    """
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    await consumer.start()
    try:
        # Join the group before the clock starts: group coordination is a fixed
        # cost the worker's figure excludes too (it is in its cold start).
        deadline = time.monotonic() + 60
        while not consumer.assignment():
            if time.monotonic() > deadline:
                raise TimeoutError("baseline consumer got no partitions in 60 s")
            await asyncio.sleep(0.05)
            await consumer.getmany(timeout_ms=0)  # drives the join; records are not lost
            consumer.seek_to_beginning()
        done = 0
        parse_errors = 0
        started = time.monotonic()
        cpu0 = time.process_time()
        end_by = started + timeout_s
        while done < expected:
            if time.monotonic() > end_by:
                raise TimeoutError(f"baseline processed {done}/{expected} in {timeout_s:.0f} s")
            batch = await consumer.getmany(timeout_ms=200)
            futures = []
            for records in batch.values():
                for rec in records:
                    try:
                        ev = codec.loads(rec.value)
                        typ = ev.get("type") if isinstance(ev, dict) else None
                    except ValueError:
                        parse_errors += 1
                        typ = None
                    out = codec.dumps({"k": rec.offset, "t": typ})
                    futures.append(await producer.send(out_topic, out, key=rec.key))
            if futures:
                await asyncio.gather(*futures)
                await consumer.commit()
                done += len(futures)
        seconds = time.monotonic() - started
        cpu = time.process_time() - cpu0
        return {"events": done, "seconds": seconds, "events_per_s": done / seconds,
                "cpu_s": cpu, "parse_errors": parse_errors}
    finally:
        await consumer.stop()
        await producer.stop()


def main(argv: list[str] | None = None) -> int:
    """CLI entry: ``python -m streams.bench.baseline --bootstrap H:P --topic T ...``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", action="append", required=True, help="input topic (repeat)")
    p.add_argument("--out", required=True, help="output topic")
    p.add_argument("--group", required=True)
    p.add_argument("--expected", type=int, required=True)
    p.add_argument("--timeout", type=float, default=600.0)
    a = p.parse_args(argv)
    try:
        result = asyncio.run(run_baseline(a.bootstrap.split(","), a.topic, a.out, a.group,
                                          a.expected, a.timeout))
    except TimeoutError as exc:
        print(f"baseline: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(codec.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
