//! `loyalty_native`: the fold of `scoring.fold` in Rust, for `scoring.native`.
//!
//! Guarantees: for every call the Python engine answers, this module answers
//! with equal bytes (state rows, effects, derived fields); the conformance
//! suite (`tests/core/test_engine.py`) checks it. The event contract's fast
//! path is here too (`event.rs`: the events shops send, parsed and digested;
//! every rejection stays the Python parser's). The CLV and RFM fields of
//! snapshots and shop tallies stay in Python; `scoring.native` wraps this
//! module into an `Engine`. Two helpers are not the fold's: Kafka's partitioner
//! hash (`partitioner.rs`), for `streams.topics`, and Kafka's record batches
//! (`kafka.rs`), for `streams.publish`.

// pyo3 0.22's macros test a feature this crate does not declare, and convert
// their own error type into itself.
#![allow(unexpected_cfgs, clippy::useless_conversion)]

mod codec;
mod event;
mod fold;
mod json;
mod kafka;
mod model;
mod partitioner;
mod rules;
mod snapshot;

use model::*;
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{timezone_utc_bound, PyBytes, PyDateTime, PyDict, PyList, PyString, PyTuple};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

// States are many small allocations (ids, orders, buffered records): decoding,
// folding and dropping them spent a sixth of the core's time in glibc's malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

create_exception!(loyalty_native, FormatError, PyValueError, "bytes that are not a customer state");
create_exception!(loyalty_native, NewerFormat, FormatError, "a state written by a newer build");
create_exception!(loyalty_native, TooEarly, PyValueError, "an instant before the finalized history");
create_exception!(
    loyalty_native,
    EngineError,
    pyo3::exceptions::PyRuntimeError,
    "the native engine failed on this input (a bug, or a figure beyond 64 bits)"
);

/// Run `f`, turning a panic (an arithmetic overflow: release builds check them)
/// into `EngineError`. pyo3 would raise a BaseException, which the agent's
/// handlers (`except Exception`) would not catch: one record would stop the worker.
fn guard<T>(f: impl FnOnce() -> T) -> PyResult<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|e| {
        let msg = e
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| e.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        EngineError::new_err(format!("native engine: {msg}"))
    })
}

static SERIAL: AtomicU64 = AtomicU64::new(1);

/// The settings of a `ShopPolicy` the fold reads (built by `scoring.native`).
#[pyclass(module = "loyalty_native", name = "Policy", frozen)]
struct PyPolicy {
    inner: Arc<Policy>,
}

fn get<'py, T: FromPyObject<'py>>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<T> {
    match d.get_item(key)? {
        Some(v) => v.extract(),
        None => Err(PyValueError::new_err(format!("policy setting {key} missing"))),
    }
}

#[pymethods]
impl PyPolicy {
    #[new]
    fn new(d: &Bound<'_, PyDict>) -> PyResult<Self> {
        let tiers: Vec<(i64, String, i64, i64, i64)> = get(d, "tiers")?;
        if tiers.is_empty() {
            return Err(PyValueError::new_err("a policy needs a tier"));
        }
        let p = Policy {
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            allowed_lateness_days: get(d, "allowed_lateness_days")?,
            at_risk_min_days: get(d, "at_risk_min_days")?,
            at_risk_interval_factor: get(d, "at_risk_interval_factor")?,
            lapsed_days: get(d, "lapsed_days")?,
            attached_window_days: get(d, "attached_window_days")?,
            attached_min_purchase_days: get(d, "attached_min_purchase_days")?,
            loyal_min_purchase_days: get(d, "loyal_min_purchase_days")?,
            loyal_min_tenure_days: get(d, "loyal_min_tenure_days")?,
            loyal_excluded_max_nps: get(d, "loyal_excluded_max_nps")?,
            promoter_min_nps: get(d, "promoter_min_nps")?,
            detractor_max_nps: get(d, "detractor_max_nps")?,
            attitude_high_min_nps: get(d, "attitude_high_min_nps")?,
            shop_nps_window_days: get(d, "shop_nps_window_days")?,
            wallet_committed_min_pct: get(d, "wallet_committed_min_pct")?,
            wallet_moderate_min_pct: get(d, "wallet_moderate_min_pct")?,
            detractor_status_max_nps: get(d, "detractor_status_max_nps")?,
            recovered_min_nps: get(d, "recovered_min_nps")?,
            bonus_enabled: get(d, "bonus_enabled")?,
            discount_enabled: get(d, "discount_enabled")?,
            stamps_enabled: get(d, "stamps_enabled")?,
            points_expiry_days: get(d, "points_expiry_days")?,
            stamps_per_free_item: get(d, "stamps_per_free_item")?,
            order_retention_days: get(d, "order_retention_days")?,
            dedup_retention_days: get(d, "dedup_retention_days")?,
            max_seen_ids: get(d, "max_seen_ids")?,
            max_buffer_events: get(d, "max_buffer_events")?,
            ltv_months: get(d, "ltv_months")?,
            margin_num: get(d, "margin_num")?,
            margin_den: get(d, "margin_den")?,
            ppu_num: get(d, "ppu_num")?,
            ppu_den: get(d, "ppu_den")?,
            tiers: tiers
                .into_iter()
                .map(|(threshold, name, mult_num, mult_den, pct)| Tier {
                    threshold,
                    name: Arc::from(name),
                    mult_num,
                    mult_den,
                    pct,
                })
                .collect(),
        };
        Ok(PyPolicy { inner: Arc::new(p) })
    }
}

