"""Poison input: every kind of invalid record reaches the dead-letter topic with its
reason and source coordinates, and the worker keeps processing valid input.

The same worker run checks the contracts (one worker start, for CI time): every
record on every output topic validates against its topic's committed JSON
Schema, and a real answer of every endpoint against /openapi.json.
"""

from __future__ import annotations

import base64
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from urllib.parse import quote

from schemas import codec
from schemas.outputs import TOPIC_CONTRACTS
from streams import synthetic
from streams.openapi import PATHS
from streams.topics import message_key, partition_for
from tests.contracts import assert_valid, response_errors
from tests.integration.service_harness import (
    AS_OF,
    LATENESS_DAYS,
    ServiceEnv,
    Worker,
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

        letters = env.dead_letters()
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

        shop = synthetic.SHOP_NAMES[0]  # shops=1
        check_output_contracts(env, letters)
        check_api_description(w, shop)

        # Malformed or unauthorised HTTP requests get clean 4xx answers.
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


def check_output_contracts(env: ServiceEnv, letters: list[dict]) -> None:
    """Every value on every output topic follows its committed schema (jsonschema),
    and every customer record is keyed and partitioned as documented."""
    settings = env.settings()
    seen: dict[str, set[str]] = {}
    topics = env.read_topics([getattr(settings, field) for field in TOPIC_CONTRACTS])
    for field, model in TOPIC_CONTRACTS.items():
        name = f"out-{model.__name__}.json"
        msgs = topics[getattr(settings, field)]
        assert msgs, field
        for m in msgs:
            value = codec.loads(m.value)
            assert_valid(name, value)
            if field != "topic_dead_letter":
                assert m.key == message_key(value["shop_id"], value["customer_id"])
                assert m.partition == partition_for(m.key, settings.partitions)
            seen.setdefault(field, set()).add(
                "void" if value.get("void") else value.get("entry", value.get("kind", "")))
    assert {"transition", "alert"} <= seen["topic_transitions"], seen
    assert {"earn", "redeem"} <= seen["topic_rewards"], seen
    assert len(letters) == len(topics[settings.topic_dead_letter])
    assert {d["value_encoding"] for d in letters} == {"utf-8", "base64"}


def check_api_description(w: Worker, shop: str) -> None:
    """A real answer of every endpoint, each status it can give here, is as described."""
    token = {"Authorization": f"Bearer {w.env.env['LOYALTY_API_TOKEN']}"}
    ok = w.get_json(f"/shops/{shop}/customers?limit=1")["items"][0]["customer_id"]
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    calls = [
        ("/customers/{shop_id}/{customer_id}", f"/customers/{shop}/{quote(ok, safe='')}", 200),
        ("/customers/{shop_id}/{customer_id}", f"/customers/{shop}/nobody-here", 404),
        ("/customers/{shop_id}/{customer_id}", f"/customers/{shop}/x?as_of=soon", 400),
        ("/shops/{shop_id}", f"/shops/{shop}", 200),
        ("/shops/{shop_id}", f"/shops/{shop}?as_of={now}", 200),
        ("/shops/{shop_id}", f"/shops/{shop}?as_of=2020-01-01T00:00:00Z", 400),
        ("/shops/{shop_id}/customers", f"/shops/{shop}/customers?stage=repeat&limit=5", 200),
        ("/shops/{shop_id}/customers", f"/shops/{shop}/customers?stage=later", 400),
        ("/internal/shops/{shop_id}/tally", f"/internal/shops/{shop}/tally", 200),
        ("/internal/shops/{shop_id}/customers", f"/internal/shops/{shop}/customers", 200),
        ("/health/live", "/health/live", 200),
        ("/health/ready", "/health/ready", 200),
        ("/health", "/health", 200),
        ("/metrics", "/metrics", 200),
        ("/openapi.json", "/openapi.json", 200),
        ("/", "/", 200),
    ]
    calls += [(t, p, 401) for t, p, _ in calls if "security" in PATHS[t]["get"]
              and PATHS[t]["get"]["security"]]
    assert {t for t, _, _ in calls} == set(PATHS)
    for template, path, want in calls:
        req = urllib.request.Request(w.url + path, headers={} if want == 401 else token)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, headers, body = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as exc:
            status, headers, body = exc.code, exc.headers, exc.read()
        assert status == want, (path, status, body[:300])
        bad = response_errors(template, status, headers.get("Content-Type", ""), body, headers)
        assert not bad, bad

    # The listing and the funnel count the same customers (retried: a sweep may
    # move a customer between the two requests).
    for _ in range(5):
        funnel = w.get_json(f"/shops/{shop}")["funnel"]
        listed = {stage: 0 for stage in funnel}
        cursor = ""
        while cursor is not None:
            page = w.get_json(f"/shops/{shop}/customers?limit=7{cursor}")
            for item in page["items"]:
                listed[item["stage"]] += 1
            cursor = page["next_cursor"] and f"&cursor={page['next_cursor']}"
        if listed == funnel:
            break
        time.sleep(1)
    assert listed == funnel
