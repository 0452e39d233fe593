//! The customer snapshot of a head (`scoring.snapshot.snapshot_of_head`), up
//! to the fields that need a fitted model: the CLV and RFM fields are the
//! Python caller's (`scoring.native`), from the inputs returned here.

use crate::json;
use crate::model::*;
use crate::rules::*;
use std::sync::Arc;

/// A snapshot value (the snapshot has floats; effects and rows do not).
pub enum V {
    Null,
    Int(i64),
    Float(f64),
    Str(Arc<str>),
}

fn opt_int(v: Option<i64>) -> V {
    v.map_or(V::Null, V::Int)
}

fn instant(us: Option<i64>) -> V {
    us.map_or(V::Null, |u| V::Str(Arc::from(rfc3339(u))))
}

fn opt_str(s: Option<&str>) -> V {
    s.map_or(V::Null, |s| V::Str(Arc::from(s)))
}

/// Python's `round(x, digits)`: the nearest decimal, ties to even on the exact binary value.
fn round_float(x: f64, digits: usize) -> f64 {
    format!("{x:.digits$}").parse().expect("a formatted float parses")
}

/// DOMAIN.md's S x C x P x t (`scoring.ltv.ltv_formula`); None when an intermediate
/// product leaves 128 bits (the caller then computes it in Python's integers).
fn ltv_formula(h: &Agg, tenure_days: i64, p: &Policy, orders_365d: i64) -> Option<i64> {
    if h.purchase_count == 0 {
        return Some(0);
    }
    let (mut span_num, mut span_den) = ((tenure_days as i128 + 1) * 10_000, 304_375i128);
    if span_num >= 12 * span_den {
        (span_num, span_den) = (12, 1);
    } else if span_num < span_den {
        (span_num, span_den) = (1, 1);
    }
    let (p_num, p_den) = if h.spend_total != 0 {
        (h.margin_total as i128, h.spend_total as i128)
    } else {
        (p.margin_num as i128, p.margin_den as i128)
    };
    let num = (h.spend_total as i128)
        .checked_mul(orders_365d as i128)?
        .checked_mul(span_den)?
        .checked_mul(p_num)?
        .checked_mul(p.ltv_months as i128)?;
    let den = (h.purchase_count as i128).checked_mul(span_num)?.checked_mul(p_den)?;
    i64::try_from(round_ratio(num, den)).ok()
}

/// (x, t_x_days, T_days, repeat_spend) for BG/NBD + Gamma-Gamma; None without purchases.
pub fn clv_inputs(h: &Agg, day: i64) -> Option<[i64; 4]> {
    if h.purchase_count == 0 {
        return None;
    }
    let first = day_of(h.first_purchase_us?);
    let last = day_of(h.last_purchase_us?);
    Some([h.purchase_days - 1, last - first, day - first, h.spend_total - h.first_day_net])
}

/// A buyer's RFM values (recency days, purchase days, spend); None without purchases.
pub fn rfm_values(h: &Agg, day: i64) -> Option<[i64; 3]> {
    if h.purchase_count == 0 {
        return None;
    }
    Some([day - day_of(h.last_purchase_us?), h.purchase_days, h.spend_total])
}

/// The first field the Python caller fills from fitted models (`scoring.snapshot.MODEL_FIELDS`):
/// it and the fields after it are left out of [`write_head_fields`].
pub const FIRST_MODEL_FIELD: &str = "p_alive";

