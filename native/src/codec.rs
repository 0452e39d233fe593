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
//
// A parser for exactly this format, reading the bytes once: no JSON tree, no
// intermediate values. Whitespace between tokens is accepted, as any JSON
// reader would; anything else a state cannot hold is a `Corrupt` error.

type R<T> = Result<T, DecodeError>;

struct P<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> P<'a> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\n' | b'\r' | b'\t') {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> R<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            bad(&format!("expected {:?} at byte {}", c as char, self.i))
        }
    }

    /// `,` (true) or `]` (false) after an array element.
    fn more(&mut self) -> R<bool> {
        match self.peek() {
            Some(b',') => {
                self.i += 1;
                Ok(true)
            }
            Some(b']') => {
                self.i += 1;
                Ok(false)
            }
            _ => bad(&format!("expected , or ] at byte {}", self.i)),
        }
    }

    fn word(&mut self, w: &[u8]) -> bool {
        if self.peek().is_some() && self.b[self.i..].starts_with(w) {
            self.i += w.len();
            true
        } else {
            false
        }
    }

    fn null(&mut self) -> bool {
        self.word(b"null")
    }

    fn int(&mut self) -> R<i64> {
        self.ws();
        let start = self.i;
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        let digits = self.i;
        while self.i < self.b.len() && self.b[self.i].is_ascii_digit() {
            self.i += 1;
        }
        let n = self.i - digits;
        if n == 0 || (n > 1 && self.b[digits] == b'0') || matches!(self.b.get(self.i), Some(b'.' | b'e' | b'E')) {
            return bad(&format!("expected an integer at byte {start}"));
        }
        // The digits are ASCII: the slice is valid UTF-8.
        std::str::from_utf8(&self.b[start..self.i])
            .ok()
            .and_then(|t| t.parse().ok())
            .map_or_else(|| bad("an integer beyond 64 bits"), Ok)
    }

    fn opt_int(&mut self) -> R<Option<i64>> {
        if self.null() {
            Ok(None)
        } else {
            self.int().map(Some)
        }
    }

    fn bool(&mut self) -> R<bool> {
        if self.word(b"true") {
            Ok(true)
        } else if self.word(b"false") {
            Ok(false)
        } else {
            bad("expected a boolean")
        }
    }

    fn string(&mut self) -> R<String> {
        self.eat(b'"')?;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let start = self.i;
            while self.i < self.b.len() && !matches!(self.b[self.i], b'"' | b'\\' | 0..=0x1f) {
                self.i += 1;
            }
            out.extend_from_slice(&self.b[start..self.i]);
            match self.b.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    // The input was checked to be UTF-8 and escapes write UTF-8.
                    return String::from_utf8(out).map_or_else(|_| bad("string"), Ok);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = self.b.get(self.i).copied();
                    self.i += 1;
                    let ch = match c {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => self.unicode_escape()?,
                        _ => return bad("string escape"),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                _ => return bad("unterminated string or a control character in it"),
            }
        }
    }

    fn hex4(&mut self) -> R<u32> {
        let h = self.b.get(self.i..self.i + 4).and_then(|h| std::str::from_utf8(h).ok());
        let v = h.and_then(|h| u32::from_str_radix(h, 16).ok()).map_or_else(|| bad("\\u escape"), Ok)?;
        self.i += 4;
        Ok(v)
    }

    /// After `\u`: one code point (a surrogate pair is two escapes).
    fn unicode_escape(&mut self) -> R<char> {
        let hi = self.hex4()?;
        let code = if (0xD800..0xDC00).contains(&hi) {
            if !self.b[self.i..].starts_with(b"\\u") {
                return bad("lone surrogate");
            }
            self.i += 2;
            let lo = self.hex4()?;
            if !(0xDC00..0xE000).contains(&lo) {
                return bad("lone surrogate");
            }
            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
        } else {
            hi
        };
        char::from_u32(code).map_or_else(|| bad("lone surrogate"), Ok)
    }

    fn arc(&mut self) -> R<Arc<str>> {
        self.string().map(Arc::from)
    }

    fn opt_arc(&mut self) -> R<Option<Arc<str>>> {
        if self.null() {
            Ok(None)
        } else {
            self.arc().map(Some)
        }
    }

    /// `[x, ...]`, each element read by `f`.
    fn seq<T>(&mut self, mut f: impl FnMut(&mut Self) -> R<T>) -> R<Vec<T>> {
        self.eat(b'[')?;
        let mut out = Vec::new();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(out);
        }
        loop {
            out.push(f(self)?);
            if !self.more()? {
                return Ok(out);
            }
        }
    }

    fn ints<const N: usize>(&mut self) -> R<[i64; N]> {
        self.eat(b'[')?;
        let mut out = [0; N];
        for (n, o) in out.iter_mut().enumerate() {
            if n > 0 {
                self.eat(b',')?;
            }
            *o = self.int()?;
        }
        self.eat(b']')?;
        Ok(out)
    }

    fn stage(&mut self) -> R<Option<Stage>> {
        if self.null() {
            return Ok(None);
        }
        let s = self.string()?;
        Stage::parse(&s).map_or_else(|| bad("unknown stage"), |s| Ok(Some(s)))
    }

    fn comma(&mut self) -> R<()> {
        self.eat(b',')
    }
}