/// A customer's state: a handle (`scoring.engine.State`).
#[pyclass(module = "loyalty_native", name = "State")]
struct PyState {
    inner: Arc<CustomerState>,
}

fn opt_stage(py: Python<'_>, s: Option<Stage>) -> PyObject {
    s.map(Stage::name).into_py(py)
}

fn kpi_py(py: Python<'_>, k: &Option<Kpi>) -> PyObject {
    let Some(k) = k else { return py.None() };
    let days = PyList::new_bound(py, k.days.iter().map(|d| PyList::new_bound(py, d)));
    PyList::new_bound(
        py,
        [
            k.buyer.into_py(py),
            k.repeater.into_py(py),
            (&*k.loyalty_type).into_py(py),
            k.wallet.as_deref().into_py(py),
            k.detractor.as_deref().into_py(py),
            k.spend_total.into_py(py),
            k.purchase_count.into_py(py),
            k.attached.into_py(py),
            days.into_py(py),
        ],
    )
    .into_py(py)
}

#[pymethods]
impl PyState {
    #[getter]
    fn shop_id(&self) -> &str {
        &self.inner.shop_id
    }
    #[getter]
    fn customer_id(&self) -> &str {
        &self.inner.customer_id
    }
    #[getter]
    fn key(&self) -> String {
        format!("{}|{}", self.inner.shop_id, self.inner.customer_id)
    }
    #[getter]
    fn clock(&self) -> Option<i64> {
        self.inner.clock
    }
    #[getter]
    fn stage(&self) -> Option<&'static str> {
        stage_name(self.inner.stage)
    }
    #[getter]
    fn next_due(&self) -> Option<i64> {
        self.inner.next_due
    }
    #[getter]
    fn kpi(&self, py: Python<'_>) -> PyObject {
        kpi_py(py, &self.inner.kpi)
    }
    #[getter]
    fn positions<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new_bound(py);
        for (k, v) in self.inner.positions.iter() {
            d.set_item(&**k, *v)?;
        }
        Ok(d)
    }
    /// The end of the finalized history (None: nothing finalized).
    #[getter]
    fn finalized_until(&self) -> Option<i64> {
        self.inner.ckpt.t_us
    }
    fn encode<'py>(&self, py: Python<'py>, version: i64) -> PyResult<Bound<'py, PyBytes>> {
        if version != 3 && version != codec::FORMAT_VERSION {
            return Err(PyValueError::new_err(format!("state format {version}; this build writes (3, 4)")));
        }
        Ok(PyBytes::new_bound(py, &guard(|| codec::encode_state(&self.inner, version))?))
    }
    /// Mark the state (new from `apply`, not yet shared) as changed by `offset` of `source`.
    fn set_position(&mut self, source: &str, offset: i64) {
        let state = Arc::make_mut(&mut self.inner);
        Arc::make_mut(&mut state.positions).insert(Arc::from(source), offset);
    }
    /// The head as of `as_of_us` as aggregate JSON (`Agg.to_list`); TooEarly(finalized instant)
    /// for an instant before the finalized history.
    fn head_json<'py>(&self, py: Python<'py>, policy: &PyPolicy, as_of_us: i64) -> PyResult<Bound<'py, PyBytes>> {
        match guard(|| fold::head_as_of(&self.inner, as_of_us, &policy.inner))? {
            Ok(h) => Ok(agg_bytes(py, &h)),
            Err(t) => Err(TooEarly::new_err(t)),
        }
    }
    /// The snapshot as of `as_of_us` with null CLV fields, its CLV inputs and RFM values
    /// (each None without purchases); None when a figure needs more than 128-bit
    /// integers (the caller then reads `head_json`). TooEarly as `head_json`.
    fn snapshot(&self, py: Python<'_>, policy: &PyPolicy, as_of_us: i64) -> PyResult<Option<PyObject>> {
        let Some(parts) = self.snapshot_fields(policy, as_of_us)? else {
            return Ok(None);
        };
        let d = PyDict::new_bound(py);
        for (k, v) in parts.fields {
            match v {
                snapshot::V::Null => d.set_item(k, py.None())?,
                snapshot::V::Int(i) => d.set_item(k, i)?,
                snapshot::V::Float(f) => d.set_item(k, f)?,
                snapshot::V::Str(t) => d.set_item(k, &*t)?,
            }
        }
        Ok(Some((d, parts.inputs, parts.values).into_py(py)))
    }
    /// What `snapshot` gives, with the fields before the model fields already encoded:
    /// (`{` and those fields as orjson writes them, no closing brace; CLV inputs; RFM
    /// values; spend total; margin total). None and TooEarly as `snapshot`.
    #[allow(clippy::type_complexity)]
    fn snapshot_json<'py>(
        &self,
        py: Python<'py>,
        policy: &PyPolicy,
        as_of_us: i64,
    ) -> PyResult<Option<(Bound<'py, PyBytes>, Option<[i64; 4]>, Option<[i64; 3]>, i64, i64)>> {
        let Some(p) = self.snapshot_fields(policy, as_of_us)? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(1024);
        snapshot::write_head_fields(&mut out, &p.fields);
        Ok(Some((PyBytes::new_bound(py, &out), p.inputs, p.values, p.spend_total, p.margin_total)))
    }
    /// The head as of the clock (None without events), as aggregate JSON.
    fn head_now_json<'py>(&self, py: Python<'py>, policy: &PyPolicy) -> PyResult<Option<Bound<'py, PyBytes>>> {
        Ok(guard(|| fold::head_now(&self.inner, &policy.inner))?.map(|h| agg_bytes(py, &h)))
    }
    fn __repr__(&self) -> String {
        format!(
            "State({}|{}, buffered={}, stage={:?})",
            self.inner.shop_id,
            self.inner.customer_id,
            self.inner.buf.len(),
            stage_name(self.inner.stage)
        )
    }
}

