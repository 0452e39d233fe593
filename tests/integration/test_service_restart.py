"""Restart: a gracefully stopped worker restores the same state from its changelog.

Also the state must survive losing the local stores entirely (a new data
directory: full restore from the changelog topics).
"""

from __future__ import annotations

import pytest

from streams import synthetic
from tests.integration.service_harness import (
    AS_OF,
    LATENESS_DAYS,
    ServiceEnv,
    expected_snapshots,
    fold_and_serve,
    metric_samples,
    served_snapshots,
    wait_equal,
)


@pytest.mark.slow
def test_service_restart(bootstrap: str, tmp_path) -> None:
    env = ServiceEnv(bootstrap, tmp_path)
    env.create_topics()
    records = synthetic.generate(seed=21, customers_per_shop=80, lateness_days=LATENESS_DAYS,
                                 end=AS_OF)
    half = len(records) // 2
    first, second = records[:half], records[half:]
    w = env.worker().start()
    try:
        w.wait_ready()
        keys, before = fold_and_serve(env, w, first)
        w.stop()
        assert w.proc is not None and w.proc.returncode == 0, w.log_tail()
        assert not (w.data_dir / env.name / ".running").exists(), "graceful stop leaves no marker"

        # Same data dir: local RocksDB + changelog tail.
        w.start().wait_ready()
        assert served_snapshots(w, keys) == before
        w.stop()

        # Fresh data dir: everything restored from the changelog topics, by the
        # bulk restore (streams/restore.py), not record by record.
        w2 = env.worker().start()
        w2.wait_ready()
        assert served_snapshots(w2, keys) == before
        restored = metric_samples(w2)[("loyalty_restored_records_total", ())]
        assert restored >= len(keys), w2.log_tail()

        env.produce(second)
        wait_equal(w2, expected_snapshots(env, records))
    finally:
        env.stop_all()
