"""The fold: ``apply(state, event, policy) -> Outcome(state, effects)``.

Pure and deterministic: no I/O, no clock reads (time comes in as arguments).

How one event is applied (:func:`apply`)
---------------------------------------
1. Duplicate check on the event id: same content -> ``duplicate`` (nothing
   changes); different content -> ``rejected/conflicting_duplicate`` (the
   first one stands).
2. Lateness check: an event older than the frontier (newest event time minus
   the allowed lateness) -> ``rejected/too_late``; nothing changes.
   (After step 4, an event that would take the customer's gross purchases
   past :data:`MAX_CUSTOMER_GROSS` -> ``rejected/out_of_range``.)
3. The event is inserted into the open buffer at its canonical position
   ``(occurred_at, event_id)``.
4. The *truth* is recomputed: the finalized aggregate, then every buffered
   event in canonical order, then time advanced to the clock. This is exactly
   the fold of all the customer's accepted events in canonical order, which is
   what DOMAIN.md requires whatever the arrival order.
5. The effects of the truth are compared with what was already published for
   the open window (by id and content digest): new ones are emitted, changed
   ones are emitted again with ``restated``, vanished ones as ``void``.
6. Events that fell behind the new frontier are finalized into the aggregate;
   bookkeeping older than the frontier is dropped.

A new state object is returned; the input state is never mutated, so a caller
that fails half way (say, a crash before the changelog write) still holds the
old value and can simply apply the event again.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from schemas.events import Event
from schemas.policy import ShopPolicy
from scoring import effects as fx
from scoring.aggregate import (
    DAY_NET_DAYS,
    L_EXPIRES,
    L_ORDER,
    L_REMAINING,
    O_AMOUNT,
    O_CLAWED,
    O_DAY,
    O_MARGIN,
    O_POINTS,
    O_RATE_DEN,
    O_RATE_NUM,
    O_REFUNDED,
    Agg,
    add_order_day,
)
from scoring.clock import US_PER_DAY, day_of, day_start_us, rfc3339
from scoring.ltv import margin_of
from scoring.nps import classify
from scoring.records import (
    FEEDBACK,
    PURCHASE,
    REDEMPTION,
    REFUND,
    content_digest,
    id_hash,
    to_record,
)
from scoring.rewards import expire_due, points_for, take_for_clawback, take_oldest, tier_on
from scoring.shop import ShopTally, contribution
from scoring.stages import (
    DETRACTOR_STATUS,
    RECOVERED_STATUS,
    change_days,
    detractor_status,
    stage_on,
)
from scoring.state import CustomerState

APPLIED, DUPLICATE, REJECTED = "applied", "duplicate", "rejected"
_FAR_DAYS = 100_000
#: Cap on a customer's gross purchases (sum of accepted order amounts, minor
#: units). With amounts <= 10**12 and the policy's bounds on points per unit,
#: tier multipliers and ltv_months, every total, points count and the LTV
#: formula then stay below 2**63, so states and snapshots always encode.
MAX_CUSTOMER_GROSS = 10**15
#: Ids of a customer's last this many accepted events are remembered however
#: far behind its newest event they are (see :func:`_prune_seen`). A record
#: redelivered after a crash (processed, its offset not committed yet) is then
#: an exact duplicate even when a backlog moved the customer's history months
#: on in between, instead of a ``too_late`` rejection of an applied event.
DEDUP_RECENT_IDS = 32


@dataclass
class Outcome:
    """What :func:`apply` or :func:`advance` did.

    ``changed`` is False exactly when ``state`` is the input object unchanged
    (duplicates, rejections, a sweep with nothing due): the caller then writes
    nothing. ``effects`` are JSON-ready dicts (see :mod:`scoring.effects`); another
    engine may hand them over encoded (:class:`scoring.engine.EncodedEffects`, a
    sequence of the same dicts).
    """

    state: CustomerState
    status: str
    changed: bool
    effects: Sequence[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None
    detail: str | None = None
    stage_before: str | None = None
    stage_after: str | None = None
    #: the customer's shop-KPI contribution before and after (None: not a
    #: customer yet); set when ``changed``: the tally moves by their difference
    kpi_before: list[Any] | None = None
    kpi_after: list[Any] | None = None


class _Ctx:
    """Per-call constants, so the inner loop reads locals, not policy attributes."""

    __slots__ = ("shop", "cust", "policy", "expiry_us", "shop_margin")

    def __init__(self, shop: str, cust: str, policy: ShopPolicy) -> None:
        self.shop = shop
        self.cust = cust
        self.policy = policy
        self.expiry_us = policy.points_expiry_days * US_PER_DAY
        self.shop_margin: Fraction = policy.margin_fraction


# Effects travel through the fold as (id, at_us, kind, dict).
_Eff = tuple[int, int, str, dict]


def _set_stage(agg: Agg, stage: str, at_us: int, cause: dict, ctx: _Ctx, out: list[_Eff]) -> None:
    if stage != agg.stage:
        eid = fx.effect_id(ctx.shop, ctx.cust, "transition", agg.stage, stage, at_us)
        out.append((eid, at_us, fx.TRANSITION,
                    fx.transition(ctx.shop, ctx.cust, eid, agg.stage, stage, at_us, cause)))
        agg.stage = stage


def advance_time(agg: Agg, to_us: int, ctx: _Ctx, out: list[_Eff]) -> None:
    """Let time pass to ``to_us``: expire due lots, move the stage at midnights."""
    if agg.t_us is None or to_us <= agg.t_us:
        return
    for lot in expire_due(agg, to_us):
        if lot[L_REMAINING]:
            at = lot[L_EXPIRES]
            eid = fx.effect_id(ctx.shop, ctx.cust, "expire", lot[L_ORDER], at)
            out.append((eid, at, fx.LEDGER, fx.ledger(
                ctx.shop, ctx.cust, eid, "expire", lot[L_REMAINING], at, agg.points_balance,
                order_id=lot[L_ORDER])))
    # Stage and lots are independent, so their effects need not interleave in time.
    for day in change_days(agg, day_of(agg.t_us), day_of(to_us), ctx.policy):
        _set_stage(agg, stage_on(agg, day, ctx.policy), day_start_us(day), {"type": "time"}, ctx, out)
    agg.t_us = to_us


def apply_record(agg: Agg, rec: list, ctx: _Ctx, out: list[_Eff]) -> None:
    """Fold one accepted event into ``agg`` (mutated), appending its effects."""
    ts, event_id, kind, a, b, c = rec
    advance_time(agg, ts, ctx, out)  # lots due by the event's instant expire first
    policy = ctx.policy
    day = ts // US_PER_DAY
    if agg.first_seen_us is None:
        agg.first_seen_us = ts
    if kind == PURCHASE:
        _purchase(agg, ts, day, event_id, a, b, c, ctx, out)
    elif kind == REFUND:
        _refund(agg, ts, event_id, a, b, ctx, out)
    elif kind == FEEDBACK:
        _feedback(agg, ts, day, event_id, a, b, c, ctx, out)
    elif kind == REDEMPTION:
        _redeem(agg, ts, event_id, a, ctx, out)
    else:
        _visit_day(agg, day)
    agg.t_us = ts
    _set_stage(agg, stage_on(agg, day, policy), ts, {"type": "event", "event_id": event_id}, ctx, out)


def _feedback(agg: Agg, ts: int, day: int, event_id: str, nps: int, sow: int | None,
              extra: list | None, ctx: _Ctx, out: list[_Eff]) -> None:
    """An NPS answer: shop NPS classes, the detractor run, and a detractor alert
    when the customer's ``detractor_status`` turns ``detractor`` or ``recovered``."""
    policy = ctx.policy
    touchpoint, comment = extra if extra is not None else (None, None)
    before = detractor_status(agg, policy)
    agg.nps_last, agg.sow_last = nps, sow
    cls = classify(nps, policy)
    agg.fb_counts[cls] += 1
    agg.fb_recent.append([day, cls])
    for i, row in enumerate(agg.fb_tp):
        if row[0] == touchpoint:
            row = agg.fb_tp[i] = row[:]  # rows are shared with copies: replace, never mutate
            break
    else:
        row = [touchpoint, 0, 0, 0]
        agg.fb_tp.append(row)
    row[1 + cls] += 1
    if nps <= policy.detractor_status_max_nps:
        if agg.det_since is None:
            agg.det_since = ts  # first answer of a new run of detractor answers
        agg.ever_det = True
    else:
        agg.det_since = None
    after = detractor_status(agg, policy)
    if after != before and after in (DETRACTOR_STATUS, RECOVERED_STATUS):
        # One id per feedback event: a late answer can turn this alert into
        # the other kind (restated) or make it vanish (void).
        eid = fx.effect_id(ctx.shop, ctx.cust, "alert", event_id)
        out.append((eid, ts, fx.ALERT, fx.alert(
            ctx.shop, ctx.cust, eid, after, ts, event_id=event_id, nps=nps, comment=comment,
            touchpoint=touchpoint,
            detractor_since=rfc3339(agg.det_since) if after == DETRACTOR_STATUS else None)))


