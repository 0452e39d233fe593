"""The product in one command: broker, topics, worker, a synthetic shop streamed through.

  loyalty demo [--customers N] [--rate N] [--exit]

1. starts the local Kafka broker unless one answers already;
2. creates the topics and starts a worker subprocess (log: var/demo/worker.log);
3. streams a synthetic population (three shops, a year of history with
   refunds, redemptions, feedback, duplicates, late and invalid records) with
   a progress bar, and waits until the worker has processed all of it;
4. prints the stage funnel and NPS per shop, the top 10 customers by LTV and
   where the API and the metrics are;
5. keeps serving until Ctrl-C (``--exit``: stops right away, for scripts), then
   stops the worker, and the broker if it started it.

The demo's app id and topics are namespaced by the day (``demo-YYYYMMDD``):
running it again the same day re-sends identical events, which the service
recognises as duplicates, so the figures do not change.
"""

from __future__ import annotations

import argparse
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
from typing import Any


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the demo options."""
    parser.add_argument("--customers", type=int, default=120, help="customers per shop (120)")
    parser.add_argument("--shops", type=int, default=3, help="number of shops (3)")
    parser.add_argument("--rate", type=float, default=400.0,
                        help="events per second sent to Kafka (400)")
    parser.add_argument("--exit", action="store_true", help="stop after printing the results")


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
    import asyncio

    from streams import synthetic
    from streams.broker import BrokerConfig, jars_present, probe_metadata
    from streams.commands.produce import produce_records, progress
    from streams.security import client_kwargs
    from streams.settings import get_settings
    from streams.topics import all_topic_specs, ensure_topics, input_topic_for_event_type

    base_settings = get_settings()
    repo_var = Path("var/demo")
    repo_var.mkdir(parents=True, exist_ok=True)
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
        ns = f"demo-{anchor:%Y%m%d}"
        env = {
            "LOYALTY_APP_ID": ns,
            "LOYALTY_DATA_DIR": str(repo_var / "data"),
            **{f"LOYALTY_TOPIC_{k.upper()}": f"{ns}.{v}" for k, v in {
                "purchases": "purchases", "visits": "visits", "feedback": "feedback",
                "redemptions": "redemptions", "transitions": "stage-transitions",
                "rewards": "rewards", "scores": "scores", "dead_letter": "dead-letter",
                "clv_params": "clv-params"}.items()},
        }
        settings = base_settings.model_copy(update={
            k[len("LOYALTY_"):].lower(): v for k, v in env.items()})
        # Start from empty local stores: the tables are rebuilt from their
        # changelogs (or start empty on a broker that was reset). Stores left by
        # an earlier run can be ahead of a reset broker, which Faust refuses to
        # start with (ConsistencyError). Re-streaming the same seeded
        # population is idempotent: every event is a duplicate the second time.
        shutil.rmtree(repo_var / "data", ignore_errors=True)
        asyncio.run(ensure_topics(settings.bootstrap_servers, all_topic_specs(settings),
                                  settings.replication_factor,
                                  client=client_kwargs(settings)))
        host = "127.0.0.1" if settings.web_host in ("0.0.0.0", "::") else settings.web_host
        base = f"http://{host}:{settings.web_port}"
        say(f"starting the worker (app {ns}, log {repo_var / 'worker.log'}) ...")
        with open(repo_var / "worker.log", "ab") as log:
            worker = subprocess.Popen([*cli, "worker", "--loglevel", "warning"],
                                      env={**os.environ, **env}, stdout=log,
                                      stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            if worker.poll() is not None:
                say(f"the worker exited ({worker.returncode}); see {repo_var / 'worker.log'}")
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

        records = synthetic.generate(seed=2024, shops=args.shops,
                                     customers_per_shop=args.customers,
                                     end=anchor - timedelta(minutes=1), span_days=400)
        synthetic.write_jsonl(records, repo_var / "events.jsonl")
        say(f"streaming {len(records)} events (also written to {repo_var / 'events.jsonl'}) ...")

        def topic(r: Any) -> str:
            try:
                return input_topic_for_event_type(settings, r.event_type)
            except (ValueError, TypeError):
                return settings.topic_purchases

        before = _processed(base)
        started = time.monotonic()  # the worker processes while the events are streamed
        asyncio.run(produce_records(settings, [(topic(r), r.key, r.value) for r in records],
                                    total=len(records), rate=args.rate))
        say("waiting for the worker to process everything ...")
        target = len(records)
        last_change, last = time.monotonic(), -1.0
        while True:
            done = _processed(base) - before
            progress(int(min(done, target)), target, started, sys.stderr)
            if done >= target:
                break
            if done != last:
                last, last_change = done, time.monotonic()
            elif time.monotonic() - last_change > 30:
                break  # a re-run: duplicates of already-processed offsets are not re-read
            time.sleep(0.5)
        sys.stderr.write("\n")
        time.sleep(float(settings.sweep_interval_s) if settings.sweep_interval_s < 10 else 1.0)
        _report(records, base, settings.api_token)
        print(f"\nAPI      {base}/customers/<shop>/<customer>[?as_of=RFC3339]   "
              f"e.g. {base}/customers/cafe-aurora/c00001")
        print(f"         {base}/shops/<shop>    {base}/health")
        print(f"metrics  {base}/metrics")
        print(outputs_hint(settings))
        if args.exit:
            return 0
        print("\nserving until Ctrl-C ...", flush=True)

        def _stop(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _stop)  # stop cleanly on SIGTERM too
        while worker.poll() is None:
            time.sleep(1.0)
        say(f"the worker exited ({worker.returncode}); see {repo_var / 'worker.log'}")
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


def _report(records: list[Any], base: str, token: str | None) -> None:
    from schemas import codec

    keys = []
    for r in records:
        if r.is_invalid:
            continue
        d = codec.loads(r.value)
        keys.append((d["shop_id"], d["customer_id"]))
    keys = sorted(set(keys))
    shops = sorted({s for s, _ in keys})
    print()
    for shop in shops:
        f = _get(f"{base}/shops/{shop}", token)
        nps = f["nps"]
        funnel = "  ".join(f"{k} {v}" for k, v in f["funnel"].items())
        print(f"{shop:<14} customers {f['customers']:>4}   NPS {nps['score']} ({nps['band']}, "
              f"{nps['responses']} answers)")
        print(f"{'':<14} funnel: {funnel}")
    snaps = []
    from urllib.parse import quote

    for shop, cust in keys:
        try:
            snaps.append(_get(f"{base}/customers/{shop}/{quote(cust, safe='')}", token))
        except OSError:
            continue
    snaps.sort(key=lambda s: (-(s.get("ltv_historical") or 0), s["shop_id"], s["customer_id"]))
    print("\nTop 10 customers by historical LTV (margin, minor units):")
    print(f"  {'shop':<14} {'customer':<10} {'LTV':>8} {'formula':>9} {'spend':>8} "
          f"{'orders':>6} {'stage':<14} {'tier':<7} {'points':>6}")
    for s in snaps[:10]:
        print(f"  {s['shop_id']:<14} {s['customer_id']:<10} {s['ltv_historical']:>8} "
              f"{s['ltv_formula']:>9} {s['spend_total']:>8} {s['purchase_count']:>6} "
              f"{s['stage']:<14} {s['tier']:<7} {s['points_balance']:>6}")
