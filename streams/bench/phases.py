"""The measurements of ``loyalty bench``, in the order they run.

1. :func:`baseline` - the plain aiokafka loop (:mod:`streams.bench.baseline`)
   over the preloaded input, in a subprocess.
2. :func:`throughput` - a cold ``loyalty worker`` on the same preloaded input.
3. :func:`latency` - the same worker, caught up, under a fixed offered load:
   half the measured maximum, then a fixed 1 000 events/s.
4. :func:`recovery` - stop, wipe the local stores, restart, wait for the table.

Every wait is bounded; a timeout raises :class:`BenchError` naming the phase
and the worker's log tail. Polling uses a 0.2 s period; the figures that
depend on it say so.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from schemas import codec
from streams.bench.generator import rfc3339_us
from streams.bench.harness import (
    BenchEnv,
    BenchError,
    CpuMeter,
    WorkerProc,
    batch_profile,
    cpu_seconds,
    http_get,
    loop_lag_profile,
    parse_labelled,
    parse_metrics,
    read_proc_status,
    topic_partitions,
)
from streams.publish import OutRecord, Publisher

POLL_S = 0.2
#: Event types of the latency phase with cumulative probabilities: the fast
#: generator's purchase/visit/feedback shares (45/35/12 %), renormalised.
LATENCY_MIX = (("purchase", 0.49), ("visit", 0.87), ("feedback", 1.0))
CONSUMED = "loyalty_events_consumed_total"
#: the latency phases' send interval (ms), as a producer's linger.ms: the
#: default of Kafka's Java producer since 4.0 (KIP-1030) and of librdkafka, so
#: the load is offered as a shop's client would offer it. With 0 every event
#: is a produce request of its own, and the bench and the broker, which share
#: the machine with the worker, spend more CPU on offering it (README,
#: Performance).
LATENCY_LINGER_MS = 5


@dataclass
class Throughput:
    """Result of :func:`throughput`."""

    events: int
    events_per_s: float
    cold_start_s: float
    seconds: float  # first observed processed event -> all offsets committed
    processed_at_s: float  # first observed processed event -> metric count reached N
    worker_cpu_s: float | None  # over ``seconds`` only (start-up excluded)
    statuses: dict[str, float] = field(default_factory=dict)
    measured_events: int = 0  # events processed during ``seconds``
    #: the worker's batches over the phase (:func:`batch_profile`)
    batches: dict[str, Any] = field(default_factory=dict)

    @property
    def events_per_cpu_s(self) -> float | None:
        """``measured_events / worker_cpu_s``: what the worker's CPU buys, start-up excluded."""
        return self.measured_events / self.worker_cpu_s if self.worker_cpu_s else None


async def baseline(env: BenchEnv, expected: int, timeout_s: float, run: int = 0) -> dict[str, Any]:
    """Run the plain loop's ``run``-th pass in a subprocess on the run's input topics
    (from their start, in a group of its own); return its JSON."""
    cmd = [sys.executable, "-m", "streams.bench.baseline",
           "--bootstrap", ",".join(env.bootstrap), "--out", env.baseline_topic,
           "--group", env.baseline_group_of(run), "--expected", str(expected),
           "--timeout", str(timeout_s)]
    for t in env.input_topics:
        cmd += ["--topic", t]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s + 90)
    except (TimeoutError, asyncio.CancelledError):
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise BenchError(f"baseline loop failed (exit {proc.returncode}): "
                         f"{err.decode(errors='replace')[-2000:]}")
    return dict(json.loads(out))


async def _metrics(session: Any, worker: WorkerProc) -> str | None:
    status, body = await http_get(session, worker.url + "/metrics")
    return body.decode() if status == 200 else None