/// The snapshot's parts both `snapshot` and `snapshot_json` read.
struct SnapshotParts {
    fields: Vec<(&'static str, snapshot::V)>,
    inputs: Option<[i64; 4]>,
    values: Option<[i64; 3]>,
    /// the head's spend and margin totals (the CLV margin the Python caller scores with)
    spend_total: i64,
    margin_total: i64,
}

impl PyState {
    fn snapshot_fields(&self, policy: &PyPolicy, as_of_us: i64) -> PyResult<Option<SnapshotParts>> {
        let s = &self.inner;
        let p = &policy.inner;
        let owned;
        let head: &Agg = match fold::cached_head(s, p) {
            Some(h) if s.clock == Some(as_of_us) && h.t_us == Some(as_of_us) => h,
            _ => {
                owned = guard(|| fold::head_as_of(s, as_of_us, p))?.map_err(TooEarly::new_err)?;
                &owned
            }
        };
        let Some(fields) = guard(|| snapshot::snapshot_of_head(&s.shop_id, &s.customer_id, head, as_of_us, p))? else {
            return Ok(None);
        };
        let day = day_of(as_of_us);
        Ok(Some(SnapshotParts {
            fields,
            inputs: snapshot::clv_inputs(head, day),
            values: snapshot::rfm_values(head, day),
            spend_total: head.spend_total,
            margin_total: head.margin_total,
        }))
    }
}

/// A finite float as the JSON writer writes it (orjson's form): for the test that
/// compares the two.
#[pyfunction]
fn json_float<'py>(py: Python<'py>, v: f64) -> PyResult<Bound<'py, PyBytes>> {
    if !v.is_finite() {
        return Err(PyValueError::new_err("JSON has no NaN or infinity"));
    }
    let mut out = Vec::new();
    json::write_float(&mut out, v);
    Ok(PyBytes::new_bound(py, &out))
}

