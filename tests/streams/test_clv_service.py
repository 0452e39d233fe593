"""The service's CLV pieces that need no broker: stats from stored states, fitting, the model table."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas.codec import dumps
from schemas.policy import PolicyBook
from scoring.clock import to_us
from scoring.replay import fold_lines
from streams.clv_service import ClvModels, collect_stats, fit_all
from tests.cdnow import calibration_stats, load_transactions
from tests.core.test_cdnow_replay import cdnow_lines

CAL_END = datetime(1997, 9, 30, 23, 59, 59, tzinfo=UTC)


def test_stats_from_encoded_states_equal_the_papers_and_fit() -> None:
    book = PolicyBook()
    res = fold_lines(cdnow_lines(), policies=book, as_of=CAL_END)
    encoded = [s.encode() for s in res.states.values()]  # what the customer table holds
    by_shop = collect_stats(encoded, to_us(CAL_END), book)
    expected = calibration_stats([t for t in load_transactions() if t.amount_cents])
    assert sorted(by_shop["cdnow"]) == sorted(expected.values())
    models, errors = fit_all(by_shop, min_customers=200)
    assert not errors and 0.2 < models["cdnow"].bgnbd.r < 0.3


def test_small_or_unidentifiable_shops_get_no_model() -> None:
    few = {"tiny": [(1, 10, 20, 500)] * 30 + [(0, 0, 5, 0)] * 5}
    assert fit_all(few, min_customers=200) == ({}, {})  # below the customer minimum
    no_repeat = {"new": [(0, 0, 5, 0)] * 300}
    assert fit_all(no_repeat, min_customers=200) == ({}, {})  # no repeat buyers yet


def test_model_table_follows_the_params_topic_and_ignores_garbage() -> None:
    from scoring.clv import BgNbdParams, ShopModel

    model = ShopModel(bgnbd=BgNbdParams(r=0.25, alpha=4.8, a=0.7, b=2.2), gamma_gamma=None,
                      customers=100, repeat_customers=40, gg_customers=0, log_likelihood=-1.0,
                      gg_log_likelihood=None, unit_days=7)
    table = ClvModels()
    table.apply_record(b"shop-1", dumps({"shop_id": "shop-1", "model": model.to_dict()}))
    table.apply_record(b"shop-2", b"not json")
    table.apply_record(b"shop-3", dumps({"model": {"bgnbd": {}}}))
    assert table.get("shop-1") == model and table.get("shop-2") is None and len(table) == 1