async def _scrape(worker: WorkerProc) -> str:
    """The worker's ``/metrics`` text, or "" when it does not answer."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        return await _metrics(session, worker) or ""


async def _all_committed(env: BenchEnv, admin: Any, ends: dict[Any, int]) -> bool:
    """True when the worker's group has committed every input (and rekey) partition's end."""
    committed = await env.committed(admin, env.app_id)
    rekey = await env.end_offsets([env.rekey_topic])
    targets = {**ends, **rekey}
    return all(committed.get(tp, 0) >= end for tp, end in targets.items() if end > 0)


async def throughput(env: BenchEnv, worker: WorkerProc, total: int, timeout_s: float,
                     ) -> Throughput:
    """Start ``worker`` cold on the preloaded topics; time it until everything is committed.

    * ``cold_start_s``: process launch -> first poll of ``/metrics`` that shows
      a processed event (imports, topic check, group join, empty-table recovery).
    * ``seconds``: that first poll -> first check where the worker's consumer
      group (group id = app id) has committed offsets at the end offsets of
      every input partition (and of the rekey topic), i.e. every event's state
      write and outputs are done and will not be redelivered. Commits happen
      every second (``broker_commit_interval``), so this includes up to ~1 s
      of commit delay plus one poll period.
    * ``events_per_s = (N - events already counted at the first poll) / seconds``:
      the sustained rate, without the cold start.
    * ``worker_cpu_s``: the worker's user + system CPU seconds
      (``/proc/<pid>/stat``) sampled at that first poll and again at the moment
      everything is committed, so the imports, topic check, group join and
      table recovery of the start-up are not in it; ``events_per_cpu_s``
      divides the same events as ``events_per_s`` by it.
    """
    import aiohttp
    from aiokafka.admin import AIOKafkaAdminClient

    ends = await env.end_offsets(env.input_topics)
    admin = AIOKafkaAdminClient(bootstrap_servers=env.bootstrap)
    await admin.start()
    worker.start()
    t_first = c_first = cpu_first = None
    t_counted = None
    deadline = time.monotonic() + timeout_s
    last_commit_check = last_scrape = 0.0
    text: str | None = None
    try:
        async with aiohttp.ClientSession() as session:
            while True:
                now = time.monotonic()
                if now > deadline:
                    raise BenchError(
                        f"throughput phase: not all {total} events committed in {timeout_s:.0f} s "
                        f"(last count {c_first and text and parse_metrics(text).get(CONSUMED)}); "
                        f"worker log:\n{worker.log_tail()}")
                worker.check_alive()
                # /metrics every poll until the first event (the cold start's
                # resolution), then once a second: each scrape costs the worker
                # CPU that would otherwise be charged to events_per_cpu_s.
                if t_first is None or t_counted is not None or now - last_scrape >= 1.0:
                    last_scrape = now
                    text = await _metrics(session, worker)
                count = parse_metrics(text).get(CONSUMED, 0.0) if text else 0.0
                if t_first is None and count > 0:
                    t_first, c_first, cpu_first = now, count, cpu_seconds(worker.pid)
                if t_counted is None and count >= total:
                    t_counted = now
                # Offset checks are broker requests: once a second until the count
                # says "all processed", then every poll.
                if t_first is not None and (t_counted is not None or now - last_commit_check > 1):
                    last_commit_check = now
                    if await _all_committed(env, admin, ends):
                        t_done, cpu_done = time.monotonic(), cpu_seconds(worker.pid)
                        break
                await asyncio.sleep(POLL_S)
    finally:
        await admin.close()
    assert t_first is not None and c_first is not None
    seconds = max(t_done - t_first, 1e-6)
    statuses = parse_labelled(text or "", CONSUMED)
    applied = parse_metrics(text or "").get("loyalty_events_applied_total", 0.0)
    invalid = parse_labelled(text or "", "loyalty_invalid_events_total")
    summary: dict[str, float] = {"applied": applied,
                                 "duplicates": parse_metrics(text or "").get(
                                     "loyalty_duplicates_ignored_total", 0.0)}
    summary.update({f"dead_letter:{k.split('=', 1)[1].strip(chr(34))}": v
                    for k, v in invalid.items()})
    summary["consumed"] = sum(statuses.values())
    measured = total - int(c_first) if total > c_first else total
    return Throughput(
        events=total,
        events_per_s=measured / seconds,
        cold_start_s=t_first - worker.started_at,
        seconds=seconds,
        processed_at_s=(t_counted or t_done) - t_first,
        worker_cpu_s=(cpu_done - cpu_first) if cpu_done is not None and cpu_first is not None
        else None,
        statuses=summary,
        measured_events=measured,
        batches=batch_profile("", text or ""),
    )


@dataclass
class Latency:
    """Result of :func:`latency` (milliseconds)."""

    p50_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    offered_per_s: float
    achieved_per_s: float
    sent: int
    matched: int
    duration_s: float
    p50_first_quarter_ms: float = 0.0
    p50_last_quarter_ms: float = 0.0
    #: matched events timed by a later event's snapshot (folded in one batch with it)
    coalesced: int = 0
    #: bursts of events at or above p99: (start s into the phase, span s, count, max ms)
    stalls: list[tuple[float, float, int, float]] = field(default_factory=list)
    #: the worker's batches during the phase (:func:`batch_profile`)
    batches: dict[str, Any] = field(default_factory=dict)
    #: the worker's event-loop lag during the phase (:func:`loop_lag_profile`)
    loop_lag: dict[str, Any] = field(default_factory=dict)
    #: cores used while sending: the worker, this process, the local broker (:class:`CpuMeter`)
    cpu_cores: dict[str, float | None] = field(default_factory=dict)
    #: where the time went (:func:`latency_split`): into the broker, to the snapshot, back
    split: dict[str, Any] = field(default_factory=dict)
    #: the share of the phase's wall time the agent spent on batches (between the
    #: scrapes around it, so its last events' batches too): near 1, it queues
    agent_busy: float | None = None

    @property
    def kept_up(self) -> bool:
        """False when latency grew during the phase: the worker queued, it did not keep up."""
        return self.p50_last_quarter_ms <= 2 * self.p50_first_quarter_ms + 50

    def observed(self) -> dict[str, Any]:
        """The conditions of the phase, for ``params.observed`` (rounded, JSON-ready)."""
        return {"offered_per_s": round(self.offered_per_s, 1),
                "achieved_per_s": round(self.achieved_per_s, 1),
                "sent": self.sent, "matched": self.matched, "coalesced": self.coalesced,
                "p50_ms": round(self.p50_ms, 2), "p99_ms": round(self.p99_ms, 2),
                "mean_ms": round(self.mean_ms, 2), "max_ms": round(self.max_ms, 2),
                "p50_first_quarter_ms": round(self.p50_first_quarter_ms, 2),
                "p50_last_quarter_ms": round(self.p50_last_quarter_ms, 2),
                "kept_up": self.kept_up, "stalls": self.stalls[:20], "batches": self.batches,
                "loop_lag": self.loop_lag, "cpu_cores": self.cpu_cores, "split": self.split,
                "agent_busy": self.agent_busy}


async def latency(env: BenchEnv, worker: WorkerProc, keys: list[bytes], rate: float,
                  duration_s: float, drain_s: float = 30.0, seed: int = 11,
                  linger_ms: int = LATENCY_LINGER_MS,
                  broker_pid: int | None = None) -> Latency:
    """Offer events at ``rate``/s for ``duration_s``; time produce -> snapshot on scores.

    Each event is a purchase, visit or feedback of an existing customer, in the
    proportions the fast generator uses for them (:data:`LATENCY_MIX`: the
    throughput phase measured the maximum on that mix, so half of it is half
    the load; refunds and redemptions need history and are left out). Its
    ``occurred_at`` is the wall clock in microseconds, made strictly
    increasing, so it is the customer's newest event and its text is unique.
    The worker publishes the customer's new snapshot to the scores topic
    after folding it, as of the state's clock, which is exactly this text:
    ``(key, as_of)`` identifies the output of each event, whatever the sweep
    publishes meanwhile. Events are handed to the producer every
    ``linger_ms`` (a tick), all partitions' batches at once, so they reach
    the broker in one produce request per tick, as a Java client with that
    ``linger.ms`` sends them (aiokafka's own linger times each partition's
    batch apart: a request every few sends, each costing this process and
    the broker, which share the cores with the worker). Latency = time the
    scores consumer (this process) receives it - the event's instant on the
    schedule, so the wait for its tick is part of it; if this process runs
    late, at most one tick before the sending. The worker writes one
    snapshot per customer per batch: an earlier event of the customer folded
    in the same batch as this one is timed by this snapshot too, the first
    that shows it (``coalesced`` counts them). Sends follow a fixed
    schedule (k / rate); a late sender catches up without changing the
    schedule, so the offered rate stays fixed even when the worker stalls.
    Events whose snapshot does not arrive within ``drain_s`` after the last
    send are counted as unmatched (not in the percentiles). ``cpu_cores``:
    what the worker, this process and the local broker (``broker_pid``; None
    when not given) used while the events were sent (:class:`CpuMeter`).
    """
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from scoring.replay import tune_gc

    # The bench's own pauses would be counted as the worker's latency: keep
    # the cyclic GC from walking the growing pending/latency tables.
    tune_gc()
    topic = env.settings.topic_scores
    before = await _scrape(worker)
    scraped = time.monotonic()
    consumer = AIOKafkaConsumer(bootstrap_servers=env.bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=100)
    # The sends are batched here, one tick of ``linger_ms``, so the producer holds nothing.
    producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    publisher = Publisher.over(producer)
    # key -> occurred_at text -> (instant its latency counts from, its tick), in send
    # (= occurred_at) order
    pending: dict[bytes, dict[str, tuple[float, int]]] = {}
    coalesced = 0
    lat: list[float] = []
    sent_at: list[float] = []  # the instant each latency sample counts from, same order
    made_at: list[float] = []  # when the worker made the snapshot (its CreateTime), same order
    sent_in: list[int] = []  # the tick each sample was sent in, same order
    tick_acks: list[float] = []  # per tick: when the broker acknowledged its produce request
    # CreateTime is wall-clock milliseconds; the schedule is monotonic.
    wall_minus_mono = time.time() - time.monotonic()
    stop = asyncio.Event()
    receiver: asyncio.Task[None] | None = None
    try:
        tps = await topic_partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:  # resolve positions now, before anything is produced
            await consumer.position(tp)

        async def receive() -> None:
            nonlocal coalesced
            while not stop.is_set() or pending:
                batch = await consumer.getmany(timeout_ms=100)
                got = time.monotonic()
                for records in batch.values():
                    for rec in records:
                        try:
                            last = codec.loads(rec.value).get("as_of")
                        except (ValueError, AttributeError):
                            continue
                        waiting = pending.get(rec.key)
                        if not waiting or last not in waiting:
                            continue
                        while True:  # this event and the customer's earlier ones
                            at, (sent, tick_no) = next(iter(waiting.items()))
                            del waiting[at]
                            lat.append(got - sent)
                            sent_at.append(sent)
                            made_at.append(rec.timestamp / 1000 - wall_minus_mono)
                            sent_in.append(tick_no)
                            if at == last:
                                break
                            coalesced += 1
                        if not waiting:
                            del pending[rec.key]

        receiver = asyncio.create_task(receive())
        order = list(keys)
        random.Random(seed).shuffle(order)  # spread the load over shops and partitions
        from streams.topics import input_topic_for_event_type

        topic_of = {t: input_topic_for_event_type(env.settings, t) for t, _ in LATENCY_MIX}
        rolls = random.Random(seed + 1)
        # Ids unique per phase: the phases offer the same customers in the same
        # order, and a second phase reusing the first one's ids would be folded
        # as conflicting duplicates (rejected, no snapshot) instead of timed.
        phase_id = f"{env.run_id}-{uuid.uuid4().hex[:6]}"
        sent_n = 0
        last_us = 0
        meter = CpuMeter(worker.pid, broker_pid)
        started = time.monotonic()
        total = max(1, int(rate * duration_s))
        tick = linger_ms / 1000
        next_tick = started
        futures: list[asyncio.Future[Any]] = []
        while sent_n < total:
            now = time.monotonic()
            if next_tick > now:
                await asyncio.sleep(next_tick - now)
                now = time.monotonic()
            due_n = min(total, int((now - started) * rate) + 1)  # every event due by now
            # An event waits for its tick as it would for a client's linger, so the
            # wait counts from its due instant; but a stamp is never older than a
            # tick: this process running late is not the worker's latency.
            floor = now - tick
            records: list[OutRecord] = []
            for n in range(sent_n, due_n):
                key = order[n % len(order)]
                shop, _, cid = key.decode().partition("|")
                us = max(last_us + 1, time.time_ns() // 1000)
                if us % 1_000_000 == 0:
                    us += 1  # rfc3339 drops ".000000": keep the text identical to the service's
                last_us = us
                at = rfc3339_us(us)
                roll = rolls.random()
                typ = next(t for t, cum in LATENCY_MIX if roll < cum)
                ev: dict[str, Any] = {"type": typ, "event_id": f"lat-{phase_id}-{n}",
                                      "shop_id": shop, "customer_id": cid, "occurred_at": at}
                if typ == "purchase":
                    ev.update(order_id=f"lat-{phase_id}-{n}", amount=1000 + n % 5000,
                              currency="USD", channel="store")
                elif typ == "visit":
                    ev["channel"] = "store"
                else:
                    ev["nps"] = n % 11
                pending.setdefault(key, {})[at] = (max(started + n / rate, floor), len(tick_acks))
                records.append((topic_of[typ], key, codec.dumps(ev), None, None))
            sent_n = due_n
            tick_no = len(tick_acks)
            tick_acks.append(math.inf)  # until acknowledged (the worker may see it first)

            def acked(done: asyncio.Future[Any], tick_no: int = tick_no) -> None:
                tick_acks[tick_no] = time.monotonic()
                if not done.cancelled():
                    done.exception()  # a failed send is raised from its own future below

            tick_futures = [sent.future for sent in await publisher.publish(records)]
            asyncio.gather(*tick_futures).add_done_callback(acked)
            futures.extend(tick_futures)
            if len(futures) >= 200:
                # Check and drop the acknowledged sends as we go: one gather over
                # the whole phase's futures at the end blocked this process's
                # loop for ~0.4 s, and the receiver's timestamps with it.
                for f in futures:
                    if f.done():
                        f.result()  # raises if the send failed
                futures = [f for f in futures if not f.done()]
            next_tick = max(next_tick + tick, started + sent_n / rate)
        send_s = time.monotonic() - started
        cpu_cores = meter.cores()
        await asyncio.gather(*futures)
        stop.set()
        try:
            await asyncio.wait_for(receiver, drain_s)
        except TimeoutError:
            pass  # what is still pending is reported as unmatched
        worker.check_alive()
    finally:
        stop.set()
        if receiver is not None and not receiver.done():
            receiver.cancel()  # an error while sending: do not leave it polling
        await consumer.stop()
        await producer.stop()
    if not lat:
        raise BenchError(f"latency phase: no snapshot of the {sent_n} events arrived on {topic} "
                         f"within {drain_s:.0f} s; worker log:\n{worker.log_tail()}")
    after = await _scrape(worker)
    between_s = time.monotonic() - scraped
    batches = batch_profile(before, after)
    loop_lag = loop_lag_profile(before, after)
    ms = sorted(x * 1000 for x in lat)
    # In arrival order: the first and last quarter's medians show whether the
    # worker kept up (flat) or queued (growing) at the offered rate.
    q = max(1, len(lat) // 4)
    first_q = sorted(x * 1000 for x in lat[:q])
    last_q = sorted(x * 1000 for x in lat[-q:])
    p99 = _pct(ms, 99)
    return Latency(p50_ms=_pct(ms, 50), p99_ms=p99, max_ms=ms[-1],
                   stalls=_stalls([(t - started, x * 1000) for t, x in zip(sent_at, lat, strict=True)],
                                  p99),
                   mean_ms=statistics.fmean(ms), offered_per_s=rate,
                   achieved_per_s=sent_n / send_s if send_s > 0 else float(sent_n),
                   sent=sent_n, matched=len(ms), coalesced=coalesced, duration_s=send_s,
                   p50_first_quarter_ms=_pct(first_q, 50), p50_last_quarter_ms=_pct(last_q, 50),
                   batches=batches, loop_lag=loop_lag, cpu_cores=cpu_cores,
                   split=latency_split(sent_at, made_at, [tick_acks[t] for t in sent_in],
                                       lat, p99 / 1000),
                   agent_busy=round(batches["wall_s"] / between_s, 3) if between_s > 0 else None)


async def catch_up(env: BenchEnv, worker: WorkerProc, timeout_s: float) -> float:
    """Wait until ``worker`` has committed everything produced so far; returns the seconds.

    After a latency phase the worker did not keep up with, its backlog would
    otherwise be folded during the next phase (the recovery's restart).
    """
    from aiokafka.admin import AIOKafkaAdminClient

    started = time.monotonic()
    ends = await env.end_offsets(env.input_topics)
    admin = AIOKafkaAdminClient(bootstrap_servers=env.bootstrap)
    await admin.start()
    try:
        while not await _all_committed(env, admin, ends):
            if time.monotonic() - started > timeout_s:
                raise BenchError(f"the worker did not work off the latency phase's backlog in "
                                 f"{timeout_s:.0f} s; worker log:\n{worker.log_tail()}")
            worker.check_alive()
            await asyncio.sleep(POLL_S)
    finally:
        await admin.close()
    return time.monotonic() - started


def _stalls(samples: list[tuple[float, float]], threshold_ms: float,
            ) -> list[tuple[float, float, int, float]]:
    """Group the events at or above ``threshold_ms`` into bursts by send time.

    Events sent less than 1 s apart belong to one burst. Bursts that recur at
    a fixed period point at a timer in the worker (the sweep runs every
    ``LOYALTY_SWEEP_INTERVAL_S``, commits every second) rather than at
    per-event cost. Returns ``(start_s, span_s, events, max_ms)`` per burst.
    """
    slow = sorted((t, ms) for t, ms in samples if ms >= threshold_ms)
    bursts: list[list[float]] = []
    for t, ms in slow:
        if bursts and t - (bursts[-1][0] + bursts[-1][1]) <= 1.0:
            b = bursts[-1]
            b[1], b[2], b[3] = t - b[0], b[2] + 1, max(b[3], ms)
        else:
            bursts.append([t, 0.0, 1, ms])
    return [(round(a, 2), round(b, 2), int(c), round(d, 1)) for a, b, c, d in bursts]


def latency_split(sent_at: list[float], made_at: list[float], acked_at: list[float],
                  lat: list[float], threshold_s: float) -> dict[str, Any]:
    """Where each latency went, cut at two instants: the broker's acknowledgement
    of the event's produce request and the snapshot's CreateTime (the worker's
    clock when its producer built the batch, in whole milliseconds: same
    machine, same wall clock). ``produce``: the event's way into the broker
    (this process's producer, the broker's append); ``to_snapshot``: the
    event's instant to its snapshot being made (``produce`` included, and the
    worker's fetch, queue and fold); ``delivery``: the snapshot's produce
    request, the broker, this process's fetch and loop. Each as p50/p99 over
    all events and as p50 over the events at or above p99 (``slow_p50_ms``):
    which side the tail is on. An acknowledgement that came after the
    snapshot (the worker read the event first) counts at the snapshot.
    """
    to_snapshot = [(m - s) * 1000 for s, m in zip(sent_at, made_at, strict=True)]
    produce = [(min(a, m) - s) * 1000 for s, m, a in zip(sent_at, made_at, acked_at, strict=True)]
    delivery = [(s + x - m) * 1000 for s, m, x in zip(sent_at, made_at, lat, strict=True)]
    slow = [i for i, x in enumerate(lat) if x >= threshold_s]
    out: dict[str, Any] = {}
    for name, part in (("produce", produce), ("to_snapshot", to_snapshot),
                       ("delivery", delivery)):
        ms = sorted(part)
        out[name] = {"p50_ms": round(_pct(ms, 50), 1), "p99_ms": round(_pct(ms, 99), 1),
                     "slow_p50_ms": round(_pct(sorted(part[i] for i in slow), 50), 1)
                     if slow else None}
    return out


def _pct(sorted_ms: list[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 is a latency that really happened)."""
    k = max(0, min(len(sorted_ms) - 1, int(-(-p * len(sorted_ms) // 100)) - 1))
    return sorted_ms[k]


@dataclass
class Recovery:
    """Result of :func:`recovery`."""

    customers: int
    changelog_records: int  # what Faust replays: every write not yet compacted away
    seconds: float  # partitions assigned -> last changelog record of every partition served
    restart_s: float  # process launch -> same
    customers_per_s: float
    rss_mb: float
    health_ready_s: float | None = None  # assignment -> /health "ready" (cross-check)


async def _last_changelog_records(env: BenchEnv) -> dict[int, tuple[bytes, bytes]]:
    """Key and value of the last record of each customer changelog partition."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    ends = await env.end_offsets([env.changelog_topic])
    consumer = AIOKafkaConsumer(bootstrap_servers=env.bootstrap, enable_auto_commit=False)
    await consumer.start()
    out: dict[int, tuple[bytes, bytes]] = {}
    try:
        for tp, end in ends.items():
            if end <= 0:
                continue
            consumer.assign([tp])
            consumer.seek(tp, end - 1)
            deadline = time.monotonic() + 30
            while tp.partition not in out:
                if time.monotonic() > deadline:
                    raise BenchError(f"recovery phase: could not read the end of {tp}")
                batch = await consumer.getmany(TopicPartition(tp.topic, tp.partition),
                                               timeout_ms=500)
                for recs in batch.values():
                    for rec in recs:
                        if rec.offset == end - 1 and rec.value is not None:
                            out[tp.partition] = (rec.key, rec.value)
    finally:
        await consumer.stop()
    return out


def _expected_snapshot(value: bytes) -> tuple[str, Any]:
    """(as_of query text, the JSON ``GET /customers/...?as_of=`` must return) for a
    state written as ``value``. The instant is the state's own clock, asked for
    explicitly: the API's default is the wall clock, which keeps moving."""
    from schemas.policy import PolicyBook
    from scoring.clock import rfc3339
    from scoring.engine import PYTHON

    state = PYTHON.decode(value)
    policy = PolicyBook.load(None).for_shop(state.shop_id)  # the bench runs the default policy
    return rfc3339(state.clock), codec.loads(codec.dumps(PYTHON.snapshot(state, state.clock, policy)))


async def recovery(env: BenchEnv, old: WorkerProc, customers: int, timeout_s: float,
                   on_start: Callable[[int], None] | None = None) -> Recovery:
    """Stop ``old``, wipe the stores, start a new worker, time the table rebuild.

    The table is rebuilt when, for every partition of the customer changelog,
    the key of the partition's *last* record is served by ``GET /customers``
    with exactly the snapshot of that record's value: Faust restores each
    partition in offset order, so the last record being visible means the whole
    partition is. ``seconds`` runs from the first ``/health`` answer that lists
    owned partitions (the group assignment, after which Faust starts
    restoring) to that moment; ``customers_per_s = customers / seconds``.
    ``restart_s`` includes the process start and group join as well.
    ``health_ready_s`` is when ``/health`` first said ``"ready": true`` (the
    worker's own end-of-recovery flag), for comparison; None if never seen
    before the table check passed.
    ``changelog_records`` is the number of records Faust has to replay: one per
    state write, not one per customer, until the broker compacts closed log
    segments (Faust's changelogs are compacted, but the active segment never is).
    """
    old.stop()
    records = sum((await env.end_offsets([env.changelog_topic])).values())
    expected = await _expected_last(env)
    env.wipe_data()
    worker = env.new_worker("recovery")
    worker.start()
    if on_start is not None:
        on_start(worker.pid)  # e.g. attach a profiler
    t_assigned, t_ready, t_health_ready = await _wait_rebuilt(worker, expected, timeout_s,
                                                              "recovery")
    seconds = max(t_ready - t_assigned, POLL_S)  # one poll period is the resolution
    rss = read_proc_status(worker.pid).get("VmHWM", 0) / 1024
    return Recovery(customers=customers, changelog_records=records, seconds=seconds,
                    restart_s=t_ready - worker.started_at,
                    customers_per_s=customers / seconds, rss_mb=rss,
                    health_ready_s=None if t_health_ready is None
                    else t_health_ready - t_assigned)


async def _expected_last(env: BenchEnv) -> dict[bytes, tuple[str, Any]]:
    """Key -> (as_of, snapshot) of the last record of every customer changelog
    partition: read *before* the worker starts, so polling starts at once."""
    last = await _last_changelog_records(env)
    return {k: _expected_snapshot(v) for k, v in last.values()}


async def _wait_rebuilt(worker: WorkerProc, expected: dict[bytes, tuple[str, Any]],
                        timeout_s: float, phase: str) -> tuple[float, float, float | None]:
    """Wait until ``worker`` serves ``expected`` (see :func:`_expected_last`).

    Returns monotonic ``(t_assigned, t_ready, t_health_ready)``: the first
    ``/health`` listing owned partitions, the moment the table check passed,
    and the first ``/health`` saying ``"ready": true`` (None if not seen).
    """
    from urllib.parse import quote

    import aiohttp

    waiting = dict(expected)
    t_assigned = t_health_ready = None
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while waiting:
            now = time.monotonic()
            if now > deadline:
                raise BenchError(f"{phase} phase: table not rebuilt in {timeout_s:.0f} s "
                                 f"({len(waiting)} partitions pending); worker log:\n"
                                 + worker.log_tail())
            worker.check_alive()
            if t_assigned is None or t_health_ready is None:
                status, body = await http_get(session, worker.url + "/health")
                health = json.loads(body) if status == 200 else {}
                if t_assigned is None and health.get("owned_partitions"):
                    t_assigned = now
                if t_health_ready is None and health.get("ready"):
                    t_health_ready = now  # the worker's own "recovery finished" flag
            if t_assigned is not None:
                for key in list(waiting):
                    shop, _, cid = key.decode().partition("|")
                    as_of, want = waiting[key]
                    status, body = await http_get(
                        session, f"{worker.url}/customers/{quote(shop)}/{quote(cid, safe='')}"
                                 f"?as_of={quote(as_of)}")
                    if status == 200 and json.loads(body) == want:
                        del waiting[key]
            if waiting:
                await asyncio.sleep(POLL_S)
    assert t_assigned is not None
    return t_assigned, time.monotonic(), t_health_ready


@dataclass
class Population:
    """Result of :func:`population`."""

    customers: int
    build_s: float  # fold one event per customer with the core + produce the states
    seconds: float  # partitions assigned -> table rebuilt
    customers_per_s: float
    rss_restored_mb: float  # peak RSS once the table is rebuilt
    rss_swept_mb: float | None  # peak RSS after the first sweep pass (None: none finished)
    sweep_s: float | None  # duration of that first pass (it builds the due index)
    worker_pid: int = 0


async def population(env: BenchEnv, customers: int, timeout_s: float, seed: int,
                     sweep_timeout_s: float) -> Population:
    """Peak RSS and restore speed with ``customers`` customers in the table.

    Writes one state per customer straight into the customer changelog of
    ``env`` (an app id of its own): each state is what the core's fold makes
    of one generated first event, as the worker would have written it. That
    is the shape of a compacted changelog: one record per customer. Then a
    worker starts on empty local stores; it must restore all of them, and the
    peak RSS is read once the table serves every partition's last record and
    again after the first time sweep has passed over all customers.
    """
    import aiohttp

    from schemas.events import parse_event
    from schemas.policy import PolicyBook
    from scoring.engine import PYTHON
    from streams.bench.generator import fast_stream
    from streams.topics import partition_for

    policies = PolicyBook.load(None)
    t0 = time.monotonic()
    now = datetime.now(UTC)

    def states() -> Iterator[tuple[str, bytes | None, bytes, int | None]]:
        for _typ, key, value in fast_stream(customers, customers, seed=seed):
            event = parse_event(value, now=now, policies=policies)
            outcome = PYTHON.apply(None, event, policies.for_shop(event.shop_id))
            yield (env.changelog_topic, key, bytes(PYTHON.encode(outcome.state)),
                   partition_for(key, env.partitions))

    await env.produce(states())
    build_s = time.monotonic() - t0
    expected = await _expected_last(env)
    worker = env.new_worker("population")
    worker.start()
    t_assigned, t_ready, _ = await _wait_rebuilt(worker, expected, timeout_s, "population")
    seconds = max(t_ready - t_assigned, POLL_S)
    rss_restored = worker_peak_rss_mb(worker)
    rss_swept = sweep_s = None
    deadline = time.monotonic() + sweep_timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            worker.check_alive()
            m = parse_metrics(await _metrics(session, worker) or "")
            if m.get("loyalty_sweeps_total", 0) >= 1:
                rss_swept = worker_peak_rss_mb(worker)
                sweep_s = m.get("loyalty_sweep_seconds_sum")
                break
            await asyncio.sleep(1.0)
    return Population(customers=customers, build_s=build_s, seconds=seconds,
                      customers_per_s=customers / seconds, rss_restored_mb=rss_restored,
                      rss_swept_mb=rss_swept, sweep_s=sweep_s, worker_pid=worker.pid)


def worker_peak_rss_mb(worker: WorkerProc) -> float:
    """Peak RSS (``VmHWM``) of the worker so far, MiB; the kernel tracks the peak exactly."""
    return read_proc_status(worker.pid).get("VmHWM", 0) / 1024


async def table_rows(worker: WorkerProc) -> float | None:
    """``loyalty_table_rows{table="customers"}`` (set by each sweep), None before a sweep."""
    return parse_labelled(await _scrape(worker), "loyalty_table_rows").get('table="customers"')


def loadavg() -> list[float]:
    """1/5/15-minute load averages (other load on the machine skews every figure)."""
    return [round(x, 2) for x in os.getloadavg()]
