"""The customer snapshot as of an instant A (DOMAIN.md "The customer snapshot").

:func:`snapshot` returns the exact JSON object that ``loyalty replay`` prints
and ``GET /customers/...`` serves: every DOMAIN.md field under its DOMAIN.md
name, datetimes as RFC 3339 UTC, absent values as null, money as integer
minor units. A few counters the rules call "counted" are added
(``orphan_refunds``, ``duplicate_orders``, ``refunds_capped``).
"""

from __future__ import annotations

from datetime import datetime
from fractions import Fraction
from typing import Any

from schemas.codec import dumps
from schemas.policy import ShopPolicy
from scoring import rfm
from scoring.aggregate import Agg, window_totals
from scoring.clock import day_of, rfc3339, to_us
from scoring.fold import _Ctx, advance_time, cached_head, fold_open
from scoring.ltv import ltv_formula
from scoring.rewards import spend_in_window, tier_on
from scoring.rfm import RfmModel
from scoring.stages import (
    DETRACTOR_STATUS,
    detractor_status,
    loyalty_type,
    mean_interpurchase_days,
    purchase_days_in_window,
    stage_on,
    wallet_band,
)
from scoring.state import CustomerState

#: Predictive CLV fields; ``clv_model`` names the model they come from ("shop": the
#: shop's own fit, "pooled": its pool's, null: none).
CLV_FIELDS = ("p_alive", "expected_purchases_90d", "expected_avg_value", "clv_365d", "clv_model")


class AsOfTooEarly(ValueError):
    """The requested instant precedes the customer's finalized history."""


def too_early(as_of_us: int, finalized_us: int) -> AsOfTooEarly:
    """The error for an instant before the finalized history (every engine's)."""
    return AsOfTooEarly(
        f"as_of {rfc3339(as_of_us)} is before {rfc3339(finalized_us)}, the end of this "
        "customer's finalized history; ask for a later instant")


def as_of_instant(as_of: datetime | int | None, clock: int | None) -> int:
    """A snapshot's instant in microseconds: ``as_of``, or the state's clock for None."""
    if as_of is None:
        return clock if clock is not None else 0
    if isinstance(as_of, int):
        return as_of
    return to_us(as_of)


def head_as_of(state: CustomerState, as_of_us: int, policy: ShopPolicy) -> Agg:
    """The fold of the customer's events with ``occurred_at <= as_of``, time advanced to it."""
    if state.ckpt.t_us is not None and as_of_us < state.ckpt.t_us:
        raise too_early(as_of_us, state.ckpt.t_us)
    cached = cached_head(state, policy)
    if cached is not None and state.clock is not None and as_of_us >= state.clock:
        head = cached.copy()
        advance_time(head, as_of_us, _Ctx(state.shop_id, state.customer_id, policy), [])
        return head
    head, _, _, _ = fold_open(state, policy, as_of_us)
    return head


def clv_inputs(head: Agg, day: int) -> tuple[int, int, int, int] | None:
    """(x, t_x_days, T_days, repeat_spend) for BG/NBD + Gamma-Gamma; None without purchases."""
    if head.purchase_count == 0:
        return None
    first = day_of(head.first_purchase_us)  # type: ignore[arg-type]
    last = day_of(head.last_purchase_us)  # type: ignore[arg-type]
    return head.purchase_days - 1, last - first, day - first, head.spend_total - head.first_day_net


def snapshot(state: CustomerState, as_of: datetime | int | None, policy: ShopPolicy,
             clv_model: Any = None, rfm_model: RfmModel | None = None) -> dict[str, Any]:
    """Snapshot of ``state`` as of ``as_of`` (default: the state's clock).

    ``clv_model`` and ``rfm_model`` are the shop's fitted models (the refit's);
    without one its fields are null.
    """
    as_of_us = as_of_instant(as_of, state.clock)
    cached = cached_head(state, policy)
    if cached is not None and as_of_us == state.clock and cached.t_us == as_of_us:
        head = cached  # the live head is exactly as of the clock; read only below
    else:
        head = head_as_of(state, as_of_us, policy)
    return snapshot_of_head(state.shop_id, state.customer_id, head, as_of_us, policy, clv_model,
                            rfm_model)


