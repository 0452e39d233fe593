"""Input read again from an old offset changes nothing and dead-letters nothing (real broker).

After a crash or a takeover in a backlog, the records folded after the last
offset commit come again, and a busy customer's oldest ones can be months
and more than :data:`scoring.fold.DEDUP_RECENT_IDS` events behind its newest
by then: their ids are no longer remembered and the fold takes them for
``too_late`` input. The offset each state keeps per input partition
(streams/positions.py) tells them apart. Here the whole input is read
again, by a worker with an empty data directory (its states restored from
the changelog, as after a takeover) and no committed offsets.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from schemas import codec
from scoring.fold import DEDUP_RECENT_IDS
from streams.synthetic import SyntheticRecord
from streams.topics import message_key
from tests.integration.service_harness import (
    ServiceEnv,
    fold_and_serve,
    metric_sum,
    served_snapshots,
)

SHOP = "redelivery-shop"
START = datetime(2025, 1, 1, tzinfo=UTC)  # the year before the harness's AS_OF
#: purchases of the busy customer, one every 3 days: the newest 90 days hold
#: fewer than DEDUP_RECENT_IDS of them, so the ids remembered are its last 32 to
#: 64 (the fold prunes them once per 32 events: scoring.fold._prune_seen)
BUSY_PURCHASES = 100


def purchase(customer: str, n: int, when: datetime) -> SyntheticRecord:
    value = codec.dumps({
        "type": "purchase", "event_id": f"p{n}-{customer}", "shop_id": SHOP,
        "customer_id": customer, "occurred_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "order_id": f"o{n}-{customer}", "amount": 1_000 + n, "currency": "USD"})
    return SyntheticRecord(value, message_key(SHOP, customer), "purchase")


async def _forget_offsets(bootstrap: str, group: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.compat import delete_consumer_group

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await delete_consumer_group(admin, group)
    finally:
        await admin.close()


@pytest.mark.slow
def test_input_read_again_from_the_start_is_all_duplicates(bootstrap: str, tmp_path) -> None:
    env = ServiceEnv(bootstrap, tmp_path, lateness_days=7)
    env.create_topics()
    records = [purchase("busy", n, START + timedelta(days=3 * n)) for n in range(BUSY_PURCHASES)]
    records += [purchase("light", n, START + timedelta(days=290 + n)) for n in range(2)]
    try:
        first = env.worker().start()
        first.wait_ready()
        keys, before = fold_and_serve(env, first, records)
        first.stop()
        asyncio.run(_forget_offsets(bootstrap, env.name))  # the worker's group is its app id

        again = env.worker().start()  # a new data directory: restored from the changelog
        again.wait_ready()
        deadline = time.monotonic() + 90
        while metric_sum(again, "loyalty_events_consumed_total") < len(records):
            assert time.monotonic() < deadline, again.log_tail()
            time.sleep(0.5)
        assert served_snapshots(again, keys) == before
        assert env.dead_letters() == []
        assert metric_sum(again, "loyalty_duplicates_ignored_total") == len(records)
        # Not remembered by id: the busy customer's purchases before its last 32
        # to 64, all far behind its frontier; told by their offsets instead.
        recognised = metric_sum(again, "loyalty_redeliveries_recognised_total")
        assert (BUSY_PURCHASES - 2 * DEDUP_RECENT_IDS <= recognised
                <= BUSY_PURCHASES - DEDUP_RECENT_IDS)
    finally:
        env.stop_all()
