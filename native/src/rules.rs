//! Stages, rewards, money and time: `scoring.stages`, `scoring.rewards`,
//! `scoring.ltv`, `scoring.nps`, `scoring.clock`, `scoring.shop.contribution`
//! and `scoring.effects`, line for line.

use crate::json::{write, J};
use crate::model::*;
use blake2::digest::{Update, VariableOutput};
use blake2::Blake2bVar;
use std::fmt::Write as _;
use std::sync::Arc;

// ---- time -----------------------------------------------------------------

/// RFC 3339 in UTC with a `Z`; microseconds only when not zero (Python's
/// naive `isoformat()` plus `Z`).
pub fn rfc3339(us: i64) -> String {
    let parts = instant_parts(us);
    if (0..=9999).contains(&parts.0) {
        rfc3339_by_hand(parts)
    } else {
        rfc3339_formatted(parts)
    }
}

/// (year, month, day, second of the day, microseconds) of an instant in UTC.
type InstantParts = (i64, i64, i64, i64, i64);

fn instant_parts(us: i64) -> InstantParts {
    let rem = us.rem_euclid(US_PER_DAY);
    let (y, m, d) = civil_from_days(us.div_euclid(US_PER_DAY));
    (y, m, d, rem / 1_000_000, rem % 1_000_000)
}

/// Years 0-9999: the digits by hand into a fixed buffer. `write!` cost about
/// 8 000 instructions per instant, and a score record and most effects carry several.
fn rfc3339_by_hand((y, m, d, secs, micros): InstantParts) -> String {
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    digits(&mut b[0..4], y);
    digits(&mut b[5..7], m);
    digits(&mut b[8..10], d);
    digits(&mut b[11..13], secs / 3600);
    digits(&mut b[14..16], secs / 60 % 60);
    digits(&mut b[17..19], secs % 60);
    let text = if micros != 0 {
        digits(&mut b[20..26], micros);
        &b[..]
    } else {
        b[19] = b'Z';
        &b[..20]
    };
    String::from_utf8(text.to_vec()).expect("ASCII digits")
}

/// Any year: the general path, taken for years outside 0-9999.
fn rfc3339_formatted((y, m, d, secs, micros): InstantParts) -> String {
    let mut s = String::with_capacity(27);
    let _ = write!(s, "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", y, m, d, secs / 3600, secs / 60 % 60, secs % 60);
    if micros != 0 {
        let _ = write!(s, ".{:06}", micros);
    }
    s.push('Z');
    s
}