def snapshot_of_head(shop_id: str, customer_id: str, h: Agg, as_of_us: int, policy: ShopPolicy,
                     clv_model: Any = None, rfm_model: RfmModel | None = None) -> dict[str, Any]:
    day = day_of(as_of_us)
    purchased = h.purchase_count > 0
    stage = stage_on(h, day, policy) if h.first_seen_us is not None else None
    tenure = day - day_of(h.first_seen_us) if h.first_seen_us is not None else None
    mip = mean_interpurchase_days(h)
    pd90 = purchase_days_in_window(h, day, 90)
    # The 365-day window is read once for the spend, the tier and the LTV
    # formula: for a customer buying daily it is a year of purchase dates.
    spend_365d, orders_365d = window_totals(h, day, 365)
    tier, _mult, pct = tier_on(h, day, policy, spend_365d)
    det_status = detractor_status(h, policy)
    out: dict[str, Any] = {
        "shop_id": shop_id,
        "customer_id": customer_id,
        "as_of": rfc3339(as_of_us),
        "first_seen_at": rfc3339(h.first_seen_us),
        "purchase_count": h.purchase_count,
        "purchase_days": h.purchase_days,
        "first_purchase_at": rfc3339(h.first_purchase_us),
        "last_purchase_at": rfc3339(h.last_purchase_us),
        "spend_total": h.spend_total,
        "refund_total": h.refund_total,
        "margin_total": h.margin_total,
        "spend_30d": spend_in_window(h, day, 30),
        "spend_90d": spend_in_window(h, day, 90),
        "spend_365d": spend_365d,
        "purchase_days_30d": purchase_days_in_window(h, day, 30),
        "purchase_days_90d": pd90,
        "purchase_days_180d": purchase_days_in_window(h, day, 180),
        "purchase_days_365d": purchase_days_in_window(h, day, 365),
        "visit_days": h.visit_days,
        "recency_days": day - day_of(h.last_purchase_us) if purchased else None,  # type: ignore[arg-type]
        "tenure_days": tenure,
        "frequency_per_month": round(pd90 / 3, 4),
        "mean_interpurchase_days": None if mip is None else round(mip, 4),
        "ltv_historical": h.margin_total,
        "ltv_formula": ltv_formula(h, day, tenure or 0, policy.margin_fraction, policy.ltv_months,
                                   orders_365d),
        "nps_last": h.nps_last,
        "share_of_wallet_last": h.sow_last,
        "stage": stage,
        "loyalty_type": loyalty_type(stage, h.nps_last, policy) if stage else "unknown",
        "wallet_band": wallet_band(h.sow_last, policy),
        "detractor_status": det_status,
        "detractor_since": rfc3339(h.det_since) if det_status == DETRACTOR_STATUS else None,
        "tier": tier,
        "discount_pct": pct,
        "points_balance": h.points_balance,
        "points_earned_total": h.earned,
        "points_redeemed_total": h.redeemed,
        "points_expired_total": h.expired,
        "points_clawed_back_total": h.clawed,
        "clawback_shortfall": h.shortfall,
        "redemptions_rejected": h.redemptions_rejected,
        "stamps": h.stamps,
        "free_items_issued": h.free_items,
        "orphan_refunds": h.orphan_refunds,
        "duplicate_orders": h.duplicate_orders,
        "refunds_capped": h.refunds_capped,
    }
    for name in CLV_FIELDS:
        out[name] = None
    return with_models(out, clv_inputs(h, day), rfm.values(h, day), policy, clv_model, rfm_model)


#: The fields a fitted model fills, in the snapshot's order: they close it.
MODEL_FIELDS = (*CLV_FIELDS, *rfm.RFM_FIELDS)


def model_fields(spend_total: int, margin_total: int, inputs: tuple[int, int, int, int] | None,
                 values: rfm.Values | None, policy: ShopPolicy, clv_model: Any,
                 rfm_model: RfmModel | None) -> dict[str, Any]:
    """The :data:`MODEL_FIELDS` of a snapshot, in order: the customer's CLV ``inputs``
    and RFM ``values`` scored by the shop's models, null without a model or purchases
    (every engine's)."""
    out: dict[str, Any] = dict.fromkeys(CLV_FIELDS)
    if clv_model is not None and inputs is not None:
        from scoring import clv  # scipy: imported only when a model exists

        margin = Fraction(margin_total, spend_total) if spend_total else policy.margin_fraction
        out.update(clv.score(clv_model, *inputs, margin))
        out["clv_model"] = clv_model.kind
    out.update(rfm.scores(rfm_model, values))
    return out


def with_models(out: dict[str, Any], inputs: tuple[int, int, int, int] | None, values: rfm.Values | None,
                policy: ShopPolicy, clv_model: Any, rfm_model: RfmModel | None) -> dict[str, Any]:
    """Fill the model fields of a snapshot whose others are set (CLV fields null):
    :func:`model_fields`."""
    out.update(model_fields(out["spend_total"], out["margin_total"], inputs, values, policy,
                            clv_model, rfm_model))
    return out


#: The model fields' JSON without a model: every one null (the usual case per event).
_NO_MODELS = dumps(dict.fromkeys(MODEL_FIELDS))


def close_snapshot(head_fields: bytes, spend_total: int, margin_total: int,
                   inputs: tuple[int, int, int, int] | None, values: rfm.Values | None,
                   policy: ShopPolicy, clv_model: Any, rfm_model: RfmModel | None) -> bytes:
    """The snapshot's JSON from ``head_fields`` (``{`` and every field before
    :data:`MODEL_FIELDS`, encoded, no closing brace) and its model fields: the bytes
    ``dumps`` gives for the whole snapshot (every engine's)."""
    if clv_model is None and (rfm_model is None or values is None):
        tail = _NO_MODELS
    else:
        tail = dumps(model_fields(spend_total, margin_total, inputs, values, policy, clv_model,
                                  rfm_model))
    return b"".join((head_fields, b",", memoryview(tail)[1:]))
