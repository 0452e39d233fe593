"""The scoring core alone, in process: what an event costs without Kafka, Faust or RocksDB.

``loyalty bench --core-only`` runs the bench's generated stream through the
functions the state agent runs for every record, in the agent's order, with
the rows in a dict instead of RocksDB:

* per record (:meth:`streams.planning.Planner.plan`): ``parse_event``; the
  customer's state from the batch's earlier records, else through
  the engine's state cache (live states, then kept heads) from the row;
  the engine's ``apply``; a changed state marked with the record's position
  (its type and index stand for topic and offset); every effect encoded;
* per batch of ``batch_max`` records (:meth:`streams.planning.Planner.settle`
  and the commit's write): per changed customer, its state encoded, the row
  written, the cache told, and its score snapshot built and encoded.

What it leaves out is what only the service has: publishing and waiting for
acknowledgements, the changelog, tallies, metrics, alignment, rekeying and
Faust's consumer. The difference between this figure and the worker's events
per CPU-second is the cost of those. CPU is this process's user + system
time around the loop (the stream is generated before); the caller sets the
garbage collector up as the worker does (``scoring.replay.tune_gc``) and
passes the worker's batch and cache sizes.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from schemas.events import InvalidEvent, parse_event
from schemas.policy import PolicyBook
from scoring.engine import PYTHON, Engine, State, effect_values
from streams.topics import message_key


def measure_core(stream: Iterable[tuple[str, bytes, bytes]], *, policies: PolicyBook,
                 batch_max: int, cache_size: int, head_cache_mb: int,
                 cache_mb: int | None = None,
                 now: datetime | None = None,
                 rows: dict[bytes, bytes] | None = None,
                 engine: Engine = PYTHON) -> dict[str, Any]:
    """Fold ``stream`` (``(type, key, value)`` triples) as the agent would; the figures.

    Returns ``events``, ``cpu_s``, ``events_per_cpu_s``, ``us_per_event``,
    ``statuses`` (fold outcomes, ``invalid`` for records the contract rejects,
    ``forget`` for erasure requests, which are not folded here) and
    ``state_cache`` (live hits, head hits, misses). Raises nothing for any
    record: invalid input is counted, as the agent dead-letters it. ``rows``
    (empty by default) receives every customer's encoded state. ``engine``: the
    scoring core measured (:mod:`scoring.engine`). ``cache_mb``: the state cache's
    memory budget (None: the count alone bounds it).
    """
    records = list(stream)
    now = now or datetime.now(UTC)
    rows = {} if rows is None else rows
    cache = engine.state_cache(cache_size, head_cache_mb << 20,
                               None if cache_mb is None else cache_mb << 20)
    statuses: Counter[str] = Counter()
    started = time.process_time()
    for first in range(0, len(records), batch_max):
        planned: dict[bytes, State] = {}  # the batch's overlay
        for offset, (topic, _key, value) in enumerate(records[first:first + batch_max], first):
            try:
                event = parse_event(value, now=now, policies=policies)
            except InvalidEvent:
                statuses["invalid"] += 1
                continue
            if event.type == "forget":
                statuses["forget"] += 1
                continue
            key = message_key(event.shop_id, event.customer_id)
            old = planned[key] if key in planned else cache.get(key, rows.get(key))
            outcome = engine.apply(old, event, policies.for_shop(event.shop_id))
            statuses[outcome.status] += 1
            effect_values(outcome.effects)  # each effect's output record value
            if outcome.changed:
                planned[key] = engine.at_position(outcome.state, topic, offset)
        for key, state in planned.items():
            raw = engine.encode(state)
            rows[key] = raw
            cache.put(key, raw, state)
            engine.snapshot_json(state, None, policies.for_shop(state.shop_id))
    cpu_s = time.process_time() - started
    events = len(records)
    return {
        "engine": engine.name,
        "events": events,
        "customers": len(rows),
        "cpu_s": round(cpu_s, 3),
        "events_per_cpu_s": round(events / cpu_s, 1) if cpu_s > 0 else None,
        "us_per_event": round(cpu_s / events * 1e6, 1) if events else None,
        "statuses": dict(statuses),
        "state_cache": {"hits": cache.hits, "head_hits": cache.head_hits,
                        "misses": cache.misses},
        "batch_max": batch_max,
        "state_cache_size": cache_size,
        "state_cache_mb": cache_mb,
        "head_cache_mb": head_cache_mb,
    }