def _visit_day(agg: Agg, day: int) -> None:
    # visit_days: distinct dates with a visit or an accepted purchase. In
    # canonical order dates never decrease, so "new" is "not the last one".
    if agg.last_visit_day != day:
        agg.visit_days += 1
        agg.last_visit_day = day


def _purchase(agg: Agg, ts: int, day: int, event_id: str, order_id: str, amount: int,
              rate: str | None, ctx: _Ctx, out: list[_Eff]) -> None:
    if order_id in agg.orders:
        agg.duplicate_orders += 1  # same order_id as an earlier purchase: ignored, counted
        return
    policy = ctx.policy
    if agg.last_purchase_us is None or agg.last_purchase_us // US_PER_DAY != day:
        agg.purchase_days += 1
        agg.pdays.append(day)
    if agg.first_purchase_us is None:
        agg.first_purchase_us = ts
    agg.purchase_count += 1
    agg.last_purchase_us = ts
    _visit_day(agg, day)
    if day == agg.first_purchase_us // US_PER_DAY:
        agg.first_day_net += amount
    if rate is None:
        num, den = ctx.shop_margin.numerator, ctx.shop_margin.denominator
    else:
        n, d = rate.split("/")
        num, den = int(n), int(d)
    margin = margin_of(amount, num, den)
    agg.margin_total += margin
    agg.spend_total += amount
    order = [day, amount, 0, num, den, margin, 0, 0, ts]
    agg.orders[order_id] = order
    add_order_day(agg, day, amount, 1)
    if policy.bonus_enabled:
        tier, mult, _pct = tier_on(agg, day, policy)  # as of this purchase, purchase included
        points = points_for(amount, mult, policy)
        if points:
            order[O_POINTS] = points
            agg.lots.append([ts + ctx.expiry_us, points, order_id, points])
            agg.earned += points
            eid = fx.effect_id(ctx.shop, ctx.cust, "earn", event_id)
            out.append((eid, ts, fx.LEDGER, fx.ledger(
                ctx.shop, ctx.cust, eid, "earn", points, ts, agg.points_balance,
                event_id=event_id, order_id=order_id, tier=tier)))
    if policy.stamps_enabled:
        agg.stamps += 1
        if agg.stamps >= policy.stamps_per_free_item:
            agg.stamps = 0
            agg.free_items += 1
            eid = fx.effect_id(ctx.shop, ctx.cust, "free_item", event_id)
            out.append((eid, ts, fx.LEDGER, fx.ledger(
                ctx.shop, ctx.cust, eid, "free_item", 0, ts, agg.points_balance,
                event_id=event_id, order_id=order_id, free_items_issued=agg.free_items)))


