//! The fast path of the event contract (`schemas.events.parse_event`): the
//! events every shop sends, validated and digested without pydantic.
//!
//! Guarantee: [`parse`] returns `Some` only for bytes that `parse_event`
//! accepts, and then with the very fields, record (`scoring.records.to_record`),
//! content digest and id hash the Python parser gives; for anything else it
//! returns `None` and the caller asks the Python parser, which stays the judge
//! of every rejection and its reason. So the fast path is narrower than the
//! contract on purpose: a forget request, a timestamp written with a lowercase
//! `t` or `z`, a year at the ends of the range, a margin rate Python would
//! write in exponent form, a float or a boolean where an integer is due, all
//! go to Python. The rules not checked here (a timestamp too far ahead of the
//! clock, the shop's currency) are the caller's: they need the shop's policy.
//! `tests/core/test_native_events.py` compares both parsers over every kind of
//! input the contract names.

use crate::json::write_str;
use crate::model::{Payload, Rec};
use crate::rules::{blake8, rfc3339};
use serde_json::{Map, Value};
use std::sync::Arc;

/// `schemas.events.MAX_EVENT_BYTES`
const MAX_EVENT_BYTES: usize = 64 * 1024;
/// `schemas.events.MAX_AMOUNT`
const MAX_AMOUNT: i64 = 1_000_000_000_000;
const CHANNELS: [&str; 5] = ["store", "web", "app", "phone", "other"];

/// A validated event (never a forget request).
pub struct Event {
    pub kind: &'static str,
    pub event_id: Arc<str>,
    pub shop_id: Arc<str>,
    pub customer_id: Arc<str>,
    pub ts: i64,
    pub payload: Payload,
    /// a purchase's or a refund's currency (the caller compares it with the shop's)
    pub currency: Option<Arc<str>>,
    /// the content digest (`scoring.records.content_digest`)
    pub digest: i64,
    /// the event id's key (`scoring.records.id_hash`)
    pub id_hash: i64,
}

impl Event {
    pub fn rec(&self) -> Rec {
        Rec { ts: self.ts, event_id: self.event_id.clone(), payload: self.payload.clone() }
    }
}

/// The event in `raw`, or `None` when the Python parser must decide (module doc).
pub fn parse(raw: &[u8]) -> Option<Event> {
    if raw.len() > MAX_EVENT_BYTES {
        return None;
    }
    // serde_json is as strict as orjson about the text (UTF-8, no NaN, no lone
    // surrogate, no trailing data) and keeps the last of duplicate keys, as
    // orjson does; where it refuses more (nesting past 128, integers past
    // 64 bits read as floats out of range) the Python parser decides.
    let value: Value = serde_json::from_slice(raw).ok()?;
    let obj = value.as_object()?;
    let kind = match obj.get("type")?.as_str()? {
        "purchase" => "purchase",
        "refund" => "refund",
        "visit" => "visit",
        "feedback" => "feedback",
        "redemption" => "redemption",
        _ => return None, // a forget request, or a rejection for Python to word
    };
    let event_id = text(obj, "event_id", 1, 128)?;
    let shop_id = text(obj, "shop_id", 1, 64)?;
    if !shop_id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return None;
    }
    let customer_id = text(obj, "customer_id", 1, 128)?;
    if customer_id.chars().any(|c| c <= '\u{1f}' || ('\u{7f}'..='\u{9f}').contains(&c)) {
        return None;
    }
    let ts = instant(obj.get("occurred_at")?.as_str()?)?;

    // The digest's text: pydantic's JSON of the validated model, fields in the
    // model's order (the base event's, then the type's own), absent optional
    // fields as null, occurred_at in UTC.
    let mut js = Vec::with_capacity(raw.len() + 32);
    js.extend_from_slice(b"{\"event_id\":");
    write_str(&mut js, event_id);
    js.extend_from_slice(b",\"shop_id\":");
    write_str(&mut js, shop_id);
    js.extend_from_slice(b",\"customer_id\":");
    write_str(&mut js, customer_id);
    js.extend_from_slice(b",\"occurred_at\":\"");
    js.extend_from_slice(rfc3339(ts).as_bytes());
    js.extend_from_slice(b"\",\"type\":\"");
    js.extend_from_slice(kind.as_bytes());
    js.push(b'"');

    let mut currency = None;
    let payload = match kind {
        "purchase" | "refund" => {
            let order = text(obj, "order_id", 1, 128)?;
            let amount = int(obj, "amount", 1, MAX_AMOUNT)?;
            let cur = text(obj, "currency", 3, 3)?;
            if !cur.bytes().all(|b| b.is_ascii_uppercase()) {
                return None;
            }
            currency = Some(Arc::from(cur));
            field(&mut js, "order_id");
            write_str(&mut js, order);
            field(&mut js, "amount");
            write_int(&mut js, amount);
            field(&mut js, "currency");
            write_str(&mut js, cur);
            if kind == "refund" {
                Payload::Refund { order: Arc::from(order), amount }
            } else {
                let rate = match optional(obj, "margin_rate") {
                    None => None,
                    Some(v) => Some(margin_rate(v)?),
                };
                field(&mut js, "margin_rate");
                match &rate {
                    Some((decimal, _)) => write_str(&mut js, decimal),
                    None => js.extend_from_slice(b"null"),
                }
                field(&mut js, "items");
                match optional(obj, "items") {
                    None => js.extend_from_slice(b"null"),
                    Some(v) => items(&mut js, v)?,
                }
                field(&mut js, "channel");
                channel(&mut js, obj)?;
                Payload::Purchase { order: Arc::from(order), amount, rate: rate.map(|(_, f)| Arc::from(f)) }
            }
        }
        "visit" => {
            field(&mut js, "channel");
            channel(&mut js, obj)?;
            Payload::Visit
        }
        "feedback" => {
            let nps = int(obj, "nps", 0, 10)?;
            let comment = opt_text(obj, "comment", 2000)?;
            let sow = match optional(obj, "share_of_wallet") {
                None => None,
                Some(v) => Some(int_value(v, 0, 100)?),
            };
            let touchpoint = opt_text(obj, "touchpoint", 64)?;
            field(&mut js, "nps");
            write_int(&mut js, nps);
            field(&mut js, "comment");
            write_opt_str(&mut js, comment);
            field(&mut js, "share_of_wallet");
            match sow {
                Some(v) => write_int(&mut js, v),
                None => js.extend_from_slice(b"null"),
            }
            field(&mut js, "touchpoint");
            write_opt_str(&mut js, touchpoint);
            let extra = if touchpoint.is_none() && comment.is_none() {
                None
            } else {
                Some((touchpoint.map(Arc::from), comment.map(Arc::from)))
            };
            Payload::Feedback { nps, sow, extra }
        }
        _ => {
            let points = int(obj, "points", 1, MAX_AMOUNT)?;
            let reward = opt_text(obj, "reward", 64)?;
            field(&mut js, "points");
            write_int(&mut js, points);
            field(&mut js, "reward");
            write_opt_str(&mut js, reward);
            Payload::Redemption { points }
        }
    };
    js.push(b'}');
    Some(Event {
        kind,
        event_id: Arc::from(event_id),
        shop_id: Arc::from(shop_id),
        customer_id: Arc::from(customer_id),
        ts,
        payload,
        currency,
        digest: blake8(&js),
        id_hash: blake8(event_id.as_bytes()),
    })
}

