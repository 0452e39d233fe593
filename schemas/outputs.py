"""Output contracts: what downstream services read from our topics and the HTTP API.

The core builds these records as plain dicts on the hot path (validation per
record would cost more than the fold); these models are the documented
contract, used by tests to check every emitted record, and exported as JSON
Schema next to the input events (:mod:`schemas.export`). :data:`TOPIC_CONTRACTS`
names the schema every value of each output topic follows; the HTTP API's
description (:mod:`streams.openapi`) embeds the exported files for its bodies.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, create_model

from schemas.events import REASONS

LoyaltyType = Literal["true", "latent", "spurious", "none", "unknown"]
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
    loyalty_type: LoyaltyType = Field(
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


Encoding = Literal["utf-8", "base64", "none"]
#: every reason a record is dead-lettered for (the worker emits no other)
DEAD_LETTER_REASONS = (*REASONS, "empty", "partition_mismatch", "conflicting_duplicate",
                       "too_late", "wrong_topic", "unreadable_state", "internal_error")


class DeadLetter(_Out):
    """``loyalty.dead-letter``: a record we could not apply, with the reason and its origin.

    Key and value are carried the same way: the original bytes as text when
    they are valid UTF-8 (``*_encoding`` ``"utf-8"``), else base64 (``"base64"``);
    ``null`` with ``"none"`` when the record had no key or value.
    """

    reason: Literal[DEAD_LETTER_REASONS] = Field(  # type: ignore[valid-type]
        description="why: an invalid event (the event contract's codes), `empty` (no value), "
                    "`partition_mismatch` (a re-keyed record still on the wrong partition), "
                    "`wrong_topic` (a forget request not from the forget topic), a fold "
                    "rejection (`conflicting_duplicate`, `too_late`, `out_of_range`), "
                    "`unreadable_state` (the customer's stored state is damaged: the record "
                    "is fine, the row needs repair) or `internal_error`")
    detail: str = Field(max_length=4000)
    topic: str = Field(description="where the record first entered (before any rekey hop)")
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    timestamp: int | None = Field(description="the Kafka record timestamp there, milliseconds "
                                  "since the epoch (Kafka's own unit); null when unknown")
    via_topic: str | None = Field(description="the topic it was rejected from, when that is not "
                                  "`topic` (after the rekey hop); else null")
    key: str | None
    key_encoding: Encoding
    value: str | None
    value_encoding: Encoding
    dead_lettered_at: str = Field(description="RFC 3339 UTC, the worker's clock")


class TransitionsValue(RootModel[StageTransition | DetractorAlert | VoidRecord]):
    """Every value on ``loyalty.stage-transitions``: a transition, an alert, or a void."""


class RewardsValue(RootModel[LedgerEntry | VoidRecord]):
    """Every value on ``loyalty.rewards``: a ledger entry, or a void."""


#: Settings field of each output topic -> the model every value on it follows
#: (``topic_clv_params`` is internal: written and read by the workers only).
TOPIC_CONTRACTS: dict[str, type[BaseModel]] = {
    "topic_transitions": TransitionsValue,
    "topic_rewards": RewardsValue,
    "topic_scores": CustomerSnapshot,
    "topic_dead_letter": DeadLetter,
}


# --- HTTP bodies (``GET /shops/{shop}`` and ``GET /shops/{shop}/customers``) ---


class Nps(_Out):
    """An NPS figure over a set of feedback answers."""

    score: float | None = Field(description="100 x (promoters - detractors) / responses, "
                                "1 decimal; null without responses")
    band: Literal["poor", "average", "good", "strong", "leader"] | None
    responses: int = Field(ge=0)
    promoters: int = Field(ge=0)
    passives: int = Field(ge=0)
    detractors: int = Field(ge=0)


class TouchpointNps(Nps):
    touchpoint: str | None = Field(description="null: the answers without a touchpoint")


class ClvDescription(_Out):
    """Which CLV model scores the shop (``scoring.clv.describe``)."""

    model: Literal["shop", "pooled"] | None
    pool: str | None
    reason: str | None = Field(description="why the shop's own fit is not served; null when it is")
    parameters: dict[str, Any] | None
    diagnostics: dict[str, Any] | None
    customers: int | None
    shop_fit: dict[str, Any] | None


def _counts(*keys: str) -> Any:
    """An object with exactly ``keys``, each a count."""
    return Field(json_schema_extra={"required": list(keys),
                                    "propertyNames": {"enum": list(keys)}})


class ShopFigures(_Out):
    """One shop's figures (``GET /shops/{shop}``, ``loyalty replay --shops-out``).

    Besides these, the NPS of the shop's window is under ``nps_<days>d``
    (``nps_90d`` with the default policy), shaped like ``nps``.
    """

    model_config = ConfigDict(extra="allow", json_schema_extra={
        "patternProperties": {"^nps_[0-9]+d$": Nps.model_json_schema()},
        "additionalProperties": False})

    shop_id: str
    nps: Nps
    funnel: dict[str, int] = _counts("first_visit", "first_purchase", "repeat", "attached",
                                     "loyal", "at_risk", "lapsed")
    customers: int = Field(ge=0)
    buyers: int = Field(ge=0)
    repeat_rate: float | None
    loyal_share_of_buyers: float | None
    attached_spend_uplift: float | None
    average_check: int | None
    loyalty_types: dict[str, int] = _counts("true", "latent", "spurious", "none", "unknown")
    wallet_bands: dict[str, int] = _counts("committed", "moderate", "vulnerable", "null")
    detractor_statuses: dict[str, int] = _counts("detractor", "recovered", "none", "null")
    detractors_recovered_rate: float | None
    nps_by_touchpoint: list[TouchpointNps]
    clv: ClvDescription | None = Field(None, description="served by the API; not in replay's file")


#: Snapshot fields of one item of ``GET /shops/{shop}/customers`` (what a campaign needs).
LIST_FIELDS = ("customer_id", "as_of", "stage", "loyalty_type", "wallet_band", "detractor_status",
               "detractor_since", "nps_last", "share_of_wallet_last", "recency_days",
               "last_purchase_at", "purchase_count", "spend_total", "spend_365d",
               "ltv_historical", "ltv_formula", "p_alive", "clv_365d", "tier", "points_balance")

CustomerListItem = create_model(
    "CustomerListItem", __base__=_Out,
    __doc__="One customer of a listing: these snapshot fields, as of `as_of` "
            "(its last event or time sweep).",
    **{name: (CustomerSnapshot.model_fields[name].annotation, CustomerSnapshot.model_fields[name])
       for name in LIST_FIELDS})


class CustomerPage(_Out):
    """One page of ``GET /shops/{shop}/customers``, ordered by ``customer_id``."""

    items: list[CustomerListItem]  # type: ignore[valid-type]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last")
