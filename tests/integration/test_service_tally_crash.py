"""A crash loses the shop tally changes the commit held; the first sweep repairs them.

The commit applies each state's tally delta to the row's held tally and
writes the rows once per ``LOYALTY_TALLY_FLUSH_INTERVAL_S`` or when something
reads them (``streams.commit``, step 5). Here the interval is an hour, so the
changes of the second half of the stream are only held when the worker is
killed: its tally rows in the changelog hold the first half. The restarted
worker restores them, and its first sweep, a full scan, recounts them from
the customer rows: ``/shops`` then equals ``loyalty replay`` of everything.
"""

from __future__ import annotations

import time

import pytest

from streams import synthetic
from tests.integration.service_harness import (
    AS_OF,
    LATENESS_DAYS,
    ServiceEnv,
    expected_snapshots,
    fold_and_serve,
    shop_figures,
    wait_equal,
)


@pytest.mark.slow
def test_tally_changes_lost_by_a_crash_are_recounted_by_the_first_sweep(
        bootstrap: str, tmp_path) -> None:
    # No sweep in the first worker (it would flush and recount); an hour's interval.
    env = ServiceEnv(bootstrap, tmp_path, sweep_interval_s=3600,
                     extra_env={"LOYALTY_TALLY_FLUSH_INTERVAL_S": "3600"})
    env.create_topics()
    records = synthetic.generate(seed=31, customers_per_shop=60, lateness_days=LATENESS_DAYS,
                                 end=AS_OF)
    half = len(records) // 2
    w = env.worker().start()
    try:
        w.wait_ready()
        fold_and_serve(env, w, records[:half])
        # A reader writes the held rows (and Faust logs them): the first half.
        first, _ = shop_figures(env, w, records[:half], timeout=0)
        time.sleep(2)  # Faust's producer buffer sends the tally rows' changelog records
        env.produce(records[half:])
        wait_equal(w, expected_snapshots(env, records))
        w.kill()  # the second half's tally changes were only held

        env.env["LOYALTY_SWEEP_INTERVAL_S"] = "2"
        w.start().wait_ready()
        got, want = shop_figures(env, w, records, timeout=90)
        assert got == want, w.log_tail()
        assert "repaired drifted tally" in w.log_tail(200), w.log_tail()
        # The premise: the rows logged before the crash held less than the stream.
        assert first != got
    finally:
        env.stop_all()
