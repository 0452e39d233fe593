"""Forgetting a customer against the real broker, across restarts (streams/forget.py).

Two customers are forgotten, one with ``loyalty forget``, one with ``DELETE
/customers/...``: afterwards the snapshot answers 404, the shop figures equal
the replay of the stream without them, and the last record of each key on the
compacted scores topic and in the customers changelog is a tombstone. That
holds after a restart on the same data dir and after one on an empty data dir
(restored from the changelog). A later event of a forgotten customer starts a
new history, as ``loyalty replay`` of the stream with the forget line says.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas import codec
from scoring.clock import day_of, to_us
from scoring.replay import fold_lines, replay, snapshots
from streams.commands.produce import produce_records, route
from tests.integration.service_harness import (
    AS_OF,
    LOYALTY,
    REPO,
    ServiceEnv,
    Worker,
    served_snapshots,
    wait_equal,
)

SHOP = "s1"
TOKEN = "forget-token"


def history(customer: str, n: int) -> list[bytes]:
    """A visit, ``n`` purchases and a feedback answer in December 2025."""
    def line(kind: str, i: int, day: int, **kw: Any) -> bytes:
        return codec.dumps({"type": kind, "event_id": f"{customer}-{kind}-{i}", "shop_id": SHOP,
                            "customer_id": customer,
                            "occurred_at": f"2025-12-{day:02d}T10:00:00Z", **kw})

    return [line("visit", 0, 1),
            *(line("purchase", i, 2 + 3 * i, order_id=f"{customer}-o{i}", amount=1000 + 100 * i,
                   currency="USD") for i in range(n)),
            line("feedback", 0, 20, nps=3 + n)]


def produce(env: ServiceEnv, lines: list[bytes]) -> None:
    import asyncio

    s = env.settings()
    asyncio.run(produce_records(s, [(*route(x, s), x) for x in lines], show_progress=False))


def shop_figures(w: Worker) -> dict[str, Any]:
    # The service's figures are as of now (the API refuses any other as_of):
    # its NPS and spend windows end today, its funnel is as of each customer's
    # last event (no sweep runs in this test).
    got = w.get_json(f"/shops/{SHOP}")
    got.pop("clv")  # the model description: test_service_clv.py
    return got


def replayed_figures(env: ServiceEnv, lines: list[bytes]) -> dict[str, Any]:
    policies = env.policies()
    _, _, tallies = snapshots(fold_lines(lines, policies=policies, as_of=AS_OF), policies, AS_OF,
                              with_clv=False)
    # stages as of AS_OF (after every event, as the unswept service has them),
    # windows placed today, as the service places them
    today = day_of(to_us(datetime.now(UTC)))
    return tallies[SHOP].figures(SHOP, today, policies.for_shop(SHOP))


def last_values(env: ServiceEnv, topic: str) -> dict[bytes, bytes | None]:
    out: dict[bytes, bytes | None] = {}
    for m in env.read_topic(topic, timeout=3.0):
        out[m.key] = m.value
    return out


@pytest.mark.slow
def test_forgotten_customers_are_gone_everywhere_and_stay_gone(bootstrap: str, tmp_path) -> None:
    # The sweep is slow here: it would move stages to wall-clock now, and the
    # figures are compared with the replay as of AS_OF.
    env = ServiceEnv(bootstrap, tmp_path, sweep_interval_s=3600,
                     extra_env={"LOYALTY_API_TOKEN": TOKEN})
    env.create_topics()
    kept = history("ann", 3) + history("dan", 1)
    lines = kept + history("bob", 2) + history("cy", 4)
    policies = env.policies()
    w = env.worker().start()
    try:
        w.wait_ready()
        produce(env, lines)
        wait_equal(w, replay(lines, policies=policies, as_of=AS_OF, with_clv=False), timeout=60)
        assert shop_figures(w) == replayed_figures(env, lines)

        # bob by the CLI, cy by the HTTP endpoint.
        cli = subprocess.run([*LOYALTY, "forget", SHOP, "bob"], cwd=REPO, capture_output=True,
                             env={**os.environ, **env.env}, timeout=60, text=True)
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout.strip().startswith("forget-")
        req = urllib.request.Request(f"{w.url}/customers/{SHOP}/cy", method="DELETE",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 202
            assert codec.loads(resp.read())["request_id"].startswith("forget-")

        gone = [(SHOP, "bob"), (SHOP, "cy")]
        deadline = time.monotonic() + 30
        while any(served_snapshots(w, gone).values()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert served_snapshots(w, gone) == {k: None for k in gone}, w.log_tail()
        assert w.get(f"/customers/{SHOP}/bob")[0] == 404

        expected = replay(kept, policies=policies, as_of=AS_OF, with_clv=False)
        want_figures = replayed_figures(env, kept)
        assert shop_figures(w) == want_figures
        assert want_figures["customers"] == 2

        s = env.settings()
        scores = last_values(env, s.topic_scores)
        changelog = last_values(env, f"{env.name}-customers-changelog")
        for _, customer in gone:
            key = f"{SHOP}|{customer}".encode()
            assert key in scores and scores[key] is None
            assert key in changelog and changelog[key] is None
        assert scores[b"s1|ann"] is not None and changelog[b"s1|ann"] is not None

        # Restart on the same data dir, then on an empty one (changelog restore).
        w.stop()
        w.start().wait_ready()
        assert served_snapshots(w, gone) == {k: None for k in gone}
        wait_equal(w, expected, timeout=30)
        w.stop()
        w2 = env.worker().start()
        w2.wait_ready()
        assert served_snapshots(w2, gone) == {k: None for k in gone}
        wait_equal(w2, expected, timeout=30)
        assert shop_figures(w2) == want_figures

        # A later event of bob starts a new, empty history: what replay says of
        # the stream with the forget request in it.
        again = codec.dumps({"type": "purchase", "event_id": "bob-purchase-0", "shop_id": SHOP,
                             "customer_id": "bob", "occurred_at": "2025-12-02T10:00:00Z",
                             "order_id": "bob-o9", "amount": 500, "currency": "USD"})
        produce(env, [again])
        forget_line = codec.dumps({"type": "forget", "event_id": "r1", "shop_id": SHOP,
                                   "customer_id": "bob",
                                   "occurred_at": datetime.now(UTC).isoformat()})
        after = replay([*lines, forget_line, again], policies=policies, as_of=AS_OF,
                       with_clv=False)
        bob = [x for x in after if x["customer_id"] == "bob"]
        assert bob[0]["purchase_count"] == 1
        wait_equal(w2, bob, timeout=30)
    finally:
        env.stop_all()
