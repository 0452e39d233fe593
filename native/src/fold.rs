//! The fold (`scoring.fold`), step for step: see that module's docstring for
//! how one event is applied. The input state is never changed; shared parts
//! (`Arc`) are copied on write.

use crate::json::J;
use crate::model::*;
use crate::rules::*;
use std::sync::Arc;

const FAR_DAYS: i64 = 100_000;
pub const MAX_CUSTOMER_GROSS: i64 = 1_000_000_000_000_000;
const DEDUP_RECENT_IDS: usize = 32;

/// An effect on its way through the fold: (id, at_us, kind, the object).
pub struct Eff {
    pub id: i64,
    pub at: i64,
    pub kind: EffKind,
    pub body: J,
}

pub enum Status {
    Applied,
    Duplicate,
    /// rejected with a reason; for `too_late`, how far behind the frontier (us)
    Rejected(&'static str, i64),
}

pub struct Outcome {
    pub state: Arc<CustomerState>,
    pub status: Status,
    pub changed: bool,
    /// (the published object, restated)
    pub effects: Vec<J>,
    pub stage_before: Option<Stage>,
    pub stage_after: Option<Stage>,
    pub kpi_before: Option<Kpi>,
    pub kpi_after: Option<Kpi>,
}

struct Ctx<'a> {
    shop: &'a Arc<str>,
    cust: &'a Arc<str>,
    p: &'a Policy,
    expiry_us: i64,
}

impl<'a> Ctx<'a> {
    fn new(shop: &'a Arc<str>, cust: &'a Arc<str>, p: &'a Policy) -> Self {
        Ctx { shop, cust, p, expiry_us: p.points_expiry_days * US_PER_DAY }
    }
}

fn set_stage(agg: &mut Agg, stage: Stage, at: i64, cause: impl FnOnce() -> J, ctx: &Ctx, out: &mut Vec<Eff>) {
    if Some(stage) != agg.stage {
        let from = match agg.stage {
            Some(s) => crate::rules::Part::S(s.name()),
            None => crate::rules::Part::None,
        };
        let eid = effect_id(ctx.shop, ctx.cust, &[Part::S("transition"), from, Part::S(stage.name()), Part::I(at)]);
        out.push(Eff {
            id: eid,
            at,
            kind: EffKind::Transition,
            body: transition(ctx.shop, ctx.cust, eid, agg.stage, stage, at, cause()),
        });
        agg.stage = Some(stage);
    }
}

