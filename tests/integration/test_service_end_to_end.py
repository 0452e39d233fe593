"""End to end against the real broker: every served snapshot equals ``loyalty replay``.

The synthetic stream carries duplicates, conflicting duplicates, late and
too-late events, refunds (partial, full, orphan), redemptions (some rejected),
invalid records of every kind, and wrongly keyed / unkeyed records (which take
the rekey hop). Shop figures served by ``/shops`` must equal the replay's
tallies as well.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from schemas import codec
from streams import synthetic
from tests.integration.service_harness import (
    AS_OF,
    LATENESS_DAYS,
    ServiceEnv,
    expected_snapshots,
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
        from scoring.clock import day_of, to_us
        from scoring.replay import fold_lines, snapshots

        policies = env.policies()
        deadline = time.monotonic() + 60
        while True:
            now = datetime.now(UTC)
            res = fold_lines(synthetic.lines(records), policies=policies, as_of=now)
            _, _, tallies = snapshots(res, policies, now, with_clv=False)
            want = {shop: t.figures(shop, day_of(to_us(now)), policies.for_shop(shop))
                    for shop, t in tallies.items()}
            got = {shop: w.get_json(f"/shops/{shop}?as_of={now.isoformat()}".replace("+", "%2B"))
                   for shop in want}
            # the CLV model description is checked in test_service_clv.py
            assert all("model" in g.pop("clv") for g in got.values())
            if got == want or time.monotonic() > deadline:
                break
            time.sleep(2)
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
