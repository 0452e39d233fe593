"""The product in one command: broker, topics, worker, a synthetic shop streamed through.

  loyalty demo [--customers N] [--shops N] [--rate N] [--exit]
               [--namespace NS] [--port N] [--dir DIR]

1. starts the local Kafka broker unless one answers already, and creates the
   topics;
2. loads a synthetic shop history into Kafka with a progress bar (three
   shops, 400 days with refunds, redemptions, feedback, duplicates, late and
   invalid records; also written to DIR/events.jsonl), as a shop imports its
   history;
3. starts a worker subprocess (log: DIR/worker.log) with a time sweep every
   2 s (each a full recount of the shop tallies) and a CLV refit every 5 s,
   so the figures are current within seconds (production defaults: 30 s and
   one hour; the minimum customers per shop model stays the production one,
   so the small demo shops are scored by the pooled model), and waits until
   it has processed the backlog, a time sweep has run after that, and the CLV
   models have been refitted on all of it;
4. prints, as of one instant and only from the service's API answers: per
   shop the stage funnel, NPS and the CLV model in use (with the reason), and
   the top 10 customers by LTV with their predicted CLV; ``loyalty replay
   DIR/events.jsonl --as-of`` that instant gives the same figures;
5. keeps serving until Ctrl-C (``--exit``: stops right away, for scripts), then
   stops the worker, and the broker if it started it.

The demo's app id and topics are namespaced by the day (``demo-YYYYMMDD``,
or ``--namespace``): running it again the same day re-sends identical events,
which the service recognises as duplicates, so the figures do not change.
``--namespace``, ``--port`` and ``--dir`` let several demos (or a test) run
side by side on one broker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the demo options."""
    parser.add_argument("--customers", type=int, default=120, help="customers per shop (120)")
    parser.add_argument("--shops", type=int, default=3, help="number of shops (3)")
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="events per second sent to Kafka (1000)")
    parser.add_argument("--exit", action="store_true", help="stop after printing the results")
    parser.add_argument("--namespace", metavar="NS",
                        help="app id and topic-name prefix (default demo-YYYYMMDD, today in UTC)")
    parser.add_argument("--port", type=int, metavar="N",
                        help="web port of the demo worker (default LOYALTY_WEB_PORT, 6066)")
    parser.add_argument("--dir", type=Path, default=Path("var/demo"), metavar="DIR",
                        help="where events.jsonl, worker.log and the table data go (var/demo)")


#: Seconds between time sweeps and between CLV refits of the demo worker.
SWEEP_INTERVAL_S = 2
CLV_REFIT_INTERVAL_S = 5
#: Seed and history length of the demo population.
SEED = 2024
SPAN_DAYS = 400


def population(customers: int, shops: int, end: datetime) -> list[Any]:
    """The demo's synthetic records (``streams.synthetic``), newest event at ``end``."""
    from streams import synthetic

    return synthetic.generate(seed=SEED, shops=shops, customers_per_shop=customers, end=end,
                              span_days=SPAN_DAYS)


def worker_env(ns: str, var: Path, port: int | None) -> dict[str, str]:
    """The ``LOYALTY_*`` variables of the demo worker: namespaced app id and topics."""
    env = {
        "LOYALTY_APP_ID": ns,
        "LOYALTY_DATA_DIR": str(var / "data"),
        "LOYALTY_SWEEP_INTERVAL_S": str(SWEEP_INTERVAL_S),
        "LOYALTY_CLV_REFIT_INTERVAL_S": str(CLV_REFIT_INTERVAL_S),
        **{f"LOYALTY_TOPIC_{k.upper()}": f"{ns}.{v}" for k, v in {
            "purchases": "purchases", "visits": "visits", "feedback": "feedback",
            "redemptions": "redemptions", "forget": "forget", "transitions": "stage-transitions",
            "rewards": "rewards", "scores": "scores", "dead_letter": "dead-letter",
            "clv_params": "clv-params"}.items()},
    }
    if port is not None:
        env["LOYALTY_WEB_PORT"] = str(port)
    return env


def _get(url: str, token: str | None, timeout: float = 10.0) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                timeout=timeout) as resp:
        return json.loads(resp.read())