def _refund(agg: Agg, ts: int, event_id: str, order_id: str, amount: int, ctx: _Ctx,
            out: list[_Eff]) -> None:
    order = agg.orders.get(order_id)
    if order is None:
        agg.orphan_refunds += 1  # no purchase earlier in canonical order
        return
    applied = min(amount, order[O_AMOUNT] - order[O_REFUNDED])
    if applied < amount:
        agg.refunds_capped += 1
    if applied <= 0:
        return
    # Copy-on-write: Agg.copy shares order entries, and this one is about to change.
    order = agg.orders[order_id] = order[:]
    order[O_REFUNDED] += applied
    add_order_day(agg, order[O_DAY], -applied, 0)
    agg.refund_total += applied
    agg.spend_total -= applied
    margin = margin_of(order[O_AMOUNT] - order[O_REFUNDED], order[O_RATE_NUM], order[O_RATE_DEN])
    agg.margin_total += margin - order[O_MARGIN]
    order[O_MARGIN] = margin
    if order[O_DAY] == agg.first_purchase_us // US_PER_DAY:  # type: ignore[operator]
        agg.first_day_net -= applied
    target = order[O_POINTS] * order[O_REFUNDED] // order[O_AMOUNT]
    due = target - order[O_CLAWED]
    if due > 0:
        order[O_CLAWED] = target
        taken = take_for_clawback(agg, order_id, due)
        agg.clawed += taken
        agg.shortfall += due - taken
        eid = fx.effect_id(ctx.shop, ctx.cust, "clawback", event_id)
        out.append((eid, ts, fx.LEDGER, fx.ledger(
            ctx.shop, ctx.cust, eid, "clawback", taken, ts, agg.points_balance,
            event_id=event_id, order_id=order_id, shortfall=due - taken)))