/// Publish a ledger entry whose id is made of `id` (`scoring.effects.effect_id`).
#[allow(clippy::too_many_arguments)]
fn push_ledger(
    out: &mut Vec<Eff>,
    ctx: &Ctx,
    id: &[Part],
    entry: &str,
    points: i64,
    at: i64,
    balance: i64,
    extra: Vec<(&'static str, J)>,
) {
    let eid = effect_id(ctx.shop, ctx.cust, id);
    out.push(Eff {
        id: eid,
        at,
        kind: EffKind::Ledger,
        body: ledger(ctx.shop, ctx.cust, eid, entry, points, at, balance, extra),
    });
}

/// Publish an order's ledger entry caused by an event: its id is (`entry`, the event).
#[allow(clippy::too_many_arguments)]
fn push_order_ledger(
    out: &mut Vec<Eff>,
    ctx: &Ctx,
    entry: &'static str,
    event_id: &Arc<str>,
    order_id: &Arc<str>,
    points: i64,
    at: i64,
    balance: i64,
    last: (&'static str, J),
) {
    let extra = vec![("event_id", J::Str(event_id.clone())), ("order_id", J::Str(order_id.clone())), last];
    push_ledger(out, ctx, &[Part::S(entry), Part::S(event_id)], entry, points, at, balance, extra);
}

fn time_cause() -> J {
    J::Obj(vec![("type", J::str("time"))])
}

fn advance_time(agg: &mut Agg, to_us: i64, ctx: &Ctx, out: &mut Vec<Eff>) {
    let Some(t) = agg.t_us else { return };
    if to_us <= t {
        return;
    }
    let gone = expire_due(agg, to_us);
    if !gone.is_empty() {
        let balance = agg.points_balance();
        for lot in gone {
            if lot.remaining != 0 {
                let at = lot.expires;
                push_ledger(
                    out,
                    ctx,
                    &[Part::S("expire"), Part::S(&lot.order), Part::I(at)],
                    "expire",
                    lot.remaining,
                    at,
                    balance,
                    vec![("order_id", J::Str(lot.order.clone()))],
                );
            }
        }
    }
    for day in change_days(agg, day_of(t), day_of(to_us), ctx.p) {
        let stage = stage_on(agg, day, ctx.p);
        set_stage(agg, stage, day_start_us(day), time_cause, ctx, out);
    }
    agg.t_us = Some(to_us);
}

fn apply_record(agg: &mut Agg, rec: &Rec, ctx: &Ctx, out: &mut Vec<Eff>) {
    let ts = rec.ts;
    advance_time(agg, ts, ctx, out);
    let day = day_of(ts);
    if agg.first_seen_us.is_none() {
        agg.first_seen_us = Some(ts);
    }
    match &rec.payload {
        Payload::Purchase { order, amount, rate } => {
            purchase(agg, ts, day, &rec.event_id, order, *amount, rate.as_deref(), ctx, out)
        }
        Payload::Refund { order, amount } => refund(agg, ts, &rec.event_id, order, *amount, ctx, out),
        Payload::Feedback { nps, sow, extra } => feedback(agg, ts, day, &rec.event_id, *nps, *sow, extra, ctx, out),
        Payload::Redemption { points } => redeem(agg, ts, &rec.event_id, *points, ctx, out),
        Payload::Visit => visit_day(agg, day),
    }
    agg.t_us = Some(ts);
    let stage = stage_on(agg, day, ctx.p);
    let eid = rec.event_id.clone();
    set_stage(agg, stage, ts, || J::Obj(vec![("type", J::str("event")), ("event_id", J::Str(eid))]), ctx, out);
}

#[allow(clippy::too_many_arguments)]
fn feedback(
    agg: &mut Agg,
    ts: i64,
    day: i64,
    event_id: &Arc<str>,
    nps: i64,
    sow: Option<i64>,
    extra: &FeedbackExtra,
    ctx: &Ctx,
    out: &mut Vec<Eff>,
) {
    let p = ctx.p;
    let (touchpoint, comment) = match extra {
        Some((t, c)) => (t.clone(), c.clone()),
        None => (None, None),
    };
    let before = detractor_status(agg, p);
    agg.nps_last = Some(nps);
    agg.sow_last = sow;
    let cls = classify(nps, p);
    agg.fb_counts[cls] += 1;
    agg.fb_recent.push([day, cls as i64]);
    match agg.fb_tp.iter_mut().find(|row| row.0 == touchpoint) {
        Some(row) => row.1[cls] += 1,
        None => {
            let mut counts = [0; 3];
            counts[cls] += 1;
            agg.fb_tp.push((touchpoint.clone(), counts));
        }
    }
    if nps <= p.detractor_status_max_nps {
        if agg.det_since.is_none() {
            agg.det_since = Some(ts);
        }
        agg.ever_det = true;
    } else {
        agg.det_since = None;
    }
    let after = detractor_status(agg, p);
    if after != before && (after == Some(DETRACTOR) || after == Some(RECOVERED)) {
        let status = after.unwrap();
        let eid = effect_id(ctx.shop, ctx.cust, &[Part::S("alert"), Part::S(event_id)]);
        let since = if status == DETRACTOR {
            agg.det_since.map(|s| J::Str(Arc::from(rfc3339(s)))).unwrap_or(J::Null)
        } else {
            J::Null
        };
        let body = J::Obj(vec![
            ("kind", J::str("alert")),
            ("id", id_hex(eid)),
            ("shop_id", J::Str(ctx.shop.clone())),
            ("customer_id", J::Str(ctx.cust.clone())),
            ("alert", J::str(status)),
            ("at", J::Str(Arc::from(rfc3339(ts)))),
            ("event_id", J::Str(event_id.clone())),
            ("nps", J::Int(nps)),
            ("comment", comment.map(J::Str).unwrap_or(J::Null)),
            ("touchpoint", touchpoint.map(J::Str).unwrap_or(J::Null)),
            ("detractor_since", since),
        ]);
        out.push(Eff { id: eid, at: ts, kind: EffKind::Alert, body });
    }
}

fn visit_day(agg: &mut Agg, day: i64) {
    if agg.last_visit_day != Some(day) {
        agg.visit_days += 1;
        agg.last_visit_day = Some(day);
    }
}

fn parse_rate(rate: &str) -> (i64, i64) {
    let (n, d) = rate.split_once('/').expect("a rate is num/den");
    (n.parse().expect("rate numerator"), d.parse().expect("rate denominator"))
}

#[allow(clippy::too_many_arguments)]
fn purchase(
    agg: &mut Agg,
    ts: i64,
    day: i64,
    event_id: &Arc<str>,
    order_id: &Arc<str>,
    amount: i64,
    rate: Option<&str>,
    ctx: &Ctx,
    out: &mut Vec<Eff>,
) {
    if agg.orders.contains_key(order_id) {
        agg.duplicate_orders += 1;
        return;
    }
    let p = ctx.p;
    if agg.last_purchase_us.is_none_or(|l| day_of(l) != day) {
        agg.purchase_days += 1;
        agg.pdays.push(day);
    }
    if agg.first_purchase_us.is_none() {
        agg.first_purchase_us = Some(ts);
    }
    agg.purchase_count += 1;
    agg.last_purchase_us = Some(ts);
    visit_day(agg, day);
    if Some(day) == agg.first_purchase_us.map(day_of) {
        agg.first_day_net += amount;
    }
    let (num, den) = match rate {
        None => (p.margin_num, p.margin_den),
        Some(r) => parse_rate(r),
    };
    let margin = margin_of(amount, num, den);
    agg.margin_total += margin;
    agg.spend_total += amount;
    let mut order: Order = [day, amount, 0, num, den, margin, 0, 0, ts];
    add_order_day(agg, day, amount, 1);
    if p.bonus_enabled {
        let tier = tier_on(agg, day, p, None);
        let (mn, md) = (tier.mult_num, tier.mult_den);
        let points = points_for(amount, mn, md, p);
        if points != 0 {
            order[O_POINTS] = points;
            agg.lots.push(Lot {
                expires: ts + ctx.expiry_us,
                remaining: points,
                order: order_id.clone(),
                earned: points,
            });
            agg.earned += points;
            let balance = agg.points_balance();
            push_order_ledger(
                out,
                ctx,
                "earn",
                event_id,
                order_id,
                points,
                ts,
                balance,
                ("tier", J::Str(tier.name.clone())),
            );
        }
    }
    agg.orders.insert(order_id.clone(), Arc::new(order));
    if p.stamps_enabled {
        agg.stamps += 1;
        if agg.stamps >= p.stamps_per_free_item {
            agg.stamps = 0;
            agg.free_items += 1;
            let balance = agg.points_balance();
            push_order_ledger(
                out,
                ctx,
                "free_item",
                event_id,
                order_id,
                0,
                ts,
                balance,
                ("free_items_issued", J::Int(agg.free_items)),
            );
        }
    }
}

fn refund(
    agg: &mut Agg,
    ts: i64,
    event_id: &Arc<str>,
    order_id: &Arc<str>,
    amount: i64,
    ctx: &Ctx,
    out: &mut Vec<Eff>,
) {
    let Some(order) = agg.orders.get(order_id) else {
        agg.orphan_refunds += 1;
        return;
    };
    let applied = amount.min(order[O_AMOUNT] - order[O_REFUNDED]);
    if applied < amount {
        agg.refunds_capped += 1;
    }
    if applied <= 0 {
        return;
    }
    let mut order: Order = **order;
    order[O_REFUNDED] += applied;
    add_order_day(agg, order[O_DAY], -applied, 0);
    agg.refund_total += applied;
    agg.spend_total -= applied;
    let margin = margin_of(order[O_AMOUNT] - order[O_REFUNDED], order[O_RATE_NUM], order[O_RATE_DEN]);
    agg.margin_total += margin - order[O_MARGIN];
    order[O_MARGIN] = margin;
    if Some(order[O_DAY]) == agg.first_purchase_us.map(day_of) {
        agg.first_day_net -= applied;
    }
    let target = ((order[O_POINTS] as i128 * order[O_REFUNDED] as i128).div_euclid(order[O_AMOUNT] as i128)) as i64;
    let due = target - order[O_CLAWED];
    if due > 0 {
        order[O_CLAWED] = target;
    }
    agg.orders.insert(order_id.clone(), Arc::new(order));
    if due > 0 {
        let taken = take_for_clawback(agg, order_id, due);
        agg.clawed += taken;
        agg.shortfall += due - taken;
        let balance = agg.points_balance();
        push_order_ledger(
            out,
            ctx,
            "clawback",
            event_id,
            order_id,
            taken,
            ts,
            balance,
            ("shortfall", J::Int(due - taken)),
        );
    }
}

fn redeem(agg: &mut Agg, ts: i64, event_id: &Arc<str>, points: i64, ctx: &Ctx, out: &mut Vec<Eff>) {
    let eid = effect_id(ctx.shop, ctx.cust, &[Part::S("redeem"), Part::S(event_id)]);
    let balance = agg.points_balance();
    let extra = vec![("event_id", J::Str(event_id.clone()))];
    let body = if balance >= points {
        take_oldest(agg, points);
        agg.redeemed += points;
        ledger(ctx.shop, ctx.cust, eid, "redeem", points, ts, balance - points, extra)
    } else {
        agg.redemptions_rejected += 1;
        ledger(ctx.shop, ctx.cust, eid, "redemption_rejected", points, ts, balance, extra)
    };
    out.push(Eff { id: eid, at: ts, kind: EffKind::Ledger, body });
}

// ---- state-level operations -------------------------------------------------

/// Re-fold the finalized aggregate with the open buffer (`fold.fold_open`).
fn fold_open(
    state: &CustomerState,
    p: &Policy,
    until_us: Option<i64>,
    retire_before: Option<i64>,
) -> (Agg, Vec<Eff>, Arc<Agg>, usize) {
    let ctx = Ctx::new(&state.shop_id, &state.customer_id, p);
    let mut agg = (*state.ckpt).clone();
    let mut out = Vec::new();
    for rec in state.buf.iter() {
        if matches!(until_us, Some(u) if rec.ts > u) {
            break;
        }
        apply_record(&mut agg, rec, &ctx, &mut out);
    }
    if let Some(u) = until_us {
        advance_time(&mut agg, u, &ctx, &mut out);
    }
    let retired = retire_before.map_or(0, |r| count_before(&state.buf, r));
    let ckpt = finalize(&state.ckpt, &state.buf, retired, &ctx);
    (agg, out, ckpt, retired)
}

fn count_before(buf: &[Arc<Rec>], ts: i64) -> usize {
    buf.iter().take_while(|r| r.ts < ts).count()
}

fn finalize(ckpt: &Arc<Agg>, buf: &[Arc<Rec>], n: usize, ctx: &Ctx) -> Arc<Agg> {
    if n == 0 {
        return ckpt.clone();
    }
    let mut agg = (**ckpt).clone();
    let mut scratch = Vec::new();
    for rec in &buf[..n] {
        apply_record(&mut agg, rec, ctx, &mut scratch);
    }
    Arc::new(agg)
}

pub fn cached_head<'s>(state: &'s CustomerState, p: &Policy) -> Option<&'s Arc<Agg>> {
    match &state.head {
        Some((serial, head)) if *serial == p.serial => Some(head),
        _ => None,
    }
}

