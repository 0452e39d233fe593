"""Predictive CLV live in the real service: refit, params topic, snapshot fields.

CDNOW customers (the published data set) are shifted in time so that the log
ends yesterday: 1 500 of them in shop "cdnow", 150 others in shop "small"
(below the 200-buyer minimum). The worker refits every few seconds on its
customer table. The served CLV fields must equal those of an offline fit of
the same customers as of the same day ("small" scored by the pooled model),
the fitted parameters must be on the compacted params topic, and the shop
answer must say which model each shop uses.
"""

from __future__ import annotations

import time
from collections import namedtuple
from datetime import UTC, date, datetime, timedelta
from urllib.parse import quote

import pytest

from schemas import codec
from scoring import rfm
from scoring.clock import to_us
from scoring.replay import fold_lines
from scoring.snapshot import head_as_of, snapshot_of_head
from streams.clv_service import collect_summaries, fit_all
from streams.topics import message_key
from tests.cdnow import load_transactions
from tests.integration.service_harness import ServiceEnv

Rec = namedtuple("Rec", "event_type key value")
CUSTOMERS = 1500
SMALL = 150
CLV = ("p_alive", "expected_purchases_90d", "expected_avg_value", "clv_365d", "clv_model")


def shifted_cdnow() -> list[bytes]:
    shift = (date.today() - timedelta(days=1)) - date(1998, 6, 30)
    wanted = {f"{i:05d}" for i in range(1, CUSTOMERS + 1)}
    small = {f"{i:05d}" for i in range(CUSTOMERS + 1, CUSTOMERS + SMALL + 1)}
    out = []
    for i, t in enumerate(load_transactions()):
        if (t.customer_id in wanted or t.customer_id in small) and t.amount_cents > 0:
            day = t.day + shift
            out.append(codec.dumps({
                "type": "purchase", "event_id": f"t{i}",
                "shop_id": "cdnow" if t.customer_id in wanted else "small",
                "customer_id": t.customer_id, "occurred_at": f"{day.isoformat()}T12:00:00Z",
                "order_id": f"t{i}", "amount": t.amount_cents, "currency": "USD"}))
    return out


