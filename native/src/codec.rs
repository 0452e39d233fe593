//! The state format (`scoring.state`, `scoring.aggregate`): formats 1-4 read,
//! 3 and 4 written, byte for byte as the Python engine writes them.

use crate::json::*;
use crate::model::*;
use crate::rules::add_order_day;
use indexmap::IndexMap;
use serde_json::Value;
use std::sync::Arc;

pub const FORMAT_VERSION: i64 = 4;
const READABLE: [i64; 4] = [1, 2, 3, 4];
const AGG_SLOTS: usize = 35;
const V2_SLOTS: usize = 34;
const V1_SLOTS: usize = 31;

pub enum DecodeError {
    /// written by a newer build (its format number)
    Newer(String),
    Corrupt(String),
}

fn bad<T>(what: &str) -> Result<T, DecodeError> {
    Err(DecodeError::Corrupt(format!("unreadable customer state: {what}")))
}

// ---- writing ----------------------------------------------------------------

pub fn encode_agg(out: &mut Vec<u8>, a: &Agg) {
    out.push(b'[');
    write_opt_int(out, a.t_us);
    out.push(b',');
    write_opt_int(out, a.first_seen_us);
    out.push(b',');
    write_int(out, a.purchase_count);
    out.push(b',');
    write_int(out, a.purchase_days);
    out.push(b',');
    write_opt_int(out, a.first_purchase_us);
    out.push(b',');
    write_opt_int(out, a.last_purchase_us);
    for v in [a.spend_total, a.refund_total, a.margin_total, a.first_day_net] {
        out.push(b',');
        write_int(out, v);
    }
    out.push(b',');
    write_seq(out, &a.orders, |out, (k, o)| {
        out.push(b'[');
        write_str(out, k);
        out.push(b',');
        write_ints(out, &o[..]);
        out.push(b']');
    });
    out.push(b',');
    write_ints(out, &a.pdays);
    out.push(b',');
    write_int(out, a.visit_days);
    for v in [a.last_visit_day, a.nps_last, a.sow_last] {
        out.push(b',');
        write_opt_int(out, v);
    }
    out.push(b',');
    write_ints(out, &a.fb_counts);
    out.push(b',');
    write_seq(out, &a.fb_recent, |out, r| write_ints(out, r));
    out.push(b',');
    write_seq(out, &a.lots, |out, l| {
        out.push(b'[');
        write_int(out, l.expires);
        out.push(b',');
        write_int(out, l.remaining);
        out.push(b',');
        write_str(out, &l.order);
        out.push(b',');
        write_int(out, l.earned);
        out.push(b']');
    });
    for v in [a.earned, a.redeemed, a.expired, a.clawed, a.shortfall, a.redemptions_rejected, a.stamps, a.free_items] {
        out.push(b',');
        write_int(out, v);
    }
    out.push(b',');
    write_opt_str(out, stage_name(a.stage));
    for v in [a.orphan_refunds, a.duplicate_orders, a.refunds_capped] {
        out.push(b',');
        write_int(out, v);
    }
    out.push(b',');
    write_opt_int(out, a.det_since);
    out.extend_from_slice(if a.ever_det { b",true," } else { b",false," });
    write_seq(out, &a.fb_tp, |out, (tp, c)| {
        out.push(b'[');
        write_opt_str(out, tp.as_deref());
        for v in c {
            out.push(b',');
            write_int(out, *v);
        }
        out.push(b']');
    });
    out.push(b',');
    write_seq(out, &a.day_net, |out, r| write_ints(out, r));
    out.push(b']');
}

/// `[item, item, ...]`, each written by `f`.
fn write_seq<T>(out: &mut Vec<u8>, items: impl IntoIterator<Item = T>, mut f: impl FnMut(&mut Vec<u8>, T)) {
    out.push(b'[');
    for (n, item) in items.into_iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        f(out, item);
    }
    out.push(b']');
}

fn write_ints(out: &mut Vec<u8>, v: &[i64]) {
    write_seq(out, v, |out, i| write_int(out, *i));
}