def _redeem(agg: Agg, ts: int, event_id: str, points: int, ctx: _Ctx, out: list[_Eff]) -> None:
    eid = fx.effect_id(ctx.shop, ctx.cust, "redeem", event_id)
    balance = agg.points_balance
    if balance >= points:
        take_oldest(agg, points)
        agg.redeemed += points
        out.append((eid, ts, fx.LEDGER, fx.ledger(
            ctx.shop, ctx.cust, eid, "redeem", points, ts, balance - points, event_id=event_id)))
    else:
        agg.redemptions_rejected += 1
        out.append((eid, ts, fx.LEDGER, fx.ledger(
            ctx.shop, ctx.cust, eid, "redemption_rejected", points, ts, balance, event_id=event_id)))


# ---------------------------------------------------------------------------
# State-level operations
# ---------------------------------------------------------------------------


def fold_open(state: CustomerState, policy: ShopPolicy, until_us: int | None = None,
              retire_before: int | None = None) -> tuple[Agg, list[_Eff], Agg, int]:
    """Re-fold the finalized aggregate with the open buffer.

    Applies buffered events with ``ts <= until_us`` (all if None), then advances
    time to ``until_us`` (if given). Returns (head, effects, aggregate after the
    events with ``ts < retire_before``, how many those are).
    """
    ctx = _Ctx(state.shop_id, state.customer_id, policy)
    agg = state.ckpt.copy()
    out: list[_Eff] = []
    for rec in state.buf:
        if until_us is not None and rec[0] > until_us:
            break
        apply_record(agg, rec, ctx, out)
    if until_us is not None:
        advance_time(agg, until_us, ctx, out)
    retired = _count_before(state.buf, retire_before) if retire_before is not None else 0
    return agg, out, _finalize(state, retired, ctx), retired


def _count_before(buf: list[list], ts: int) -> int:
    n = 0
    for rec in buf:
        if rec[0] >= ts:
            break
        n += 1
    return n


def _finalize(state: CustomerState, n: int, ctx: _Ctx) -> Agg:
    """The finalized aggregate after the ``n`` oldest buffered events (a new value)."""
    if not n:
        return state.ckpt
    ckpt = state.ckpt.copy()
    scratch: list[_Eff] = []
    for rec in state.buf[:n]:
        apply_record(ckpt, rec, ctx, scratch)
    return ckpt


def cached_head(state: CustomerState, policy: ShopPolicy) -> Agg | None:
    """The in-memory re-fold as of ``state.clock`` if this object has one for ``policy``.

    Callers must copy it before mutating: it is shared with the state.
    """
    head = state.head
    return head[1] if head is not None and head[0] is policy else None  # type: ignore[return-value]


