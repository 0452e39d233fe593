"""The native engine: the fold in Rust (``native/``, module ``loyalty_native``)
behind :class:`scoring.engine.Engine`.

What runs in Rust: the state format (decode, encode), :meth:`apply`,
:meth:`advance`, :meth:`rederive`, the snapshot's fields (encoded too, for the
score record), the head a summary, a count or an erasure reads, and the fast
path of the event contract (:meth:`parse`: the events shops send, with their
record and content digest). What stays in Python, shared with the reference
engine: the rest of the event contract (every rejection and its reason,
forget requests, the forms the fast path leaves to it), rejection messages,
the CLV and RFM fields of a snapshot, shop tallies. Every answer equals the
reference engine's, byte for byte: the
conformance suite (``tests/core/test_engine.py``) runs against both, and
``tests/core/test_native.py`` over whole streams.

:data:`NATIVE` is None when the extension is not built (``make native``; it
needs a Rust toolchain): the Python engine then serves alone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from schemas.codec import dumps, loads
from schemas.events import Event, parse_event
from schemas.policy import PolicyBook, ShopPolicy
from scoring import rfm
from scoring.aggregate import Agg
from scoring.clock import to_us
from scoring.engine import (
    PYTHON,
    WRITABLE_VERSIONS,
    BuyerSummary,
    EncodedEffects,
    Engine,
    summary_of_head,
)
from scoring.fold import Erasure, Outcome, erasure, rejection_detail
from scoring.records import content_digest, id_hash, to_record
from scoring.shop import ShopTally
from scoring.snapshot import as_of_instant, close_snapshot, snapshot_of_head, too_early, with_models
from scoring.state import FORMAT_VERSION, NewerStateFormat, StateCache, StateFormatError

try:
    import loyalty_native as _n
except ImportError:  # not built: see the module docstring
    _n = None
#: the class of the fast path's events (:meth:`NativeEngine.parse`)
_FAST: Any = _n.Event if _n is not None else None

#: Policies converted at once, at most; past it the conversions start over
#: (a worker has one policy per shop, and they live as long as it does).
_POLICY_MEMO = 4096


class NativeEngine:
    """:class:`scoring.engine.Engine` over ``loyalty_native``. A state is a
    ``loyalty_native.State``; it carries its head for the policy object that
    folded it, as the reference engine's state does."""

    name = "native"

    def __init__(self) -> None:
        # id(policy) -> (policy, its native settings); the policy is held so that
        # its id is not reused while the entry lives.
        self._policies: dict[int, tuple[ShopPolicy, Any]] = {}
        #: the last clock reading :meth:`parse` converted, and its microseconds
        self._now: tuple[datetime | None, int] = (None, 0)

    @staticmethod
    def read(raw: bytes | None) -> Any:
        """The fast path (``native/src/event.rs``): it accepts only what the Python
        parser accepts, with the same record and digest; None for the rest."""
        return _n.parse_event(raw) if raw else None

    def parse(self, raw: bytes, *, now: datetime, policies: PolicyBook, read: Any = None) -> Any:
        """:meth:`read` (or ``read``, its answer already at hand), then the two rules
        that need the shop's policy; anything else is
        :func:`schemas.events.parse_event`'s to judge and word."""
        event = read if read is not None else _n.parse_event(raw)
        if event is not None:
            if self._now[0] is not now:
                self._now = (now, to_us(now))
            policy = policies.for_shop(event.shop_id)
            currency = event.currency
            if (event.ts_us <= self._now[1] + policy.max_future_seconds * 1_000_000
                    and (currency is None or currency == policy.currency)):
                return event
        return parse_event(raw, now=now, policies=policies)

    def _policy(self, policy: ShopPolicy) -> Any:
        hit = self._policies.get(id(policy))
        if hit is not None and hit[0] is policy:
            return hit[1]
        if len(self._policies) >= _POLICY_MEMO:
            self._policies.clear()
        margin, ppu = policy.margin_fraction, policy.points_per_unit_fraction
        settings = {name: getattr(policy, name) for name in _SETTINGS}
        settings.update(margin_num=margin.numerator, margin_den=margin.denominator,
                        ppu_num=ppu.numerator, ppu_den=ppu.denominator,
                        tiers=[(threshold, name, mult.numerator, mult.denominator, pct)
                               for threshold, name, mult, pct in policy.tier_table])
        try:
            native = _n.Policy(settings)
        except OverflowError:
            raise ValueError("a policy rate does not fit 64-bit integers: the native engine "
                             "cannot serve it (LOYALTY_ENGINE=python can)") from None
        self._policies[id(policy)] = (policy, native)
        return native

    def decode(self, raw: bytes) -> Any:
        try:
            return _n.decode(raw if isinstance(raw, bytes) else bytes(raw))
        except _n.NewerFormat as exc:
            raise NewerStateFormat(str(exc)) from None
        except _n.FormatError as exc:
            raise StateFormatError(str(exc)) from None
        except TypeError as exc:
            raise StateFormatError(f"unreadable customer state: {exc}") from None

    def encode(self, state: Any, version: int = FORMAT_VERSION) -> bytes:
        if version not in WRITABLE_VERSIONS:
            raise ValueError(f"state format {version!r}; this build writes {WRITABLE_VERSIONS}")
        return state.encode(version)

    def apply(self, state: Any, event: Event, policy: ShopPolicy) -> Outcome:
        if type(event) is _FAST:  # from parse(): folded as it is, nothing converted
            return _outcome(_n.apply_event(state, event, self._policy(policy)), state, event, policy)
        if event.type == "forget":
            raise ValueError("a forget request is not folded: use the engine's forget")
        if state is not None and (state.shop_id, state.customer_id) != (event.shop_id, event.customer_id):
            raise ValueError(f"event for {event.shop_id}|{event.customer_id} applied to {state.key}")
        ts, event_id, kind, a, b, c = to_record(event)
        out = _n.apply(state, event.shop_id, event.customer_id, ts, event_id, kind, a, b, c,
                       content_digest(event), id_hash(event.event_id), self._policy(policy))
        return _outcome(out, state, event, policy)

    def advance(self, state: Any, now_us: int, policy: ShopPolicy, *, stale: bool = False) -> Outcome:
        return _outcome(_n.advance(state, now_us, self._policy(policy), stale), state, None, policy)

    def rederive(self, state: Any, policy: ShopPolicy) -> tuple[Any, bool]:
        head, stale = _n.rederive(state, self._policy(policy))
        return (None if head is None else Agg.from_list(loads(head))), stale

    def forget(self, state: Any, policy: ShopPolicy) -> Erasure:
        return erasure(state.shop_id, state.customer_id, state.stage, self._head_now(state, policy), policy)

    def at_position(self, state: Any, source: str, offset: int) -> Any:
        state.set_position(source, offset)
        return state

    def snapshot(self, state: Any, as_of: datetime | int | None, policy: ShopPolicy,
                 clv_model: Any = None, rfm_model: rfm.RfmModel | None = None) -> dict[str, Any]:
        as_of_us = as_of_instant(as_of, state.clock)
        try:
            got = state.snapshot(self._policy(policy), as_of_us)
        except _n.TooEarly as exc:
            raise too_early(as_of_us, exc.args[0]) from None
        if got is None:  # the LTV formula needs more than 128 bits: Python's integers
            return snapshot_of_head(state.shop_id, state.customer_id, self._head(state, as_of_us, policy),
                                    as_of_us, policy, clv_model, rfm_model)
        out, inputs, values = got
        return with_models(out, inputs, values, policy, clv_model, rfm_model)

    def snapshot_json(self, state: Any, as_of: datetime | int | None, policy: ShopPolicy,
                      clv_model: Any = None, rfm_model: rfm.RfmModel | None = None) -> bytes:
        # The fields before the model fields come encoded from Rust: no dict of
        # fifty-odd items is built and encoded again per score record.
        as_of_us = as_of_instant(as_of, state.clock)
        try:
            got = state.snapshot_json(self._policy(policy), as_of_us)
        except _n.TooEarly as exc:
            raise too_early(as_of_us, exc.args[0]) from None
        if got is None:  # beyond 128-bit integers: snapshot's fallback
            return dumps(self.snapshot(state, as_of_us, policy, clv_model, rfm_model))
        head, inputs, values, spend, margin = got
        return close_snapshot(head, spend, margin, inputs, values, policy, clv_model, rfm_model)

    def finalized_until(self, state: Any) -> int | None:
        return state.finalized_until

    def buyer_summary(self, state: Any, as_of_us: int, policy: ShopPolicy) -> BuyerSummary | None:
        return summary_of_head(self._head(state, as_of_us, policy), as_of_us)

    def count_customer(self, tally: ShopTally, state: Any, policy: ShopPolicy, head: Any = None) -> None:
        if head is None:
            head = self._head(state, state.clock if state.clock is not None else 0, policy)
        tally.add_customer(head, state.stage, policy)

    def state_cache(self, capacity: int, head_budget: int, budget: int | None = None) -> StateCache:
        # A native state keeps its head inside it; the cache's head tier holds
        # the reference engine's heads only, so this cache has the live tier alone.
        # Its rows are exact-size bytes made in Rust: nothing to compact.
        return StateCache(capacity, decode=self.decode, budget=budget, weigh=live_weight,
                          exact_rows=True)

    def _head(self, state: Any, as_of_us: int, policy: ShopPolicy) -> Agg:
        try:
            return Agg.from_list(loads(state.head_json(self._policy(policy), as_of_us)))
        except _n.TooEarly as exc:
            raise too_early(as_of_us, exc.args[0]) from None

    def _head_now(self, state: Any, policy: ShopPolicy) -> Agg | None:
        head = state.head_now_json(self._policy(policy))
        return None if head is None else Agg.from_list(loads(head))


