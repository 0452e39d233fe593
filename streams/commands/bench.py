"""Measure the service against a plain aiokafka loop on the local broker.

  loyalty bench [--events N] [--customers N] [--partitions P] [--json] [--keep]

One run, on fresh topics (named after a unique app id, deleted at the end
unless --keep):

  1. preload N generated events for the customers into the input topics;
  2. baseline_events_per_s: a plain aiokafka consume-parse-produce-commit loop,
     three passes over the same input (the median pass per measure);
  3. events_per_s and cold_start_s: a cold `loyalty worker` on the same input,
     until its committed offsets reach the end of every input partition;
     events_per_cpu_s divides the same events by the CPU seconds the worker
     used meanwhile (start-up excluded), baseline_events_per_cpu_s likewise
     for the baseline; cpu_ratio and wall_ratio are service / baseline;
  4. latency_p50_ms / latency_p99_ms: produce -> output snapshot on the scores
     topic, at half the measured events_per_s, for --latency-seconds; then
     latency_p99_ms_at_1000 likewise at a fixed 1000 events/s;
  5. rss_mb: the worker's peak RSS with the population in its table;
  6. recovery_customers_per_s: stop, wipe the local stores, restart, time
     until the table is rebuilt from its changelog.

  loyalty bench --core-only [--events N] [--customers N] [--json]

folds the same generated stream in this process through the scoring core as
the agent does, without a broker (streams/bench/core.py): the core's own
events per CPU-second.

Needs the local broker (`loyalty broker start`). The default size takes
about 3-5 minutes on 2 cores; the figures depend on the machine and its other
load, so compare with the baseline of the same run, per CPU-second first
(cpu_ratio is the headline). See README "Performance" for what each number
means.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from streams.bench.generator import (
    HEAVY_CUSTOMERS,
    HEAVY_EVENTS,
    HEAVY_SHARE,
    REGULARS_SPAN_DAYS,
    SHOPS,
    SPAN_DAYS,
)
from streams.bench.phases import LATENCY_LINGER_MS

#: offered rate of the second latency phase (``latency_p99_ms_at_1000``)
FIXED_RATE = 1000.0
#: above this many partitions on the broker before a run, the run says so: on the
#: 2-core machine a broker left with ~14 000 (a day of test runs) made the latency
#: phases' p99 several times worse than on an empty one (README "Performance")
BUSY_BROKER_PARTITIONS = 1000


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the bench options."""
    # 4 events per customer, like streams.synthetic's population; sized so a
    # default run takes 3-5 minutes on 2 cores at the service's current speed.
    parser.add_argument("--events", type=int, default=100_000,
                        help="events to preload (default 100000; ignored by --generator synthetic)")
    parser.add_argument("--customers", type=int, default=25_000,
                        help="customers (default 25000)")
    parser.add_argument("--partitions", type=int, default=None,
                        help="partitions of every topic (default: LOYALTY_PARTITIONS, 4)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--keep", action="store_true",
                        help="keep the topics, groups and /tmp/bench_<id> files")
    parser.add_argument("--generator", choices=["fast", "heavy", "regulars", "synthetic"],
                        default="fast",
                        help="fast: exact counts, valid events (default); heavy: the fast "
                             "mix plus a few hundred hot customers with hundreds of events "
                             "each inside the lateness window (see --heavy-customers); "
                             "regulars: the same hot customers over a year of history "
                             "(--span-days default 365); "
                             "synthetic: streams.synthetic with faults, ~4.2 events per customer")
    parser.add_argument("--heavy-customers", type=int, default=HEAVY_CUSTOMERS, metavar="N",
                        help=f"--generator heavy or regulars: hot customers (default "
                             f"{HEAVY_CUSTOMERS}); "
                             f"each gets --heavy-events events, all within --span-days, at "
                             f"most {HEAVY_SHARE * 100:.0f}%% of --events in all (fewer hot "
                             f"customers in smaller runs: 20000 events -> 50)")
    parser.add_argument("--heavy-events", type=int, default=HEAVY_EVENTS, metavar="N",
                        help=f"--generator heavy or regulars: events of each hot customer "
                             f"(default {HEAVY_EVENTS})")
    parser.add_argument("--seed", type=int, default=7,
                        help="random seed of the generated population (default 7)")
    parser.add_argument("--shops", type=int, default=SHOPS, metavar="N",
                        help=f"shops the generated customers are spread over, round robin "
                             f"(default {SHOPS}); many shops mean many shop-tally rows per "
                             f"batch and many shop-labelled gauges")
    parser.add_argument("--span-days", type=float, default=None,
                        help=f"event-time span of the generated stream (default {SPAN_DAYS:g}, "
                             f"less than the 7-day allowed lateness, see README; "
                             f"{REGULARS_SPAN_DAYS:g} with --generator regulars)")
    parser.add_argument("--latency-seconds", type=float, default=15.0,
                        help="duration of each of the two fixed-rate latency phases (half the "
                             "max rate, then 1000 events/s; default 15: together they span "
                             "the default LOYALTY_SWEEP_INTERVAL_S, so one sweep falls in one)")
    parser.add_argument("--latency-rate", type=float, default=None,
                        help="offered events/s in the latency phase (default: half the measured "
                             "events_per_s, the rate at which the latency target applies)")
    parser.add_argument("--latency-linger-ms", type=int, default=LATENCY_LINGER_MS,
                        metavar="MS",
                        help="the latency phases send every MS milliseconds what is due, "
                             "all partitions in one request, as a producer with that linger.ms "
                             f"(default {LATENCY_LINGER_MS}, the Java client's default since "
                             "Kafka 4.0 and librdkafka's; 0 sends every event in its own request)")
    parser.add_argument("--compression", choices=["none", "gzip", "snappy", "lz4", "zstd"],
                        default="none", help="compression of the preloaded input (default none)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds allowed per phase (default 120 + events/200)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="record the workers with py-spy: DIR/throughput.speedscope.json, "
                             "latency.speedscope.json, recovery.speedscope.json "
                             "(py-spy on PATH or --py-spy)")
    parser.add_argument("--py-spy", default=None, help="path of the py-spy executable")
    parser.add_argument("--core-only", action="store_true",
                        help="no broker, no worker: fold the generated stream in this process "
                             "through the scoring core as the agent does (parse, state cache, "
                             "fold, effects, one state encoding and snapshot per customer per "
                             "batch) and report its events per CPU-second; the difference to "
                             "the worker's is what Kafka, Faust and the commit cost")
    parser.add_argument("--population", type=int, default=0, metavar="N",
                        help="also measure with N customers in the table (e.g. 1000000): "
                             "write N states folded by the core into the customer changelog "
                             "of a second run, start a worker on empty stores, report its "
                             "restore speed and peak RSS after the first sweep (default 0: "
                             "skip; about 10 minutes per million on 2 cores, most of it the "
                             "first sweep, which uses a tenth of the wall clock)")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; 0 on success, 1 when a phase fails (reason on stderr)."""
    import asyncio

    from streams.bench.harness import BenchError

    try:
        if args.events < 1 or args.customers < 1 or args.shops < 1:
            raise BenchError("--events, --customers and --shops must be at least 1")
        if args.latency_linger_ms < 0:
            raise BenchError("--latency-linger-ms must be 0 or more")
        if args.span_days is None:
            args.span_days = REGULARS_SPAN_DAYS if args.generator == "regulars" else SPAN_DAYS
        if args.core_only and (args.population or args.profile or args.keep):
            raise BenchError("--core-only starts no worker and creates no topics: "
                             "--population, --profile and --keep do not apply to it")
        result = _run_core(args) if args.core_only else asyncio.run(_run(args))
    except BenchError as exc:
        print(f"loyalty bench: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("loyalty bench: interrupted; worker stopped and run cleaned up", file=sys.stderr)
        return 130
    if args.json:
        from schemas import codec

        sys.stdout.write(codec.dumps(result).decode() + "\n")
    elif args.core_only:
        print(f"core only: {result['events']} events, {result['customers']} customers, "
              f"{result['cpu_s']} CPU-s: {result['events_per_cpu_s']} events per CPU-second "
              f"({result['us_per_event']} us per event); statuses {result['statuses']}; "
              f"state cache {result['state_cache']}")
    else:
        from streams.bench.report import table

        print(table(result))
    return 0


def _stream(args: argparse.Namespace, stats: Any) -> Any:
    """The generated input stream the options ask for; BenchError for impossible sizes."""
    from streams.bench.generator import fast_stream, heavy_stream, regulars_stream, synthetic_stream
    from streams.bench.harness import BenchError

    if args.generator == "synthetic":
        return synthetic_stream(args.customers, seed=args.seed, stats=stats, shops=args.shops)
    if args.generator in ("heavy", "regulars"):
        hot = heavy_stream if args.generator == "heavy" else regulars_stream
        try:
            return hot(args.events, args.customers, seed=args.seed, span_days=args.span_days,
                       stats=stats, heavy_customers=args.heavy_customers,
                       heavy_events=args.heavy_events, shops=args.shops)
        except ValueError as exc:
            raise BenchError(str(exc)) from exc
    return fast_stream(args.events, args.customers, seed=args.seed,
                       span_days=args.span_days, stats=stats, shops=args.shops)


def _run_core(args: argparse.Namespace) -> dict[str, Any]:
    """``--core-only``: :func:`streams.bench.core.measure_core` with the worker's settings."""
    from schemas.policy import PolicyBook
    from scoring.native import engine_named
    from scoring.replay import tune_gc
    from streams.bench.core import measure_core
    from streams.bench.generator import StreamStats
    from streams.bench.report import machine
    from streams.settings import get_settings

    settings = get_settings()
    stats = StreamStats()
    stream = list(_stream(args, stats))
    tune_gc()  # the worker's garbage collector policy (streams/commands/worker.py)
    _progress(args, f"core only: folding {len(stream)} generated events in this process")
    result = measure_core(stream, policies=PolicyBook.load(settings.policy_file),
                          batch_max=settings.batch_max,
                          cache_size=settings.state_cache_size,
                          head_cache_mb=settings.head_cache_mb,
                          cache_mb=settings.state_cache_mb,
                          engine=engine_named(settings.engine))
    result["generator"] = stats.generator
    result["shops"] = stats.shops
    result["machine"] = machine(settings.kafka_version)
    return result