def _metric_sum(base: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                total += s.value
    return total


def broker_start_message(host: str, port: int, jars_cached: bool) -> str:
    """What the demo says before starting the broker; Maven is named only when it will run."""
    hint = "" if jars_cached else " (first run: downloading Apache Kafka with Maven)"
    return f"starting the local Kafka broker on {host}:{port}{hint} ..."


def outputs_hint(settings: Any) -> str:
    """The `loyalty tail` hint: output topic names separated by spaces (safe to paste)."""
    topics = (settings.topic_transitions, settings.topic_rewards, settings.topic_scores,
              settings.topic_dead_letter)
    return f"outputs  loyalty tail TOPIC   (TOPIC one of: {' '.join(topics)})"


def _processed(base: str) -> float:
    """Input records the worker has finished, each counted once.

    A wrongly keyed record is processed twice (forwarded to the rekey topic,
    then folded from there); the forwarding hop is subtracted.
    """
    return (_metric_sum(base, "loyalty_processing_seconds_count")
            - _metric_sum(base, "loyalty_rekeyed_total"))


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns 0 on success."""
    from streams import synthetic
    from streams.broker import BrokerConfig, jars_present, probe_metadata
    from streams.commands.produce import produce_records, progress
    from streams.security import client_kwargs
    from streams.settings import get_settings
    from streams.topics import all_topic_specs, ensure_topics, input_topic_for_event_type

    base_settings = get_settings()
    var: Path = args.dir
    var.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "streams.cli"]
    started_broker = False
    worker: subprocess.Popen[bytes] | None = None

    def say(msg: str) -> None:
        print(f"demo: {msg}", file=sys.stderr, flush=True)

    try:
        if probe_metadata(base_settings.broker_host, base_settings.broker_port) is None:
            say(broker_start_message(base_settings.broker_host, base_settings.broker_port,
                                     jars_present(BrokerConfig.from_settings(base_settings))))
            if subprocess.call([*cli, "broker", "start"]) != 0:
                say("the broker did not start; see the message above")
                return 1
            started_broker = True
        else:
            say(f"using the broker on {base_settings.broker_host}:{base_settings.broker_port}")

        anchor = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        ns = args.namespace or f"demo-{anchor:%Y%m%d}"
        env = worker_env(ns, var, args.port)
        settings = base_settings.model_copy(update={
            k[len("LOYALTY_"):].lower(): v for k, v in env.items()})
        # Start from empty local stores: the tables are rebuilt from their
        # changelogs (or start empty on a broker that was reset). Stores left by
        # an earlier run can be ahead of a reset broker, which Faust refuses to
        # start with (ConsistencyError). Re-streaming the same seeded
        # population is idempotent: every event is a duplicate the second time.
        shutil.rmtree(var / "data", ignore_errors=True)
        asyncio.run(ensure_topics(settings.bootstrap_servers, all_topic_specs(settings),
                                  settings.replication_factor,
                                  client=client_kwargs(settings)))
        host = "127.0.0.1" if settings.web_host in ("0.0.0.0", "::") else settings.web_host
        base = f"http://{host}:{settings.web_port}"

        # The shop's history goes into Kafka first, as a shop imports it, and the
        # worker then catches up on it as one backlog, which it reads in event-time
        # order across the four topics. Streamed into a running worker at this
        # speed, records of one topic can reach the broker after newer records of
        # another that the worker has already folded (the producer sends each
        # partition's batches on its own), and valid events would be too late.
        records = population(args.customers, args.shops, anchor - timedelta(minutes=1))
        synthetic.write_jsonl(records, var / "events.jsonl")
        say(f"loading {len(records)} events of history into Kafka "
            f"(also written to {var / 'events.jsonl'}) ...")

        def topic(r: Any) -> str:
            try:
                return input_topic_for_event_type(settings, r.event_type)
            except (ValueError, TypeError):
                return settings.topic_purchases

        asyncio.run(produce_records(settings, [(topic(r), r.key, r.value) for r in records],
                                    total=len(records), rate=args.rate))

        say(f"starting the worker (app {ns}, log {var / 'worker.log'}) ...")
        started = time.monotonic()
        with open(var / "worker.log", "ab") as log:
            worker = subprocess.Popen([*cli, "worker", "--loglevel", "warning"],
                                      env={**os.environ, **env}, stdout=log,
                                      stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            if worker.poll() is not None:
                say(f"the worker exited ({worker.returncode}); see {var / 'worker.log'}")
                return 1
            try:
                if _get(f"{base}/health", None, 2).get("ready"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                say("the worker did not become ready in 120 s")
                return 1
            time.sleep(0.5)

        say("waiting for the worker to process everything ...")
        target = len(records)  # a new worker process: its counters start at zero
        last_change, last = time.monotonic(), -1.0
        while True:
            done = _processed(base)
            progress(int(min(done, target)), target, started, sys.stderr)
            if done >= target:
                break
            if done != last:
                last, last_change = done, time.monotonic()
            elif time.monotonic() - last_change > 30:
                sys.stderr.write("\n")
                say(f"no progress for 30 s at {int(done)} of {target} records; the figures "
                    f"below may miss the rest (see {var / 'worker.log'})")
                break
            time.sleep(0.5)
        sys.stderr.write("\n")
        say("waiting for a time sweep and a CLV refit after the last event ...")
        as_of = asyncio.run(wait_current(settings, base, datetime.now(UTC),
                                         lambda: worker is not None and worker.poll() is None))
        if as_of is None:
            say(f"the worker did not sweep and refit in time; see {var / 'worker.log'}")
            return 1
        report(records, base, settings.api_token, as_of)
        print(f"\nAPI      {base}/customers/<shop>/<customer>[?as_of=RFC3339]   "
              f"e.g. {base}/customers/cafe-aurora/c00001")
        print(f"         {base}/shops/<shop>    {base}/health")
        print(f"metrics  {base}/metrics")
        print(outputs_hint(settings))
        print(f"replay   loyalty replay {var / 'events.jsonl'} --as-of {_instant(as_of)}"
              "   (the same figures, offline)")
        if args.exit:
            return 0
        print("\nserving until Ctrl-C ...", flush=True)

        def _stop(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _stop)  # stop cleanly on SIGTERM too
        while worker.poll() is None:
            time.sleep(1.0)
        say(f"the worker exited ({worker.returncode}); see {var / 'worker.log'}")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if worker is not None and worker.poll() is None:
            say("stopping the worker ...")
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
        if started_broker:
            say("stopping the broker it started ...")
            subprocess.call([*cli, "broker", "stop"])


def _instant(t: datetime) -> str:
    """RFC 3339 in UTC, whole seconds, ``Z``."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def wait_current(settings: Any, base: str, since: datetime,
                       alive: Callable[[], bool], timeout: float = 180.0) -> datetime | None:
    """Wait until the worker's figures cover everything it processed before ``since``.

    Returns the instant to query as of (whole seconds, on the same UTC day as the
    sweep and the fit), or None on timeout or when ``alive()`` turns false. The
    guarantee: a time sweep advanced customers past ``since`` (``/health``'s
    ``last_sweep.advanced_to``: it stays behind while the input is) and a CLV refit *started* after ``since``. Refits run one after the other and
    stamp ``fitted_at`` when they finish, so the second refit that finished after
    ``since`` (read back from the CLV params topic) started after it.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.security import client_kwargs

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                **client_kwargs(settings))
    await consumer.start()
    deadline = time.monotonic() + timeout
    finished: set[datetime] = set()  # fitted_at of the refits seen
    try:
        name = settings.topic_clv_params  # created with the others: LOYALTY_PARTITIONS
        consumer.assign([TopicPartition(name, p) for p in range(settings.partitions)])
        await consumer.seek_to_beginning()
        while time.monotonic() < deadline and alive():
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                for m in msgs:
                    try:
                        finished.add(datetime.fromisoformat(json.loads(m.value)["fitted_at"]))
                    except (ValueError, KeyError, TypeError):
                        continue  # not ours to judge; the worker logs bad records
            try:
                sweep = _get(f"{base}/health", None, 5).get("last_sweep") or {}
            except OSError:
                continue
            swept = (sweep.get("advanced_to")
                     and datetime.fromisoformat(sweep["advanced_to"]) > since)
            if swept and sum(1 for f in finished if f > since) >= 2:
                now = datetime.now(UTC).replace(microsecond=0)
                if now.date() == since.date():
                    return now
                since = now  # midnight passed: stages and CLV inputs move by the day
            await asyncio.sleep(0.5)
        return None
    finally:
        await consumer.stop()


def report(records: list[Any], base: str, token: str | None, as_of: datetime) -> None:
    """Print the shops and the top customers as the service answers them as of ``as_of``."""
    from urllib.parse import quote

    from schemas import codec

    keys = []
    for r in records:
        if r.is_invalid:
            continue
        d = codec.loads(r.value)
        keys.append((d["shop_id"], d["customer_id"]))
    keys = sorted(set(keys))
    shops = sorted({s for s, _ in keys})
    q = f"?as_of={quote(_instant(as_of))}"
    print(f"\nFigures as of {_instant(as_of)}, as the service answers them "
          f"(after its time sweep and CLV refit):\n")
    for shop in shops:
        for line in shop_lines(shop, _get(f"{base}/shops/{quote(shop, safe='')}{q}", token)):
            print(line)
    snaps = []
    for shop, cust in keys:
        try:
            snaps.append(_get(f"{base}/customers/{quote(shop, safe='')}/{quote(cust, safe='')}{q}",
                              token))
        except OSError:
            continue
    snaps.sort(key=lambda s: (-(s.get("ltv_historical") or 0), s["shop_id"], s["customer_id"]))
    print("\nTop 10 customers by historical LTV (margin, minor units), with predicted CLV:")
    print(CUSTOMER_HEADER)
    for s in snaps[:10]:
        print(customer_row(s))


#: Columns of the customer table: header, snapshot field, width (negative: left-aligned).
CUSTOMER_COLUMNS = (
    ("shop", "shop_id", -14), ("customer", "customer_id", -10), ("LTV", "ltv_historical", 8),
    ("formula", "ltv_formula", 9), ("spend", "spend_total", 8), ("orders", "purchase_count", 6),
    ("stage", "stage", -14), ("tier", "tier", -7), ("points", "points_balance", 6),
    ("clv_model", "clv_model", -9), ("p_alive", "p_alive", 8), ("clv_365d", "clv_365d", 8),
)


def _cell(value: Any, width: int) -> str:
    text = "-" if value is None else str(value)
    return f"{text:<{-width}}" if width < 0 else f"{text:>{width}}"


CUSTOMER_HEADER = "  " + " ".join(_cell(h, w) for h, _, w in CUSTOMER_COLUMNS)


def customer_row(snap: dict[str, Any]) -> str:
    """One line of the customer table: the snapshot's values as served (null: ``-``)."""
    return "  " + " ".join(_cell(snap[f], w) for _, f, w in CUSTOMER_COLUMNS)


def clv_line(clv: dict[str, Any] | None) -> str:
    """Which CLV model scores the shop, on how many buyers, and why not its own."""
    if clv is None or clv.get("model") is None:
        why = "not available" if clv is None else clv.get("reason") or "not fitted yet"
        return f"CLV model: none ({why})"
    where = f"pool {clv['pool']}, " if clv["model"] == "pooled" else ""
    text = f"CLV model: {clv['model']} ({where}fitted on {clv['customers']} buyers)"
    if clv.get("reason"):
        text += f"; own fit not served: {clv['reason']}"
    return text


def shop_lines(shop: str, f: dict[str, Any]) -> list[str]:
    """The lines printed for one shop from its ``GET /shops/{shop}`` answer."""
    nps = f["nps"]
    funnel = "  ".join(f"{k} {v}" for k, v in f["funnel"].items())
    return [f"{shop:<14} customers {f['customers']:>4}   buyers {f['buyers']:>4}   "
            f"NPS {nps['score']} ({nps['band']}, {nps['responses']} answers)",
            f"{'':<14} funnel: {funnel}",
            f"{'':<14} {clv_line(f.get('clv'))}"]