fn next_due(head: &Agg, p: &Policy) -> Option<i64> {
    let t = head.t_us?;
    let mut due: Option<i64> = head.lots.first().filter(|l| l.remaining != 0).map(|l| l.expires);
    let day0 = day_of(t);
    for day in change_days(head, day0, day0 + FAR_DAYS, p) {
        if Some(stage_on(head, day, p)) != head.stage {
            let at = day_start_us(day);
            due = Some(due.map_or(at, |d| d.min(at)));
            break;
        }
    }
    due
}

fn compare(mut eff: Eff, prev: Option<&IdMap<Emitted>>, emitted: &mut IdMap<Emitted>, out: &mut Vec<J>) {
    let dg = digest(&eff.body);
    let before = match prev {
        Some(prev) => prev.get(&eff.id).copied(),
        None => emitted.get(&eff.id).copied(),
    };
    match before {
        None => out.push(eff.body),
        Some(b) if b.digest != dg => {
            if let J::Obj(items) = &mut eff.body {
                items.push(("restated", J::Bool(true)));
            }
            out.push(eff.body)
        }
        _ => {}
    }
    emitted.insert(eff.id, Emitted { digest: dg, at: eff.at, kind: eff.kind });
}

fn publish(old: &CustomerState, truth: Vec<Eff>, frontier: Option<i64>) -> (Vec<J>, IdMap<Emitted>) {
    let mut emitted = Default::default();
    let mut out = Vec::new();
    for eff in truth {
        if matches!(frontier, Some(f) if eff.at < f) {
            continue;
        }
        compare(eff, Some(&old.emitted), &mut emitted, &mut out);
    }
    for (eid, e) in old.emitted.iter() {
        if !emitted.contains_key(eid) && frontier.is_none_or(|f| e.at >= f) {
            out.push(void(e.kind, &old.shop_id, &old.customer_id, *eid));
        }
    }
    (out, emitted)
}

