"""Backlogs against the real broker: the service equals ``loyalty replay`` with the
production lateness (7 days) over a year of history.

Without event-time alignment these fail: the worker reads the four input
topics of a backlog in an interleaving of the consumer's choosing, and a
purchase read before the visits of months earlier makes those visits
``too_late``. Each test checks every customer's served snapshot against the
offline fold, and that the only ``too_late`` dead letters are the records
that are too late in any order (the synthetic ``too_late`` faults).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from typing import Any

import pytest

from schemas import codec
from streams import synthetic
from streams.topics import input_topic_for_event_type
from tests.integration.service_harness import (
    AS_OF,
    LOYALTY,
    REPO,
    ServiceEnv,
    expected_snapshots,
    metric_samples,
    metric_sum,
    wait_equal,
)

LATENESS = 7  # the production default, not the harness' forgiving 60 days
SPAN_DAYS = 400.0


def history(seed: int, customers_per_shop: int) -> list[synthetic.SyntheticRecord]:
    records = synthetic.generate(seed=seed, shops=5, customers_per_shop=customers_per_shop,
                                 span_days=SPAN_DAYS, lateness_days=LATENESS, end=AS_OF)
    kinds = {r.kind for r in records}
    assert {"duplicate", "conflicting_duplicate", "late", "too_late", "orphan_refund",
            "misrouted"} <= kinds, kinds
    assert any(r.is_invalid for r in records)
    return records


def equal_or_explain(env: ServiceEnv, worker: Any, expected: list[dict[str, Any]],
                     timeout: float) -> float:
    """``wait_equal``, failing with the dead letters by reason and topic-partition."""
    try:
        return wait_equal(worker, expected, timeout=timeout)
    except AssertionError as exc:
        letters = env.dead_letters(timeout=3.0)
        by = Counter((d["reason"], d["topic"].rsplit(".", 1)[-1], d["partition"])
                     for d in letters)
        raise AssertionError(f"{exc}\ndead letters by (reason, topic, partition): "
                             f"{sorted(by.items())}") from None


def too_late_dead_letters(env: ServiceEnv) -> int:
    """Distinct input records dead-lettered as ``too_late`` (outputs may repeat after a crash)."""
    letters = env.dead_letters(timeout=3.0)
    return len({(d["topic"], d["partition"], d["offset"])
                for d in letters if d["reason"] == "too_late"})


def expected_too_late(env: ServiceEnv, records: list[synthetic.SyntheticRecord]) -> int:
    """What ``loyalty replay`` rejects as ``too_late``: records too late in any order."""
    from scoring.replay import fold_lines

    res = fold_lines(synthetic.lines(records), policies=env.policies(), as_of=AS_OF)
    assert res.rejected["too_late"] > 0  # the synthetic faults are there
    return res.rejected["too_late"]


@pytest.mark.slow
def test_history_import_with_loyalty_produce_before_the_worker_starts(bootstrap: str,
                                                                      tmp_path) -> None:
    env = ServiceEnv(bootstrap, tmp_path, lateness_days=LATENESS)
    env.create_topics()
    records = history(seed=101, customers_per_shop=210)
    path = tmp_path / "history.jsonl"
    synthetic.write_jsonl(records, path)
    expected = expected_snapshots(env, records)
    assert len(expected) >= 1000
    # The documented import path, as a user runs it.
    done = subprocess.run([*LOYALTY, "produce", str(path), "--quiet"], cwd=REPO,
                          env={**os.environ, **env.env},
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    w = env.worker().start()
    try:
        w.wait_ready()
        waited = equal_or_explain(env, w, expected, timeout=300)
        print(f"{len(records)} records over {SPAN_DAYS:.0f} days -> {len(expected)} customers "
              f"equal replay {waited:.1f}s after the worker was ready")
        assert too_late_dead_letters(env) == expected_too_late(env, records)
        samples = metric_samples(w)
        assert samples[("loyalty_align_held_records", ())] == 0
    finally:
        env.stop_all()


@pytest.mark.slow
def test_topic_after_topic_backlog_then_a_live_tail(bootstrap: str, tmp_path) -> None:
    """All purchases, then all visits, feedback, redemptions, then the wrongly keyed
    records (through the rekey hop) are in the topics before the worker starts; the
    last weeks of the history then arrive live while it runs."""
    env = ServiceEnv(bootstrap, tmp_path, lateness_days=LATENESS)
    env.create_topics()
    records = history(seed=202, customers_per_shop=120)
    cutoff = max(r.arrival for r in records) - 21 * 86400
    backlog = [r for r in records if r.arrival <= cutoff]
    tail = [r for r in records if r.arrival > cutoff]
    assert backlog and tail
    s = env.settings()
    order = [s.topic_purchases, s.topic_visits, s.topic_feedback, s.topic_redemptions]

    def group(r: synthetic.SyntheticRecord) -> int:
        if r.kind == "misrouted" or r.event_type is None:
            return len(order)  # wrongly keyed or unroutable: last
        return order.index(input_topic_for_event_type(s, r.event_type))

    for g in range(len(order) + 1):
        env.produce([r for r in backlog if group(r) == g])
    w = env.worker().start()
    try:
        w.wait_ready()
        equal_or_explain(env, w, expected_snapshots(env, backlog), timeout=300)
        env.produce(tail, rate=400.0)
        equal_or_explain(env, w, expected_snapshots(env, records), timeout=180)
        assert too_late_dead_letters(env) == expected_too_late(env, records)
        samples = metric_samples(w)
        rekeyed = sum(v for (name, _), v in samples.items() if name == "loyalty_rekeyed_total")
        assert rekeyed > 0  # the wrongly keyed records really took the hop
    finally:
        env.stop_all()


@pytest.mark.slow
def test_two_workers_on_a_backlog_one_killed(bootstrap: str, tmp_path) -> None:
    env = ServiceEnv(bootstrap, tmp_path, lateness_days=LATENESS, sweep_interval_s=2.0)
    env.create_topics()
    records = history(seed=303, customers_per_shop=300)
    expected = expected_snapshots(env, records)
    env.produce(records)
    a, b = env.worker().start(), env.worker().start()
    try:
        # Kill b as soon as it has processed part of the backlog, watching it from
        # its start: alone on the partitions before a joins, b folded this whole
        # backlog within the seconds that waiting for both to be ready took.
        b.first_event_s()
        consumed = metric_sum(b, "loyalty_events_consumed_total")
        b.kill()
        assert 0 < consumed < len(records)  # killed mid-way, not after the end
        a.wait_ready()
        equal_or_explain(env, a, expected, timeout=300)
        assert too_late_dead_letters(env) == expected_too_late(env, records)
    finally:
        env.stop_all()


def with_forgets(records: list[synthetic.SyntheticRecord], every: int
                 ) -> tuple[list[synthetic.SyntheticRecord], set[tuple[str, str]]]:
    """``records`` with a ``forget`` request for every ``every``-th customer, placed
    after its last event or mid-history, at an arrival time that no earlier event
    of that customer arrives after (there the aligned input's event-time order and
    replay's file order agree, as docs/domain.md says they must)."""
    from datetime import UTC, datetime

    from schemas.events import parse_rfc3339

    by_customer: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in records:
        if r.is_invalid or r.kind == "misrouted" or r.event_type is None:
            continue
        obj = codec.loads(r.value)
        at = parse_rfc3339(obj["occurred_at"]).timestamp()
        by_customer.setdefault((obj["shop_id"], obj["customer_id"]), []).append((r.arrival, at))
    forgotten: set[tuple[str, str]] = set()
    added = []
    for i, (customer, times) in enumerate(sorted(by_customer.items())):
        if i % every or len(times) < 4:
            continue
        arrivals = sorted(a for a, _ in times)
        # Alternately mid-history (later events start a new history) and after
        # the last event (the customer is gone).
        candidates = arrivals[len(arrivals) // 2:] if len(forgotten) % 2 else [arrivals[-1] + 1]
        for t in candidates:
            # A forget at t: nothing of this customer that happened before t arrives after it.
            if all(at >= t for a, at in times if a > t):
                shop, cust = customer
                value = codec.dumps({
                    "type": "forget", "event_id": f"forget-{shop}-{cust}", "shop_id": shop,
                    "customer_id": cust,
                    "occurred_at": datetime.fromtimestamp(t, UTC).isoformat()
                    .replace("+00:00", "Z")})
                added.append(synthetic.SyntheticRecord(value=value, key=f"{shop}|{cust}".encode(),
                                                       event_type="forget", arrival=t))
                forgotten.add(customer)
                break
    return sorted([*records, *added], key=lambda r: r.arrival), forgotten


def test_forget_requests_inside_a_history_import(bootstrap: str, tmp_path) -> None:
    """Erasure requests produced with the history they belong to, before the worker
    starts: each customer's events before the request are erased with it, later ones
    start a new history, exactly as ``loyalty replay`` of the same lines."""
    from tests.integration.service_harness import served_snapshots

    env = ServiceEnv(bootstrap, tmp_path, lateness_days=LATENESS)
    env.create_topics()
    records, forgotten = with_forgets(history(seed=404, customers_per_shop=60), every=7)
    expected = expected_snapshots(env, records)
    served_keys = {(s["shop_id"], s["customer_id"]) for s in expected}
    gone = forgotten - served_keys  # nothing after the request: 404
    reborn = forgotten & served_keys  # events after the request: a new history
    assert len(gone) >= 3 and len(reborn) >= 3, (len(gone), len(reborn))
    env.produce(records)
    w = env.worker().start()
    try:
        w.wait_ready()
        equal_or_explain(env, w, expected, timeout=300)
        assert served_snapshots(w, sorted(gone)) == {k: None for k in gone}
        samples = metric_samples(w)
        assert samples[("loyalty_events_applied_total", (("type", "forget"),))] >= len(forgotten)
        assert too_late_dead_letters(env) == expected_too_late(env, records)
    finally:
        env.stop_all()


@pytest.mark.slow
def test_the_time_sweep_advances_no_customer_past_the_history_still_being_imported(
        bootstrap: str, tmp_path) -> None:
    """A sweep every second while a year of clean history (no faults) is imported.

    The history ends long before the wall clock, so every imported customer is
    due (at risk, lapsed) by the wall clock. Were the sweep to advance
    customers to the wall clock mid-import, their own later events would
    arrive behind their clock and void the time-driven transitions published
    for them. The sweep stays at the event time the input is processed to, so
    none is voided; once the worker has caught up it advances everyone to the
    wall clock.
    """
    import json
    from datetime import UTC, datetime

    env = ServiceEnv(bootstrap, tmp_path, lateness_days=LATENESS, sweep_interval_s=1.0)
    env.create_topics()
    records = synthetic.generate(seed=404, shops=5, customers_per_shop=150,
                                 span_days=SPAN_DAYS, lateness_days=LATENESS, end=AS_OF,
                                 faults=False)
    expected = expected_snapshots(env, records)
    env.produce(records)
    w = env.worker().start()
    try:
        w.wait_ready()
        equal_or_explain(env, w, expected, timeout=300)
        deadline = time.monotonic() + 60
        advanced_to = None
        while time.monotonic() < deadline:
            sweep = json.loads(w.get("/health")[1])["last_sweep"] or {}
            if sweep.get("advanced_to") and sweep["advanced_to"] == sweep["now"]:
                advanced_to = datetime.fromisoformat(sweep["advanced_to"])
                break
            time.sleep(0.5)
        assert advanced_to is not None and advanced_to > AS_OF, w.log_tail()
        published: dict[str, dict[str, Any]] = {}
        voided: list[str] = []
        for m in env.read_topic(env.settings().topic_transitions):
            t = codec.loads(m.value)
            if t.get("void"):
                voided.append(t["id"])
            else:
                published.setdefault(t["id"], t)
        def by_time(t: dict[str, Any]) -> bool:
            return (t.get("cause") or {}).get("type") == "time"  # alerts have no cause

        timed = [t for t in published.values() if by_time(t)]
        assert timed  # the sweep did move customers (to the wall clock, at the end)
        voided_by_time = [i for i in voided if by_time(published[i])]
        assert voided_by_time == [], (
            f"{len(voided_by_time)} of {len(timed)} time-driven transitions voided")
        assert datetime.now(UTC) >= advanced_to
    finally:
        env.stop_all()


@pytest.mark.slow
def test_input_from_a_transactional_producer_backlog_then_live(bootstrap: str,
                                                               tmp_path) -> None:
    """A history produced in transactions, some aborted, then a live feed of one
    transaction per event.

    Every transaction ends its partitions in a commit marker, an offset that
    holds no record, and an aborted one leaves records that must never count.
    The worker reads committed records only and equals ``loyalty replay`` of the
    committed history; the markers are neither gaps to re-read nor a partition
    that never catches up (each live event would otherwise wait
    ``LOYALTY_MAX_IDLE_MS``, 10 s, for it).
    """
    import asyncio
    import json
    import uuid
    from datetime import UTC, datetime

    from aiokafka import AIOKafkaProducer

    from streams.topics import message_key, partition_for

    env = ServiceEnv(bootstrap, tmp_path, lateness_days=LATENESS)
    env.create_topics()
    s = env.settings()
    records = synthetic.generate(seed=505, shops=3, customers_per_shop=100,
                                 span_days=SPAN_DAYS, lateness_days=LATENESS, end=AS_OF,
                                 faults=False)
    expected = expected_snapshots(env, records)

    def topic_of(event_type: str | None) -> str:
        return input_topic_for_event_type(s, event_type)

    async def send(producer: AIOKafkaProducer, topic: str, key: bytes, value: bytes) -> None:
        await producer.send(topic, value, key=key, partition=partition_for(key, s.partitions))

    async def backlog() -> int:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap,
                                    transactional_id=f"tx-{uuid.uuid4().hex[:8]}")
        await producer.start()
        aborted = 0
        try:
            for n, start in enumerate(range(0, len(records), 150)):
                chunk = records[start:start + 150]
                if n % 4 == 3:  # the same events with other ids and amounts, rolled back
                    await producer.begin_transaction()
                    for r in chunk:
                        obj = codec.loads(r.value)
                        obj["event_id"] = f"aborted-{obj['event_id']}"
                        if "amount" in obj:
                            obj["amount"] += 99
                        await send(producer, topic_of(r.event_type), r.key, codec.dumps(obj))
                    await producer.abort_transaction()
                    aborted += len(chunk)
                async with producer.transaction():
                    for r in chunk:
                        await send(producer, topic_of(r.event_type), r.key, r.value)
        finally:
            await producer.stop()
        return aborted

    async def live() -> list[float]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap,
                                    transactional_id=f"tx-{uuid.uuid4().hex[:8]}")
        await producer.start()
        waits = []
        try:
            for i in range(9):
                customer = f"live{i}"
                key = message_key("s1", customer)
                event: dict[str, Any] = {
                    "event_id": f"e{i}", "shop_id": "s1", "customer_id": customer,
                    "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z")}
                if i % 2:
                    topic, event = s.topic_visits, {**event, "type": "visit"}
                else:
                    topic, event = s.topic_purchases, {
                        **event, "type": "purchase", "order_id": f"o{i}", "amount": 1000,
                        "currency": "USD"}
                if i == 4:  # rolled back: this customer must never appear
                    await producer.begin_transaction()
                    await send(producer, topic, key, json.dumps(event).encode())
                    await producer.abort_transaction()
                    continue
                async with producer.transaction():
                    await send(producer, topic, key, json.dumps(event).encode())
                sent = time.monotonic()
                while w.get(f"/customers/s1/{customer}")[0] != 200:
                    assert time.monotonic() - sent < 30, w.log_tail()
                    await asyncio.sleep(0.05)
                waits.append(time.monotonic() - sent)
        finally:
            await producer.stop()
        return waits

    aborted = asyncio.run(backlog())
    assert aborted > 0
    w = env.worker().start()
    try:
        w.wait_ready()
        equal_or_explain(env, w, expected, timeout=300)
        waits = asyncio.run(live())
        print("live: seconds from commit to served:", [round(x, 2) for x in waits])
        assert max(waits) < 5.0, waits
        assert w.get("/customers/s1/live4")[0] == 404  # its transaction was aborted
        samples = metric_samples(w)
        assert samples[("loyalty_align_idle_timeouts_total", ())] == 0
        gaps = sum(v for (name, _), v in samples.items()
                   if name == "loyalty_input_offset_gaps_total")
        assert gaps == 0  # markers and aborted records are not taken for dropped records
        assert samples[("loyalty_align_held_records", ())] == 0
        # The last offset of each partition is a marker: once the partition is idle
        # the committed offset passes it, so no lag is left (an alert reads it).
        deadline = time.monotonic() + 60
        while True:
            lag = {labels: v for (name, labels), v in metric_samples(w).items()
                   if name == "loyalty_consumer_lag" and v}
            if not lag or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        assert lag == {}
    finally:
        env.stop_all()
