"""The service's CLV pieces that need no broker: stats from stored states, fitting, the model table."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from schemas.codec import dumps, loads
from schemas.policy import PolicyBook
from scoring import clv
from scoring.clock import to_us
from scoring.replay import fold_lines
from streams.clv_service import POOLED_PREFIX, ClvModels, collect_stats, fit_all, params_records
from streams.metrics import Metrics
from streams.settings import Settings
from tests.cdnow import calibration_stats, load_transactions
from tests.core.test_cdnow_replay import cdnow_lines

CAL_END = datetime(1997, 9, 30, 23, 59, 59, tzinfo=UTC)


@pytest.fixture(scope="module")
def cdnow_by_shop() -> dict[str, list[tuple[int, int, int, int]]]:
    book = PolicyBook()
    res = fold_lines(cdnow_lines(), policies=book, as_of=CAL_END)
    encoded = [s.encode() for s in res.states.values()]  # what the customer table holds
    return collect_stats(encoded, to_us(CAL_END), book)


def test_stats_from_encoded_states_equal_the_papers_and_fit(cdnow_by_shop) -> None:  # type: ignore[no-untyped-def]
    expected = calibration_stats([t for t in load_transactions() if t.amount_cents])
    assert sorted(cdnow_by_shop["cdnow"]) == sorted(expected.values())
    fits = fit_all(cdnow_by_shop, PolicyBook(), min_customers=200)
    assert fits.shops["cdnow"].reason is None and not fits.pooled  # sound: no pool needed
    model = fits.select("cdnow")
    assert model is not None and model.kind == "shop" and 0.2 < model.bgnbd.r < 0.3


def test_the_service_default_minimum_is_the_core_one() -> None:
    """One eligibility threshold: the setting's default is scoring.clv.MIN_CUSTOMERS."""
    assert Settings().clv_min_customers == clv.MIN_CUSTOMERS


def test_small_shops_are_served_the_pooled_model_through_the_topic(cdnow_by_shop) -> None:  # type: ignore[no-untyped-def]
    """A 150-customer shop and a shop without repeat buyers next to CDNOW: both are
    published with their reason, the pooled model under the reserved key, and the model
    table serves the pooled model to both (and the shop's own to CDNOW)."""
    big = cdnow_by_shop["cdnow"]
    by_shop = {"cdnow": big[150:], "tiny": big[:150], "new": [(0, 0, 5, 0)] * 300}
    fits = fit_all(by_shop, PolicyBook(), min_customers=200)
    assert "fewer than the minimum 200" in (fits.shops["tiny"].reason or "")
    assert "repeat buyers, fewer than the minimum 20" in (fits.shops["new"].reason or "")
    records = params_records(fits, "2026-01-01T00:00:00+00:00")
    keys = [k for k, _ in records]
    assert keys == [b"cdnow", b"new", b"tiny", (POOLED_PREFIX + "all/USD").encode()]
    metrics = Metrics()
    table = ClvModels(metrics.set_clv)
    for k, v in records:
        table.apply_record(k, v)
    assert table.get("cdnow").kind == "shop"  # type: ignore[union-attr]
    pooled = table.get("tiny")
    assert pooled is not None and pooled.kind == "pooled" and pooled.sound
    assert table.get("new") is pooled and table.get("unknown") is None
    info = table.describe("tiny")
    assert info["model"] == "pooled" and info["pool"] == "all/USD"
    assert info["reason"] == fits.shops["tiny"].reason
    assert info["parameters"]["bgnbd"] == pooled.bgnbd.to_dict()
    assert info["diagnostics"]["bgnbd"]["degenerate"] is False
    text = metrics.render().decode()
    assert 'loyalty_clv_model{model="pooled",shop="tiny"} 1.0' in text
    assert 'loyalty_clv_model{model="shop",shop="tiny"} 0.0' in text
    assert 'loyalty_clv_model{model="shop",shop="cdnow"} 1.0' in text


def test_a_degenerate_fit_is_published_with_its_reason_but_never_served() -> None:
    """Nobody drops out: the shop's own fit is degenerate. Its record carries the
    diagnostics and the reason; the table falls back to the pool; with no sound pool
    the shop gets no model at all, and the metric says so."""
    stats = [(3, 60, 60, 3000)] * 140 + [(0, 0, 60, 0)] * 140 + [(1, 30, 30, 900)] * 70
    fits = fit_all({"flat": stats}, PolicyBook(), min_customers=200)
    fit = fits.shops["flat"]
    assert fit.model is not None and not fit.model.sound and fit.reason == fit.model.problem
    rec = dict(params_records(fits, "t"))
    body = loads(rec[b"flat"])
    assert body["reason"].startswith("BG/NBD: ")
    assert body["model"]["diagnostics"]["bgnbd"]["degenerate"] is True
    metrics = Metrics()
    table = ClvModels(metrics.set_clv)
    for k, v in rec.items():
        table.apply_record(k, v)
    assert table.get("flat") is None  # the pool is the same degenerate data
    info = table.describe("flat")
    assert info["model"] is None and info["shop_fit"]["bgnbd"]["degenerate"] is True
    assert "pooled model: " in info["reason"]
    text = metrics.render().decode()
    assert 'loyalty_clv_fit_degenerate{shop="flat"} 1.0' in text
    assert 'loyalty_clv_model{model="none",shop="flat"} 1.0' in text


def test_model_table_ignores_garbage_and_unsound_records(cdnow_by_shop) -> None:  # type: ignore[no-untyped-def]
    model = clv.fit_shop(cdnow_by_shop["cdnow"][:3000], 7)
    assert model.sound
    table = ClvModels()
    table.apply_record(b"shop-1", dumps({"shop_id": "shop-1", "pool": "all/USD", "reason": None,
                                         "model": model.to_dict()}))
    table.apply_record(b"shop-2", b"not json")
    table.apply_record(b"shop-3", dumps({"model": {"bgnbd": {}}, "pool": "p"}))
    v1 = {**model.to_dict(), "version": 1}
    v1.pop("diagnostics")
    table.apply_record(b"shop-4", dumps({"model": v1, "pool": "p", "reason": None}))
    table.apply_record(b"shop-5", dumps({"model": None, "pool": "p"}))  # no model, no reason
    assert table.get("shop-1") == model and len(table) == 1
    assert all(table.get(s) is None for s in ("shop-2", "shop-3", "shop-4", "shop-5"))
    # a record claiming a degenerate model is fine is still not served
    bad = clv.fit_shop([(3, 60, 60, 3000)] * 40 + [(0, 0, 60, 0)] * 40 + [(1, 30, 30, 900)] * 20, 7)
    table.apply_record(b"shop-6", dumps({"model": bad.to_dict(), "pool": "p", "reason": None}))
    assert table.get("shop-6") is None and table.describe("shop-6")["reason"].startswith("BG/NBD")