fn publish_appended(old: &CustomerState, new_effects: Vec<Eff>) -> (Vec<J>, IdMap<Emitted>) {
    let mut emitted = (*old.emitted).clone();
    let mut out = Vec::new();
    for eff in new_effects {
        compare(eff, None, &mut emitted, &mut out);
    }
    (out, emitted)
}

fn reject(state: &Arc<CustomerState>, reason: &'static str, behind: i64) -> Outcome {
    unchanged(state, Status::Rejected(reason, behind))
}

fn unchanged(state: &Arc<CustomerState>, status: Status) -> Outcome {
    Outcome {
        state: state.clone(),
        status,
        changed: false,
        effects: Vec::new(),
        stage_before: state.stage,
        stage_after: state.stage,
        kpi_before: None,
        kpi_after: None,
    }
}

/// Apply one validated event (`fold.apply`); `digest` and `key` are its content
/// digest and id hash (`scoring.records`).
pub fn apply(
    state: Option<&Arc<CustomerState>>,
    shop: &Arc<str>,
    cust: &Arc<str>,
    rec: Rec,
    digest: i64,
    key: i64,
    p: &Policy,
) -> Outcome {
    let state = match state {
        Some(s) => s.clone(),
        None => Arc::new(CustomerState::new(shop.clone(), cust.clone())),
    };
    if let Some(seen) = state.seen.get(&key) {
        if seen[0] == digest {
            return unchanged(&state, Status::Duplicate);
        }
        return reject(&state, "conflicting_duplicate", 0);
    }
    let ts = rec.ts;
    if let Some(f) = state.frontier {
        if ts < f {
            return reject(&state, "too_late", f - ts);
        }
    }
    let rec = Arc::new(rec);
    let mut new = CustomerState::new(state.shop_id.clone(), state.customer_id.clone());
    new.ckpt = state.ckpt.clone();
    new.positions = state.positions.clone();
    let mut buf: Vec<Arc<Rec>> = (*state.buf).clone();
    let pos = buf.partition_point(|r| (r.ts, &*r.event_id) <= (rec.ts, &*rec.event_id));
    buf.insert(pos, rec.clone());
    let mut seen = (*state.seen).clone();
    seen.insert(key, [digest, ts]);
    let max_ts = state.max_ts.map_or(ts, |m| m.max(ts));
    new.max_ts = Some(max_ts);
    new.clock = Some(state.clock.map_or(max_ts, |c| c.max(max_ts)));
    let lateness = p.allowed_lateness_days * US_PER_DAY;
    let mut frontier = max_ts - lateness;
    if let Some(f) = state.frontier {
        frontier = frontier.max(f);
    }

    let cached = cached_head(&state, p);
    let last = state.buf.last();
    let in_order = cached.is_some()
        && state.clock.is_some_and(|c| ts >= c)
        && last.is_none_or(|l| (ts, &*rec.event_id) > (l.ts, &*l.event_id));
    let (head, effects, emitted, ckpt_new, retired);
    if in_order {
        let cached = cached.unwrap();
        let ctx = Ctx::new(&state.shop_id, &state.customer_id, p);
        let mut h = (**cached).clone();
        let mut appended = Vec::new();
        apply_record(&mut h, &rec, &ctx, &mut appended);
        (effects, emitted) = publish_appended(&state, appended);
        retired = count_before(&buf, frontier);
        if retired != 0 && retired == state.buf.len() && state.clock == state.max_ts {
            ckpt_new = cached.clone();
        } else {
            ckpt_new = finalize(&new.ckpt, &buf, retired, &ctx);
        }
        head = h;
    } else {
        new.buf = Arc::new(buf);
        let (h, truth, c, r) = fold_open(&new, p, new.clock, Some(frontier));
        (effects, emitted) = publish(&state, truth, state.frontier);
        head = h;
        ckpt_new = c;
        retired = r;
        buf = Arc::try_unwrap(std::mem::take(&mut new.buf)).unwrap_or_else(|a| (*a).clone());
    }

    if head.spend_total + head.refund_total > MAX_CUSTOMER_GROSS {
        return reject(&state, "out_of_range", 0);
    }
    new.ckpt = ckpt_new;
    buf.drain(..retired);
    if buf.len() as i64 > p.max_buffer_events {
        let n = buf.len() - p.max_buffer_events as usize;
        let ctx = Ctx::new(&state.shop_id, &state.customer_id, p);
        new.ckpt = finalize(&new.ckpt, &buf, n, &ctx);
        frontier = buf[n - 1].ts + 1;
        buf.drain(..n);
    }
    new.buf = Arc::new(buf);
    new.frontier = Some(frontier);
    let emitted = if Some(frontier) != state.frontier {
        emitted.into_iter().filter(|(_, v)| v.at >= frontier).collect()
    } else {
        emitted
    };
    new.emitted = Arc::new(emitted);
    new.seen = Arc::new(prune_seen(seen, max_ts, p));
    if retired != 0 {
        let mut ckpt = (*new.ckpt).clone();
        if prune_finalized(&mut ckpt, p) {
            new.ckpt = Arc::new(ckpt);
        }
    }
    applied(&state, new, head, effects, p)
}

