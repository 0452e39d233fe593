"""Output contracts: what downstream services read from our topics.

The core builds these records as plain dicts on the hot path (validation per
record would cost more than the fold); these models are the documented
contract, used by tests to check every emitted record, and exported as JSON
Schema next to the input events.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import REASONS

Stage = Literal["first_visit", "first_purchase", "repeat", "attached", "loyal", "at_risk", "lapsed"]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CustomerSnapshot(_Out):
    """One customer as of ``as_of`` (the ``loyalty.scores`` value, the API body, a replay line)."""

    shop_id: str
    customer_id: str
    as_of: str
    first_seen_at: str | None
    purchase_count: int
    purchase_days: int
    first_purchase_at: str | None
    last_purchase_at: str | None
    spend_total: int
    refund_total: int
    margin_total: int
    spend_30d: int
    spend_90d: int
    spend_365d: int
    purchase_days_30d: int
    purchase_days_90d: int
    purchase_days_180d: int
    purchase_days_365d: int
    visit_days: int
    recency_days: int | None
    tenure_days: int | None
    frequency_per_month: float
    mean_interpurchase_days: float | None
    ltv_historical: int
    ltv_formula: int
    nps_last: int | None
    share_of_wallet_last: int | None
    stage: Stage | None
    loyalty_type: Literal["true", "latent", "spurious", "none", "unknown"] = Field(
        description="attitude (nps_last >= 9) x behaviour (stage repeat, attached or loyal); unknown without feedback")
    wallet_band: Literal["committed", "moderate", "vulnerable"] | None = Field(
        description="share_of_wallet_last >= 70 committed, 50-69 moderate, < 50 vulnerable; null without one")
    detractor_status: Literal["detractor", "recovered", "none"] | None = Field(
        description="nps_last <= 6 detractor; >= 7 after an earlier answer <= 6 recovered; else none; null without feedback")
    detractor_since: str | None = Field(
        description="while a detractor: occurred_at of the first answer of the current run of answers <= 6")
    tier: str
    discount_pct: int
    points_balance: int = Field(ge=0)
    points_earned_total: int
    points_redeemed_total: int
    points_expired_total: int
    points_clawed_back_total: int
    clawback_shortfall: int
    redemptions_rejected: int
    stamps: int
    free_items_issued: int
    orphan_refunds: int = Field(description="refunds whose order has no earlier purchase")
    duplicate_orders: int = Field(description="purchases ignored because their order_id was taken")
    refunds_capped: int = Field(description="refunds larger than what was left of their order")
    p_alive: float | None
    expected_purchases_90d: float | None
    expected_avg_value: int | None
    clv_365d: int | None
    clv_model: Literal["shop", "pooled"] | None = Field(
        description="the CLV fields come from the shop's own model, its pool's, or none (null)")
    rfm_recency: int | None = Field(ge=1, le=5, description=(
        "1-5 by quintiles of the shop's buyers' days since the last purchase (5: most recent); "
        "null without purchases or until the shop's RFM fit (docs/domain.md RFM)"))
    rfm_frequency: int | None = Field(ge=1, le=5, description=(
        "1-5 by quintiles of the shop's buyers' purchase_days (5: most frequent); null as rfm_recency"))
    rfm_monetary: int | None = Field(ge=1, le=5, description=(
        "1-5 by quintiles of the shop's buyers' spend_total (5: highest); null as rfm_recency"))
    rfm_segment: Literal["champions", "loyal", "potential_loyalists", "new_customers",
                         "promising", "need_attention", "about_to_sleep", "cannot_lose_them",
                         "at_risk", "hibernating"] | None = Field(
        description="named from rfm_recency and rfm_frequency (docs/domain.md RFM); null as rfm_recency")


class _Effect(_Out):
    id: str = Field(pattern=r"^[0-9a-f]{16}$", description="deterministic: dedupe and upsert by it")
    shop_id: str
    customer_id: str
    restated: bool | None = Field(None, description="a late event changed this already-published record")


class StageTransition(_Effect):
    """``loyalty.stage-transitions``: a stage change, caused by an event or by time."""

    kind: Literal["transition"]
    from_: Stage | None = Field(alias="from")
    to: Stage
    at: str
    cause: dict[str, Any] = Field(description='{"type": "event", "event_id": ...} or {"type": "time"}')


class LedgerEntry(_Effect):
    """``loyalty.rewards``: one reward-ledger entry."""

    kind: Literal["ledger"]
    entry: Literal["earn", "expire", "redeem", "redemption_rejected", "clawback", "free_item"]
    points: int = Field(ge=0)
    at: str
    balance_after: int = Field(ge=0)
    event_id: str | None = None
    order_id: str | None = None
    tier: str | None = None
    shortfall: int | None = None
    free_items_issued: int | None = None


class DetractorAlert(_Effect):
    """``loyalty.stage-transitions``, ``kind: "alert"``: a feedback made the customer's
    ``detractor_status`` become ``detractor`` or ``recovered`` (rule v2)."""

    kind: Literal["alert"]
    alert: Literal["detractor", "recovered"]
    at: str = Field(description="the feedback's occurred_at")
    event_id: str = Field(description="the feedback event")
    nps: int = Field(ge=0, le=10)
    comment: str | None
    touchpoint: str | None
    detractor_since: str | None = Field(description="for `detractor`: start of the current run of detractor answers")


class VoidRecord(_Effect):
    """A previously published record that no longer holds (a late event changed history)."""

    kind: Literal["ledger", "transition", "alert"]
    void: Literal[True]


class DeadLetter(_Out):
    """``loyalty.dead-letter``: a record we could not apply, with the reason and its origin."""

    reason: str = Field(description="one of " + ", ".join(REASONS)
                        + ", conflicting_duplicate, too_late, wrong_partition, internal_error")
    detail: str
    topic: str
    partition: int
    offset: int
    timestamp: int | None = Field(None, description="Kafka record timestamp, ms")
    key: str | None = None
    value: str | None = Field(None, description="original bytes as UTF-8 text, when they are valid UTF-8")
    value_b64: str | None = Field(None, description="original bytes, base64, when they are not")