fn decode_agg(p: &mut P) -> R<Agg> {
    p.eat(b'[')?;
    let mut a = Agg { t_us: p.opt_int()?, ..Agg::default() };
    p.comma()?;
    a.first_seen_us = p.opt_int()?;
    p.comma()?;
    a.purchase_count = p.int()?;
    p.comma()?;
    a.purchase_days = p.int()?;
    p.comma()?;
    a.first_purchase_us = p.opt_int()?;
    p.comma()?;
    a.last_purchase_us = p.opt_int()?;
    for v in [&mut a.spend_total, &mut a.refund_total, &mut a.margin_total, &mut a.first_day_net] {
        p.comma()?;
        *v = p.int()?;
    }
    p.comma()?;
    let orders = p.seq(|p| {
        p.eat(b'[')?;
        let k = p.arc()?;
        p.comma()?;
        let o = p.ints::<9>()?;
        p.eat(b']')?;
        Ok((k, Arc::new(o)))
    })?;
    a.orders = orders.into_iter().collect();
    p.comma()?;
    a.pdays = p.seq(P::int)?;
    p.comma()?;
    a.visit_days = p.int()?;
    for v in [&mut a.last_visit_day, &mut a.nps_last, &mut a.sow_last] {
        p.comma()?;
        *v = p.opt_int()?;
    }
    p.comma()?;
    a.fb_counts = p.ints::<3>()?;
    p.comma()?;
    a.fb_recent = p.seq(P::ints::<2>)?;
    p.comma()?;
    a.lots = p.seq(|p| {
        p.eat(b'[')?;
        let expires = p.int()?;
        p.comma()?;
        let remaining = p.int()?;
        p.comma()?;
        let order = p.arc()?;
        p.comma()?;
        let earned = p.int()?;
        p.eat(b']')?;
        Ok(Lot { expires, remaining, order, earned })
    })?;
    for v in [
        &mut a.earned,
        &mut a.redeemed,
        &mut a.expired,
        &mut a.clawed,
        &mut a.shortfall,
        &mut a.redemptions_rejected,
        &mut a.stamps,
        &mut a.free_items,
    ] {
        p.comma()?;
        *v = p.int()?;
    }
    p.comma()?;
    a.stage = p.stage()?;
    for v in [&mut a.orphan_refunds, &mut a.duplicate_orders, &mut a.refunds_capped] {
        p.comma()?;
        *v = p.int()?;
    }
    if !p.more()? {
        // version 1: 31 slots
        upgrade_v1(&mut a);
        upgrade_v2(&mut a);
        return Ok(a);
    }
    a.det_since = p.opt_int()?;
    p.comma()?;
    a.ever_det = p.bool()?;
    p.comma()?;
    a.fb_tp = p.seq(|p| {
        p.eat(b'[')?;
        let tp = p.opt_arc()?;
        let mut c = [0; 3];
        for v in c.iter_mut() {
            p.comma()?;
            *v = p.int()?;
        }
        p.eat(b']')?;
        Ok((tp, c))
    })?;
    if !p.more()? {
        // version 2: 34 slots
        upgrade_v2(&mut a);
        return Ok(a);
    }
    a.day_net = p.seq(P::ints::<3>)?;
    p.eat(b']')?;
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

fn decode_rec(p: &mut P) -> R<Arc<Rec>> {
    p.eat(b'[')?;
    let ts = p.int()?;
    p.comma()?;
    let event_id = p.arc()?;
    p.comma()?;
    let kind = p.string()?;
    p.comma()?;
    let payload = match kind.as_str() {
        "P" | "R" => {
            let order = p.arc()?;
            p.comma()?;
            let amount = p.int()?;
            p.comma()?;
            if kind == "P" {
                let rate = p.opt_arc()?;
                if rate.as_deref().is_some_and(|r| !rate_fits(r)) {
                    return bad("margin rate");
                }
                Payload::Purchase { order, amount, rate }
            } else {
                null_slot(p)?;
                Payload::Refund { order, amount }
            }
        }
        "V" => {
            null_slot(p)?;
            p.comma()?;
            null_slot(p)?;
            p.comma()?;
            null_slot(p)?;
            Payload::Visit
        }
        "F" => {
            let nps = p.int()?;
            p.comma()?;
            let sow = p.opt_int()?;
            p.comma()?;
            let extra = if p.null() {
                None
            } else {
                p.eat(b'[')?;
                let t = p.opt_arc()?;
                p.comma()?;
                let c = p.opt_arc()?;
                p.eat(b']')?;
                Some((t, c))
            };
            Payload::Feedback { nps, sow, extra }
        }
        "X" => {
            let points = p.int()?;
            p.comma()?;
            null_slot(p)?;
            p.comma()?;
            null_slot(p)?;
            Payload::Redemption { points }
        }
        _ => return bad("event kind"),
    };
    p.eat(b']')?;
    Ok(Arc::new(Rec { ts, event_id, payload }))
}

/// A record slot its kind leaves empty: null (the Python engine never reads it).
fn null_slot(p: &mut P) -> R<()> {
    if p.null() {
        Ok(())
    } else {
        bad("expected null in an unused record slot")
    }
}

fn decode_kpi(p: &mut P) -> R<Option<Kpi>> {
    if p.null() {
        return Ok(None);
    }
    p.eat(b'[')?;
    let buyer = p.int()?;
    p.comma()?;
    let repeater = p.int()?;
    p.comma()?;
    let loyalty_type = p.arc()?;
    p.comma()?;
    let wallet = p.opt_arc()?;
    p.comma()?;
    let detractor = p.opt_arc()?;
    let mut n = [0; 3];
    for v in n.iter_mut() {
        p.comma()?;
        *v = p.int()?;
    }
    p.comma()?;
    let days = p.seq(P::ints::<2>)?;
    p.eat(b']')?;
    let [spend_total, purchase_count, attached] = n;
    Ok(Some(Kpi { buyer, repeater, loyalty_type, wallet, detractor, spend_total, purchase_count, attached, days }))
}

fn decode_emitted(p: &mut P) -> R<Emitted> {
    let digest = p.int()?;
    p.comma()?;
    let at = p.int()?;
    p.comma()?;
    let kind = p.string()?;
    let kind = EffKind::parse(&kind).map_or_else(|| bad("effect kind"), Ok)?;
    Ok(Emitted { digest, at, kind })
}

/// `[[keys], [values]]` (formats 3 and 4) into a map, keys in order.
fn columns<'a, V>(p: &mut P<'a>, value: impl FnMut(&mut P<'a>) -> R<V>) -> R<IdMap<V>> {
    p.eat(b'[')?;
    let keys = p.seq(P::int)?;
    p.comma()?;
    let values = p.seq(value)?;
    p.eat(b']')?;
    if keys.len() != values.len() {
        return bad("seen or emitted: keys and values differ in number");
    }
    Ok(keys.into_iter().zip(values).collect())
}

pub fn decode_state(data: &[u8]) -> R<CustomerState> {
    if std::str::from_utf8(data).is_err() {
        return bad("not UTF-8");
    }
    let mut p = P { b: data, i: 0 };
    p.eat(b'[')?;
    let version = p.int();
    let version = match version {
        Ok(v) if READABLE.contains(&v) => v,
        _ => return Err(other_format(data)),
    };
    p.comma()?;
    let mut s = CustomerState::new(p.arc()?, {
        p.comma()?;
        p.arc()?
    });
    p.comma()?;
    s.ckpt = Arc::new(decode_agg(&mut p)?);
    p.comma()?;
    s.buf = Arc::new(p.seq(decode_rec)?);
    p.comma()?;
    if version >= 3 {
        s.seen = Arc::new(columns(&mut p, P::ints::<2>)?);
        p.comma()?;
        s.emitted = Arc::new(columns(&mut p, |p| {
            p.eat(b'[')?;
            let e = decode_emitted(p)?;
            p.eat(b']')?;
            Ok(e)
        })?);
    } else {
        let seen = p.seq(P::ints::<3>)?;
        s.seen = Arc::new(seen.into_iter().map(|r| (r[0], [r[1], r[2]])).collect());
        p.comma()?;
        let emitted = p.seq(|p| {
            p.eat(b'[')?;
            let k = p.int()?;
            p.comma()?;
            let e = decode_emitted(p)?;
            p.eat(b']')?;
            Ok((k, e))
        })?;
        s.emitted = Arc::new(emitted.into_iter().collect());
    }
    p.comma()?;
    s.max_ts = p.opt_int()?;
    p.comma()?;
    s.frontier = p.opt_int()?;
    p.comma()?;
    s.clock = p.opt_int()?;
    p.comma()?;
    s.stage = p.stage()?;
    p.comma()?;
    s.next_due = p.opt_int()?;
    p.comma()?;
    s.totals = p.ints::<4>()?;
    if version >= 2 {
        p.comma()?;
        s.kpi = decode_kpi(&mut p)?;
    }
    if version == 4 {
        p.comma()?;
        p.eat(b'{')?;
        let mut positions = IndexMap::new();
        if p.peek() == Some(b'}') {
            p.i += 1;
        } else {
            loop {
                let k = p.arc()?;
                p.eat(b':')?;
                positions.insert(k, p.int()?);
                match p.peek() {
                    Some(b',') => p.i += 1,
                    Some(b'}') => {
                        p.i += 1;
                        break;
                    }
                    _ => return bad("positions"),
                }
            }
        }
        s.positions = Arc::new(positions);
    }
    p.eat(b']')?;
    if p.peek().is_some() {
        return bad("trailing bytes");
    }
    Ok(s)
}

/// The error for bytes whose first element is not a readable format number:
/// a newer build's state when they are JSON starting with a larger integer.
fn other_format(data: &[u8]) -> DecodeError {
    let Ok(Value::Array(raw)) = serde_json::from_slice::<Value>(data) else {
        return DecodeError::Corrupt("unreadable customer state: not a JSON array".into());
    };
    match raw.first() {
        Some(v) if v.as_i64().is_some_and(|v| v > FORMAT_VERSION) => {
            DecodeError::Newer(format!("state format {v}, written by a newer build; this build reads (1, 2, 3, 4)"))
        }
        Some(v) => DecodeError::Corrupt(format!("state format {v}; this build reads (1, 2, 3, 4)")),
        None => DecodeError::Corrupt("unreadable customer state: empty".into()),
    }
}

/// A margin rate "num/den" the fold can compute with: both 64-bit, den > 0.
pub fn rate_fits(rate: &str) -> bool {
    rate.split_once('/').is_some_and(|(n, d)| n.parse::<i64>().is_ok() && d.parse::<i64>().is_ok_and(|d| d > 0))
}