#: ShopPolicy settings the native fold reads as they are (rates and tiers are added).
_SETTINGS = (
    "allowed_lateness_days", "at_risk_min_days", "at_risk_interval_factor", "lapsed_days",
    "attached_window_days", "attached_min_purchase_days", "loyal_min_purchase_days",
    "loyal_min_tenure_days", "loyal_excluded_max_nps", "promoter_min_nps", "detractor_max_nps",
    "attitude_high_min_nps", "shop_nps_window_days", "wallet_committed_min_pct",
    "wallet_moderate_min_pct", "detractor_status_max_nps", "recovered_min_nps", "bonus_enabled",
    "discount_enabled", "stamps_enabled", "points_expiry_days", "stamps_per_free_item",
    "order_retention_days", "dedup_retention_days", "max_seen_ids", "max_buffer_events", "ltv_months",
)


def live_weight(raw: bytes) -> int:
    """Estimated bytes of memory a live native state of row ``raw`` costs in a state
    cache, the row's kept copy included: :func:`scoring.state.live_weight`'s
    counterpart, fitted the same way (a native state is two to three times leaner)."""
    return 2048 + len(raw) * 8 // 5


def _outcome(out: tuple, state: Any, event: Event | None, policy: ShopPolicy) -> Outcome:
    status, changed, new, (effects, marks), reason, behind, before, after, kpi_before, kpi_after = out
    detail = None if reason is None else rejection_detail(reason, event, policy, behind)  # type: ignore[arg-type]
    return Outcome(state if new is None else new, status, changed,
                   EncodedEffects(effects, marks) if effects else [], reason, detail, before, after,
                   kpi_before, kpi_after)


#: The native engine, or None when ``loyalty_native`` is not built.
NATIVE: Engine | None = NativeEngine() if _n is not None else None


def engine_named(name: str) -> Engine:
    """The engine a worker's ``engine`` setting names: ``python``, ``native`` (ValueError
    when it is not built) or ``auto`` (native when built, else python)."""
    if name == "python" or (name == "auto" and NATIVE is None):
        return PYTHON
    if name in ("native", "auto") and NATIVE is not None:
        return NATIVE
    raise ValueError(f"engine {name!r}: this build has {'python and native' if NATIVE else 'python'}")


__all__ = ["NATIVE", "NativeEngine", "engine_named"]
