"""Two workers in one consumer group share the partitions; one leaves.

While both run, every request (sent to either worker) is answered by the
partition owner (routing), and ``/shops`` and ``/shops/{shop}/customers`` merge
both workers' partitions.
After one worker stops, the other takes over its partitions (restored from
the changelog) and the results still equal replay, including input produced
after the departure.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from streams import synthetic
from tests.integration.service_harness import (
    AS_OF,
    LATENESS_DAYS,
    ServiceEnv,
    expected_snapshots,
    wait_equal,
)


def _wait_split(a, b, partitions: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pa = set(a.get_json("/health")["owned_partitions"])
        pb = set(b.get_json("/health")["owned_partitions"])
        if pa and pb and not (pa & pb) and len(pa | pb) == partitions:
            return
        time.sleep(1.0)
    raise AssertionError("partitions never split between the two workers")


def _list_all(w, shop: str) -> list[str]:  # noqa: ANN001
    """Every customer id of ``/shops/{shop}/customers``, following the cursors."""
    ids, cursor = [], ""
    while cursor is not None:
        page = w.get_json(f"/shops/{shop}/customers?limit=37{cursor}")
        ids += [item["customer_id"] for item in page["items"]]
        cursor = page["next_cursor"] and f"&cursor={page['next_cursor']}"
    return ids


def _agreeing_shop_figures(a: Any, b: Any, shop: str, timeout: float = 60.0) -> tuple[Any, Any]:
    """``/shops/{shop}`` from both workers, read until the two answers agree.

    Both merge the same owners' tally rows, but the time sweep may move
    customers of this history (it ends in the past) between stages while its
    first full scan runs, so two reads a moment apart may differ by the
    customers moved in between (seen once in CI: first_purchase 44 vs 43). Agreement must come; a persistent difference
    fails with the last pair.
    """
    deadline = time.monotonic() + timeout
    while True:
        fa, fb = a.get_json(f"/shops/{shop}"), b.get_json(f"/shops/{shop}")
        if fa == fb or time.monotonic() > deadline:
            return fa, fb
        time.sleep(0.5)


@pytest.mark.slow
def test_service_two_workers(bootstrap: str, tmp_path) -> None:
    env = ServiceEnv(bootstrap, tmp_path)
    env.create_topics()
    records = synthetic.generate(seed=41, customers_per_shop=100, lateness_days=LATENESS_DAYS,
                                 end=AS_OF)
    half = len(records) // 2
    a = env.worker().start()
    b = env.worker().start()
    try:
        a.wait_ready()
        b.wait_ready()
        _wait_split(a, b, env.settings().partitions)
        env.produce(records[:half])
        expected_half = expected_snapshots(env, records[:half])
        wait_equal(a, expected_half)  # half the keys are proxied from a to b
        wait_equal(b, expected_half)  # and the other half from b to a
        shops = {s["shop_id"] for s in expected_half}
        for shop in shops:
            fa, fb = _agreeing_shop_figures(a, b, shop)
            assert fa == fb
            assert fa["customers"] == sum(1 for s in expected_half if s["shop_id"] == shop)
            # The segment listing merges both workers' partitions too, page by page.
            want = sorted(s["customer_id"] for s in expected_half if s["shop_id"] == shop)
            assert _list_all(a, shop) == _list_all(b, shop) == want

        b.stop()
        assert b.proc is not None and b.proc.returncode == 0, b.log_tail()
        env.produce(records[half:])
        wait_equal(a, expected_snapshots(env, records), timeout=180)
        assert a.get_json("/health")["owned_partitions"] == list(range(env.settings().partitions))
    finally:
        env.stop_all()
