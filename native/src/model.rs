//! The core's values, as `scoring.aggregate`, `scoring.records` and
//! `scoring.state` define them. Entries shared between a state and the states
//! derived from it are behind `Arc` and copied on write, as the Python engine
//! shares its lists.

use indexmap::IndexMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// A hasher for keys that are hashes already (event-id and effect-id digests):
/// one multiplication spreads their bits over the table.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_i64(&mut self, v: i64) {
        self.0 = (v as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by a 63-bit digest, in insertion order.
pub type IdMap<V> = IndexMap<i64, V, BuildHasherDefault<IdHasher>>;

pub const US_PER_DAY: i64 = 86_400_000_000;

pub fn day_of(us: i64) -> i64 {
    us.div_euclid(US_PER_DAY)
}

pub fn day_start_us(day: i64) -> i64 {
    day * US_PER_DAY
}

/// Loyalty stages, in `scoring.stages.STAGES` order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    FirstVisit,
    FirstPurchase,
    Repeat,
    Attached,
    Loyal,
    AtRisk,
    Lapsed,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::FirstVisit => "first_visit",
            Stage::FirstPurchase => "first_purchase",
            Stage::Repeat => "repeat",
            Stage::Attached => "attached",
            Stage::Loyal => "loyal",
            Stage::AtRisk => "at_risk",
            Stage::Lapsed => "lapsed",
        }
    }
    pub fn parse(s: &str) -> Option<Stage> {
        Some(match s {
            "first_visit" => Stage::FirstVisit,
            "first_purchase" => Stage::FirstPurchase,
            "repeat" => Stage::Repeat,
            "attached" => Stage::Attached,
            "loyal" => Stage::Loyal,
            "at_risk" => Stage::AtRisk,
            "lapsed" => Stage::Lapsed,
            _ => return None,
        })
    }
}

pub fn stage_name(s: Option<Stage>) -> Option<&'static str> {
    s.map(Stage::name)
}

/// An order entry: `[day, amount, refunded, rate_num, rate_den, margin, points, clawed, ts]`.
pub type Order = [i64; 9];
pub const O_DAY: usize = 0;
pub const O_AMOUNT: usize = 1;
pub const O_REFUNDED: usize = 2;
pub const O_RATE_NUM: usize = 3;
pub const O_RATE_DEN: usize = 4;
pub const O_MARGIN: usize = 5;
pub const O_POINTS: usize = 6;
pub const O_CLAWED: usize = 7;

/// A bonus-point lot: `[expires_us, remaining, order_id, earned]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Lot {
    pub expires: i64,
    pub remaining: i64,
    pub order: Arc<str>,
    pub earned: i64,
}

/// `[touchpoint or None, promoters, passives, detractors]`
pub type TpRow = (Option<Arc<str>>, [i64; 3]);

/// The folded value of a customer's events (`scoring.aggregate.Agg`).
#[derive(Clone, Debug, PartialEq)]
pub struct Agg {
    pub t_us: Option<i64>,
    pub first_seen_us: Option<i64>,
    pub purchase_count: i64,
    pub purchase_days: i64,
    pub first_purchase_us: Option<i64>,
    pub last_purchase_us: Option<i64>,
    pub spend_total: i64,
    pub refund_total: i64,
    pub margin_total: i64,
    pub first_day_net: i64,
    pub orders: IndexMap<Arc<str>, Arc<Order>>,
    pub pdays: Vec<i64>,
    pub visit_days: i64,
    pub last_visit_day: Option<i64>,
    pub nps_last: Option<i64>,
    pub sow_last: Option<i64>,
    pub fb_counts: [i64; 3],
    pub fb_recent: Vec<[i64; 2]>,
    pub lots: Vec<Lot>,
    pub earned: i64,
    pub redeemed: i64,
    pub expired: i64,
    pub clawed: i64,
    pub shortfall: i64,
    pub redemptions_rejected: i64,
    pub stamps: i64,
    pub free_items: i64,
    pub stage: Option<Stage>,
    pub orphan_refunds: i64,
    pub duplicate_orders: i64,
    pub refunds_capped: i64,
    pub det_since: Option<i64>,
    pub ever_det: bool,
    pub fb_tp: Vec<TpRow>,
    pub day_net: Vec<[i64; 3]>,
}

impl Default for Agg {
    fn default() -> Self {
        Agg {
            t_us: None,
            first_seen_us: None,
            purchase_count: 0,
            purchase_days: 0,
            first_purchase_us: None,
            last_purchase_us: None,
            spend_total: 0,
            refund_total: 0,
            margin_total: 0,
            first_day_net: 0,
            orders: IndexMap::new(),
            pdays: Vec::new(),
            visit_days: 0,
            last_visit_day: None,
            nps_last: None,
            sow_last: None,
            fb_counts: [0; 3],
            fb_recent: Vec::new(),
            lots: Vec::new(),
            earned: 0,
            redeemed: 0,
            expired: 0,
            clawed: 0,
            shortfall: 0,
            redemptions_rejected: 0,
            stamps: 0,
            free_items: 0,
            stage: None,
            orphan_refunds: 0,
            duplicate_orders: 0,
            refunds_capped: 0,
            det_since: None,
            ever_det: false,
            fb_tp: Vec::new(),
            day_net: Vec::new(),
        }
    }
}