fn agg_bytes<'py>(py: Python<'py>, h: &Agg) -> Bound<'py, PyBytes> {
    let mut out = Vec::with_capacity(512);
    codec::encode_agg(&mut out, h);
    PyBytes::new_bound(py, &out)
}

#[pyfunction]
fn decode(data: &[u8]) -> PyResult<PyState> {
    match guard(|| codec::decode_state(data))? {
        Ok(s) => Ok(PyState { inner: Arc::new(s) }),
        Err(codec::DecodeError::Newer(m)) => Err(NewerFormat::new_err(m)),
        Err(codec::DecodeError::Corrupt(m)) => Err(FormatError::new_err(m)),
    }
}

fn outcome_py(py: Python<'_>, o: fold::Outcome, input: Option<&Arc<CustomerState>>) -> PyResult<PyObject> {
    let (status, reason, behind) = match o.status {
        fold::Status::Applied => ("applied", None, 0),
        fold::Status::Duplicate => ("duplicate", None, 0),
        fold::Status::Rejected(r, b) => ("rejected", Some(r), b),
    };
    // An unchanged state is the caller's own object: None tells the wrapper so.
    let state: PyObject = if !o.changed && input.is_some_and(|i| Arc::ptr_eq(i, &o.state)) {
        py.None()
    } else {
        Py::new(py, PyState { inner: o.state })?.into_py(py)
    };
    // Effects handed over encoded (the output record's bytes) with the fields the
    // service counts: a dict per effect cost a third of this call.
    let effects = PyList::empty_bound(py);
    let marks = PyList::empty_bound(py);
    let mut out = Vec::with_capacity(256);
    for e in &o.effects {
        out.clear();
        json::write(&mut out, e, false);
        effects.append(PyBytes::new_bound(py, &out))?;
        marks.append(mark_py(py, e))?;
    }
    Ok(PyTuple::new_bound(
        py,
        [
            status.into_py(py),
            o.changed.into_py(py),
            state,
            PyTuple::new_bound(py, [effects.into_py(py), marks.into_py(py)]).into_py(py),
            reason.into_py(py),
            behind.into_py(py),
            opt_stage(py, o.stage_before),
            opt_stage(py, o.stage_after),
            kpi_py(py, &o.kpi_before),
            kpi_py(py, &o.kpi_after),
        ],
    )
    .into_py(py))
}

/// `(kind, void, from, to, entry, points)` of an effect, None where it has no such
/// field: what `streams.metrics` counts (`scoring.engine.EffectMark`).
fn mark_py(py: Python<'_>, e: &json::J) -> PyObject {
    let field = |name: &str| -> PyObject {
        match e {
            json::J::Obj(items) => match items.iter().find(|(k, _)| *k == name) {
                Some((_, json::J::Str(s))) => (&**s).into_py(py),
                Some((_, json::J::Int(i))) => i.into_py(py),
                Some((_, json::J::Bool(b))) => b.into_py(py),
                _ => py.None(),
            },
            _ => py.None(),
        }
    };
    PyTuple::new_bound(py, [field("kind"), field("void"), field("from"), field("to"), field("entry"), field("points")])
        .into_py(py)
}

fn opt_arc(v: &Bound<'_, PyAny>) -> PyResult<Option<Arc<str>>> {
    if v.is_none() {
        Ok(None)
    } else {
        Ok(Some(Arc::from(v.extract::<&str>()?)))
    }
}