@pytest.mark.slow
def test_clv_fields_are_live_in_the_service(bootstrap: str, tmp_path) -> None:
    env = ServiceEnv(bootstrap, tmp_path, extra_env={
        "LOYALTY_CLV_REFIT_INTERVAL_S": "3", "LOYALTY_CLV_MIN_CUSTOMERS": "200"})
    env.create_topics()
    lines = shifted_cdnow()
    records = [Rec("purchase", message_key(codec.loads(v)["shop_id"], codec.loads(v)["customer_id"]), v)
               for v in lines]
    w = env.worker().start()
    try:
        w.wait_ready()
        env.produce(records)
        probe = f"/customers/cdnow/{quote('00002')}?as_of="
        deadline = time.monotonic() + 180
        served = None
        while time.monotonic() < deadline:
            now = datetime.now(UTC)
            status, body = w.get(probe + quote(now.isoformat().replace("+00:00", "Z")))
            if status == 200 and codec.loads(body)["p_alive"] is not None:
                served = codec.loads(body)
                break
            time.sleep(2)
        assert served is not None, "no CLV fields within 180 s\n" + w.log_tail(40)

        # The offline fit of the same customers, as of the same day. The worker
        # refits every 3 s, also while the events were still arriving, so poll
        # until its latest model covers them all.
        policies = env.policies()
        res = fold_lines(lines, policies=policies)
        assert res.applied == len(lines) and len(res.states) > 0.99 * (CUSTOMERS + SMALL)
        probes = (("cdnow", "00002"), ("cdnow", "00010"), ("cdnow", "00123"), ("cdnow", "01000"),
                  ("small", "01502"), ("small", "01600"))
        diffs: list[str] = []
        while time.monotonic() < deadline:
            now = datetime.now(UTC)
            by_shop, rfm_by_shop = collect_summaries([s.encode() for s in res.states.values()],
                                                     to_us(now), policies)
            fits = fit_all(by_shop, policies, min_customers=200)
            rfm_fits = rfm.fit_shops(rfm_by_shop, 200)  # RFM: fitted by the same refit
            model = fits.select("cdnow")
            assert model is not None and model.kind == "shop"
            pooled = fits.select("small")
            assert pooled is not None and pooled.kind == "pooled"
            diffs = []
            for shop, cust in probes:
                status, body = w.get(f"/customers/{shop}/{cust}?as_of="
                                     + quote(now.isoformat().replace("+00:00", "Z")))
                if status != 200:  # not processed yet
                    diffs.append(f"{cust}: HTTP {status}")
                    continue
                got = codec.loads(body)
                state = res.states[(shop, cust)]
                want = snapshot_of_head(shop, cust, head_as_of(state, to_us(now), policies.default),
                                        to_us(now), policies.default, fits.select(shop),
                                        rfm_fits.get(shop))
                assert want["clv_model"] == ("shop" if shop == "cdnow" else "pooled")
                # exact, with the fields below: the refit's cut points as of the same day
                assert (want["rfm_segment"] is None) == (shop == "small")
                assert {k: got[k] for k in got if k not in CLV} == {
                    k: want[k] for k in want if k not in CLV}
                for field in CLV:
                    tol = want[field] if isinstance(want[field], str | None) else \
                        pytest.approx(want[field], abs=1) if isinstance(want[field], int) else \
                        pytest.approx(want[field], rel=1e-6, abs=1e-9)
                    if got[field] != tol:
                        diffs.append(f"{cust}.{field}: served {got[field]} offline {want[field]}")
            if not diffs:
                break
            time.sleep(3)
        assert not diffs, "\n".join(diffs[:8])

        # Without ?as_of the API answers as of now: recency counts to today.
        plain = w.get_json("/customers/cdnow/00002")
        assert plain["as_of"][:10] == datetime.now(UTC).date().isoformat()
        last = date.fromisoformat(plain["last_purchase_at"][:10])
        assert plain["recency_days"] == (datetime.now(UTC).date() - last).days

        # ... and the parameters are on the compacted params topic.
        params = [r for r in env.read_topic(env.env["LOYALTY_TOPIC_CLV_PARAMS"]) if r.key == b"cdnow"]
        assert params, "no record on the CLV params topic"
        published = codec.loads(params[-1].value)
        assert published["reason"] is None and published["pool"] == "all/USD"
        assert published["model"]["bgnbd"]["r"] == pytest.approx(model.bgnbd.r, rel=1e-6)
        assert published["model"]["diagnostics"]["bgnbd"]["degenerate"] is False
        small = [r for r in env.read_topic(env.env["LOYALTY_TOPIC_CLV_PARAMS"]) if r.key == b"small"]
        assert "fewer than the minimum 200" in codec.loads(small[-1].value)["reason"]
        assert any(r.key == b"|pooled|all/USD"
                   for r in env.read_topic(env.env["LOYALTY_TOPIC_CLV_PARAMS"]))

        # The shop answer says which model scores the shop, with parameters and diagnostics.
        shop_clv = w.get_json("/shops/cdnow")["clv"]
        assert shop_clv["model"] == "shop" and shop_clv["reason"] is None
        assert set(shop_clv["diagnostics"]["bgnbd"]["std_errors"]) == {"r", "alpha", "a", "b"}
        small_clv = w.get_json("/shops/small")["clv"]
        assert small_clv["model"] == "pooled" and "fewer than the minimum" in small_clv["reason"]
        assert small_clv["customers"] > CUSTOMERS  # fitted on both shops together
        metrics = w.get("/metrics")[1].decode()
        assert 'loyalty_clv_model{model="pooled",shop="small"} 1.0' in metrics
    finally:
        env.stop_all()