/// Account for time up to `now_us` (`fold.advance`).
pub fn advance(state: &Arc<CustomerState>, now_us: i64, p: &Policy, stale: bool) -> Outcome {
    let Some(clock) = state.clock else {
        return unchanged(state, Status::Applied);
    };
    let now_us = if stale {
        now_us.max(clock)
    } else {
        if now_us <= clock || state.next_due.is_none_or(|d| now_us < d) {
            return unchanged(state, Status::Applied);
        }
        now_us
    };
    let cached = if stale { None } else { cached_head(state, p) };
    let (head, effects, emitted) = match cached {
        Some(cached) => {
            let mut h = (**cached).clone();
            let mut later = Vec::new();
            advance_time(&mut h, now_us, &Ctx::new(&state.shop_id, &state.customer_id, p), &mut later);
            let (e, m) = publish_appended(state, later);
            (h, e, m)
        }
        None => {
            let (h, truth, _, _) = fold_open(state, p, Some(now_us), None);
            let (e, m) = publish(state, truth, state.frontier);
            (h, e, m)
        }
    };
    let mut new = CustomerState::new(state.shop_id.clone(), state.customer_id.clone());
    new.ckpt = state.ckpt.clone();
    new.buf = state.buf.clone();
    new.seen = state.seen.clone();
    new.positions = state.positions.clone();
    new.max_ts = state.max_ts;
    new.frontier = state.frontier;
    new.clock = Some(now_us);
    new.emitted = Arc::new(emitted);
    applied(state, new, head, effects, p)
}