/// Fold one event: `kind` and `a, b, c` as `scoring.records.to_record` makes them.
#[pyfunction]
#[pyo3(signature = (state, shop, cust, ts, event_id, kind, a, b, c, digest, key, policy))]
#[allow(clippy::too_many_arguments)]
fn apply(
    py: Python<'_>,
    state: Option<PyRef<'_, PyState>>,
    shop: &str,
    cust: &str,
    ts: i64,
    event_id: &str,
    kind: &str,
    a: &Bound<'_, PyAny>,
    b: &Bound<'_, PyAny>,
    c: &Bound<'_, PyAny>,
    digest: i64,
    key: i64,
    policy: &PyPolicy,
) -> PyResult<PyObject> {
    let payload = match kind {
        "P" => Payload::Purchase { order: Arc::from(a.extract::<&str>()?), amount: b.extract()?, rate: opt_arc(c)? },
        "R" => Payload::Refund { order: Arc::from(a.extract::<&str>()?), amount: b.extract()? },
        "V" => Payload::Visit,
        "F" => Payload::Feedback {
            nps: a.extract()?,
            sow: b.extract()?,
            extra: if c.is_none() {
                None
            } else {
                let tm: Vec<Bound<'_, PyAny>> = c.extract()?;
                if tm.len() != 2 {
                    return Err(PyValueError::new_err("feedback extra is [touchpoint, comment]"));
                }
                Some((opt_arc(&tm[0])?, opt_arc(&tm[1])?))
            },
        },
        "X" => Payload::Redemption { points: a.extract()? },
        _ => return Err(PyValueError::new_err(format!("record kind {kind:?}"))),
    };
    if let Payload::Purchase { rate: Some(rate), .. } = &payload {
        if !codec::rate_fits(rate) {
            return Err(PyValueError::new_err(format!("margin rate {rate} does not fit 64-bit integers")));
        }
    }
    let rec = Rec { ts, event_id: Arc::from(event_id), payload };
    let input = state.as_ref().map(|s| s.inner.clone());
    let (shop, cust): (Arc<str>, Arc<str>) = match &input {
        Some(s) => (s.shop_id.clone(), s.customer_id.clone()),
        None => (Arc::from(shop), Arc::from(cust)),
    };
    drop(state);
    let o = guard(|| fold::apply(input.as_ref(), &shop, &cust, rec, digest, key, &policy.inner))?;
    outcome_py(py, o, input.as_ref())
}

/// An event the fast path of the contract accepted (`event.rs`): the fields the
/// service reads, as the Python parser's model has them, plus its record, content
/// digest and id hash, so that `apply_event` folds it without converting anything.
#[pyclass(module = "loyalty_native", name = "Event", frozen)]
struct PyEvent {
    inner: event::Event,
    event_id: Py<PyString>,
    shop_id: Py<PyString>,
    customer_id: Py<PyString>,
}

#[pymethods]
impl PyEvent {
    #[getter(r#type)]
    fn kind(&self) -> &'static str {
        self.inner.kind
    }
    #[getter]
    fn event_id(&self, py: Python<'_>) -> Py<PyString> {
        self.event_id.clone_ref(py)
    }
    #[getter]
    fn shop_id(&self, py: Python<'_>) -> Py<PyString> {
        self.shop_id.clone_ref(py)
    }
    #[getter]
    fn customer_id(&self, py: Python<'_>) -> Py<PyString> {
        self.customer_id.clone_ref(py)
    }
    /// microseconds since the epoch
    #[getter]
    fn ts_us(&self) -> i64 {
        self.inner.ts
    }
    /// as the Python parser's model has it: an aware datetime in UTC
    #[getter]
    fn occurred_at<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDateTime>> {
        let us = self.inner.ts;
        let (y, m, d) = rules::civil_from_days(us.div_euclid(86_400_000_000));
        let rem = us.rem_euclid(86_400_000_000);
        let secs = rem / 1_000_000;
        let utc = timezone_utc_bound(py);
        PyDateTime::new_bound(
            py,
            y as i32,
            m as u8,
            d as u8,
            (secs / 3600) as u8,
            (secs / 60 % 60) as u8,
            (secs % 60) as u8,
            (rem % 1_000_000) as u32,
            Some(&utc),
        )
    }
    #[getter]
    fn currency(&self) -> Option<&str> {
        self.inner.currency.as_deref()
    }
    #[getter]
    fn nps(&self) -> Option<i64> {
        match &self.inner.payload {
            Payload::Feedback { nps, .. } => Some(*nps),
            _ => None,
        }
    }
    #[getter]
    fn touchpoint(&self) -> Option<&str> {
        match &self.inner.payload {
            Payload::Feedback { extra: Some((tp, _)), .. } => tp.as_deref(),
            _ => None,
        }
    }
    #[getter]
    fn digest(&self) -> i64 {
        self.inner.digest
    }
    #[getter]
    fn id_hash(&self) -> i64 {
        self.inner.id_hash
    }
    /// `scoring.records.to_record` of the event (for tests)
    fn record(&self, py: Python<'_>) -> PyObject {
        let rec = self.inner.rec();
        let s = |v: &Arc<str>| (&**v).into_py(py);
        let opt = |v: &Option<Arc<str>>| v.as_deref().into_py(py);
        let (kind, a, b, c): (&str, PyObject, PyObject, PyObject) = match &rec.payload {
            Payload::Purchase { order, amount, rate } => ("P", s(order), amount.into_py(py), opt(rate)),
            Payload::Refund { order, amount } => ("R", s(order), amount.into_py(py), py.None()),
            Payload::Visit => ("V", py.None(), py.None(), py.None()),
            Payload::Feedback { nps, sow, extra } => (
                "F",
                nps.into_py(py),
                sow.into_py(py),
                match extra {
                    None => py.None(),
                    Some((tp, comment)) => PyList::new_bound(py, [opt(tp), opt(comment)]).into_py(py),
                },
            ),
            Payload::Redemption { points } => ("X", points.into_py(py), py.None(), py.None()),
        };
        PyList::new_bound(py, [rec.ts.into_py(py), s(&rec.event_id), kind.into_py(py), a, b, c]).into_py(py)
    }
    fn __repr__(&self) -> String {
        format!("Event({} {}|{} {})", self.inner.kind, self.inner.shop_id, self.inner.customer_id, self.inner.event_id)
    }
}

