"""Shop policy: every rule number of DOMAIN.md, overridable per shop.

The defaults below are exactly the defaults of ``DOMAIN.md``. A policy file
(JSON) overrides them for all shops and/or per shop::

    {"defaults": {"margin_rate": "0.4"},
     "shops": {"cafe-42": {"currency": "EUR", "stamps_per_free_item": 9}}}

Rates are exact decimals: write them as JSON strings (``"0.35"``) or numbers;
a number is read by its shortest decimal representation, so ``0.35`` means
exactly 35/100. Unknown keys are an error (a typo must not silently fall back
to a default).
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from schemas.codec import CodecError, loads


def _exact_decimal(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a rate must be a number or a decimal string, not a boolean")
    if isinstance(value, float):
        # repr() is the shortest string that round-trips: the rate "as written".
        return Decimal(repr(value))
    return value


Rate = Annotated[Decimal, BeforeValidator(_exact_decimal)]


class Tier(BaseModel):
    """A discount-programme tier, reached when ``spend_365d >= min_spend_365d``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=32)
    min_spend_365d: int = Field(ge=0, description="minor units")
    points_multiplier: Rate = Field(ge=0, le=100)
    discount_pct: int = Field(ge=0, le=100)


DEFAULT_TIERS = (
    Tier(name="bronze", min_spend_365d=0, points_multiplier=Decimal("1.0"), discount_pct=0),
    Tier(name="silver", min_spend_365d=50_000, points_multiplier=Decimal("1.25"), discount_pct=5),
    Tier(name="gold", min_spend_365d=200_000, points_multiplier=Decimal("1.5"), discount_pct=10),
)