fn write_rec(out: &mut Vec<u8>, r: &Rec) {
    out.push(b'[');
    write_int(out, r.ts);
    out.push(b',');
    write_str(out, &r.event_id);
    match &r.payload {
        Payload::Purchase { order, amount, rate } => {
            out.extend_from_slice(b",\"P\",");
            write_str(out, order);
            out.push(b',');
            write_int(out, *amount);
            out.push(b',');
            write_opt_str(out, rate.as_deref());
        }
        Payload::Refund { order, amount } => {
            out.extend_from_slice(b",\"R\",");
            write_str(out, order);
            out.push(b',');
            write_int(out, *amount);
            out.extend_from_slice(b",null");
        }
        Payload::Visit => out.extend_from_slice(b",\"V\",null,null,null"),
        Payload::Feedback { nps, sow, extra } => {
            out.extend_from_slice(b",\"F\",");
            write_int(out, *nps);
            out.push(b',');
            write_opt_int(out, *sow);
            out.push(b',');
            match extra {
                None => out.extend_from_slice(b"null"),
                Some((t, c)) => {
                    out.push(b'[');
                    write_opt_str(out, t.as_deref());
                    out.push(b',');
                    write_opt_str(out, c.as_deref());
                    out.push(b']');
                }
            }
        }
        Payload::Redemption { points } => {
            out.extend_from_slice(b",\"X\",");
            write_int(out, *points);
            out.extend_from_slice(b",null,null");
        }
    }
    out.push(b']');
}

pub fn encode_kpi(out: &mut Vec<u8>, k: &Option<Kpi>) {
    let Some(k) = k else {
        out.extend_from_slice(b"null");
        return;
    };
    out.push(b'[');
    write_int(out, k.buyer);
    out.push(b',');
    write_int(out, k.repeater);
    out.push(b',');
    write_str(out, &k.loyalty_type);
    out.push(b',');
    write_opt_str(out, k.wallet.as_deref());
    out.push(b',');
    write_opt_str(out, k.detractor.as_deref());
    for v in [k.spend_total, k.purchase_count, k.attached] {
        out.push(b',');
        write_int(out, v);
    }
    out.push(b',');
    write_seq(out, &k.days, |out, d| write_ints(out, d));
    out.push(b']');
}

/// The state's bytes in format 4 or 3 (3 leaves the input positions out).
pub fn encode_state(s: &CustomerState, version: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    out.push(b'[');
    write_int(&mut out, version);
    out.push(b',');
    write_str(&mut out, &s.shop_id);
    out.push(b',');
    write_str(&mut out, &s.customer_id);
    out.push(b',');
    encode_agg(&mut out, &s.ckpt);
    out.push(b',');
    write_seq(&mut out, s.buf.iter(), |out, r| write_rec(out, r));
    out.extend_from_slice(b",[");
    write_seq(&mut out, s.seen.keys(), |out, k| write_int(out, *k));
    out.push(b',');
    write_seq(&mut out, s.seen.values(), |out, v| write_ints(out, v));
    out.extend_from_slice(b"],[");
    write_seq(&mut out, s.emitted.keys(), |out, k| write_int(out, *k));
    out.push(b',');
    write_seq(&mut out, s.emitted.values(), |out, e| {
        out.push(b'[');
        write_int(out, e.digest);
        out.push(b',');
        write_int(out, e.at);
        out.push(b',');
        write_str(out, e.kind.name());
        out.push(b']');
    });
    out.push(b']');
    for v in [s.max_ts, s.frontier, s.clock] {
        out.push(b',');
        write_opt_int(&mut out, v);
    }
    out.push(b',');
    write_opt_str(&mut out, stage_name(s.stage));
    out.push(b',');
    write_opt_int(&mut out, s.next_due);
    out.push(b',');
    write_ints(&mut out, &s.totals);
    out.push(b',');
    encode_kpi(&mut out, &s.kpi);
    if version == FORMAT_VERSION {
        out.extend_from_slice(b",{");
        for (n, (k, v)) in s.positions.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            write_str(&mut out, k);
            out.push(b':');
            write_int(&mut out, *v);
        }
        out.push(b'}');
    }
    out.push(b']');
    out
}