/// The event in `raw` if the contract's fast path accepts it, else None: then the
/// Python parser decides, and words any rejection (`event.rs`). Never raises.
#[pyfunction]
fn parse_event(py: Python<'_>, raw: &[u8]) -> PyResult<Option<PyEvent>> {
    let Some(ev) = event::parse(raw) else { return Ok(None) };
    Ok(Some(PyEvent {
        event_id: PyString::new_bound(py, &ev.event_id).unbind(),
        shop_id: PyString::new_bound(py, &ev.shop_id).unbind(),
        customer_id: PyString::new_bound(py, &ev.customer_id).unbind(),
        inner: ev,
    }))
}

/// `apply` for an event of `parse_event`: the same fold, nothing converted.
#[pyfunction]
#[pyo3(signature = (state, event, policy))]
fn apply_event(
    py: Python<'_>,
    state: Option<PyRef<'_, PyState>>,
    event: PyRef<'_, PyEvent>,
    policy: &PyPolicy,
) -> PyResult<PyObject> {
    let ev = &event.inner;
    let input = state.as_ref().map(|s| s.inner.clone());
    drop(state);
    let (shop, cust): (Arc<str>, Arc<str>) = match &input {
        Some(s) if (&*s.shop_id, &*s.customer_id) != (&*ev.shop_id, &*ev.customer_id) => {
            return Err(PyValueError::new_err(format!(
                "event for {}|{} applied to {}|{}",
                ev.shop_id, ev.customer_id, s.shop_id, s.customer_id
            )));
        }
        Some(s) => (s.shop_id.clone(), s.customer_id.clone()),
        None => (ev.shop_id.clone(), ev.customer_id.clone()),
    };
    let rec = ev.rec();
    let (digest, key) = (ev.digest, ev.id_hash);
    drop(event);
    let o = guard(|| fold::apply(input.as_ref(), &shop, &cust, rec, digest, key, &policy.inner))?;
    outcome_py(py, o, input.as_ref())
}

#[pyfunction]
fn advance(
    py: Python<'_>,
    state: PyRef<'_, PyState>,
    now_us: i64,
    policy: &PyPolicy,
    stale: bool,
) -> PyResult<PyObject> {
    let input = state.inner.clone();
    drop(state);
    let o = guard(|| fold::advance(&input, now_us, &policy.inner, stale))?;
    outcome_py(py, o, Some(&input))
}

/// (head as aggregate JSON or None, stale)
#[pyfunction]
fn rederive<'py>(
    py: Python<'py>,
    state: PyRef<'_, PyState>,
    policy: &PyPolicy,
) -> PyResult<(Option<Bound<'py, PyBytes>>, bool)> {
    let (head, stale) = guard(|| fold::rederive(&state.inner, &policy.inner))?;
    Ok((head.map(|h| agg_bytes(py, &h)), stale))
}

