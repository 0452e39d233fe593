"""Keep a live list of at-risk customers from the stage-transitions topic.

    python examples/at_risk_list.py --bootstrap 127.0.0.1:9092 \
        --topic loyalty.stage-transitions [--shop cafe-aurora] [--idle-exit 5]

Prints ``+ shop|customer`` when a customer enters ``at_risk`` and
``- shop|customer`` when it leaves, and with ``--idle-exit S`` stops after S
seconds without a new record and prints the whole list as one JSON line.

How to read the topic (docs/domain.md, "Output records"): values are JSON,
keyed ``shop|customer``, so one customer's records are in order on one
partition. A transition is identified by its ``id``: upsert by ``id``, and
drop it on ``{"void": true}``, because a late event can restate or void a
transition already published. A customer's current stage is the ``to`` of
its remaining transition with the latest ``at``. Records of other kinds on
the topic (``"kind": "alert"``) are skipped.

This example starts from the beginning of the topic each time (no consumer
group, state in memory); a real service would keep its state and commit
offsets, or rebuild from ``GET /shops/{shop}/customers?stage=at_risk``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import datetime

from aiokafka import AIOKafkaConsumer


class AtRiskList:
    """Customers whose latest transition goes to ``at_risk``."""

    def __init__(self, shop: str | None = None) -> None:
        self.shop = shop
        self.transitions: dict[str, dict[str, dict]] = {}  # customer key -> id -> transition
        self.at_risk: set[str] = set()

    def apply(self, value: dict) -> str | None:
        """Fold one record in; returns ``"+ key"``/``"- key"`` when the list changed."""
        if value.get("kind") != "transition" or self.shop not in (None, value["shop_id"]):
            return None
        key = f"{value['shop_id']}|{value['customer_id']}"
        mine = self.transitions.setdefault(key, {})
        if value.get("void"):
            mine.pop(value["id"], None)
        else:
            mine[value["id"]] = value
        latest = max(mine.values(), key=lambda t: datetime.fromisoformat(t["at"]), default=None)
        now_at_risk = latest is not None and latest["to"] == "at_risk"
        if now_at_risk == (key in self.at_risk):
            return None
        (self.at_risk.add if now_at_risk else self.at_risk.discard)(key)
        return f"{'+' if now_at_risk else '-'} {key}"


async def follow(bootstrap: str, topic: str, shop: str | None, idle_exit: float | None) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    state = AtRiskList(shop)
    last = time.monotonic()
    try:
        while idle_exit is None or time.monotonic() - last < idle_exit:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    last = time.monotonic()
                    if record.value is None:  # a tombstone: nothing to apply
                        continue
                    change = state.apply(json.loads(record.value))
                    if change:
                        print(change, flush=True)
    finally:
        await consumer.stop()
    return sorted(state.at_risk)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument("--topic", default="loyalty.stage-transitions")
    p.add_argument("--shop", help="only this shop")
    p.add_argument("--idle-exit", type=float, metavar="S",
                   help="stop after S seconds without a new record")
    args = p.parse_args()
    try:
        result = asyncio.run(follow(args.bootstrap, args.topic, args.shop, args.idle_exit))
    except KeyboardInterrupt:
        return
    print(json.dumps({"at_risk": result}))


if __name__ == "__main__":
    main()
