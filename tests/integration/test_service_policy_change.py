"""A changed policy file reaches the customers already in the table (real broker).

Policies are read when the worker starts; the states in its table carry the
figures of the policy they were written under, among them the instant the
next time-driven change is due. The first sweep after a restart with a new
policy file re-derives every customer under it (streams/sweep.py, "A
changed policy or rule"): a shorter lapse turns a quiet customer ``lapsed``
at the lapse's own instant, without waiting for the old one, and a customer
lapsed inside finalized history at the first event of its open window.
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
        "occurred_at": rfc3339(when), "order_id": f"o-{customer}", "amount": 4_000,
        "currency": "USD"})
    return SyntheticRecord(value, message_key(SHOP, customer), "purchase")


def visit(customer: str, when: datetime, n: int) -> SyntheticRecord:
    value = codec.dumps({"type": "visit", "event_id": f"v{n}-{customer}", "shop_id": SHOP,
                         "customer_id": customer, "occurred_at": rfc3339(when)})
    return SyntheticRecord(value, message_key(SHOP, customer), "visit")


def rfc3339(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


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
    # "visitor" bought 300 days ago and visited 100 and 30 days ago: the first
    # visit is finalized (more than the lateness before the second), and under
    # the shorter lapse the customer was lapsed before it.
    bought, open_visit = now - timedelta(days=300), now - timedelta(days=30)
    w = env.worker().start()
    try:
        w.wait_ready()
        env.produce([purchase("quiet", quiet), purchase("recent", recent),
                     purchase("visitor", bought), visit("visitor", now - timedelta(days=100), 1),
                     visit("visitor", open_visit, 2)])
        for customer in ("quiet", "recent", "visitor"):
            wait_stage(w, customer, "first_purchase")  # the default lapse: 365 days
        time.sleep(3)  # a few sweeps with the old policy: nothing is due
        assert stage_of(w, "quiet") == stage_of(w, "visitor") == "first_purchase"
        w.stop()

        env.policy_file.write_text(json.dumps(
            {"defaults": {"allowed_lateness_days": LATENESS_DAYS, "lapsed_days": 180}}))
        w.start().wait_ready()
        wait_stage(w, "quiet", "lapsed")
        wait_stage(w, "visitor", "lapsed")
        assert stage_of(w, "recent") == "first_purchase"

        settings = env.settings()
        out = env.read_topics([settings.topic_transitions, settings.topic_scores])
        # GET folds the state anew under the running policy; the topics show
        # what the sweep published: the transition and a new snapshot.
        transitions = [codec.loads(m.value) for m in out[settings.topic_transitions]]
        for customer in ("quiet", "visitor"):
            snapshots = [codec.loads(m.value) for m in out[settings.topic_scores]
                         if m.key == message_key(SHOP, customer)]
            assert snapshots[-1]["stage"] == "lapsed"
        lapses = {t["customer_id"]: t for t in transitions if t["to"] == "lapsed"}
        assert sorted(lapses) == ["quiet", "visitor"]
        midnight = datetime(quiet.year, quiet.month, quiet.day, tzinfo=UTC) + timedelta(days=181)
        assert (lapses["quiet"]["from"], lapses["quiet"]["at"], lapses["quiet"]["cause"]) == (
            "first_purchase", rfc3339(midnight), {"type": "time"})
        # inside finalized history: at the open window's first event
        assert (lapses["visitor"]["from"], lapses["visitor"]["at"], lapses["visitor"]["cause"]) == (
            "first_purchase", rfc3339(open_visit), {"type": "event", "event_id": "v2-visitor"})
    finally:
        env.stop_all()
