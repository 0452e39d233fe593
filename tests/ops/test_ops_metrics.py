"""NPS exported as summable counts, the default process metrics, batch counting."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from schemas.policy import PolicyBook
from scoring.shop import ShopTally
from streams.metrics import GroupedHistogram, Metrics, add_process_metrics
from streams.planning import Plan
from streams.records import Record


def _samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(m.render().decode()) for s in fam.samples}


def _figures(promoters: int, passives: int, detractors: int) -> dict:
    tally = ShopTally()
    tally.nps_all = [promoters, passives, detractors]
    return tally.figures("shop-a", 20000, PolicyBook.load(None).for_shop("shop-a"))


def test_nps_counts_of_two_workers_sum_to_the_shop_nps() -> None:
    a, b = Metrics(), Metrics()
    a.set_shop_figures("shop-a", _figures(9, 0, 1))  # NPS 80 on its own
    b.set_shop_figures("shop-a", _figures(0, 0, 10))  # NPS -100 on its own
    shop = (("shop", "shop-a"),)
    sa, sb = _samples(a), _samples(b)
    promoters = sa[("loyalty_shop_nps_promoters", shop)] + sb[("loyalty_shop_nps_promoters", shop)]
    detractors = (sa[("loyalty_shop_nps_detractors", shop)]
                  + sb[("loyalty_shop_nps_detractors", shop)])
    responses = sa[("loyalty_shop_nps_responses", shop)] + sb[("loyalty_shop_nps_responses", shop)]
    assert (promoters, detractors, responses) == (9, 11, 20)
    assert 100 * (promoters - detractors) / responses == -10.0
    # The deprecated ratio is still there, and summing it would say -20: wrong.
    assert sa[("loyalty_shop_nps", shop)] + sb[("loyalty_shop_nps", shop)] == -20.0


def test_process_metrics_are_on_the_worker_registry() -> None:
    m = Metrics()
    assert not any(name.startswith("process_") for name, _ in _samples(m))
    add_process_metrics(m)
    names = {name for name, _ in _samples(m)}
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total",
            "process_start_time_seconds", "python_info"} <= names


def _processed() -> list[tuple[Record, Plan]]:
    at = datetime(2026, 11, 1, tzinfo=UTC)
    earn = {"kind": "ledger", "entry": "earn", "points": 40}
    redeem = {"kind": "ledger", "entry": "redeem", "points": -25}
    first = {"kind": "transition", "from": None, "to": "first_visit"}
    void = {"kind": "transition", "void": True}
    plans = [
        ("t.purchases", Plan(event_type="purchase", status="applied", occurred_at=at,
                             effects=[earn, first])),
        ("t.purchases", Plan(event_type="purchase", status="applied", occurred_at=at,
                             effects=[earn, void])),
        ("t.redemptions", Plan(event_type="redemption", status="applied", occurred_at=at,
                               effects=[redeem])),
        ("t.visits", Plan(event_type="visit", status="duplicate", occurred_at=at)),
        ("t.visits", Plan(event_type="visit", status="duplicate", reason="redelivered",
                          occurred_at=at)),
        ("t.visits", Plan(event_type="invalid", status="invalid", reason="bad_json")),
        ("t.visits", Plan(event_type="redemption", status="rejected", reason="insufficient_points")),
        ("t.purchases", Plan(event_type="purchase", status="rekeyed")),
    ]
    return [(Record(topic, 0, offset, b"k", b"v"), plan)
            for offset, (topic, plan) in enumerate(plans)]


def test_a_batch_counts_what_its_records_count_one_by_one() -> None:
    batch, single = Metrics(), Metrics()
    processed = _processed()
    batch.observe_processed(processed, time.perf_counter())
    for item in processed:
        single.observe_processed([item], time.perf_counter())

    def counters(m: Metrics) -> dict:
        # latency sums and lag gauges are timings: compare the counts only
        return {k: v for k, v in _samples(m).items()
                if k[0].endswith("_total") or k[0].endswith("_count")}

    got = counters(batch)
    assert got == counters(single)
    consumed = {k[1]: v for k, v in got.items() if k[0] == "loyalty_events_consumed_total"}
    assert sum(consumed.values()) == 8
    assert consumed[(("topic", "t.purchases"), ("type", "purchase"))] == 3
    assert got[("loyalty_events_applied_total", (("type", "purchase"),))] == 2
    assert got[("loyalty_invalid_events_total", (("reason", "bad_json"),))] == 1
    assert got[("loyalty_invalid_events_total", (("reason", "insufficient_points"),))] == 1
    assert got[("loyalty_duplicates_ignored_total", ())] == 2
    assert got[("loyalty_redeliveries_recognised_total", ())] == 1
    assert got[("loyalty_rekeyed_total", (("topic", "t.purchases"),))] == 1
    assert got[("loyalty_points_total", (("kind", "earned"),))] == 80
    assert got[("loyalty_points_total", (("kind", "redeemed"),))] == 25
    assert got[("loyalty_ledger_entries_total", (("entry", "earn"),))] == 2
    assert got[("loyalty_stage_transitions_total",
                (("from_stage", "none"), ("to_stage", "first_visit")))] == 1
    assert got[("loyalty_effects_voided_total", (("kind", "transition"),))] == 1
    assert got[("loyalty_processing_seconds_count", ())] == 8


def test_the_state_cache_is_exported_as_read_at_scrape_time() -> None:
    from scoring.engine import PYTHON
    from scoring.fold import apply
    from tests.core.factory import parse, purchase

    m, cache = Metrics(), PYTHON.state_cache(10, 1 << 20, 1 << 20)
    m.watch_state_cache(cache)
    assert _samples(m)[("loyalty_state_cache_states", ())] == 0
    state = apply(None, parse(purchase(datetime(2026, 1, 5, tzinfo=UTC), 100)), PolicyBook().default).state
    raw = state.encode()
    cache.put(b"shop-1|c1", raw, state)
    cache.get(b"shop-1|c1", raw)  # live
    cache.get(b"shop-1|c1", raw + b" ")  # another writer's bytes: decoded
    got = _samples(m)
    assert got[("loyalty_state_cache_states", ())] == 1
    assert got[("loyalty_state_cache_bytes", ())] == cache.weight > 0
    assert {r: got[("loyalty_state_cache_lookups_total", (("result", r),))]
            for r in ("live", "head", "decoded")} == {"live": 1, "head": 0, "decoded": 1}


def test_a_grouped_histogram_exposes_what_prometheus_histogram_does() -> None:
    bounds = (0.001, 0.01, 0.1, 1)
    grouped = GroupedHistogram("t_seconds", "doc", bounds)
    plain_registry, grouped_registry = CollectorRegistry(), CollectorRegistry()
    plain = Histogram("t_seconds", "doc", buckets=bounds, registry=plain_registry)
    grouped_registry.register(grouped)
    # on a bound (le is inclusive), between, above every bound, zero, an empty group
    for value, count in ((0.001, 3), (0.0005, 1), (0.05, 2), (7.5, 4), (0.0, 1), (0.2, 0)):
        grouped.observe(value, count)
        for _ in range(count):
            plain.observe(value)

    def series(registry: CollectorRegistry) -> dict:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(generate_latest(registry).decode())
                for s in fam.samples if not s.name.endswith("_created")}

    got = series(grouped_registry)
    assert got == series(plain_registry)
    assert got[("t_seconds_bucket", (("le", "0.001"),))] == 5
    assert got[("t_seconds_bucket", (("le", "+Inf"),))] == got[("t_seconds_count", ())] == 11
    with pytest.raises(ValueError, match="increase"):
        GroupedHistogram("bad", "doc", (0.1, 0.01))
