"""End to end against the real broker: every served snapshot equals ``loyalty replay``.

The synthetic stream carries duplicates, conflicting duplicates, late and
too-late events, refunds (partial, full, orphan), redemptions (some rejected),
invalid records of every kind, and wrongly keyed / unkeyed records (which take
the rekey hop). Shop figures served by ``/shops`` must equal the replay's
tallies as well.
"""

from __future__ import annotations

import time

import pytest

from schemas import codec
from streams import synthetic
from tests.integration.service_harness import (
    AS_OF,
    LATENESS_DAYS,
    ServiceEnv,
    expected_snapshots,
    shop_figures,
    wait_equal,
)


@pytest.mark.slow
def test_service_end_to_end(bootstrap: str, tmp_path) -> None:
    env = ServiceEnv(bootstrap, tmp_path)
    env.create_topics()
    records = synthetic.generate(seed=11, lateness_days=LATENESS_DAYS, end=AS_OF)
    assert {r.kind for r in records} >= {"duplicate", "conflicting_duplicate", "late",
                                         "too_late", "orphan_refund", "misrouted"}
    expected = expected_snapshots(env, records)
    w = env.worker().start()
    try:
        w.wait_ready()
        started = time.monotonic()
        env.produce(records)
        wait_equal(w, expected, timeout=180)
        elapsed = time.monotonic() - started
        print(f"{len(records)} records -> {len(expected)} customers equal replay in "
              f"{elapsed:.1f}s")

        # Shop figures: the service's tallies (funnel as of its last sweep, at
        # wall-clock now) equal replay's tallies as of now.
        got, want = shop_figures(env, w, records)
        assert got == want

        # The data ends 2026-01-01, so the funnel at wall-clock now only matches
        # because the time sweep moved customers (at_risk, lapsed) and expired
        # points with no event: those transitions are published with cause "time".
        transitions = [codec.loads(m.value)
                       for m in env.read_topic(env.settings().topic_transitions)]
        assert any(t.get("cause", {}).get("type") == "time" for t in transitions)
        assert any(t.get("cause", {}).get("type") == "event" for t in transitions)

        # Every changelog write - from the agent and from the sweep's timer
        # (written through a stand-in event) - is on the key's own partition.
        from streams.app import partition_for

        n = env.settings().partitions
        for table in ("customers", "shop-tallies"):
            log = env.read_topic(f"{env.name}-{table}-changelog")
            assert log
            for m in log:
                if table == "customers":
                    assert m.partition == partition_for(m.key, n), m.key
                else:  # tally rows are keyed shop|partition
                    assert m.key.decode().rsplit("|", 1)[1] == str(m.partition), m.key
    finally:
        env.stop_all()


@pytest.mark.slow
def test_input_in_every_compression_codec_kafka_stores(bootstrap: str, tmp_path) -> None:
    """Each input topic set to another ``compression.type`` (the broker recompresses
    what it receives), as a shop's producers or its Kafka operators may choose. The
    worker decodes every codec (a missing library would crash it on the first batch)
    and equals replay."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    env = ServiceEnv(bootstrap, tmp_path)
    env.create_topics()
    s = env.settings()
    codecs = {s.topic_purchases: "lz4", s.topic_visits: "zstd", s.topic_feedback: "snappy",
              s.topic_redemptions: "gzip"}

    async def configure() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.alter_configs([
                ConfigResource(ConfigResourceType.TOPIC, topic, {"compression.type": codec})
                for topic, codec in codecs.items()])
        finally:
            await admin.close()

    asyncio.run(configure())
    records = synthetic.generate(seed=12, shops=2, customers_per_shop=40,
                                 lateness_days=LATENESS_DAYS, end=AS_OF, faults=False)
    expected = expected_snapshots(env, records)
    env.produce(records)
    w = env.worker().start()
    try:
        w.wait_ready()
        wait_equal(w, expected, timeout=120)
        assert w.proc is not None and w.proc.poll() is None
    finally:
        env.stop_all()