/// `v` (0 <= v < 10^len) as exactly `out.len()` decimal digits, zero-padded.
fn digits(out: &mut [u8], mut v: i64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// (year, month, day) of a day number since 1970-01-01 (proleptic Gregorian).
pub(crate) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

// ---- digests and effects ---------------------------------------------------

pub(crate) fn blake8(data: &[u8]) -> i64 {
    let mut h = Blake2bVar::new(8).expect("8 is a valid blake2b size");
    h.update(data);
    let mut out = [0u8; 8];
    h.finalize_variable(&mut out).expect("8 bytes");
    (u64::from_be_bytes(out) >> 1) as i64
}

/// A part of an effect id, written as Python's `str` writes it.
pub enum Part<'a> {
    S(&'a str),
    I(i64),
    None,
}

pub fn effect_id(shop: &str, cust: &str, parts: &[Part]) -> i64 {
    let mut raw = String::with_capacity(64);
    raw.push_str(shop);
    raw.push('\x1f');
    raw.push_str(cust);
    for p in parts {
        raw.push('\x1f');
        match p {
            Part::S(s) => raw.push_str(s),
            Part::I(i) => {
                let _ = write!(raw, "{}", i);
            }
            Part::None => raw.push_str("None"),
        }
    }
    blake8(raw.as_bytes())
}

pub fn digest(effect: &J) -> i64 {
    let mut out = Vec::with_capacity(256);
    write(&mut out, effect, true);
    blake8(&out)
}

pub fn id_hex(eid: i64) -> J {
    J::Str(Arc::from(format!("{:016x}", eid)))
}

fn head4(kind: &'static str, shop: &Arc<str>, cust: &Arc<str>, eid: i64) -> Vec<(&'static str, J)> {
    vec![
        ("kind", J::str(kind)),
        ("id", id_hex(eid)),
        ("shop_id", J::Str(shop.clone())),
        ("customer_id", J::Str(cust.clone())),
    ]
}

#[allow(clippy::too_many_arguments)]
pub fn ledger(
    shop: &Arc<str>,
    cust: &Arc<str>,
    eid: i64,
    entry: &str,
    points: i64,
    at: i64,
    balance_after: i64,
    extra: Vec<(&'static str, J)>,
) -> J {
    let mut o = head4("ledger", shop, cust, eid);
    o.push(("entry", J::str(entry)));
    o.push(("points", J::Int(points)));
    o.push(("at", J::Str(Arc::from(rfc3339(at)))));
    o.push(("balance_after", J::Int(balance_after)));
    o.extend(extra);
    J::Obj(o)
}

pub fn transition(shop: &Arc<str>, cust: &Arc<str>, eid: i64, from: Option<Stage>, to: Stage, at: i64, cause: J) -> J {
    let mut o = head4("transition", shop, cust, eid);
    o.push(("from", J::opt_str(stage_name(from))));
    o.push(("to", J::str(to.name())));
    o.push(("at", J::Str(Arc::from(rfc3339(at)))));
    o.push(("cause", cause));
    J::Obj(o)
}

pub fn void(kind: EffKind, shop: &Arc<str>, cust: &Arc<str>, eid: i64) -> J {
    let mut o = head4(kind.name(), shop, cust, eid);
    o.push(("void", J::Bool(true)));
    J::Obj(o)
}

// ---- money -----------------------------------------------------------------

/// round-half-even(num / den), den != 0.
pub fn round_ratio(num: i128, den: i128) -> i128 {
    let (num, den) = if den < 0 { (-num, -den) } else { (num, den) };
    let mut q = num.div_euclid(den);
    let r = num.rem_euclid(den);
    let twice = 2 * r;
    if twice > den || (twice == den && q.rem_euclid(2) == 1) {
        q += 1;
    }
    q
}

pub fn margin_of(net: i64, num: i64, den: i64) -> i64 {
    round_ratio(net as i128 * num as i128, den as i128) as i64
}

// ---- windows ---------------------------------------------------------------

pub const DAY_NET_DAYS: i64 = 366;
pub const SPEND_WINDOW_DAYS: i64 = 365;

pub fn add_order_day(agg: &mut Agg, day: i64, net: i64, orders: i64) {
    let rows = &mut agg.day_net;
    let mut i = rows.len();
    while i > 0 && rows[i - 1][0] > day {
        i -= 1;
    }
    if i > 0 && rows[i - 1][0] == day {
        let old = rows[i - 1];
        rows[i - 1] = [day, old[1] + net, old[2] + orders];
    } else if orders != 0 {
        rows.insert(i, [day, net, orders]);
    }
}

pub fn window_totals(agg: &Agg, day: i64, window: i64) -> (i64, i64) {
    let lo = day - window;
    let (mut net, mut orders) = (0, 0);
    for row in agg.day_net.iter().rev() {
        let d = row[0];
        if d <= lo {
            break;
        }
        if d <= day {
            net += row[1];
            orders += row[2];
        }
    }
    (net, orders)
}

fn bisect_right(v: &[i64], x: i64) -> usize {
    v.partition_point(|&e| e <= x)
}

pub fn purchase_days_in_window(agg: &Agg, day: i64, window: i64) -> i64 {
    (bisect_right(&agg.pdays, day) - bisect_right(&agg.pdays, day - window)) as i64
}

// ---- stages ----------------------------------------------------------------

fn at_risk_days(agg: &Agg, p: &Policy) -> i64 {
    let span = day_of(agg.last_purchase_us.unwrap_or(0)) - day_of(agg.first_purchase_us.unwrap_or(0));
    let v = ((p.at_risk_interval_factor as i128 * span as i128).div_euclid((agg.purchase_days - 1) as i128)) as i64;
    p.at_risk_min_days.max(v)
}

pub fn stage_on(agg: &Agg, day: i64, p: &Policy) -> Stage {
    if agg.purchase_count == 0 {
        return Stage::FirstVisit;
    }
    let recency = day - day_of(agg.last_purchase_us.unwrap_or(0));
    if recency > p.lapsed_days {
        return Stage::Lapsed;
    }
    if agg.purchase_days >= 2 && recency > at_risk_days(agg, p) {
        return Stage::AtRisk;
    }
    let in_window = purchase_days_in_window(agg, day, p.attached_window_days);
    if in_window >= p.attached_min_purchase_days {
        let tenure = day - day_of(agg.first_seen_us.unwrap_or(0));
        if agg.purchase_days >= p.loyal_min_purchase_days
            && tenure >= p.loyal_min_tenure_days
            && !matches!(agg.nps_last, Some(n) if n <= p.loyal_excluded_max_nps)
        {
            return Stage::Loyal;
        }
        return Stage::Attached;
    }
    if agg.purchase_days >= 2 {
        return Stage::Repeat;
    }
    Stage::FirstPurchase
}

pub fn change_days(agg: &Agg, after_day: i64, through_day: i64, p: &Policy) -> Vec<i64> {
    if agg.purchase_count == 0 || through_day <= after_day {
        return Vec::new();
    }
    let last = day_of(agg.last_purchase_us.unwrap_or(0));
    let mut cands = vec![last + p.lapsed_days + 1, day_of(agg.first_seen_us.unwrap_or(0)) + p.loyal_min_tenure_days];
    if agg.purchase_days >= 2 {
        cands.push(last + at_risk_days(agg, p) + 1);
    }
    let need = p.attached_min_purchase_days;
    if 0 < need && need as usize <= agg.pdays.len() {
        cands.push(agg.pdays[agg.pdays.len() - need as usize] + p.attached_window_days);
    }
    cands.retain(|&d| after_day < d && d <= through_day);
    cands.sort_unstable();
    cands.dedup();
    cands
}

pub const DETRACTOR: &str = "detractor";
pub const RECOVERED: &str = "recovered";

pub fn detractor_status(agg: &Agg, p: &Policy) -> Option<&'static str> {
    let nps = agg.nps_last?;
    if nps <= p.detractor_status_max_nps {
        return Some(DETRACTOR);
    }
    if nps >= p.recovered_min_nps && agg.ever_det {
        return Some(RECOVERED);
    }
    Some("none")
}

pub fn wallet_band(sow: Option<i64>, p: &Policy) -> Option<&'static str> {
    let sow = sow?;
    Some(if sow >= p.wallet_committed_min_pct {
        "committed"
    } else if sow >= p.wallet_moderate_min_pct {
        "moderate"
    } else {
        "vulnerable"
    })
}