// ---- reading ----------------------------------------------------------------

type R<T> = Result<T, DecodeError>;

fn arr(v: &Value) -> R<&Vec<Value>> {
    v.as_array().map_or_else(|| bad("expected an array"), Ok)
}

fn int(v: &Value) -> R<i64> {
    v.as_i64().map_or_else(|| bad("expected an integer"), Ok)
}

fn opt_int(v: &Value) -> R<Option<i64>> {
    if v.is_null() {
        Ok(None)
    } else {
        int(v).map(Some)
    }
}

fn string(v: &Value) -> R<Arc<str>> {
    v.as_str().map_or_else(|| bad("expected a string"), |s| Ok(Arc::from(s)))
}

fn opt_string(v: &Value) -> R<Option<Arc<str>>> {
    if v.is_null() {
        Ok(None)
    } else {
        string(v).map(Some)
    }
}

fn ints<const N: usize>(v: &Value) -> R<[i64; N]> {
    let a = arr(v)?;
    if a.len() != N {
        return bad("wrong length");
    }
    let mut out = [0; N];
    for (o, x) in out.iter_mut().zip(a) {
        *o = int(x)?;
    }
    Ok(out)
}

fn stage(v: &Value) -> R<Option<Stage>> {
    if v.is_null() {
        return Ok(None);
    }
    match v.as_str().and_then(Stage::parse) {
        Some(s) => Ok(Some(s)),
        None => bad("unknown stage"),
    }
}

fn decode_agg(v: &Value) -> R<Agg> {
    let d = arr(v)?;
    let n = d.len();
    if n != AGG_SLOTS && n != V2_SLOTS && n != V1_SLOTS {
        return Err(DecodeError::Corrupt(format!(
            "unreadable customer state: aggregate has {n} slots, expected {AGG_SLOTS}"
        )));
    }
    let mut a = Agg {
        t_us: opt_int(&d[0])?,
        first_seen_us: opt_int(&d[1])?,
        purchase_count: int(&d[2])?,
        purchase_days: int(&d[3])?,
        first_purchase_us: opt_int(&d[4])?,
        last_purchase_us: opt_int(&d[5])?,
        spend_total: int(&d[6])?,
        refund_total: int(&d[7])?,
        margin_total: int(&d[8])?,
        first_day_net: int(&d[9])?,
        orders: IndexMap::new(),
        pdays: arr(&d[11])?.iter().map(int).collect::<R<_>>()?,
        visit_days: int(&d[12])?,
        last_visit_day: opt_int(&d[13])?,
        nps_last: opt_int(&d[14])?,
        sow_last: opt_int(&d[15])?,
        fb_counts: ints::<3>(&d[16])?,
        fb_recent: arr(&d[17])?.iter().map(ints::<2>).collect::<R<_>>()?,
        lots: Vec::new(),
        earned: int(&d[19])?,
        redeemed: int(&d[20])?,
        expired: int(&d[21])?,
        clawed: int(&d[22])?,
        shortfall: int(&d[23])?,
        redemptions_rejected: int(&d[24])?,
        stamps: int(&d[25])?,
        free_items: int(&d[26])?,
        stage: stage(&d[27])?,
        orphan_refunds: int(&d[28])?,
        duplicate_orders: int(&d[29])?,
        refunds_capped: int(&d[30])?,
        det_since: None,
        ever_det: false,
        fb_tp: Vec::new(),
        day_net: Vec::new(),
    };
    for pair in arr(&d[10])? {
        let p = arr(pair)?;
        if p.len() != 2 {
            return bad("order entry");
        }
        a.orders.insert(string(&p[0])?, Arc::new(ints::<9>(&p[1])?));
    }
    for lot in arr(&d[18])? {
        let l = arr(lot)?;
        if l.len() != 4 {
            return bad("lot");
        }
        a.lots.push(Lot { expires: int(&l[0])?, remaining: int(&l[1])?, order: string(&l[2])?, earned: int(&l[3])? });
    }
    if n == V1_SLOTS {
        upgrade_v1(&mut a);
    } else {
        a.det_since = opt_int(&d[31])?;
        a.ever_det = d[32].as_bool().map_or_else(|| bad("ever_det"), Ok)?;
        for row in arr(&d[33])? {
            let r = arr(row)?;
            if r.len() != 4 {
                return bad("touchpoint row");
            }
            a.fb_tp.push((opt_string(&r[0])?, [int(&r[1])?, int(&r[2])?, int(&r[3])?]));
        }
    }
    if n == AGG_SLOTS {
        a.day_net = arr(&d[34])?.iter().map(ints::<3>).collect::<R<_>>()?;
    } else {
        upgrade_v2(&mut a);
    }
    Ok(a)
}