def _next_due(head: Agg, policy: ShopPolicy) -> int | None:
    """Earliest instant after ``head.t_us`` at which time alone changes the head."""
    if head.t_us is None:
        return None
    due = [lot[L_EXPIRES] for lot in head.lots[:1] if lot[L_REMAINING]]
    day0 = day_of(head.t_us)
    for day in change_days(head, day0, day0 + _FAR_DAYS, policy):
        if stage_on(head, day, policy) != head.stage:
            due.append(day_start_us(day))
            break
    return min(due) if due else None


def _publish(old: CustomerState, truth: list[_Eff], frontier: int | None) -> tuple[list[dict], dict[int, list]]:
    """Diff the truth against what was already published for the open window."""
    emitted: dict[int, list] = {}
    out: list[dict] = []
    prev = old.emitted
    for eid, at, kind, eff in truth:
        if frontier is not None and at < frontier:
            continue  # finalized history: published when it was still open
        _compare(eid, at, kind, eff, prev, emitted, out)
    for eid, (_dg, at, kind) in prev.items():
        if eid not in emitted and (frontier is None or at >= frontier):
            out.append(fx.void(kind, old.shop_id, old.customer_id, eid))
    return out, emitted


def _totals(head: Agg) -> list[int]:
    return [head.earned, head.redeemed, head.expired, head.clawed]


def _publish_appended(old: CustomerState, new_effects: list[_Eff]) -> tuple[list[dict], dict[int, list]]:
    """Fast-path diff: history before the new event is unchanged, so only the
    new effects need comparing (no restatement of older ones, no voids)."""
    emitted = dict(old.emitted)
    out: list[dict] = []
    for eid, at, kind, eff in new_effects:
        _compare(eid, at, kind, eff, emitted, emitted, out)
    return out, emitted


def _compare(eid: int, at: int, kind: str, eff: dict, prev: dict[int, list],
             emitted: dict[int, list], out: list[dict]) -> None:
    """Publish ``eff`` if it is new or changed since ``prev``; record it in ``emitted``."""
    dg = fx.digest(eff)
    before = prev.get(eid)
    if before is None:
        out.append(eff)
    elif before[0] != dg:
        eff["restated"] = True
        out.append(eff)
    emitted[eid] = [dg, at, kind]


def rejection_detail(reason: str, event: Event, policy: ShopPolicy, behind_us: int = 0) -> str:
    """The message of a rejection by :func:`apply` (every engine's): ``behind_us`` is how
    far a ``too_late`` event is behind the frontier."""
    if reason == "conflicting_duplicate":
        return f"event_id {event.event_id!r} was already accepted with different content"
    if reason == "too_late":
        return (f"occurred_at is {behind_us / US_PER_DAY:.2f} days behind the customer's finalized "
                f"history (allowed lateness {policy.allowed_lateness_days} days)")
    return f"amount: the customer's purchases would total more than {MAX_CUSTOMER_GROSS} minor units"


def _reject(state: CustomerState, reason: str, detail: str) -> Outcome:
    return Outcome(state, REJECTED, False, reason=reason, detail=detail,
                   stage_before=state.stage, stage_after=state.stage)