def _round(value: float | None, digits: int) -> float | None:
    """``round`` that passes None through (a figure that could not be measured)."""
    return None if value is None else round(value, digits)


def _ratio(service: float | None, baseline: float | None) -> float | None:
    """``service / baseline`` to 4 significant digits (ratios far below 1 are the usual)."""
    return float(f"{service / baseline:.4g}") if service and baseline else None


def _progress(args: argparse.Namespace, message: str) -> None:
    # Progress goes to stderr so `--json` output stays one clean object.
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _progress_steps(args: argparse.Namespace, phase: str, batches: dict[str, Any]) -> None:
    """The phase's batches: their mean size and the agent thread's CPU per record by step."""
    cpu = batches.get("cpu_us_per_record") or {}
    if not batches.get("batches") or not cpu:
        return
    steps = ", ".join(f"{step} {us:.0f}" for step, us in cpu.items() if us is not None)
    total = sum(us for us in cpu.values() if us is not None)
    _progress(args, f"{phase}: {batches['batches']:,} batches of {batches['records_per_batch']:g} "
                    f"records; agent thread CPU per record {total:.0f} us ({steps})")


def _start_profile(spy: str, pid: int, out: Path) -> Any:
    """Attach ``py-spy record`` to ``pid``; it writes ``out`` (speedscope) when stopped."""
    import subprocess

    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "100", "--format",
                             "speedscope", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _stop_profile(profiler: Any) -> None:
    import signal
    import subprocess

    profiler.send_signal(signal.SIGINT)  # py-spy writes the profile on SIGINT
    try:
        profiler.wait(60)
    except subprocess.TimeoutExpired:
        profiler.kill()


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    import asyncio
    import logging
    import shutil
    import signal
    import statistics

    from streams.bench import phases
    from streams.bench.generator import StreamStats
    from streams.bench.harness import (
        BASELINE_PASSES,
        BenchEnv,
        BenchError,
        check_broker,
        local_broker_pid,
    )
    from streams.bench.report import machine
    from streams.settings import get_settings

    # Produce retries right after topic creation (NotLeaderForPartition) are
    # handled by aiokafka; its warnings would only clutter the report.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    settings = get_settings()
    check_broker(settings)
    partitions = args.partitions or settings.partitions
    timeout = args.timeout or 120.0 + args.events / 200.0
    env = BenchEnv(settings, partitions, keep=args.keep)
    mach = machine(settings.kafka_version)
    # SIGTERM should clean up like Ctrl-C does: cancel the run, finally-blocks stop the worker.
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    profiler: Any = None
    observed: dict[str, Any] = {}
    extra_envs: list[Any] = []
    try:
        observed["broker_partitions_before"] = await env.broker_partitions()
        if observed["broker_partitions_before"] > BUSY_BROKER_PARTITIONS:
            _progress(args, f"note: the broker holds {observed['broker_partitions_before']:,} "
                            "partitions before this run's; a broker carrying many slows every "
                            "figure (README \"Performance\"): compare runs on the same broker")
        _progress(args, f"run {env.app_id}: creating topics ({partitions} partitions)")
        await env.create_topics()
        stats = StreamStats()
        stream = _stream(args, stats)
        t0 = loop.time()
        total = await env.preload(stream, compression=None if args.compression == "none"
                                  else args.compression)
        observed["preload_s"] = round(loop.time() - t0, 2)
        observed["event_types"] = stats.by_type
        if stats.generator == "heavy":
            observed["heavy"] = {"customers": stats.heavy_customers,
                                 "events_each": stats.heavy_events_each}
        _progress(args, f"preloaded {total} events for {stats.customers} customers "
                        f"in {observed['preload_s']} s")

        _progress(args, f"baseline: plain aiokafka loop, {BASELINE_PASSES} passes")
        passes = [await phases.baseline(env, total, timeout, run)
                  for run in range(BASELINE_PASSES)]
        observed["baseline_passes"] = [
            {"seconds": round(p["seconds"], 3), "cpu_s": round(p["cpu_s"], 3),
             "events_per_s": round(p["events_per_s"], 1),
             "events_per_cpu_s": _round(total / p["cpu_s"] if p["cpu_s"] else None, 1)}
            for p in passes]
        # The median pass, per measure (why: BASELINE_PASSES).
        base_rate = statistics.median(p["events_per_s"] for p in passes)
        base_cpu_rate = statistics.median(total / p["cpu_s"] if p["cpu_s"] else 0.0
                                          for p in passes) or None
        _progress(args, f"baseline: {base_rate:,.0f} events/s, "
                        f"{base_cpu_rate or 0:,.0f} per CPU-second (medians)")

        _progress(args, "throughput: cold worker on the preloaded topics")
        worker = env.new_worker("main")
        spy = ""
        if args.profile is not None:
            spy = args.py_spy or shutil.which("py-spy") or ""
            if not spy:
                raise BenchError("--profile needs py-spy: `pip install py-spy` or pass --py-spy")
        tp_task = asyncio.ensure_future(phases.throughput(env, worker, total, timeout))
        if args.profile is not None:
            # Attach once the process exists, so the profile covers startup too.
            while worker.proc is None and not tp_task.done():
                await asyncio.sleep(0.01)
            profiler = _start_profile(spy, worker.pid, args.profile / "throughput.speedscope.json")
        tput = await tp_task
        observed["throughput_s"] = round(tput.seconds, 3)
        observed["processed_s"] = round(tput.processed_at_s, 3)
        observed["worker_cpu_s"] = None if tput.worker_cpu_s is None else round(
            tput.worker_cpu_s, 2)
        observed["measured_events"] = tput.measured_events
        observed["statuses"] = tput.statuses
        observed["batches"] = tput.batches
        cpu_rate = tput.events_per_cpu_s
        _progress(args, f"throughput: {tput.events_per_s:,.0f} events/s, "
                        f"{cpu_rate or 0:,.0f} per CPU-second "
                        f"(cold start {tput.cold_start_s:.1f} s)")
        _progress_steps(args, "throughput", tput.batches)

        if profiler is not None:
            _stop_profile(profiler)
            profiler = _start_profile(spy, worker.pid, args.profile / "latency.speedscope.json")

        broker_pid = local_broker_pid(env.base)

        async def latency_at(rate: float, name: str) -> phases.Latency:
            _progress(args, f"latency: {rate:,.0f} events/s for {args.latency_seconds:g} s")
            lat = await phases.latency(env, worker, stats.keys_sample, rate,
                                       args.latency_seconds, linger_ms=args.latency_linger_ms,
                                       broker_pid=broker_pid)
            observed[name] = lat.observed()
            if not lat.kept_up:
                _progress(args, "latency: the worker did not keep up with the offered rate "
                                "(latency grew during the phase); p50/p99 include queueing")
            cores = ", ".join(f"{who} {n:.2f}" for who, n in lat.cpu_cores.items() if n is not None)
            _progress(args, f"latency: p50 {lat.p50_ms:.1f} ms, p99 {lat.p99_ms:.1f} ms; "
                            f"CPU cores: {cores}")
            parts = ", ".join(f"{name} {part['p50_ms']:g}/{part['p99_ms']:g}"
                              for name, part in lat.split.items())
            _progress(args, f"latency: p50/p99 ms of its parts: {parts}; agent busy "
                            f"{lat.agent_busy if lat.agent_busy is not None else '?'} of the time")
            _progress_steps(args, "latency", lat.batches)
            return lat

        lat = await latency_at(args.latency_rate or max(1.0, tput.events_per_s / 2), "latency")
        lat_fixed = await latency_at(FIXED_RATE, "latency_at_1000")
        if lat_fixed.matched < lat_fixed.sent:  # a backlog would be folded during recovery
            _progress(args, "latency: waiting for the worker to work off its backlog")
            observed["catch_up_s"] = round(await phases.catch_up(env, worker, timeout), 1)
        if profiler is not None:
            _stop_profile(profiler)
            profiler = None

        rss = phases.worker_peak_rss_mb(worker)
        rows = await phases.table_rows(worker)
        observed["table_rows_gauge"] = rows
        observed["worker_pids"] = [worker.pid]

        _progress(args, "recovery: stop, wipe local stores, restart")
        def on_recovery_start(pid: int) -> None:
            nonlocal profiler
            if args.profile is not None:
                profiler = _start_profile(spy, pid, args.profile / "recovery.speedscope.json")

        rec = await phases.recovery(env, worker, stats.customers, timeout,
                                    on_start=on_recovery_start)
        if profiler is not None:
            _stop_profile(profiler)
            profiler = None
        observed["worker_pids"] = [w.pid for w in env.workers if w.proc is not None]
        observed["recovery_s"] = round(rec.seconds, 3)
        observed["recovery_restart_s"] = round(rec.restart_s, 3)
        observed["recovery_rss_mb"] = round(rec.rss_mb, 1)
        observed["recovery_health_ready_s"] = None if rec.health_ready_s is None else round(
            rec.health_ready_s, 3)
        observed["changelog_records"] = rec.changelog_records
        observed["recovery_records_per_s"] = round(rec.changelog_records / rec.seconds, 1)
        _progress(args, f"recovery: {rec.customers_per_s:,.0f} customers/s")
        pop = None
        if args.population > 0:
            _progress(args, f"population: {args.population:,} customers into a fresh changelog")
            pop_env = BenchEnv(settings, partitions, keep=args.keep)
            extra_envs.append(pop_env)
            await pop_env.create_topics()
            p = await phases.population(pop_env, args.population, timeout_s=timeout
                                        + args.population / 2000.0, seed=args.seed,
                                        sweep_timeout_s=settings.sweep_interval_s + 60.0
                                        + args.population / 1500.0)
            pop = {"customers": p.customers,
                   "rss_mb": round(p.rss_swept_mb if p.rss_swept_mb is not None
                                   else p.rss_restored_mb, 1),
                   "rss_restored_mb": round(p.rss_restored_mb, 1),
                   "rss_swept_mb": None if p.rss_swept_mb is None else round(p.rss_swept_mb, 1),
                   "recovery_customers_per_s": round(p.customers_per_s, 1),
                   "recovery_s": round(p.seconds, 3), "build_s": round(p.build_s, 1),
                   "first_sweep_s": None if p.sweep_s is None else round(p.sweep_s, 1),
                   "app_id": pop_env.app_id, "worker_pid": p.worker_pid}
            swept = (f"after the first sweep ({p.sweep_s:,.0f} s)" if p.sweep_s is not None
                     else "after the restore; the first sweep had not finished")
            _progress(args, f"population: restored at {p.customers_per_s:,.0f} customers/s, "
                            f"peak RSS {pop['rss_mb']:,.0f} MiB {swept}")
        observed["loadavg_end"] = phases.loadavg()
        return {
            "events_per_cpu_s": _round(cpu_rate, 1),
            "baseline_events_per_cpu_s": _round(base_cpu_rate, 1),
            "cpu_ratio": _ratio(cpu_rate, base_cpu_rate),
            "wall_ratio": _ratio(tput.events_per_s, base_rate),
            "events_per_s": round(tput.events_per_s, 1),
            "baseline_events_per_s": round(base_rate, 1),
            "cold_start_s": round(tput.cold_start_s, 3),
            "latency_p50_ms": round(lat.p50_ms, 2),
            "latency_p99_ms": round(lat.p99_ms, 2),
            "latency_p99_ms_at_1000": round(lat_fixed.p99_ms, 2),
            "rss_mb": round(rss, 1),
            "customers": stats.customers,
            "recovery_customers_per_s": round(rec.customers_per_s, 1),
            "population": pop,
            "machine": mach,
            "params": {"events": total, "customers": args.customers,
                       "partitions": partitions, "generator": stats.generator,
                       "seed": args.seed, "shops": stats.shops, "span_days": args.span_days,
                       "heavy_customers": args.heavy_customers,
                       "heavy_events": args.heavy_events,
                       "latency_seconds": args.latency_seconds,
                       "latency_rate": args.latency_rate,
                       "latency_linger_ms": args.latency_linger_ms,
                       "compression": args.compression, "app_id": env.app_id,
                       "keep": args.keep, "observed": observed},
        }
    finally:
        if profiler is not None and profiler.poll() is None:
            profiler.kill()
        for e in (env, *extra_envs):
            e.stop_workers()
            if not args.keep:
                try:
                    await asyncio.wait_for(e.cleanup_broker(), 60)
                except Exception as exc:  # noqa: BLE001 - report, but keep the real error
                    print(f"loyalty bench: could not delete the run's topics: {exc!r}",
                          file=sys.stderr)
                e.cleanup_files()
            else:
                _progress(args, f"kept: topics {e.app_id}*, files {e.tmp}")