fn upgrade_v1(a: &mut Agg) {
    a.ever_det = a.fb_counts[2] > 0;
    a.det_since = None;
    let mut run_day = None;
    for r in a.fb_recent.iter().rev() {
        if r[1] != 2 {
            break;
        }
        run_day = Some(r[0]);
    }
    if let Some(d) = run_day {
        a.det_since = Some(d * US_PER_DAY);
    }
    a.fb_tp = if a.fb_counts.iter().any(|&c| c != 0) { vec![(None, a.fb_counts)] } else { Vec::new() };
}

fn upgrade_v2(a: &mut Agg) {
    a.day_net = Vec::new();
    let Some(t) = a.t_us else { return };
    let keep_from = day_of(t) - crate::rules::DAY_NET_DAYS;
    let orders: Vec<Order> = a.orders.values().map(|o| **o).collect();
    for o in orders {
        if o[O_DAY] >= keep_from {
            add_order_day(a, o[O_DAY], o[O_AMOUNT] - o[O_REFUNDED], 1);
        }
    }
}

fn decode_rec(v: &Value) -> R<Arc<Rec>> {
    let r = arr(v)?;
    if r.len() != 6 {
        return bad("buffered event");
    }
    let ts = int(&r[0])?;
    let event_id = string(&r[1])?;
    let payload = match r[2].as_str() {
        Some("P") => Payload::Purchase { order: string(&r[3])?, amount: int(&r[4])?, rate: opt_string(&r[5])? },
        Some("R") => Payload::Refund { order: string(&r[3])?, amount: int(&r[4])? },
        Some("V") => Payload::Visit,
        Some("F") => Payload::Feedback {
            nps: int(&r[3])?,
            sow: opt_int(&r[4])?,
            extra: if r[5].is_null() {
                None
            } else {
                let e = arr(&r[5])?;
                if e.len() != 2 {
                    return bad("feedback extra");
                }
                Some((opt_string(&e[0])?, opt_string(&e[1])?))
            },
        },
        Some("X") => Payload::Redemption { points: int(&r[3])? },
        _ => return bad("event kind"),
    };
    if let Payload::Purchase { rate: Some(rate), .. } = &payload {
        if !rate_fits(rate) {
            return bad("margin rate");
        }
    }
    Ok(Arc::new(Rec { ts, event_id, payload }))
}

fn decode_kpi(v: &Value) -> R<Option<Kpi>> {
    if v.is_null() {
        return Ok(None);
    }
    let k = arr(v)?;
    if k.len() != 9 {
        return bad("kpi");
    }
    Ok(Some(Kpi {
        buyer: int(&k[0])?,
        repeater: int(&k[1])?,
        loyalty_type: string(&k[2])?,
        wallet: opt_string(&k[3])?,
        detractor: opt_string(&k[4])?,
        spend_total: int(&k[5])?,
        purchase_count: int(&k[6])?,
        attached: int(&k[7])?,
        days: arr(&k[8])?.iter().map(ints::<2>).collect::<R<_>>()?,
    }))
}