pub fn loyalty_type(stage: Stage, nps_last: Option<i64>, p: &Policy) -> &'static str {
    let Some(nps) = nps_last else { return "unknown" };
    let attitude = nps >= p.attitude_high_min_nps;
    let behaviour = matches!(stage, Stage::Repeat | Stage::Attached | Stage::Loyal);
    match (attitude, behaviour) {
        (true, true) => "true",
        (true, false) => "latent",
        (false, true) => "spurious",
        (false, false) => "none",
    }
}

/// `scoring.nps.classify`: 0 promoter, 1 passive, 2 detractor.
pub fn classify(nps: i64, p: &Policy) -> usize {
    if nps >= p.promoter_min_nps {
        0
    } else if nps <= p.detractor_max_nps {
        2
    } else {
        1
    }
}

pub fn contribution(head: &Agg, stage: Option<Stage>, day: i64, p: &Policy) -> Option<Kpi> {
    head.first_seen_us?;
    let lo = day - SPEND_WINDOW_DAYS;
    let days = head.day_net.iter().filter(|r| lo < r[0] && r[0] <= day && r[1] != 0).map(|r| [r[0], r[1]]).collect();
    let ltype = match stage {
        Some(s) => loyalty_type(s, head.nps_last, p),
        None => "unknown",
    };
    Some(Kpi {
        buyer: (head.purchase_count > 0) as i64,
        repeater: (head.purchase_days >= 2) as i64,
        loyalty_type: Arc::from(ltype),
        wallet: wallet_band(head.sow_last, p).map(Arc::from),
        detractor: detractor_status(head, p).map(Arc::from),
        spend_total: head.spend_total,
        purchase_count: head.purchase_count,
        attached: matches!(stage, Some(Stage::Attached | Stage::Loyal)) as i64,
        days,
    })
}