impl Agg {
    pub fn points_balance(&self) -> i64 {
        self.earned - self.redeemed - self.expired - self.clawed
    }
}

/// A feedback's `[touchpoint, comment]`, None when both are absent.
pub type FeedbackExtra = Option<(Option<Arc<str>>, Option<Arc<str>>)>;

/// An accepted event's payload (`scoring.records`).
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    Purchase { order: Arc<str>, amount: i64, rate: Option<Arc<str>> },
    Refund { order: Arc<str>, amount: i64 },
    Visit,
    Feedback { nps: i64, sow: Option<i64>, extra: FeedbackExtra },
    Redemption { points: i64 },
}

/// `[ts_us, event_id, kind, a, b, c]`
#[derive(Clone, Debug, PartialEq)]
pub struct Rec {
    pub ts: i64,
    pub event_id: Arc<str>,
    pub payload: Payload,
}

/// What was published for an effect id: `[digest, at_us, kind]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Emitted {
    pub digest: i64,
    pub at: i64,
    pub kind: EffKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EffKind {
    Ledger,
    Transition,
    Alert,
}

impl EffKind {
    pub fn name(self) -> &'static str {
        match self {
            EffKind::Ledger => "ledger",
            EffKind::Transition => "transition",
            EffKind::Alert => "alert",
        }
    }
    pub fn parse(s: &str) -> Option<EffKind> {
        Some(match s {
            "ledger" => EffKind::Ledger,
            "transition" => EffKind::Transition,
            "alert" => EffKind::Alert,
            _ => return None,
        })
    }
}

/// A customer's shop-KPI contribution (`scoring.shop.contribution`).
#[derive(Clone, Debug, PartialEq)]
pub struct Kpi {
    pub buyer: i64,
    pub repeater: i64,
    pub loyalty_type: Arc<str>,
    pub wallet: Option<Arc<str>>,
    pub detractor: Option<Arc<str>>,
    pub spend_total: i64,
    pub purchase_count: i64,
    pub attached: i64,
    pub days: Vec<[i64; 2]>,
}

/// The per-customer state (`scoring.state.CustomerState`).
#[derive(Clone, Debug)]
pub struct CustomerState {
    pub shop_id: Arc<str>,
    pub customer_id: Arc<str>,
    pub ckpt: Arc<Agg>,
    pub buf: Arc<Vec<Arc<Rec>>>,
    pub seen: Arc<IdMap<[i64; 2]>>,
    pub emitted: Arc<IdMap<Emitted>>,
    pub max_ts: Option<i64>,
    pub frontier: Option<i64>,
    pub clock: Option<i64>,
    pub stage: Option<Stage>,
    pub next_due: Option<i64>,
    pub totals: [i64; 4],
    pub kpi: Option<Kpi>,
    pub positions: Arc<IndexMap<Arc<str>, i64>>,
    /// Not serialized: the re-fold as of `clock` under the policy with this serial.
    pub head: Option<(u64, Arc<Agg>)>,
}

impl CustomerState {
    pub fn new(shop_id: Arc<str>, customer_id: Arc<str>) -> Self {
        CustomerState {
            shop_id,
            customer_id,
            ckpt: Arc::new(Agg::default()),
            buf: Arc::new(Vec::new()),
            seen: Arc::new(IdMap::default()),
            emitted: Arc::new(IdMap::default()),
            max_ts: None,
            frontier: None,
            clock: None,
            stage: None,
            next_due: None,
            totals: [0; 4],
            kpi: None,
            positions: Arc::new(IndexMap::new()),
            head: None,
        }
    }
}

/// A tier row: (threshold, name, multiplier num, multiplier den, discount pct).
#[derive(Clone, Debug)]
pub struct Tier {
    pub threshold: i64,
    pub name: Arc<str>,
    pub mult_num: i64,
    pub mult_den: i64,
    pub pct: i64,
}

/// The settings of `schemas.policy.ShopPolicy` the fold reads.
#[derive(Clone, Debug)]
pub struct Policy {
    pub serial: u64,
    pub allowed_lateness_days: i64,
    pub at_risk_min_days: i64,
    pub at_risk_interval_factor: i64,
    pub lapsed_days: i64,
    pub attached_window_days: i64,
    pub attached_min_purchase_days: i64,
    pub loyal_min_purchase_days: i64,
    pub loyal_min_tenure_days: i64,
    pub loyal_excluded_max_nps: i64,
    pub promoter_min_nps: i64,
    pub detractor_max_nps: i64,
    pub attitude_high_min_nps: i64,
    pub shop_nps_window_days: i64,
    pub wallet_committed_min_pct: i64,
    pub wallet_moderate_min_pct: i64,
    pub detractor_status_max_nps: i64,
    pub recovered_min_nps: i64,
    pub bonus_enabled: bool,
    pub discount_enabled: bool,
    pub stamps_enabled: bool,
    pub points_expiry_days: i64,
    pub stamps_per_free_item: i64,
    pub order_retention_days: i64,
    pub dedup_retention_days: i64,
    pub max_seen_ids: i64,
    pub max_buffer_events: i64,
    pub ltv_months: i64,
    pub margin_num: i64,
    pub margin_den: i64,
    pub ppu_num: i64,
    pub ppu_den: i64,
    pub tiers: Vec<Tier>,
}
