"""Poison input: every kind of invalid record reaches the dead-letter topic with its
reason and source coordinates, and the worker keeps processing valid input."""

from __future__ import annotations

import base64

from schemas import codec
from streams import synthetic
from tests.integration.service_harness import (
    AS_OF,
    LATENESS_DAYS,
    ServiceEnv,
    expected_snapshots,
    wait_equal,
)


def test_service_poison(bootstrap: str, tmp_path) -> None:
    env = ServiceEnv(bootstrap, tmp_path, extra_env={"LOYALTY_API_TOKEN": "s3cret-token"})
    env.create_topics()
    records = synthetic.generate(seed=51, shops=1, customers_per_shop=30,
                                 lateness_days=LATENESS_DAYS, end=AS_OF)
    invalid = [r for r in records if r.is_invalid]
    expected_reasons = sorted(r.reason for r in invalid)
    assert {"wrong_type", "missing_field", "currency_mismatch", "future_timestamp", "too_large",
            "invalid_json", "invalid_encoding", "unknown_type", "out_of_range"} <= set(
                expected_reasons)
    w = env.worker().start()
    try:
        w.wait_ready()
        env.produce(records)
        # Valid input interleaved with the poison is still fully processed.
        wait_equal(w, expected_snapshots(env, records))
        assert w.proc is not None and w.proc.poll() is None, "worker died"

        letters = [codec.loads(m.value) for m in
                   env.read_topic(env.settings().topic_dead_letter)]
        got = sorted(d["reason"] for d in letters
                     if d["reason"] not in ("conflicting_duplicate", "too_late"))
        assert got == expected_reasons
        by_value = {}
        for d in letters:
            raw = (base64.b64decode(d["value"]) if d["value_encoding"] == "base64"
                   else d["value"].encode())
            by_value[raw] = d
        for r in invalid:
            d = by_value[r.value]  # the original bytes, exactly
            assert d["reason"] == r.reason
            assert d["topic"] == env.settings().topic_purchases
            assert isinstance(d["partition"], int) and isinstance(d["offset"], int)
            assert d["detail"]
        assert any(d["value_encoding"] == "base64" for d in letters)  # the non-UTF-8 one

        # Still alive and serving after the poison.
        assert w.get_json("/health")["status"] == "ok"
        assert w.get("/metrics")[0] == 200

        # Malformed or unauthorised HTTP requests get clean 4xx answers.
        shop = synthetic.SHOP_NAMES[0]  # shops=1
        cust = next(codec.loads(r.value)["customer_id"] for r in records if r.kind == "valid")
        path = f"/customers/{shop}/{cust}"
        assert w.get(path)[0] == 200
        assert w.get(path, headers={})[0] == 401
        assert w.get(path, headers={"Authorization": "Bearer wrong"})[0] == 401
        assert w.get(f"/shops/{shop}", headers={})[0] == 401
        assert w.get(path + "?as_of=yesterday")[0] == 400
        assert w.get(path + "?as_of=" + "9" * 300)[0] == 400
        assert w.get(path + "?as_of=2000-01-01T00:00:00Z")[0] in (200, 400)
        assert w.get(f"/customers/{shop}/nobody-here")[0] == 404
        assert w.get(f"/customers/{'x' * 65}/{cust}")[0] == 400
        status, body = w.get(path)
        assert codec.loads(body)["customer_id"] == cust
    finally:
        env.stop_all()
