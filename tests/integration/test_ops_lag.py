"""The broker probe's consumer-lag gauge and broker check against the real broker.

The probe runs as in a worker, with real aiokafka clients, real Metrics and
real settings; only the Faust app is replaced by a stand-in that reports the
partition assignment (what ``app.consumer.assignment()`` returns in a worker).
Committed offsets are made by a real consumer group.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.cluster import ClusterMetadata
from aiokafka.structs import OffsetAndMetadata

from streams.app import rekey_topic_name
from streams.health import BrokerProbe, readiness
from streams.metrics import Metrics
from streams.ports import free_port
from streams.settings import Settings


def _service(settings: Settings, topic: str, assigned: set[TopicPartition]) -> Any:
    # The parts of streams.context.ServiceContext the probe and readiness read.
    app = SimpleNamespace(consumer=SimpleNamespace(assignment=lambda: set(assigned)))
    return SimpleNamespace(settings=settings, metrics=Metrics(), app=app,
                           tables_ready=lambda: True,
                           agent_topic_names=frozenset({topic, rekey_topic_name(settings)}))


def _recording(parsed: list[set[str]]) -> Any:
    """aiokafka's metadata update, recording the topic names of every response it parses."""
    original = ClusterMetadata.update_metadata

    def update_metadata(self: ClusterMetadata, metadata: Any) -> Any:
        parsed.append({t["topic"] for t in metadata.to_object()["topics"]})
        return original(self, metadata)
    return update_metadata


def _lag(metrics: Metrics) -> dict[tuple[str, str], float]:
    return {(s.labels["topic"], s.labels["partition"]): s.value
            for fam in metrics.consumer_lag.collect() for s in fam.samples}


@pytest.mark.timeout(90)
async def test_lag_per_assigned_partition_from_committed_offsets(bootstrap: str, create_topic,
                                                                 unique_name, monkeypatch) -> None:
    topic = create_topic(partitions=2)
    other = create_topic(partitions=1)  # someone else's topic on the same cluster
    group = unique_name("group")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(10):
            await producer.send(topic, b"x", partition=0, key=str(i).encode())
        for i in range(5):
            await producer.send(topic, b"y", partition=1, key=str(i).encode())
        await producer.flush()
    finally:
        await producer.stop()
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    committer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                 enable_auto_commit=False)
    await committer.start()
    try:
        committer.assign([p0, p1])
        await committer.commit({p0: OffsetAndMetadata(4, "")})  # p1: nothing committed
    finally:
        await committer.stop()

    settings = Settings(broker=f"kafka://{bootstrap}", app_id=group)
    assigned = {p0, p1}
    service = _service(settings, topic, assigned)
    probe = BrokerProbe(service, max_age_s=6)
    try:
        assert await probe.probe_once()
        assert _lag(service.metrics) == {(topic, "0"): 6.0, (topic, "1"): 5.0}
        assert probe.broker_ok() and probe.last_error is None
        ready, checks = readiness(service, probe)
        assert ready, checks
        probe.publish()
        assert service.metrics.registry.get_sample_value("loyalty_ready") == 1

        assigned.discard(p0)  # p0 moved to another worker: its series goes away
        assert await probe.probe_once()
        assert _lag(service.metrics) == {(topic, "1"): 5.0}

        # A steady round parses no metadata of any other topic of the cluster
        # (a request for all of them costs every worker tens of milliseconds of
        # event loop per round on a cluster of a thousand topics).
        parsed: list[set[str]] = []
        monkeypatch.setattr(ClusterMetadata, "update_metadata", _recording(parsed))
        assert await probe.probe_once()
        assert all(names <= {topic, rekey_topic_name(settings)} for names in parsed), parsed
        assert other not in set().union(*parsed)
        assert probe._consumer.partitions_for_topic(topic) == {0, 1}
    finally:
        await probe.close()


@pytest.mark.timeout(60)
async def test_an_unreachable_broker_is_reported_with_its_error() -> None:
    settings = Settings(broker=f"kafka://127.0.0.1:{free_port()}")
    service = _service(settings, "t", set())
    probe = BrokerProbe(service, max_age_s=3)
    try:
        assert not await probe.probe_once()
        assert probe.last_ok is None and not probe.broker_ok()
        assert "KafkaConnectionError" in (probe.last_error or "")
        ready, checks = readiness(service, probe)
        assert not ready
        assert not checks["broker"]["ok"] and not checks["assignment"]["ok"]
        assert checks["broker"]["detail"].startswith("no successful broker request yet: ")
        probe.publish()
        assert service.metrics.registry.get_sample_value("loyalty_ready") == 0
    finally:
        await probe.close()