/// The head as of the clock and whether the state's derived figures are stale (`fold.rederive`).
pub fn rederive(state: &CustomerState, p: &Policy) -> (Option<Agg>, bool) {
    let Some(clock) = state.clock else { return (None, false) };
    if let Some(cached) = cached_head(state, p) {
        return (Some((**cached).clone()), false);
    }
    let (head, truth, _, _) = fold_open(state, p, Some(clock), None);
    let (effects, _) = publish(state, truth, state.frontier);
    let (stage, due, totals, kpi) = derived(&head, p);
    let stale = !effects.is_empty()
        || stage != state.stage
        || due != state.next_due
        || totals != state.totals
        || kpi != state.kpi;
    (Some(head), stale)
}

/// The fold of the events up to `as_of_us`, time advanced to it (`snapshot.head_as_of`);
/// Err(finalized instant) for an instant before the finalized history.
pub fn head_as_of(state: &CustomerState, as_of_us: i64, p: &Policy) -> Result<Agg, i64> {
    if let Some(t) = state.ckpt.t_us {
        if as_of_us < t {
            return Err(t);
        }
    }
    if let Some(cached) = cached_head(state, p) {
        if state.clock.is_some_and(|c| as_of_us >= c) {
            let mut h = (**cached).clone();
            advance_time(&mut h, as_of_us, &Ctx::new(&state.shop_id, &state.customer_id, p), &mut Vec::new());
            return Ok(h);
        }
    }
    Ok(fold_open(state, p, Some(as_of_us), None).0)
}