/// A field present and not null (pydantic's default None for a null).
fn optional<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

/// A required string of `min..=max` characters (code points, as Python counts).
fn text<'a>(obj: &'a Map<String, Value>, name: &str, min: usize, max: usize) -> Option<&'a str> {
    let s = obj.get(name)?.as_str()?;
    let n = s.chars().count();
    (min <= n && n <= max).then_some(s)
}

/// An optional string of at most `max` characters: `Some(None)` when absent or null,
/// `None` when the Python parser must decide.
fn opt_text<'a>(obj: &'a Map<String, Value>, name: &str, max: usize) -> Option<Option<&'a str>> {
    match optional(obj, name) {
        None => Some(None),
        Some(v) => {
            let s = v.as_str()?;
            (s.chars().count() <= max).then_some(Some(s))
        }
    }
}

/// A required JSON integer (not a float, not a boolean) in `min..=max`.
fn int(obj: &Map<String, Value>, name: &str, min: i64, max: i64) -> Option<i64> {
    int_value(obj.get(name)?, min, max)
}

fn int_value(v: &Value, min: i64, max: i64) -> Option<i64> {
    let n = v.as_number()?;
    if n.is_f64() {
        return None;
    }
    n.as_i64().filter(|i| min <= *i && *i <= max)
}

