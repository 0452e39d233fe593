"""A real SASL_PLAINTEXT (PLAIN) round trip through the security settings.

The private broker is the project's own (``streams.broker.start``) with a few
lines appended to its generated ``server.properties``: a second listener on a
free port speaking SASL_PLAINTEXT with the PLAIN mechanism and two users. The
clients get their configuration only from ``LOYALTY_*`` settings through
:func:`streams.security.client_kwargs`, exactly as the service does; a wrong
password must be refused by the broker.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import streams.broker as broker_mod
from streams.broker import BrokerConfig
from streams.ports import free_port, free_ports
from streams.settings import Settings

USER, PASSWORD = "svc", "svc-secret-pw"


JAAS = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="admin" password="admin-pw" user_admin="admin-pw" user_{USER}="{PASSWORD}";')
SASL_LINES = ("sasl.enabled.mechanisms=PLAIN\n"
              f"listener.name.sasl_plaintext.plain.sasl.jaas.config={JAAS}\n")


@pytest.mark.timeout(150)
def test_sasl_plain_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               caplog: pytest.LogCaptureFixture) -> None:
    port, sasl_port = free_ports(2), free_port()
    cfg = BrokerConfig.from_settings(Settings(), port=port, directory=tmp_path / "sasl-broker")
    original = broker_mod.server_properties

    def with_sasl_listener(c: BrokerConfig) -> str:
        text = original(c)
        plain, sasl = f"PLAINTEXT://{c.host}:{c.port}", f"SASL_PLAINTEXT://{c.host}:{sasl_port}"
        text = text.replace(f"listeners={plain},", f"listeners={plain},{sasl},")
        text = text.replace(f"advertised.listeners={plain}\n",
                            f"advertised.listeners={plain},{sasl}\n")
        text = text.replace("listener.security.protocol.map=PLAINTEXT:PLAINTEXT,",
                            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,"
                            "SASL_PLAINTEXT:SASL_PLAINTEXT,")
        assert text.count("SASL_PLAINTEXT://") == 2, text
        return text + SASL_LINES

    monkeypatch.setattr(broker_mod, "server_properties", with_sasl_listener)
    broker_mod.start(cfg, echo=lambda *a, **k: None)
    try:
        good = Settings(broker=f"kafka://127.0.0.1:{sasl_port}",
                        security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                        sasl_username=USER, sasl_password=PASSWORD)
        bad = good.model_copy(update={"sasl_password": type(good.sasl_password)("wrong")})
        topic = f"sasl-{int(time.time() * 1000)}"
        assert asyncio.run(_round_trip(good, topic)) == [(b"k", b"through SASL")]
        caplog.clear()
        from aiokafka.errors import KafkaConnectionError

        with pytest.raises(KafkaConnectionError):
            asyncio.run(_round_trip(bad, topic))
        # aiokafka reports the broker's refusal in its log, the exception says "bootstrap".
        assert "SaslAuthenticationFailed" in caplog.text, caplog.text
    finally:
        broker_mod.stop(cfg, echo=lambda *a, **k: None)


async def _round_trip(settings: Settings, topic: str) -> list[tuple[bytes, bytes]]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from streams.security import client_kwargs
    from streams.topics import TopicSpec, ensure_topics

    servers = settings.bootstrap_servers
    # The topic is created the way the worker creates its topics at startup.
    await ensure_topics(servers, [TopicSpec(name=topic, partitions=1, compacted=False,
                                            role="input", key_codec="-", value_codec="-",
                                            description="SASL round trip")],
                        client=client_kwargs(settings))
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all",
                                enable_idempotence=True, **client_kwargs(settings))
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"through SASL", key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=servers, group_id=None,
                                auto_offset_reset="earliest", **client_kwargs(settings))
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=10000)
    finally:
        await consumer.stop()
    return [(m.key, m.value) for msgs in batch.values() for m in msgs]
