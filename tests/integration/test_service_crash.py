"""Crash: kill -9 the worker several times mid-stream; the result still equals replay.

Nothing lost (every event folded), nothing doubled (redelivered events are
recognised as duplicates, and a worker restarted after an unclean stop
rebuilds its stores from the changelog). Outputs may repeat, with the same
ids: every reward ledger id maps to one content.
"""

from __future__ import annotations

import threading
import time

from schemas import codec
from streams import synthetic
from tests.integration.service_harness import (
    AS_OF,
    LATENESS_DAYS,
    ServiceEnv,
    expected_snapshots,
    wait_equal,
)


def test_service_crash(bootstrap: str, tmp_path) -> None:
    env = ServiceEnv(bootstrap, tmp_path, sweep_interval_s=2.0)
    env.create_topics()
    records = synthetic.generate(seed=31, customers_per_shop=120, lateness_days=LATENESS_DAYS,
                                 end=AS_OF)
    expected = expected_snapshots(env, records)
    w = env.worker().start()
    producer_error: list[BaseException] = []

    def produce() -> None:
        try:
            env.produce(records, rate=120.0)  # ~12 s of input, killed mid-way
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            producer_error.append(exc)

    try:
        w.wait_ready()
        t = threading.Thread(target=produce, daemon=True)
        t.start()
        kills = 0
        for delay in (3.0, 4.0, 2.5):
            time.sleep(delay)
            w.kill()
            kills += 1
            assert (w.data_dir / env.name / ".running").exists()
            w.start()
            w.wait_ready()
        t.join(120)
        assert not producer_error, producer_error
        assert kills == 3
        wait_equal(w, expected, timeout=180)

        # Outputs may repeat after a crash; a repeat carries the same id and the
        # same ledger fact. Corrections are flagged "restated"/"void", and the
        # running "balance_after" depends on what the fold had seen when it
        # published, so it is not part of the fact.
        rewards = env.read_topic(env.settings().topic_rewards)
        by_id: dict[str, dict] = {}
        for m in rewards:
            eff = codec.loads(m.value)
            if eff.get("restated") or eff.get("void"):
                continue
            eff.pop("balance_after", None)
            assert by_id.setdefault(eff["id"], eff) == eff, "same id, different fact"
        assert by_id
    finally:
        env.stop_all()