type Owned<'py> = (
    Option<Bound<'py, PyBytes>>,
    Option<Bound<'py, PyBytes>>,
    Vec<(Bound<'py, PyString>, Option<Bound<'py, PyBytes>>)>,
);

/// Kafka record batches of `records`, each `(key, value, headers)` (bytes or None, and
/// a list of `(str, bytes or None)` or None), in order: a list of `(batch bytes, record
/// count)`, each at most `max_bytes` unless it holds one record (`kafka.rs`).
#[pyfunction]
fn record_batches<'py>(
    py: Python<'py>,
    records: &Bound<'py, PyList>,
    timestamp_ms: i64,
    max_bytes: usize,
) -> PyResult<Bound<'py, PyList>> {
    let opt_bytes = |v: Bound<'py, PyAny>| -> PyResult<Option<Bound<'py, PyBytes>>> {
        if v.is_none() {
            Ok(None)
        } else {
            Ok(Some(v.downcast_into::<PyBytes>()?))
        }
    };
    let mut owned: Vec<Owned<'py>> = Vec::with_capacity(records.len());
    for item in records.iter() {
        let t = item.downcast_into::<PyTuple>()?;
        if t.len() != 3 {
            return Err(PyValueError::new_err("a record is (key, value, headers)"));
        }
        let mut headers = Vec::new();
        let h = t.get_item(2)?;
        if !h.is_none() {
            for pair in h.iter()? {
                let pair = pair?.downcast_into::<PyTuple>()?;
                headers.push((pair.get_item(0)?.downcast_into::<PyString>()?, opt_bytes(pair.get_item(1)?)?));
            }
        }
        owned.push((opt_bytes(t.get_item(0)?)?, opt_bytes(t.get_item(1)?)?, headers));
    }
    let mut recs = Vec::with_capacity(owned.len());
    for (k, v, hs) in &owned {
        let mut headers = Vec::with_capacity(hs.len());
        for (hk, hv) in hs {
            headers.push((hk.to_str()?.as_bytes(), hv.as_ref().map(|b| b.as_bytes())));
        }
        recs.push(kafka::Record {
            key: k.as_ref().map(|b| b.as_bytes()),
            value: v.as_ref().map(|b| b.as_bytes()),
            headers,
        });
    }
    let out = PyList::empty_bound(py);
    for (range, size) in kafka::split(&recs, max_bytes) {
        // written straight into the bytes object: no buffer of its own to copy from
        let data = PyBytes::new_bound_with(py, size, |buf| {
            kafka::write(buf, &recs[range.clone()], timestamp_ms);
            Ok(())
        })?;
        out.append((data, range.len()))?;
    }
    Ok(out)
}

/// Kafka's default partitioner hash of `key`: `murmur2(key) & 0x7fffffff`
/// (`partitioner.rs`), for `streams.topics.partition_for`. Never fails.
#[pyfunction]
fn partition_hash(key: &[u8]) -> u32 {
    partitioner::positive_murmur2(key)
}

#[pymodule]
fn loyalty_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPolicy>()?;
    m.add_class::<PyState>()?;
    m.add_function(wrap_pyfunction!(decode, m)?)?;
    m.add_function(wrap_pyfunction!(json_float, m)?)?;
    m.add_function(wrap_pyfunction!(apply, m)?)?;
    m.add_class::<PyEvent>()?;
    m.add_function(wrap_pyfunction!(parse_event, m)?)?;
    m.add_function(wrap_pyfunction!(apply_event, m)?)?;
    m.add_function(wrap_pyfunction!(advance, m)?)?;
    m.add_function(wrap_pyfunction!(rederive, m)?)?;
    m.add_function(wrap_pyfunction!(partition_hash, m)?)?;
    m.add_function(wrap_pyfunction!(record_batches, m)?)?;
    m.add("FormatError", m.py().get_type_bound::<FormatError>())?;
    m.add("NewerFormat", m.py().get_type_bound::<NewerFormat>())?;
    m.add("TooEarly", m.py().get_type_bound::<TooEarly>())?;
    m.add("EngineError", m.py().get_type_bound::<EngineError>())?;
    m.add("STATE_FORMAT", codec::FORMAT_VERSION)?;
    Ok(())
}