def apply(state: CustomerState | None, event: Event, policy: ShopPolicy) -> Outcome:
    """Apply one validated event. See the module docstring for the steps.

    Raises :class:`ValueError` for a ``forget`` request: that is :func:`forget`.
    """
    if event.type == "forget":
        raise ValueError("a forget request is not folded: use fold.forget")
    if state is None:
        state = CustomerState(event.shop_id, event.customer_id)
    elif (state.shop_id, state.customer_id) != (event.shop_id, event.customer_id):
        raise ValueError(f"event for {event.shop_id}|{event.customer_id} applied to {state.key}")
    digest = content_digest(event)
    key = id_hash(event.event_id)
    seen = state.seen.get(key)
    if seen is not None:
        if seen[0] == digest:
            return Outcome(state, DUPLICATE, False, stage_before=state.stage, stage_after=state.stage)
        return _reject(state, "conflicting_duplicate", rejection_detail("conflicting_duplicate", event, policy))
    rec = to_record(event)
    ts = rec[0]
    if state.frontier is not None and ts < state.frontier:
        return _reject(state, "too_late", rejection_detail("too_late", event, policy, state.frontier - ts))

    new = CustomerState(state.shop_id, state.customer_id, state.ckpt)
    new.positions = state.positions
    new.buf = state.buf[:]
    insort(new.buf, rec, key=lambda r: (r[0], r[1]))
    new.seen = dict(state.seen)
    new.seen[key] = [digest, ts]
    new.max_ts = ts if state.max_ts is None else max(state.max_ts, ts)
    new.clock = new.max_ts if state.clock is None else max(state.clock, new.max_ts)
    lateness = policy.allowed_lateness_days * US_PER_DAY
    frontier = new.max_ts - lateness
    if state.frontier is not None:
        frontier = max(frontier, state.frontier)

    cached = cached_head(state, policy)
    last = state.buf[-1] if state.buf else None
    if cached is not None and state.clock is not None and ts >= state.clock and (
            last is None or (ts, rec[1]) > (last[0], last[1])):
        # In-order arrival: the truth is the previous truth plus this event.
        # Exactly what the full re-fold below computes (time advanced to the
        # clock and then to ts is time advanced to ts), at the cost of one event.
        ctx = _Ctx(state.shop_id, state.customer_id, policy)
        head = cached.copy()
        appended: list[_Eff] = []
        apply_record(head, rec, ctx, appended)
        effects, emitted = _publish_appended(state, appended)
        retired = _count_before(new.buf, frontier)
        if retired and retired == len(state.buf) and state.clock == state.max_ts:
            # Every earlier event is now final, and the cached head is exactly
            # their fold as of the newest of them (the clock never moved past
            # it): it is the new checkpoint, no second application needed.
            ckpt_new = cached.copy()
        else:
            ckpt_new = _finalize(new, retired, ctx)
    else:
        head, truth, ckpt_new, retired = fold_open(new, policy, new.clock, retire_before=frontier)
        effects, emitted = _publish(state, truth, state.frontier)

    if head.spend_total + head.refund_total > MAX_CUSTOMER_GROSS:
        return _reject(state, "out_of_range", rejection_detail("out_of_range", event, policy))
    new.ckpt = ckpt_new
    new.buf = new.buf[retired:]
    if len(new.buf) > policy.max_buffer_events:
        frontier = _force_finalize(new, policy, len(new.buf) - policy.max_buffer_events)
    new.frontier = frontier
    if frontier != state.frontier:
        new.emitted = {k: v for k, v in emitted.items() if v[1] >= frontier}
    else:
        # Every entry is at or after the unchanged frontier already (each diff
        # only records effects of the open window): skip a pass over them all.
        new.emitted = emitted
    _prune_seen(new, policy)
    if retired:
        _prune_finalized(new.ckpt, policy)
    return _applied(state, new, head, effects, policy)


def advance(state: CustomerState, now_us: int, policy: ShopPolicy, *, stale: bool = False) -> Outcome:
    """Account for the passage of time up to ``now_us`` (the periodic sweep).

    Publishes point expiries and time-driven stage transitions due by
    ``now_us``. Cheap when nothing is due: it only compares with ``next_due``.

    ``stale``: the state's derived figures are not what ``policy`` gives
    (:func:`rederive` said so): it is advanced as if due, to
    ``max(now_us, clock)``. The open window's effects that changed are then
    published as a late event's are (new, ``restated``, ``void``), and the
    transitions the policy makes due meanwhile at their own instants.
    """
    if state.clock is None:
        return Outcome(state, APPLIED, False, stage_before=state.stage, stage_after=state.stage)
    if stale:
        now_us = max(now_us, state.clock)
    elif now_us <= state.clock or state.next_due is None or now_us < state.next_due:
        return Outcome(state, APPLIED, False, stage_before=state.stage, stage_after=state.stage)
    cached = None if stale else cached_head(state, policy)
    if cached is not None:
        head = cached.copy()
        later: list[_Eff] = []
        advance_time(head, now_us, _Ctx(state.shop_id, state.customer_id, policy), later)
        effects, emitted = _publish_appended(state, later)
    else:
        head, truth, _, _ = fold_open(state, policy, now_us)
        effects, emitted = _publish(state, truth, state.frontier)
    new = CustomerState(state.shop_id, state.customer_id, state.ckpt)
    new.buf, new.seen, new.positions = state.buf, state.seen, state.positions
    new.max_ts, new.frontier = state.max_ts, state.frontier
    new.clock = now_us
    new.emitted = emitted
    return _applied(state, new, head, effects, policy)


