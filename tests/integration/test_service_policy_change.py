"""A changed policy file reaches the customers already in the table (real broker).

Policies are read when the worker starts; the states in its table carry the
figures of the policy they were written under, among them the instant the
next time-driven change is due. The first sweep after a restart with a new
policy file re-derives every customer under it (streams/sweep.py, "A
changed policy or rule"): a shorter lapse turns a quiet customer ``lapsed``
at the lapse's own instant, without waiting for the old one.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from schemas import codec
from streams.synthetic import SyntheticRecord
from streams.topics import message_key
from tests.integration.service_harness import LATENESS_DAYS, ServiceEnv, Worker

SHOP = "policy-shop"


def purchase(customer: str, when: datetime) -> SyntheticRecord:
    value = codec.dumps({
        "type": "purchase", "event_id": f"p-{customer}", "shop_id": SHOP, "customer_id": customer,
        "occurred_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"), "order_id": f"o-{customer}",
        "amount": 4_000, "currency": "USD"})
    return SyntheticRecord(value, message_key(SHOP, customer), "purchase")


def stage_of(w: Worker, customer: str) -> str | None:
    status, body = w.get(f"/customers/{SHOP}/{customer}")
    return json.loads(body)["stage"] if status == 200 else None


def wait_stage(w: Worker, customer: str, stage: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (seen := stage_of(w, customer)) != stage:
        assert time.monotonic() < deadline, f"{customer}: stage {seen!r}, not {stage!r}\n{w.log_tail()}"
        time.sleep(0.5)


@pytest.mark.slow
def test_a_shorter_lapse_reaches_a_quiet_customer_at_the_first_sweep_after_a_restart(
        bootstrap: str, tmp_path) -> None:
    env = ServiceEnv(bootstrap, tmp_path, sweep_interval_s=1.0)
    env.create_topics()
    now = datetime.now(UTC).replace(microsecond=0)
    quiet, recent = now - timedelta(days=200), now - timedelta(days=10)
    w = env.worker().start()
    try:
        w.wait_ready()
        env.produce([purchase("quiet", quiet), purchase("recent", recent)])
        wait_stage(w, "quiet", "first_purchase")  # the default lapse: 365 days
        wait_stage(w, "recent", "first_purchase")
        time.sleep(3)  # a few sweeps with the old policy: nothing is due
        assert stage_of(w, "quiet") == "first_purchase"
        w.stop()

        env.policy_file.write_text(json.dumps(
            {"defaults": {"allowed_lateness_days": LATENESS_DAYS, "lapsed_days": 180}}))
        w.start().wait_ready()
        wait_stage(w, "quiet", "lapsed")
        assert stage_of(w, "recent") == "first_purchase"

        settings = env.settings()
        out = env.read_topics([settings.topic_transitions, settings.topic_scores])
        # GET folds the state anew under the running policy; the topics show
        # what the sweep published: the transition and a new snapshot.
        transitions = [codec.loads(m.value) for m in out[settings.topic_transitions]]
        snapshots = [codec.loads(m.value) for m in out[settings.topic_scores]
                     if m.key == message_key(SHOP, "quiet")]
        assert snapshots[-1]["stage"] == "lapsed"
        lapses = [t for t in transitions if t["to"] == "lapsed"]
        assert [(t["customer_id"], t["from"]) for t in lapses] == [("quiet", "first_purchase")]
        midnight = datetime(quiet.year, quiet.month, quiet.day, tzinfo=UTC) + timedelta(days=181)
        assert lapses[0]["at"] == midnight.strftime("%Y-%m-%dT%H:%M:%SZ")
    finally:
        env.stop_all()