class ShopPolicy(BaseModel):
    """One shop's rules. Field defaults are DOMAIN.md's default policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # contract
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$", description="ISO 4217; purchases in another currency are invalid")
    margin_rate: Rate = Field(Decimal("1"), ge=0, le=1, description="margin when a purchase carries no margin_rate (P=100% as in DOMAIN.md's worked LTV example)")
    allowed_lateness_days: int = Field(7, ge=0, le=60, description="event-time lateness accepted behind the newest event of the customer")
    max_future_seconds: int = Field(86_400, ge=0, description="how far ahead of the wall clock occurred_at may be")
    # LTV
    ltv_months: int = Field(36, gt=0, le=1200, description="t of the LTV formula")
    # stages
    at_risk_min_days: int = 60
    at_risk_interval_factor: int = 2
    lapsed_days: int = 365
    attached_window_days: int = 180
    attached_min_purchase_days: int = 4
    loyal_min_purchase_days: int = 6
    loyal_min_tenure_days: int = 180
    loyal_excluded_max_nps: int = Field(6, description="nps_last at or below this blocks `loyal`")
    # NPS / attitude
    promoter_min_nps: int = 9
    detractor_max_nps: int = 6
    attitude_high_min_nps: int = 9
    shop_nps_window_days: int = 90
    # NPS bands (rule v2): poor <= poor_max < average <= average_max < good <= good_max < strong < leader_min <= leader
    nps_band_poor_max: int = Field(0, ge=-100, le=100, description="shop NPS at or below this is `poor`")
    nps_band_average_max: int = Field(30, ge=-100, le=100, description="shop NPS at or below this (above poor) is `average`")
    nps_band_good_max: int = Field(50, ge=-100, le=100, description="shop NPS at or below this (above average) is `good`")
    nps_band_leader_min: int = Field(70, ge=-100, le=100, description="shop NPS at or above this is `leader`; between good and this, `strong`")
    # attitude follow-up (rule v2)
    wallet_committed_min_pct: int = Field(70, ge=0, le=100, description="share_of_wallet_last at or above this: wallet_band `committed`")
    wallet_moderate_min_pct: int = Field(50, ge=0, le=100, description="at or above this (below committed): `moderate`; below: `vulnerable`")
    detractor_status_max_nps: int = Field(6, ge=0, le=10, description="nps_last at or below this: detractor_status `detractor`")
    recovered_min_nps: int = Field(7, ge=0, le=10, description="nps_last at or above this after an earlier detractor answer: `recovered`")
    # rewards
    bonus_enabled: bool = True
    discount_enabled: bool = True
    stamps_enabled: bool = True
    tiers: tuple[Tier, ...] = DEFAULT_TIERS
    points_per_unit: Rate = Field(Decimal("1"), ge=0, le=1000, description="points per major currency unit")
    points_expiry_days: int = Field(365, gt=0)
    stamps_per_free_item: int = Field(5, gt=0)
    # predictive CLV (see scoring/clv.py and README "Predictive CLV")
    clv_pool: str = Field("all", min_length=1, max_length=64, pattern=r"^[^|]+$", description="pool whose shared CLV model scores this shop when it has no sound model of its own (pools never mix currencies)")
    clv_spend_floor: Rate = Field(Decimal("0.01"), ge=0, lt=1, description="repeat buyers whose mean repeat spend is below this fraction of the shop's median are left out of the Gamma-Gamma fit (0 keeps all)")
    # state bounds (see scoring/state.py)
    order_retention_days: int = Field(730, ge=400, description="orders are kept this long for refunds; older refunds are orphans")
    dedup_retention_days: int = Field(90, ge=8, description="an event_id is recognised as a duplicate at least this long (event time) behind the newest event; the ids of the customer's latest accepted events are kept however old (README, Duplicates beyond retention)")
    max_seen_ids: int = Field(4096, ge=64, description="cap on remembered event ids per customer")
    max_buffer_events: int = Field(512, ge=8, description="cap on events held open for reordering per customer")

    @field_validator("tiers")
    @classmethod
    def _tiers_sorted(cls, tiers: tuple[Tier, ...]) -> tuple[Tier, ...]:
        if not tiers or tiers[0].min_spend_365d != 0:
            raise ValueError("the first tier must start at min_spend_365d = 0")
        if any(a.min_spend_365d >= b.min_spend_365d for a, b in zip(tiers, tiers[1:], strict=False)):
            raise ValueError("tiers must be in strictly increasing min_spend_365d order")
        return tiers

    @model_validator(mode="after")
    def _dedup_longer_than_lateness(self) -> ShopPolicy:
        if self.dedup_retention_days <= self.allowed_lateness_days:
            raise ValueError("dedup_retention_days must exceed allowed_lateness_days")
        return self

    @model_validator(mode="after")
    def _v2_thresholds_ordered(self) -> ShopPolicy:
        if not (self.nps_band_poor_max < self.nps_band_average_max < self.nps_band_good_max
                < self.nps_band_leader_min):
            raise ValueError("NPS band edges must increase: nps_band_poor_max < nps_band_average_max"
                             " < nps_band_good_max < nps_band_leader_min")
        if self.wallet_moderate_min_pct >= self.wallet_committed_min_pct:
            raise ValueError("wallet_moderate_min_pct must be below wallet_committed_min_pct")
        if self.recovered_min_nps <= self.detractor_status_max_nps:
            raise ValueError("recovered_min_nps must exceed detractor_status_max_nps")
        return self

    # Exact rationals, computed once per policy object (the fold runs per event).
    @cached_property
    def margin_fraction(self) -> Fraction:
        return Fraction(self.margin_rate)

    @cached_property
    def points_per_unit_fraction(self) -> Fraction:
        return Fraction(self.points_per_unit)

    @cached_property
    def tier_table(self) -> tuple[tuple[int, str, Fraction, int], ...]:
        """(min_spend, name, multiplier, discount_pct), highest threshold first."""
        return tuple(
            (t.min_spend_365d, t.name, Fraction(t.points_multiplier), t.discount_pct)
            for t in reversed(self.tiers)
        )


class PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defaults: dict[str, Any] = Field(default_factory=dict)
    shops: dict[str, dict[str, Any]] = Field(default_factory=dict)


class PolicyError(ValueError):
    """A policy file is unreadable or sets an invalid value; the message names the file and key."""


class PolicyBook:
    """Resolves the policy of each shop: defaults, then file defaults, then the shop's overrides.

    Lookups are cached: ``for_shop`` returns the same (frozen) object every time,
    so per-policy cached rationals are computed once.
    """

    def __init__(self, defaults: dict[str, Any] | None = None, shops: dict[str, dict[str, Any]] | None = None,
                 source: str = "<defaults>") -> None:
        self._defaults = dict(defaults or {})
        self._shops = {k: dict(v) for k, v in (shops or {}).items()}
        self._source = source
        self._cache: dict[str, ShopPolicy] = {}
        try:
            self.default = ShopPolicy(**self._defaults)
            for shop in self._shops:
                self.for_shop(shop)
        except ValueError as exc:
            raise PolicyError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: Path | str | None) -> PolicyBook:
        """Read a policy file; ``None`` gives the DOMAIN.md defaults for every shop."""
        if path is None:
            return cls()
        p = Path(path)
        try:
            raw = loads(p.read_bytes())
            parsed = PolicyFile.model_validate(raw)
        except OSError as exc:
            raise PolicyError(f"cannot read policy file {p}: {exc.strerror}") from None
        except (CodecError, ValueError) as exc:
            raise PolicyError(f"invalid policy file {p}: {exc}") from None
        return cls(parsed.defaults, parsed.shops, source=str(p))

    def for_shop(self, shop_id: str) -> ShopPolicy:
        policy = self._cache.get(shop_id)
        if policy is None:
            overrides = self._shops.get(shop_id)
            policy = ShopPolicy(**{**self._defaults, **overrides}) if overrides else self.default
            self._cache[shop_id] = policy
        return policy