def rederive(state: CustomerState, policy: ShopPolicy) -> tuple[Agg | None, bool]:
    """The state's head as of its clock under ``policy``, and whether its derived
    figures are stale: not what ``policy`` gives.

    A state's ``next_due``, stage, point totals and KPI contribution, and the
    effects it has published for its open window, were computed under the
    policy (and rules) of whoever wrote it; after a start with another policy
    they may be wrong, and a time-driven change the new policy makes due
    earlier would wait for the old ``next_due``. Stale means any of them
    differs from a re-fold of the open window under ``policy``; then
    ``advance(..., stale=True)`` brings the state up to date. A state with an
    in-memory head for ``policy`` (folded by this process under that very
    policy object) is never stale and costs a copy of that head; any other
    costs one re-fold. The head (None for a state without events) is a new object the
    caller may keep. Finalized history is not re-folded (its aggregate is all
    that is kept): a stage the new policy would have changed before the open
    window changes at the window's first event, the re-fold's first chance
    (the window always holds the newest event), with that event as cause.
    """
    if state.clock is None:
        return None, False
    cached = cached_head(state, policy)
    if cached is not None:
        return cached.copy(), False
    head, truth, _, _ = fold_open(state, policy, state.clock)
    effects, _ = _publish(state, truth, state.frontier)
    stale = bool(effects) or _derived(head, policy) != (state.stage, state.next_due, state.totals,
                                                        state.kpi)
    return head, stale


def _derived(head: Agg, policy: ShopPolicy) -> tuple[str | None, int | None, list[int], list[Any]]:
    """What a state keeps derived from its head: stage, next due instant, point
    totals and shop-KPI contribution (the one list of them: :func:`_applied` sets
    them, :func:`rederive` compares them)."""
    return (head.stage, _next_due(head, policy), _totals(head),
            contribution(head, head.stage, day_of(head.t_us), policy))  # type: ignore[arg-type]


def _applied(old: CustomerState, new: CustomerState, head: Agg, effects: list[dict],
             policy: ShopPolicy) -> Outcome:
    """Record the head's derived fields on ``new`` and report the change from ``old``."""
    new.stage, new.next_due, new.totals, new.kpi = _derived(head, policy)
    before = _kpi_of(old, policy)
    new.head = (policy, head)
    return Outcome(new, APPLIED, True, effects, stage_before=old.stage, stage_after=new.stage,
                   kpi_before=before, kpi_after=new.kpi)


def _kpi_of(state: CustomerState, policy: ShopPolicy) -> list[Any] | None:
    """The state's shop-KPI contribution; recomputed once for a version-1 state."""
    if state.kpi is not None or state.clock is None:
        return state.kpi
    head = cached_head(state, policy)
    if head is None:
        head, _, _, _ = fold_open(state, policy, state.clock)
    return contribution(head, state.stage, day_of(state.clock), policy)


@dataclass
class Erasure:
    """What :func:`forget` leaves behind: nothing of the customer but the undo
    of its share in the shop figures.

    ``tally`` holds the customer's whole contribution with negative counts:
    merged into the tally that counted the customer (its shop's, or its shop
    and partition's), the customer no longer counts in any shop figure.
    """

    shop_id: str
    customer_id: str
    stage_before: str | None
    tally: ShopTally


