"""docker-compose.yml, deploy/prometheus.yml and deploy/Dockerfile agree with the settings.

No Docker engine is needed: these check the files' structure and that every
port and address in them matches the defaults in streams/settings.py, which is
what drifts when one side is edited.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.settings import Settings, broker_addresses

ROOT = Path(__file__).resolve().parents[2]


def default(field: str) -> Any:
    # The declared default, not Settings(): the test environment may set LOYALTY_*.
    return Settings.model_fields[field].default


WEB_PORT = default("web_port")
BROKER_PORT = broker_addresses(default("broker"))[0][1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # "KEY=value" list form
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_services(compose: dict[str, Any]) -> None:
    assert {"kafka", "worker", "prometheus"} <= set(compose["services"])


def test_kafka_is_kraft_3_9_1_on_the_default_port(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"] == f"apache/kafka:{default('kafka_version')}"
    env = env_of(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@kafka:")
    assert f"PLAINTEXT://kafka:{BROKER_PORT}" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert f"PLAINTEXT://:{BROKER_PORT}" in env["KAFKA_LISTENERS"]
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_NUM_PARTITIONS"] == str(default("partitions"))


def test_worker_runs_loyalty_worker_against_kafka(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    build = worker["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).resolve() == ROOT / "deploy/Dockerfile"
    command = worker["command"]
    command = command.split() if isinstance(command, str) else command
    assert command == ["loyalty", "worker"]
    env = env_of(worker)
    assert env["LOYALTY_BROKER"] == f"kafka://kafka:{BROKER_PORT}"
    assert env.get("LOYALTY_WEB_PORT", str(WEB_PORT)) == str(WEB_PORT)
    assert env["LOYALTY_WEB_HOST"] == "0.0.0.0"  # reachable by prometheus
    assert f"{WEB_PORT}:{WEB_PORT}" in [str(p) for p in worker["ports"]]
    # Every LOYALTY_* variable used must be a real setting (typos are silently ignored).
    fields = {f"LOYALTY_{name.upper()}" for name in Settings.model_fields}
    for name, service in compose["services"].items():
        unknown = {k for k in env_of(service) if k.startswith("LOYALTY_")} - fields
        assert not unknown, f"{name}: unknown settings {unknown}"


def test_topics_are_created_before_the_worker(compose: dict[str, Any]) -> None:
    topics = compose["services"]["topics"]
    assert topics["command"] == ["loyalty", "topics", "create"]
    assert env_of(topics)["LOYALTY_BROKER"] == f"kafka://kafka:{BROKER_PORT}"
    depends = compose["services"]["worker"]["depends_on"]
    assert depends["topics"]["condition"] == "service_completed_successfully"


def test_prometheus_scrapes_the_worker(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    mounts = [str(v).split(":") for v in prometheus["volumes"]]
    assert ["./deploy/prometheus.yml", "/etc/prometheus/prometheus.yml", "ro"] in mounts
    config = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    jobs = config["scrape_configs"]
    targets = [(job.get("metrics_path", "/metrics"), t)
               for job in jobs for sc in job["static_configs"] for t in sc["targets"]]
    assert ("/metrics", f"worker:{WEB_PORT}") in targets


def test_dockerfile_matches_settings() -> None:
    text = (ROOT / "deploy/Dockerfile").read_text()
    assert f"EXPOSE {WEB_PORT}" in text
    assert 'CMD ["loyalty", "worker"]' in text
    assert "LOYALTY_WEB_HOST=0.0.0.0" in text
    # pyproject names README.md as the package readme: the build needs it.
    assert "README.md" in text


# Top-level keys Compose v1 (docker-compose 1.29, the file format without `version:`) accepts.
COMPOSE_V1_TOP_LEVEL = {"version", "services", "volumes", "networks", "secrets", "configs"}


def check_compose_spec(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                           "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=120, check=False)


def test_compose_file_is_valid_for_the_compose_spec() -> None:
    proc = check_compose_spec(ROOT / "docker-compose.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_compose_spec_check_rejects_an_invalid_file(tmp_path: Path) -> None:
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  worker:\n    image: loyalty-scorer:local\n    restart_policy: always\n")
    proc = check_compose_spec(bad)
    assert proc.returncode == 1 and "restart_policy" in proc.stdout + proc.stderr


def test_compose_file_is_valid_for_compose_v1(compose: dict[str, Any]) -> None:
    # check-jsonschema ships no Compose v1 schema; v1 rejects any other top-level key
    # (docker-compose 1.29 fails on `name:`), except extension fields.
    extra = {k for k in compose if not k.startswith("x-")} - COMPOSE_V1_TOP_LEVEL
    assert not extra, f"top-level keys Compose v1 rejects: {sorted(extra)}"


def test_the_image_builds_the_native_engine_from_what_make_builds_it_from() -> None:
    """The image's first stage copies the crate's sources (the Makefile's NATIVE_SRC:
    manifest, lock file, build config, src/, the package's python/) and its last stage
    installs the wheel."""
    stages = (ROOT / "deploy/Dockerfile").read_text().split("\nFROM ")
    native = next(stage for stage in stages if " AS native" in stage.splitlines()[0])
    copied = {src for line in native.splitlines() if line.startswith("COPY ")
              for src in line.split()[1:-1]}
    needed = {"native/Cargo.toml", "native/Cargo.lock", "native/pyproject.toml", "native/src",
              "native/python"}
    assert copied == needed
    makefile = (ROOT / "Makefile").read_text()
    assert all(name in makefile for name in needed - {"native/src", "native/python"})
    assert "native/src/*.rs" in makefile and "native/python/loyalty_native/__init__.py" in makefile
    assert "COPY --from=native /wheels /wheels" in stages[-1] and "/wheels/*.whl" in stages[-1]