pub fn decode_state(data: &[u8]) -> R<CustomerState> {
    let raw: Value = match serde_json::from_slice(data) {
        Ok(v) => v,
        Err(e) => return Err(DecodeError::Corrupt(format!("unreadable customer state: {e}"))),
    };
    let Some(raw) = raw.as_array() else { return bad("not an array") };
    let Some(first) = raw.first() else { return bad("empty") };
    let version = match first.as_i64() {
        Some(v) if READABLE.contains(&v) => v,
        Some(v) if v > FORMAT_VERSION => {
            return Err(DecodeError::Newer(format!(
                "state format {v}, written by a newer build; this build reads (1, 2, 3, 4)"
            )))
        }
        _ => return Err(DecodeError::Corrupt(format!("state format {first}; this build reads (1, 2, 3, 4)"))),
    };
    let want = match version {
        1 => 13,
        2 | 3 => 14,
        _ => 15,
    };
    if raw.len() != want {
        return bad("wrong number of fields");
    }
    let mut s = CustomerState::new(string(&raw[1])?, string(&raw[2])?);
    s.ckpt = Arc::new(decode_agg(&raw[3])?);
    s.buf = Arc::new(arr(&raw[4])?.iter().map(decode_rec).collect::<R<_>>()?);
    let mut seen = IndexMap::new();
    let mut emitted = IndexMap::new();
    if version >= 3 {
        let sv = arr(&raw[5])?;
        let ev = arr(&raw[6])?;
        if sv.len() != 2 || ev.len() != 2 {
            return bad("seen or emitted");
        }
        let (sk, svals) = (arr(&sv[0])?, arr(&sv[1])?);
        let (ek, evals) = (arr(&ev[0])?, arr(&ev[1])?);
        if sk.len() != svals.len() || ek.len() != evals.len() {
            return bad("seen or emitted lengths");
        }
        for (k, v) in sk.iter().zip(svals) {
            seen.insert(int(k)?, ints::<2>(v)?);
        }
        for (k, v) in ek.iter().zip(evals) {
            emitted.insert(int(k)?, decode_emitted(arr(v)?)?);
        }
    } else {
        for row in arr(&raw[5])? {
            let r = arr(row)?;
            if r.len() != 3 {
                return bad("seen row");
            }
            seen.insert(int(&r[0])?, [int(&r[1])?, int(&r[2])?]);
        }
        for row in arr(&raw[6])? {
            let r = arr(row)?;
            if r.len() != 4 {
                return bad("emitted row");
            }
            emitted.insert(int(&r[0])?, decode_emitted(&r[1..])?);
        }
    }
    s.seen = Arc::new(seen);
    s.emitted = Arc::new(emitted);
    s.max_ts = opt_int(&raw[7])?;
    s.frontier = opt_int(&raw[8])?;
    s.clock = opt_int(&raw[9])?;
    s.stage = stage(&raw[10])?;
    s.next_due = opt_int(&raw[11])?;
    s.totals = ints::<4>(&raw[12])?;
    if version >= 2 {
        s.kpi = decode_kpi(&raw[13])?;
    }
    if version == 4 {
        let Some(pos) = raw[14].as_object() else {
            return bad("positions");
        };
        let mut positions = IndexMap::new();
        for (k, v) in pos {
            positions.insert(Arc::from(k.as_str()), int(v)?);
        }
        s.positions = Arc::new(positions);
    }
    Ok(s)
}

fn decode_emitted(v: &[Value]) -> R<Emitted> {
    if v.len() != 3 {
        return bad("emitted entry");
    }
    let kind = match v[2].as_str().and_then(EffKind::parse) {
        Some(k) => k,
        None => return bad("effect kind"),
    };
    Ok(Emitted { digest: int(&v[0])?, at: int(&v[1])?, kind })
}

/// A margin rate "num/den" the fold can compute with: both 64-bit, den > 0.
pub fn rate_fits(rate: &str) -> bool {
    rate.split_once('/').is_some_and(|(n, d)| n.parse::<i64>().is_ok() && d.parse::<i64>().is_ok_and(|d| d > 0))
}