/// The head `scoring.engine` would count or erase: the cached one, else a re-fold to the clock.
pub fn head_now(state: &CustomerState, p: &Policy) -> Option<Agg> {
    if let Some(cached) = cached_head(state, p) {
        return Some((**cached).clone());
    }
    let clock = state.clock?;
    Some(fold_open(state, p, Some(clock), None).0)
}

fn totals(head: &Agg) -> [i64; 4] {
    [head.earned, head.redeemed, head.expired, head.clawed]
}

fn derived(head: &Agg, p: &Policy) -> (Option<Stage>, Option<i64>, [i64; 4], Option<Kpi>) {
    (head.stage, next_due(head, p), totals(head), contribution(head, head.stage, day_of(head.t_us.unwrap_or(0)), p))
}

fn applied(old: &Arc<CustomerState>, mut new: CustomerState, head: Agg, effects: Vec<J>, p: &Policy) -> Outcome {
    (new.stage, new.next_due, new.totals, new.kpi) = derived(&head, p);
    let before = kpi_of(old, p);
    new.head = Some((p.serial, Arc::new(head)));
    let kpi_after = new.kpi.clone();
    let stage_after = new.stage;
    Outcome {
        state: Arc::new(new),
        status: Status::Applied,
        changed: true,
        effects,
        stage_before: old.stage,
        stage_after,
        kpi_before: before,
        kpi_after,
    }
}

fn kpi_of(state: &CustomerState, p: &Policy) -> Option<Kpi> {
    if state.kpi.is_some() || state.clock.is_none() {
        return state.kpi.clone();
    }
    let clock = state.clock.unwrap();
    let head = match cached_head(state, p) {
        Some(h) => (**h).clone(),
        None => fold_open(state, p, Some(clock), None).0,
    };
    contribution(&head, state.stage, day_of(clock), p)
}

fn prune_seen(seen: IdMap<[i64; 2]>, max_ts: i64, p: &Policy) -> IdMap<[i64; 2]> {
    let horizon = max_ts - p.dedup_retention_days * US_PER_DAY;
    let n = seen.len();
    let first_due = seen.first().is_some_and(|(_, v)| v[1] < horizon);
    if !(n as i64 > p.max_seen_ids || (n > 2 * DEDUP_RECENT_IDS && first_due)) {
        return seen;
    }
    let items: Vec<(i64, [i64; 2])> = seen.into_iter().collect();
    let split = n - DEDUP_RECENT_IDS.min(p.max_seen_ids as usize);
    let (older, recent) = items.split_at(split);
    let room = (p.max_seen_ids - recent.len() as i64).max(0) as usize;
    let mut within: Vec<(i64, i64)> = older.iter().filter(|(_, v)| v[1] >= horizon).map(|(k, v)| (v[1], *k)).collect();
    let kept: std::collections::HashSet<i64> = if within.len() > room {
        within.sort_unstable_by(|a, b| b.cmp(a));
        within.iter().take(room).map(|&(_, k)| k).collect()
    } else {
        within.iter().map(|&(_, k)| k).collect()
    };
    let mut out: IdMap<[i64; 2]> = older.iter().filter(|(k, _)| kept.contains(k)).cloned().collect();
    out.extend(recent.iter().cloned());
    out
}

/// Drop detail no snapshot at or after the finalized instant can need; true if anything went.
fn prune_finalized(agg: &mut Agg, p: &Policy) -> bool {
    let day = day_of(agg.t_us.unwrap_or(0));
    let mut changed = false;
    let horizon = day - p.order_retention_days;
    if agg.orders.first().is_some_and(|(_, o)| o[O_DAY] < horizon) {
        agg.orders.retain(|_, o| o[O_DAY] >= horizon);
        changed = true;
    }
    let keep_from = day - 366;
    if agg.pdays.first().is_some_and(|&d| d < keep_from) {
        agg.pdays.retain(|&d| d >= keep_from);
        changed = true;
    }
    if agg.day_net.first().is_some_and(|r| r[0] < day - DAY_NET_DAYS) {
        agg.day_net.retain(|r| r[0] >= day - DAY_NET_DAYS);
        changed = true;
    }
    let fb_from = day - p.shop_nps_window_days;
    if agg.fb_recent.first().is_some_and(|r| r[0] <= fb_from) {
        agg.fb_recent.retain(|r| r[0] > fb_from);
        changed = true;
    }
    changed
}