/// RFC 3339 with an offset, exactly as `schemas.events.parse_rfc3339` reads it, in
/// microseconds since the epoch; `None` for anything it would not take, and for
/// forms left to it (lowercase separators, years at the ends of the range).
fn instant(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b[r].iter().try_fold(0i64, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0')))
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut micros = 0;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = i - start;
        if !(1..=9).contains(&digits) {
            return None;
        }
        // finer than a microsecond: truncated, as the Python parser does
        let kept = digits.min(6);
        micros = num(start..start + kept)? * 10i64.pow((6 - kept) as u32);
    }
    let offset = match &b[i..] {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let secs = oh * 3600 + om * 60;
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };
    // Years 1 and 9999 may leave the representable range once converted to UTC:
    // the Python parser words that rejection.
    if !(2..=9998).contains(&year) || !(1..=12).contains(&month) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if day < 1 || day > month_days[(month - 1) as usize] {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some(secs * 1_000_000 + micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (`rules::civil_from_days`'s inverse).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A margin rate: (the decimal as pydantic writes it, the exact fraction
/// "num/den" of `to_record`). Python reads a JSON float as the decimal of its
/// `repr`; the fast path takes 0, 1 and rates in [0.0001, 1), whose `repr` is
/// the shortest round-trip digits without an exponent. Both ends must be exact:
/// the text read to the nearest float (serde_json's `float_roundtrip`), the
/// float written as ryu writes it (Rust's own `Display` may pick other digits
/// of the same length).
fn margin_rate(v: &Value) -> Option<(String, String)> {
    let n = v.as_number()?;
    let text = if let Some(i) = n.as_i64() {
        if n.is_f64() || !(0..=1).contains(&i) {
            return None;
        }
        return Some((i.to_string(), format!("{i}/1")));
    } else {
        let f = n.as_f64()?;
        if f == 0.0 && f.is_sign_negative() {
            return None;
        }
        if f == 0.0 {
            "0.0".to_string()
        } else if f == 1.0 {
            "1.0".to_string()
        } else if (0.0001..1.0).contains(&f) {
            let mut out = Vec::with_capacity(24);
            crate::json::write_float(&mut out, f);
            String::from_utf8(out).ok()?
        } else {
            return None;
        }
    };
    let (whole, frac) = text.split_once('.')?;
    if frac.len() > 18 || !whole.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut num: u64 = format!("{whole}{frac}").parse().ok()?;
    let mut den: u64 = 10u64.pow(frac.len() as u32);
    let g = gcd(num, den);
    num /= g;
    den /= g;
    Some((text, format!("{num}/{den}")))
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

/// A purchase's items, validated, as pydantic writes them.
fn items(js: &mut Vec<u8>, v: &Value) -> Option<()> {
    let list = v.as_array()?;
    if list.len() > 500 {
        return None;
    }
    js.push(b'[');
    for (i, item) in list.iter().enumerate() {
        let obj = item.as_object()?;
        let sku = text(obj, "sku", 1, 128)?;
        let category = opt_text(obj, "category", 128)?;
        let quantity = int(obj, "quantity", 1, MAX_AMOUNT)?;
        let unit = int(obj, "unit_amount", 0, MAX_AMOUNT)?;
        if i > 0 {
            js.push(b',');
        }
        js.extend_from_slice(b"{\"sku\":");
        write_str(js, sku);
        js.extend_from_slice(b",\"category\":");
        write_opt_str(js, category);
        js.extend_from_slice(b",\"quantity\":");
        write_int(js, quantity);
        js.extend_from_slice(b",\"unit_amount\":");
        write_int(js, unit);
        js.push(b'}');
    }
    js.push(b']');
    Some(())
}

fn channel(js: &mut Vec<u8>, obj: &Map<String, Value>) -> Option<()> {
    match optional(obj, "channel") {
        None => js.extend_from_slice(b"null"),
        Some(v) => {
            let c = v.as_str()?;
            if !CHANNELS.contains(&c) {
                return None;
            }
            write_str(js, c);
        }
    }
    Some(())
}

fn field(js: &mut Vec<u8>, name: &str) {
    js.extend_from_slice(b",\"");
    js.extend_from_slice(name.as_bytes());
    js.extend_from_slice(b"\":");
}

fn write_int(js: &mut Vec<u8>, v: i64) {
    crate::json::write_int(js, v);
}

fn write_opt_str(js: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_str(js, s),
        None => js.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip() {
        for z in [-800_000i64, -1, 0, 1, 59, 365, 11_016, 2_932_896] {
            let (y, m, d) = crate::rules::civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn instants() {
        assert_eq!(instant("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(instant("1970-01-01T01:00:00.5+01:00"), Some(500_000));
        assert_eq!(instant("2024-02-29T00:00:00.1234567Z"), Some(1_709_164_800_123_456));
        assert_eq!(instant("2023-02-29T00:00:00Z"), None);
        assert_eq!(instant("2024-01-01t00:00:00Z"), None);
        assert_eq!(instant("2024-01-01T00:00:00+24:00"), None);
        assert_eq!(instant("2024-01-01T00:00:00"), None);
    }

    #[test]
    fn rates() {
        assert_eq!(margin_rate(&serde_json::json!(0.35)), Some(("0.35".into(), "7/20".into())));
        assert_eq!(margin_rate(&serde_json::json!(1)), Some(("1".into(), "1/1".into())));
        assert_eq!(margin_rate(&serde_json::json!(0.0)), Some(("0.0".into(), "0/1".into())));
        assert_eq!(margin_rate(&serde_json::json!(0.00001)), None);
        assert_eq!(margin_rate(&serde_json::json!(true)), None);
    }
}
