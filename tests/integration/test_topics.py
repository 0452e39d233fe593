"""`loyalty topics create` against the real broker, with per-test topic names.

Topic names are redirected through the LOYALTY_TOPIC_* settings, which is
also what proves the registry takes every name from the settings.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from streams.settings import Settings
from streams.topics import ensure_topics, topic_specs
from tests.conftest import run_async

TOPIC_FIELDS = [name for name in Settings.model_fields if name.startswith("topic_")]


def _env(bootstrap: str, names: dict[str, str], partitions: int = 4) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")}
    env.update({f"LOYALTY_{field.upper()}": name for field, name in names.items()})
    env["LOYALTY_BROKER"] = f"kafka://{bootstrap}"
    env["LOYALTY_PARTITIONS"] = str(partitions)
    return env


def _topics(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", "topics", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def _describe(bootstrap: str, names: list[str]) -> tuple[dict[str, int], dict[str, str]]:
    async def go() -> tuple[dict[str, int], dict[str, str]]:
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics(names)
            counts = {d["topic"]: len(d["partitions"]) for d in described}
            responses = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
            policies = {}
            for response in responses:
                for _code, _msg, _type, name, entries in response.resources:
                    for entry in entries:
                        if entry[0] == "cleanup.policy":
                            policies[name] = entry[1]
            return counts, policies
        finally:
            await admin.close()

    return run_async(go())


def test_create_twice_is_harmless(bootstrap: str, unique_name, create_topic) -> None:
    names = {field: unique_name(field.removeprefix("topic_")) for field in TOPIC_FIELDS}
    create_topic.track(*names.values())
    env = _env(bootstrap, names, partitions=3)

    first = _topics("create", env=env)
    assert first.returncode == 0, first.stderr
    assert f"{len(names)} created, 0 already existed" in first.stdout

    second = _topics("create", env=env)
    assert second.returncode == 0, second.stderr
    assert f"0 created, {len(names)} already existed" in second.stdout
    assert "WARNING" not in second.stderr

    counts, policies = _describe(bootstrap, list(names.values()))
    assert counts == {name: 3 for name in names.values()}
    compacted = {"topic_scores", "topic_clv_params"}
    assert {policies[names[f]] for f in compacted} == {"compact"}
    assert {policies[n] for f, n in names.items() if f not in compacted} == {"delete"}

    listing = _topics("list", env=env)
    assert listing.returncode == 0, listing.stdout + listing.stderr
    assert names["topic_scores"] in listing.stdout


def test_partition_mismatch_is_reported(bootstrap: str, unique_name, create_topic) -> None:
    names = {field: unique_name(field.removeprefix("topic_")) for field in TOPIC_FIELDS}
    create_topic.track(*names.values())
    create_topic(partitions=1, name=names["topic_scores"], compacted=True)

    result = _topics("create", env=_env(bootstrap, names, partitions=4))
    assert result.returncode == 1
    warning = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warning) == 1, result.stderr
    assert names["topic_scores"] in warning[0]
    assert "exists with 1 partitions but 4 are configured" in warning[0]
    # Everything else was still created, with the configured count.
    counts, _ = _describe(bootstrap, list(names.values()))
    assert counts[names["topic_purchases"]] == 4


def test_ensure_topics_returns_mismatches_in_process(bootstrap: str, unique_name,
                                                     create_topic) -> None:
    names = {field: unique_name(field.removeprefix("topic_")) for field in TOPIC_FIELDS}
    create_topic.track(*names.values())
    settings = Settings(**names, partitions=2, broker=f"kafka://{bootstrap}")
    create_topic(partitions=5, name=names["topic_visits"])

    created, mismatches = run_async(
        ensure_topics(settings.bootstrap_servers, topic_specs(settings)))
    assert names["topic_visits"] not in created
    assert len(created) == len(names) - 1
    assert [(m.topic, m.existing, m.configured) for m in mismatches] == [
        (names["topic_visits"], 5, 2)]


def test_created_topics_take_records_at_once(bootstrap: str, unique_name, create_topic,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """A producer sending right after ensure_topics returns finds every new partition
    led and served: no "not found in cluster metadata" (which `make demo` printed), no
    NotLeaderForPartition retry (both logged by aiokafka)."""
    names = {field: unique_name(field.removeprefix("topic_")) for field in TOPIC_FIELDS}
    create_topic.track(*names.values())
    settings = Settings(**names, partitions=4, broker=f"kafka://{bootstrap}")

    async def go() -> int:
        from aiokafka import AIOKafkaProducer

        await ensure_topics(settings.bootstrap_servers, topic_specs(settings))
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            sent = [await producer.send(name, b"x", key=b"k", partition=p)
                    for name in names.values() for p in range(4)]
            return len([await s for s in sent])
        finally:
            await producer.stop()

    with caplog.at_level(logging.WARNING, logger="aiokafka"):
        assert run_async(go()) == 4 * len(names)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("aiokafka")] == []