// ---- rewards ---------------------------------------------------------------

/// The tier reached on `day` (`spend_365d`: that spend, when the caller has it).
pub fn tier_on<'p>(agg: &Agg, day: i64, p: &'p Policy, spend_365d: Option<i64>) -> &'p Tier {
    let last = p.tiers.last().expect("a policy has a tier");
    if !p.discount_enabled {
        return last;
    }
    let spend = spend_365d.unwrap_or_else(|| window_totals(agg, day, 365).0);
    p.tiers.iter().find(|t| spend >= t.threshold).unwrap_or(last)
}

pub fn points_for(amount: i64, mult_num: i64, mult_den: i64, p: &Policy) -> i64 {
    let num = amount as i128 * p.ppu_num as i128 * mult_num as i128;
    let den = p.ppu_den as i128 * mult_den as i128 * 100;
    num.div_euclid(den) as i64
}

/// Expire every lot due by `at_us`; the expired lots, with what remained in them.
pub fn expire_due(agg: &mut Agg, at_us: i64) -> Vec<Lot> {
    let i = agg.lots.iter().take_while(|l| l.expires <= at_us).count();
    if i == 0 {
        return Vec::new();
    }
    let gone: Vec<Lot> = agg.lots.drain(..i).collect();
    for lot in &gone {
        agg.expired += lot.remaining;
    }
    gone
}

pub fn take_oldest(agg: &mut Agg, points: i64) -> i64 {
    let mut taken = 0;
    let mut i = 0;
    while taken < points && i < agg.lots.len() {
        let take = agg.lots[i].remaining.min(points - taken);
        if take != 0 {
            agg.lots[i].remaining -= take;
        }
        taken += take;
        i += 1;
    }
    agg.lots.retain(|l| l.remaining > 0);
    taken
}

pub fn take_for_clawback(agg: &mut Agg, order_id: &str, points: i64) -> i64 {
    let mut taken = 0;
    if let Some(lot) = agg.lots.iter_mut().find(|l| &*l.order == order_id) {
        taken = lot.remaining.min(points);
        lot.remaining -= taken;
    }
    if taken < points {
        taken += take_oldest(agg, points - taken);
    } else {
        agg.lots.retain(|l| l.remaining > 0);
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_by_hand_is_rfc3339_by_format() {
        // Both paths agree for every year 0-9999, both ends of days, microseconds.
        let by_format = |us: i64| rfc3339_formatted(instant_parts(us));
        let first = -62_167_219_200_000_000i64; // 0000-01-01T00:00:00Z
        let mut x: i64 = 7;
        for n in 0..200_000i64 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let us = match n % 4 {
                0 => first + x.rem_euclid(10_000 * 365 * US_PER_DAY),
                1 => (x.rem_euclid(20_000)) * US_PER_DAY,
                2 => (x.rem_euclid(20_000)) * US_PER_DAY - 1,
                _ => x.rem_euclid(4_000_000_000_000_000) - 1_000_000_000_000_000,
            };
            assert_eq!(rfc3339(us), by_format(us), "{us}");
        }
        // Outside four-digit years: the formatted path, unchanged.
        assert_eq!(rfc3339(first - 1), by_format(first - 1));
        assert_eq!(rfc3339(253_402_300_800_000_000), by_format(253_402_300_800_000_000));
    }

    #[test]
    fn rfc3339_like_python() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123_456), "2023-11-14T22:13:20.123456Z");
        assert_eq!(rfc3339(951_782_400_000_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn half_even() {
        assert_eq!(round_ratio(5, 2), 2);
        assert_eq!(round_ratio(7, 2), 4);
        assert_eq!(round_ratio(-5, 2), -2);
        assert_eq!(round_ratio(-7, 2), -4);
        assert_eq!(round_ratio(1, -3), 0);
    }
}