def forget(state: CustomerState, policy: ShopPolicy) -> Erasure:
    """Erase a customer (right to erasure): a fold operation that leaves no state.

    The caller drops the state (a tombstone in a table) and merges
    ``Erasure.tally``. No effect is emitted: records already published stay
    where they are. An event of the customer folded afterwards starts a new,
    empty history (``apply(None, event, policy)``); its event ids are not
    remembered either. Pure: ``state`` is not changed.
    """
    head = cached_head(state, policy)
    if head is None and state.clock is not None:
        head, _, _, _ = fold_open(state, policy, state.clock)
    return erasure(state.shop_id, state.customer_id, state.stage, head, policy)


def erasure(shop_id: str, customer_id: str, stage: str | None, head: Agg | None,
            policy: ShopPolicy) -> Erasure:
    """The erasure of a customer whose head as of its clock is ``head`` (None: no events)."""
    tally = ShopTally()
    if head is not None:
        # NPS answers of the last 90 days come from the finalized part plus the
        # open buffer; fold_open's head holds both, as a recount would count them.
        tally.add_customer(head, stage, policy, sign=-1)
    return Erasure(shop_id, customer_id, stage, tally)


def _force_finalize(state: CustomerState, policy: ShopPolicy, n: int) -> int:
    """Finalize the ``n`` oldest buffered events early (buffer cap); returns the new frontier."""
    state.ckpt = _finalize(state, n, _Ctx(state.shop_id, state.customer_id, policy))
    frontier = state.buf[n - 1][0] + 1
    state.buf = state.buf[n:]
    return frontier


def _prune_seen(state: CustomerState, policy: ShopPolicy) -> None:
    """Forget event ids older than the dedup horizon, except the customer's last
    :data:`DEDUP_RECENT_IDS` accepted ones; keep at most ``max_seen_ids``.

    Ids are remembered for *at least* ``dedup_retention_days`` of event time,
    and the ids of the last :data:`DEDUP_RECENT_IDS` accepted events however
    old. ``seen`` is in acceptance order: the check looks only at its first
    id (O(1)); a full pass runs when that one is due and more than twice the
    recent ids are kept (so a pass is paid once per that many events), or when
    the cap is exceeded. A pass keeps the order: the ids within the horizon
    (the newest by event time when the cap binds), then the recent ones.
    """
    horizon = state.max_ts - policy.dedup_retention_days * US_PER_DAY  # type: ignore[operator]
    seen = state.seen
    n = len(seen)
    if n > policy.max_seen_ids or (
            n > 2 * DEDUP_RECENT_IDS and next(iter(seen.values()))[1] < horizon):
        items = list(seen.items())
        split = n - min(DEDUP_RECENT_IDS, policy.max_seen_ids)
        recent, older = items[split:], items[:split]
        room = policy.max_seen_ids - len(recent)
        within = [(v[1], k) for k, v in older if v[1] >= horizon]
        if len(within) > room:
            kept = {k for _, k in sorted(within, reverse=True)[:room]}
        else:
            kept = {k for _, k in within}
        state.seen = {k: v for k, v in older if k in kept}
        state.seen.update(recent)


def _prune_finalized(agg: Agg, policy: ShopPolicy) -> None:
    """Drop detail no snapshot at or after the finalized instant can need."""
    day = day_of(agg.t_us)  # type: ignore[arg-type]
    horizon = day - policy.order_retention_days
    if agg.orders and next(iter(agg.orders.values()))[O_DAY] < horizon:
        agg.orders = {k: v for k, v in agg.orders.items() if v[O_DAY] >= horizon}
    keep_from = day - 366
    if agg.pdays and agg.pdays[0] < keep_from:
        agg.pdays = [d for d in agg.pdays if d >= keep_from]
    if agg.day_net and agg.day_net[0][0] < day - DAY_NET_DAYS:
        agg.day_net = [row for row in agg.day_net if row[0] >= day - DAY_NET_DAYS]
    fb_from = day - policy.shop_nps_window_days
    if agg.fb_recent and agg.fb_recent[0][0] <= fb_from:
        agg.fb_recent = [x for x in agg.fb_recent if x[0] > fb_from]


__all__ = ["APPLIED", "DUPLICATE", "REJECTED", "Erasure", "Outcome", "advance", "apply", "apply_record",
           "erasure", "fold_open", "forget", "rederive", "rejection_detail"]
