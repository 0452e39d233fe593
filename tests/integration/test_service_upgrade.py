"""States a worker cannot read (real broker): newer formats, and damaged rows.

README "Upgrading a running group": new workers can write the old format
until no old worker runs (``LOYALTY_STATE_WRITE_FORMAT``), and a worker that
meets a state of a newer format stops without dead-lettering or committing
the input that needed it, so that a newer worker folds it. README
"Guarantees": a damaged row is not a newer format; it costs its customer's
events (``unreadable_state``) until it is forgotten.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from schemas import codec
from streams.synthetic import SyntheticRecord
from streams.topics import CUSTOMERS_TABLE, changelog_topic_name, message_key, partition_for
from tests.integration.service_harness import ServiceEnv, Worker, metric_samples

SHOP = "upgrade-shop"


def purchase(n: int) -> SyntheticRecord:
    value = codec.dumps({
        "type": "purchase", "event_id": f"p{n}", "shop_id": SHOP, "customer_id": "c1",
        "occurred_at": f"2025-06-0{n}T10:00:00Z", "order_id": f"o{n}", "amount": 2_000,
        "currency": "USD"})
    return SyntheticRecord(value, message_key(SHOP, "c1"), "purchase")


def wait_served(w: Worker, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, body = w.get(f"/customers/{SHOP}/c1")
        if status == 200:
            return codec.loads(body)
        assert time.monotonic() < deadline, w.log_tail()
        time.sleep(0.5)


async def _send(bootstrap: str, topic: str, partition: int, key: bytes, value: bytes) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key, partition=partition)
    finally:
        await producer.stop()


def _env(bootstrap: str, tmp_path: Any) -> tuple[ServiceEnv, bytes, int, str]:
    """A service environment with its topics, and c1's key, partition and changelog."""
    env = ServiceEnv(bootstrap, tmp_path)
    env.create_topics()
    settings = env.settings()
    key = message_key(SHOP, "c1")
    return (env, key, partition_for(key, settings.partitions),
            changelog_topic_name(settings, CUSTOMERS_TABLE))


async def _committed(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()}


@pytest.mark.slow
def test_old_format_written_on_request_and_a_newer_state_stops_the_worker(
        bootstrap: str, tmp_path) -> None:
    env, key, partition, changelog = _env(bootstrap, tmp_path)
    settings = env.settings()
    try:
        # 1. A new worker in a group that still has old ones writes format 3.
        env.env["LOYALTY_STATE_WRITE_FORMAT"] = "3"
        old_format = env.worker().start()
        old_format.wait_ready()
        env.produce([purchase(1)])
        assert wait_served(old_format)["purchase_count"] == 1
        # The operator sees which format each worker writes (README: Upgrading).
        assert [dict(labels)["state_format_writes"]
                for (name, labels), v in metric_samples(old_format).items()
                if name == "loyalty_build_info" and v == 1] == ["3"]
        old_format.stop()
        rows = [m.value for m in env.read_topic(changelog) if m.key == key]
        assert rows and all(row.startswith(b"[3,") for row in rows), rows

        # 2. A newer build (format 5, as far as this one knows) wrote the state;
        # this worker restores it and then gets the customer's next purchase.
        del env.env["LOYALTY_STATE_WRITE_FORMAT"]
        asyncio.run(_send(bootstrap, changelog, partition, key, b'[5,"upgrade-shop","c1"]'))
        env.produce([purchase(2)])
        too_old = env.worker().start()  # an empty data directory: the changelog restores it
        assert too_old.proc is not None
        try:
            status = too_old.proc.wait(120)
        except Exception:  # noqa: BLE001 - report what the worker did instead
            pytest.fail(f"the worker did not stop:\n{too_old.log_tail()}")
        log = too_old.log_path.read_text()
        assert status != 0
        assert "state format 5, written by a newer build" in log and "Upgrade it" in log, log[-3000:]
        assert env.dead_letters() == []
        purchases = settings.topic_purchases
        committed = asyncio.run(_committed(bootstrap, env.name)).get((purchases, partition), 0)
        assert committed <= 1, committed  # the second purchase (offset 1) is left for a newer worker
    finally:
        env.stop_all()


@pytest.mark.slow
def test_a_damaged_row_costs_its_customer_and_forgetting_it_removes_it(
        bootstrap: str, tmp_path) -> None:
    """README "Guarantees", on the real broker: a changelog record that holds no
    readable state (a bug or a hand edit) is restored by a fresh worker; the
    customer's next event is dead-lettered as ``unreadable_state`` while the
    worker keeps serving; ``loyalty forget`` removes the row and the customer's
    next event starts a new history."""
    import os
    import subprocess

    from tests.integration.service_harness import LOYALTY, REPO

    env, key, partition, changelog = _env(bootstrap, tmp_path)
    asyncio.run(_send(bootstrap, changelog, partition, key, b'{"v": 4}'))
    env.produce([purchase(1)])
    w = env.worker().start()  # restores the damaged row from the changelog
    try:
        w.wait_ready()
        deadline = time.monotonic() + 60
        while not (letters := env.dead_letters()):
            assert time.monotonic() < deadline, w.log_tail()
            time.sleep(0.5)
        assert [(d["reason"], d["offset"]) for d in letters] == [("unreadable_state", 0)]
        status, body = w.get(f"/customers/{SHOP}/c1")
        assert status == 500 and codec.loads(body)["error"] == "unreadable_state"
        status, body = w.get(f"/shops/{SHOP}/customers")  # the listing leaves it out
        assert status == 200 and codec.loads(body)["items"] == [], body

        cli = subprocess.run([*LOYALTY, "forget", SHOP, "c1"], cwd=REPO, capture_output=True,
                             env={**os.environ, **env.env}, timeout=60, text=True)
        assert cli.returncode == 0, cli.stderr
        deadline = time.monotonic() + 60
        while w.get(f"/customers/{SHOP}/c1")[0] != 404:
            assert time.monotonic() < deadline, w.log_tail()
            time.sleep(0.5)
        env.produce([purchase(2)])
        assert wait_served(w)["purchase_count"] == 1  # a new history, from this event on
        assert [d["reason"] for d in env.dead_letters()] == ["unreadable_state"]
        w._check_alive()
    finally:
        env.stop_all()