/// `{` and the snapshot's fields before the model fields, as orjson writes them, with
/// no closing brace: the caller appends the model fields' JSON.
pub fn write_head_fields(out: &mut Vec<u8>, fields: &[(&'static str, V)]) {
    out.push(b'{');
    for (n, (k, v)) in fields.iter().take_while(|(k, _)| *k != FIRST_MODEL_FIELD).enumerate() {
        if n > 0 {
            out.push(b',');
        }
        json::write_str(out, k);
        out.push(b':');
        match v {
            V::Null => out.extend_from_slice(b"null"),
            V::Int(i) => json::write_int(out, *i),
            V::Float(f) => json::write_float(out, *f),
            V::Str(t) => json::write_str(out, t),
        }
    }
}

/// The snapshot's fields in their order, CLV fields null; None when the LTV formula
/// leaves 128-bit integers.
pub fn snapshot_of_head(shop: &str, cust: &str, h: &Agg, as_of_us: i64, p: &Policy) -> Option<Vec<(&'static str, V)>> {
    let day = day_of(as_of_us);
    let purchased = h.purchase_count > 0;
    let stage = h.first_seen_us.map(|_| stage_on(h, day, p));
    let tenure = h.first_seen_us.map(|f| day - day_of(f));
    let mip = if h.purchase_days < 2 {
        None
    } else {
        let span = day_of(h.last_purchase_us?) - day_of(h.first_purchase_us?);
        Some(span as f64 / (h.purchase_days - 1) as f64)
    };
    let pd90 = purchase_days_in_window(h, day, 90);
    let (spend_365d, orders_365d) = window_totals(h, day, 365);
    let tier = tier_on(h, day, p, Some(spend_365d));
    let det = detractor_status(h, p);
    let ltv = ltv_formula(h, tenure.unwrap_or(0), p, orders_365d)?;
    Some(vec![
        ("shop_id", V::Str(Arc::from(shop))),
        ("customer_id", V::Str(Arc::from(cust))),
        ("as_of", instant(Some(as_of_us))),
        ("first_seen_at", instant(h.first_seen_us)),
        ("purchase_count", V::Int(h.purchase_count)),
        ("purchase_days", V::Int(h.purchase_days)),
        ("first_purchase_at", instant(h.first_purchase_us)),
        ("last_purchase_at", instant(h.last_purchase_us)),
        ("spend_total", V::Int(h.spend_total)),
        ("refund_total", V::Int(h.refund_total)),
        ("margin_total", V::Int(h.margin_total)),
        ("spend_30d", V::Int(window_totals(h, day, 30).0)),
        ("spend_90d", V::Int(window_totals(h, day, 90).0)),
        ("spend_365d", V::Int(spend_365d)),
        ("purchase_days_30d", V::Int(purchase_days_in_window(h, day, 30))),
        ("purchase_days_90d", V::Int(pd90)),
        ("purchase_days_180d", V::Int(purchase_days_in_window(h, day, 180))),
        ("purchase_days_365d", V::Int(purchase_days_in_window(h, day, 365))),
        ("visit_days", V::Int(h.visit_days)),
        ("recency_days", if purchased { V::Int(day - day_of(h.last_purchase_us?)) } else { V::Null }),
        ("tenure_days", opt_int(tenure)),
        ("frequency_per_month", V::Float(round_float(pd90 as f64 / 3.0, 4))),
        ("mean_interpurchase_days", mip.map_or(V::Null, |m| V::Float(round_float(m, 4)))),
        ("ltv_historical", V::Int(h.margin_total)),
        ("ltv_formula", V::Int(ltv)),
        ("nps_last", opt_int(h.nps_last)),
        ("share_of_wallet_last", opt_int(h.sow_last)),
        ("stage", opt_str(stage_name(stage))),
        ("loyalty_type", V::Str(Arc::from(stage.map_or("unknown", |s| loyalty_type(s, h.nps_last, p))))),
        ("wallet_band", opt_str(wallet_band(h.sow_last, p))),
        ("detractor_status", opt_str(det)),
        ("detractor_since", if det == Some(DETRACTOR) { instant(h.det_since) } else { V::Null }),
        ("tier", V::Str(tier.name.clone())),
        ("discount_pct", V::Int(tier.pct)),
        ("points_balance", V::Int(h.points_balance())),
        ("points_earned_total", V::Int(h.earned)),
        ("points_redeemed_total", V::Int(h.redeemed)),
        ("points_expired_total", V::Int(h.expired)),
        ("points_clawed_back_total", V::Int(h.clawed)),
        ("clawback_shortfall", V::Int(h.shortfall)),
        ("redemptions_rejected", V::Int(h.redemptions_rejected)),
        ("stamps", V::Int(h.stamps)),
        ("free_items_issued", V::Int(h.free_items)),
        ("orphan_refunds", V::Int(h.orphan_refunds)),
        ("duplicate_orders", V::Int(h.duplicate_orders)),
        ("refunds_capped", V::Int(h.refunds_capped)),
        ("p_alive", V::Null),
        ("expected_purchases_90d", V::Null),
        ("expected_avg_value", V::Null),
        ("clv_365d", V::Null),
        ("clv_model", V::Null),
    ])
}
