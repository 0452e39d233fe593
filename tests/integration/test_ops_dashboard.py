"""The Grafana dashboard's queries and the alert rules against a real Prometheus.

A real ``loyalty worker`` (service harness, real broker) processes synthetic
events and one unparseable record; a real Prometheus (Debian's binary, on a
free port, temp config and data dir, scraping every second, loading
deploy/prometheus/alerts.yml) scrapes it. Every query of every panel of
deploy/grafana/loyalty-scorer.json must return data, and every alert rule
must load and evaluate without error.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from streams import synthetic
from streams.ports import free_port
from tests.integration.service_harness import AS_OF, LATENESS_DAYS, ServiceEnv

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
JOB = "loyalty-worker"


def _queries() -> list[tuple[str, str]]:
    dash = json.loads((DEPLOY / "grafana" / "loyalty-scorer.json").read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel["targets"]:
            # Grafana's variables: the job selector is a regex; a short range for a 1 s scrape.
            expr = target["expr"].replace("$job", JOB).replace("$__rate_interval", "20s")
            out.append((panel["title"], expr))
    return out


def _api(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else base + path
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]


def _healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    """Run deploy/Dockerfile's HEALTHCHECK command with LOYALTY_WEB_PORT=port."""
    import os
    import shlex
    import sys

    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    (line,) = [x for x in text.splitlines() if x.startswith("HEALTHCHECK")]
    argv = shlex.split(line.split(" CMD ", 1)[1])
    assert argv[0] == "python"
    return subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "LOYALTY_WEB_PORT": str(port)})


def _start_prometheus(tmp: Path, target: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "prometheus" / "alerts.yml")],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
    }))
    log = tmp / "prometheus.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([binary, f"--config.file={config}",
                                 f"--storage.tsdb.path={tmp / 'prom-data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=fh, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}", log


@pytest.mark.timeout(180)
def test_every_dashboard_query_returns_data_from_a_real_worker(bootstrap: str,
                                                               tmp_path: Path) -> None:
    from streams.commands.produce import produce_records

    queries = _queries()
    assert len(queries) >= 10
    env = ServiceEnv(bootstrap, tmp_path, sweep_interval_s=2.0)
    env.create_topics()
    worker = env.worker().start()
    prom = None
    try:
        worker.wait_ready()
        records = synthetic.generate(seed=13, shops=2, customers_per_shop=25,
                                     lateness_days=LATENESS_DAYS, end=AS_OF)
        env.produce(records)
        s = env.settings()
        import asyncio

        asyncio.run(produce_records(s, [(s.topic_purchases, None, b"not json")],
                                    show_progress=False))
        prom, base, log = _start_prometheus(tmp_path, f"127.0.0.1:{worker.port}")

        deadline = time.monotonic() + 60
        empty = [title for title, _ in queries]
        while time.monotonic() < deadline:
            worker._check_alive()
            assert prom.poll() is None, log.read_text()[-3000:]
            try:
                empty = [f"{title}: {expr}" for title, expr in queries
                         if not _api(base, "/api/v1/query", query=expr)["result"]]
            except OSError:  # Prometheus still starting
                pass
            if not empty:
                break
            time.sleep(1.0)
        assert empty == [], "queries without data:\n" + "\n".join(empty)

        groups = _api(base, "/api/v1/rules")["groups"]
        rules = {r["name"]: r for g in groups for r in g["rules"]}
        assert set(rules) == {"LoyaltyConsumerLagGrowing", "LoyaltyWorkerNotReady",
                              "LoyaltyWorkerDown", "LoyaltyDeadLettersRising",
                              "LoyaltyNoEventsProcessed", "LoyaltyEventLoopStalls",
                              "LoyaltyUpgradeUnfinished"}
        assert all(r["health"] == "ok" for r in rules.values()), rules
        # The worker is up and ready, and alone: these must not be pending or firing.
        assert rules["LoyaltyWorkerDown"]["state"] == "inactive"
        assert rules["LoyaltyWorkerNotReady"]["state"] == "inactive"
        assert rules["LoyaltyUpgradeUnfinished"]["state"] == "inactive"

        # The Dockerfile's HEALTHCHECK command: healthy against this ready worker,
        # unhealthy where nothing answers.
        assert _healthcheck(worker.port).returncode == 0
        assert _healthcheck(free_port()).returncode != 0
    finally:
        if prom is not None:
            prom.terminate()
            try:
                prom.wait(20)
            except subprocess.TimeoutExpired:
                prom.kill()
                prom.wait(10)
        env.stop_all()
