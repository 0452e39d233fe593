"""examples/at_risk_list.py keeps the right at-risk list from a real transitions topic.

The records follow the topic's contract (checked here too) and exercise what
a consumer must get right: upsert by id, a void, a restatement, an older
transition arriving after a newer one, an alert on the same topic.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from schemas import codec
from streams.topics import message_key
from tests.contracts import assert_valid

REPO = Path(__file__).resolve().parents[2]


def _t(cust: str, tid: str, frm: str | None, to: str, at: str, **extra: object) -> dict:
    return {"kind": "transition", "id": tid, "shop_id": "s1", "customer_id": cust, "from": frm,
            "to": to, "at": at, "cause": {"type": "time"}, **extra}


RECORDS = [
    _t("c1", "1" * 16, "repeat", "at_risk", "2026-03-01T00:00:00Z"),  # stays at risk
    _t("c2", "2" * 16, "repeat", "at_risk", "2026-03-01T00:00:00Z"),
    _t("c2", "3" * 16, "at_risk", "repeat", "2026-03-05T10:00:00.5Z"),  # came back
    _t("c3", "4" * 16, "repeat", "at_risk", "2026-03-01T00:00:00Z"),
    {"kind": "transition", "id": "4" * 16, "shop_id": "s1", "customer_id": "c3", "void": True},
    _t("c4", "5" * 16, "attached", "repeat", "2026-03-09T00:00:00Z"),
    _t("c4", "6" * 16, "repeat", "at_risk", "2026-03-01T00:00:00Z"),  # older: c4 is not at risk
    _t("c5", "7" * 16, "repeat", "attached", "2026-03-02T00:00:00Z"),
    _t("c5", "7" * 16, "repeat", "at_risk", "2026-03-02T00:00:00Z", restated=True),
    {"kind": "alert", "id": "8" * 16, "shop_id": "s1", "customer_id": "c6", "alert": "detractor",
     "at": "2026-03-02T00:00:00Z", "event_id": "f1", "nps": 2, "comment": None,
     "touchpoint": None, "detractor_since": "2026-03-02T00:00:00Z"},
]


def test_the_at_risk_example_follows_a_transitions_topic(bootstrap: str, create_topic) -> None:  # noqa: ANN001
    from aiokafka import AIOKafkaProducer

    topic = create_topic(partitions=3, prefix="transitions")

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for value in RECORDS:
                assert_valid("out-TransitionsValue.json", value)
                await producer.send_and_wait(topic, codec.dumps(value),
                                             key=message_key(value["shop_id"],
                                                             value["customer_id"]))
        finally:
            await producer.stop()

    asyncio.run(produce())
    proc = subprocess.run([sys.executable, "examples/at_risk_list.py", "--bootstrap", bootstrap,
                           "--topic", topic, "--idle-exit", "3"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=True)
    lines = proc.stdout.splitlines()
    assert json.loads(lines[-1]) == {"at_risk": ["s1|c1", "s1|c5"]}
    assert "- s1|c2" in lines and "- s1|c3" in lines
