"""Prometheus metrics of the streaming worker.

Every metric lives in one :class:`Metrics` object with its own
:class:`prometheus_client.CollectorRegistry`, so several apps in one process
(unit tests) never collide on the global registry and ``/metrics`` shows only
this worker's series.

Label policy: labels are bounded sets only - topic names, event types,
reasons, stages, shop ids. **No customer id ever appears in a label** (the
cardinality would be unbounded and it would leak personal data into the
monitoring stack).

Counters are per worker process and start at zero on every start (Prometheus'
``rate()`` handles resets). After a crash the redelivered messages are counted
again: counters measure work done, not distinct events; the *state* is what is
exactly-once (see README "Guarantees and failure modes").
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from scoring.engine import EffectMark, effect_marks

if TYPE_CHECKING:
    from scoring.engine import StateCache
    from streams.planning import Plan
    from streams.records import Record

__all__ = ["BATCH_STEPS", "CONTENT_TYPE_LATEST", "Metrics"]

#: the steps of ``loyalty_batch_step_seconds``, in the order a batch takes them
BATCH_STEPS = ("plan", "settle", "outputs", "changelog", "write")

# Ledger entry kinds that move points, mapped to the counter label they feed.
_POINT_ENTRIES = {"earn": "earned", "redeem": "redeemed", "expire": "expired", "clawback": "clawed_back"}


class Metrics:
    """All metrics of one worker. Cheap to construct; never raises on update."""

    def __init__(self, exported_shops: frozenset[str] | None = None) -> None:
        #: shops whose per-shop series are set (None: every shop; LOYALTY_SHOP_METRICS)
        self.exported_shops = exported_shops
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_consumed = Counter(
            "loyalty_events_consumed_total",
            "Input records consumed, by source topic and event type ('invalid' if unparseable).",
            ["topic", "type"], registry=r)
        self.events_applied = Counter(
            "loyalty_events_applied_total", "Events that changed customer state, by type.",
            ["type"], registry=r)
        self.invalid_events = Counter(
            "loyalty_invalid_events_total", "Records sent to the dead-letter topic, by reason.",
            ["reason"], registry=r)
        self.duplicates = Counter(
            "loyalty_duplicates_ignored_total",
            "Exact duplicate events ignored (same event_id, same content).", registry=r)
        self.redeliveries = Counter(
            "loyalty_redeliveries_recognised_total",
            "Of the duplicates: redelivered records recognised by their input offset, "
            "their event ids no longer remembered.", registry=r)
        self.rekeyed = Counter(
            "loyalty_rekeyed_total",
            "Wrongly keyed or partitioned input records forwarded to the rekey topic.",
            ["topic"], registry=r)
        self.offset_gaps = Counter(
            "loyalty_input_offset_gaps_total",
            "Input records the consumer skipped (offset jumps); they are re-read and processed.",
            ["topic"], registry=r)
        self.internal_errors = Counter(
            "loyalty_internal_errors_total",
            "Unexpected exceptions while processing a record (record dead-lettered).",
            registry=r)
        self.latency = GroupedHistogram(
            "loyalty_processing_seconds", "Wall time to process one input record.",
            (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        r.register(self.latency)
        self.batch_steps = Histogram(
            "loyalty_batch_step_seconds",
            "Wall time of each step of the agent's batches: plan (parse, read, fold), settle "
            "(score snapshots), outputs (published until the broker acknowledged every record; "
            "the states are encoded and the changelog records built meanwhile), changelog "
            "(published until acknowledged), write (rows, tallies, state cache).",
            ["step"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                               1, 2.5), registry=r)
        self.batch_step_cpu = Counter(
            "loyalty_batch_step_cpu_seconds",
            "CPU time of the agent's thread in each step of its batches (the steps of "
            "loyalty_batch_step_seconds), with what other tasks of its event loop ran while "
            "the step waited: the producer's sender in outputs and changelog, above all.",
            ["step"], registry=r)
        for step in BATCH_STEPS:
            self.batch_steps.labels(step)
            self.batch_step_cpu.labels(step)
        self.batch_records = Histogram(
            "loyalty_batch_records", "Input records per batch the agent committed.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000), registry=r)
        self.event_lag = Gauge(
            "loyalty_event_time_lag_seconds",
            "Wall clock minus occurred_at of the last processed event, by source topic.",
            ["topic"], registry=r)
        self.transitions = Counter(
            "loyalty_stage_transitions_total", "Stage transitions published, by from/to.",
            ["from_stage", "to_stage"], registry=r)
        self.points = Counter(
            "loyalty_points_total",
            "Points moved by published ledger entries, by kind "
            "(earned, redeemed, expired, clawed_back).",
            ["kind"], registry=r)
        self.ledger_entries = Counter(
            "loyalty_ledger_entries_total", "Ledger entries published, by entry kind.",
            ["entry"], registry=r)
        self.voided = Counter(
            "loyalty_effects_voided_total",
            "Published retractions of earlier effects (late events rewrote history), by kind.",
            ["kind"], registry=r)
        self.customers_per_stage = Gauge(
            "loyalty_customers", "Customers per stage per shop (partitions owned by this worker).",
            ["shop", "stage"], registry=r)
        self.nps = Gauge(
            "loyalty_shop_nps",
            "Deprecated (a ratio cannot be summed across workers): use loyalty_shop_nps_promoters, "
            "_detractors and _responses. All-time NPS per shop, partitions owned by this worker.",
            ["shop"], registry=r)
        self.table_rows = Gauge(
            "loyalty_table_rows", "Rows in the locally owned partitions of each table.",
            ["table"], registry=r)
        self.sweeps = Counter(
            "loyalty_sweeps_total", "Completed time sweeps.", registry=r)
        self.sweep_changed = Counter(
            "loyalty_sweep_changed_total", "Customer states changed by the time sweep.",
            registry=r)
        self.sweep_visited = Counter(
            "loyalty_sweep_visited_total",
            "Customer states the time sweep read (every row in a full scan, due ones otherwise).",
            registry=r)
        self.sweep_index_keys = Gauge(
            "loyalty_sweep_due_index_keys",
            "Customers in the sweep's due index (due before the next full scan), owned partitions.",
            registry=r)
        self.sweep_seconds = Histogram(
            "loyalty_sweep_seconds", "Duration of one time sweep over all owned partitions.",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60), registry=r)
        self.gc_reclaim_seconds = Histogram(
            "loyalty_gc_reclaim_seconds",
            "Duration of one periodic full garbage collection (the event loop is blocked "
            "meanwhile; grows with the live states kept in memory).",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10), registry=r)
        self.loop_lag = Histogram(
            "loyalty_event_loop_lag_seconds",
            "How much later than asked the event loop ran a 0.1 s sleep: what an event "
            "arriving then waited before the worker could look at it (streams/loop_watch.py).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r)
        self.gc_reclaimed_objects = Counter(
            "loyalty_gc_reclaimed_objects_total",
            "Objects the periodic full garbage collection freed (reference cycles).",
            registry=r)
        self.restored_records = Counter(
            "loyalty_restored_records_total",
            "Changelog records written to local stores by the bulk restore "
            "(the rest of a recovery is replayed by Faust).", registry=r)
        self.align_held = Gauge(
            "loyalty_align_held_records",
            "Input records received and held back by the event-time alignment.", registry=r)
        self.align_skew = Gauge(
            "loyalty_align_event_time_skew_seconds",
            "Newest minus oldest event time at the heads of the held input partitions, "
            "per partition number.", ["partition"], registry=r)
        self.align_pauses = Counter(
            "loyalty_align_pauses_total",
            "Times the alignment paused fetching an input partition that ran ahead.", registry=r)
        self.align_idle_timeouts = Counter(
            "loyalty_align_idle_timeouts_total",
            "Times an input partition stopped holding the others back after "
            "LOYALTY_MAX_IDLE_MS without records.", registry=r)
        self.align_forced = Counter(
            "loyalty_align_forced_records_total",
            "Records released while an idle input partition was not waited for.", registry=r)
        self.shop_kpi = Gauge(
            "loyalty_shop_kpi", "Shop KPI (rule v2) over the partitions this worker owns; "
            "ratios as fractions, average_check in minor units.", ["shop", "kpi"], registry=r)
        self.shop_customers_by = Gauge(
            "loyalty_shop_customers_by", "Customers per loyalty type, wallet band or detractor "
            "status ('null': none) over the partitions this worker owns.",
            ["shop", "dimension", "value"], registry=r)
        # --- Operations (streams/health.py; README "Operations") ---------------------
        self.consumer_lag = Gauge(
            "loyalty_consumer_lag",
            "Records not yet processed per input partition assigned to this worker: "
            "end offset minus the group's committed offset.",
            ["topic", "partition"], registry=r)
        self.ready = Gauge(
            "loyalty_ready",
            "1 when /health/ready answers 200 (partitions assigned, tables recovered, "
            "broker reachable), else 0.", registry=r)
        self.broker_contact_age = Gauge(
            "loyalty_broker_last_contact_age_seconds",
            "Seconds since the worker's last successful request to the broker "
            "(updated every probe round).", registry=r)
        # NPS as counts, so workers can be summed: NPS = 100 * (promoters - detractors) /
        # responses over the sums (the loyalty_shop_nps ratio above cannot be summed).
        self.nps_promoters = Gauge(
            "loyalty_shop_nps_promoters",
            "All-time NPS promoters per shop (thresholds from the shop policy), "
            "partitions owned by this worker.",
            ["shop"], registry=r)
        self.nps_detractors = Gauge(
            "loyalty_shop_nps_detractors",
            "All-time NPS detractors per shop (thresholds from the shop policy), "
            "partitions owned by this worker.",
            ["shop"], registry=r)
        self.nps_responses = Gauge(
            "loyalty_shop_nps_responses",
            "All-time NPS responses per shop, partitions owned by this worker.",
            ["shop"], registry=r)
        # Predictive CLV (streams/clv_service.py): which model scores each shop.
        self.clv_model = Gauge(
            "loyalty_clv_model",
            "1 for the CLV model that scores the shop (model: shop, pooled or none), 0 otherwise.",
            ["shop", "model"], registry=r)
        self.clv_fit_degenerate = Gauge(
            "loyalty_clv_fit_degenerate",
            "1 when the shop's own CLV fit is degenerate or did not converge (never served).",
            ["shop"], registry=r)
        # What this worker runs: one series of value 1 (Prometheus' *_info idiom),
        # so that a rolling upgrade's state of play can be read off the group.
        self.build_info = Gauge(
            "loyalty_build_info",
            "1, labelled with the worker's version, scoring engine, the state format it "
            "writes and the formats it reads.",
            ["version", "engine", "state_format_writes", "state_formats_read"], registry=r)

    def watch_state_cache(self, cache: StateCache) -> None:
        """Export ``cache``'s size and lookups, read at scrape time (no cost per event):
        ``loyalty_state_cache_states``, ``loyalty_state_cache_bytes`` (the engine's
        estimate, bounded by LOYALTY_STATE_CACHE_MB) and
        ``loyalty_state_cache_lookups_total{result}`` (``live``: the live state served;
        ``head``: decoded with its kept head; ``decoded``: decoded and re-folded)."""
        self.registry.register(_StateCacheCollector(cache))

    def set_build(self, version: str, engine: str, writes: int, reads: Iterable[int]) -> None:
        """Publish what this worker runs (``loyalty_build_info``); called once at start."""
        self.build_info.clear()
        self.build_info.labels(version, engine, str(writes), ",".join(map(str, reads))).set(1)

    def observe_processed(self, planned: Sequence[tuple[Record, Plan]], started: float) -> None:
        """Count processed records and their effects, and their processing latency
        (``started``: ``time.perf_counter()`` when the batch began).

        Counted per call, then each labelled series incremented once: the totals
        are those of counting record by record. ``event_lag`` ends at the last
        record's lag per topic, as it would record by record.
        """
        # (counter, label values) -> records; () for the unlabelled counters
        counts: dict[tuple[Counter, tuple[str, ...]], int] = {}
        lags: dict[str, datetime] = {}
        marks: list[EffectMark] = []
        for record, plan in planned:
            if plan.effects:
                marks.extend(effect_marks(plan.effects))
            if plan.occurred_at is not None:
                lags[record.topic] = plan.occurred_at  # the gauge holds the last one
            k: tuple[Counter, tuple[str, ...]] = (self.events_consumed,
                                                  (record.topic, plan.event_type))
            counts[k] = counts.get(k, 0) + 1
            status = plan.status
            if status in ("invalid", "rejected"):
                k = (self.invalid_events, (plan.reason or status,))
            elif status == "applied":
                k = (self.events_applied, (plan.event_type,))
            elif status == "rekeyed":
                k = (self.rekeyed, (record.topic,))
            elif status == "duplicate":
                k = (self.duplicates, ())
                if plan.reason == "redelivered":
                    counts[self.redeliveries, ()] = counts.get((self.redeliveries, ()), 0) + 1
            else:
                continue
            counts[k] = counts.get(k, 0) + 1
        for (counter, labels), n in counts.items():
            (counter.labels(*labels) if labels else counter).inc(n)
        self.observe_effects(marks)
        now = time.time()
        for topic, occurred_at in lags.items():
            self.event_lag.labels(topic).set(now - occurred_at.timestamp())
        # Every record of the batch waited for the whole batch: one observation each.
        self.latency.observe(time.perf_counter() - started, len(planned))

    def observe_effects(self, marks: Iterable[EffectMark]) -> None:
        """Count published effects (ledger entries and transitions) by their marks
        (:func:`scoring.engine.effect_marks`).

        Counted per call, then each labelled series incremented once."""
        voided: dict[str, int] = {}
        transitions: dict[tuple[str, str], int] = {}
        entries: dict[str, int] = {}
        points: dict[str, int] = {}
        for kind, void, frm, to, entry, n in marks:
            if void:
                # A retraction of an earlier effect (a late event changed history).
                voided[str(kind)] = voided.get(str(kind), 0) + 1
                continue
            if kind == "transition":
                # from is null for a customer's first stage: label it "none".
                k = (str(frm or "none"), str(to))
                transitions[k] = transitions.get(k, 0) + 1
            elif kind == "ledger":
                entry = str(entry)
                entries[entry] = entries.get(entry, 0) + 1
                label = _POINT_ENTRIES.get(entry)
                if label and isinstance(n, int) and not isinstance(n, bool):
                    points[label] = points.get(label, 0) + abs(n)
        for kind, n in voided.items():
            self.voided.labels(kind).inc(n)
        for (frm, to), n in transitions.items():
            self.transitions.labels(frm, to).inc(n)
        for entry, n in entries.items():
            self.ledger_entries.labels(entry).inc(n)
        for label, n in points.items():
            self.points.labels(label).inc(n)

    def exports_shop(self, shop_id: str) -> bool:
        """Whether ``shop_id``'s per-shop series are exported (``LOYALTY_SHOP_METRICS``)."""
        return self.exported_shops is None or shop_id in self.exported_shops

    def set_shop_figures(self, shop_id: str, figures: Mapping[str, Any]) -> None:
        """Publish one shop's funnel and NPS gauges from ``ShopTally.figures()`` output.

        Tolerant of the figure layout: looks for a ``funnel``/``stages`` mapping
        and an ``nps`` number at the top level or under ``all_time``. Nothing
        for a shop that is not exported.
        """
        if not self.exports_shop(shop_id):
            return
        funnel = figures.get("funnel") or figures.get("stages") or {}
        if isinstance(funnel, Mapping):
            for stage, count in funnel.items():
                if isinstance(count, int | float):
                    self.customers_per_stage.labels(shop_id, str(stage)).set(count)
        nps: Any = None
        node = figures.get("nps")
        if isinstance(node, Mapping):
            node = node.get("all_time", node)
            if isinstance(node, Mapping):
                nps = node.get("score", node.get("nps"))
            else:
                nps = node
        elif isinstance(node, int | float):
            nps = node
        if isinstance(nps, int | float) and not isinstance(nps, bool):
            self.nps.labels(shop_id).set(nps)
        counts = figures.get("nps")
        if isinstance(counts, Mapping):
            for gauge, name in ((self.nps_promoters, "promoters"),
                                (self.nps_detractors, "detractors"),
                                (self.nps_responses, "responses")):
                value = counts.get(name)
                if isinstance(value, int) and not isinstance(value, bool):
                    gauge.labels(shop_id).set(value)
        set_shop_kpis(self, shop_id, figures)

    def set_clv(self, shop_id: str, model: str | None, degenerate: bool) -> None:
        """Record which CLV model scores ``shop_id`` and whether its own fit is degenerate
        (nothing for a shop that is not exported)."""
        if not self.exports_shop(shop_id):
            return
        for kind in ("shop", "pooled", "none"):
            self.clv_model.labels(shop_id, kind).set(1 if kind == (model or "none") else 0)
        self.clv_fit_degenerate.labels(shop_id).set(1 if degenerate else 0)

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)


# -- Shop KPIs (rule v2) ---------------------------------------------------------
# Metrics.set_shop_figures (called by the sweep) also publishes the numeric
# KPIs of ShopTally.figures(). Like loyalty_shop_nps, they cover the partitions
# this worker owns: with several workers, the counts add up across workers and
# the ratios are per worker (GET /shops/{shop} has the merged figures).
_KPI_SCALARS = ("buyers", "repeat_rate", "loyal_share_of_buyers", "attached_spend_uplift",
                "average_check", "detractors_recovered_rate")
_KPI_COUNTS = ("loyalty_types", "wallet_bands", "detractor_statuses")


def set_shop_kpis(metrics: Metrics, shop_id: str, figures: Mapping[str, Any]) -> None:
    """Publish the numeric KPIs of ``figures``; a null KPI leaves its gauge as it was."""
    scalars, counts = metrics.shop_kpi, metrics.shop_customers_by
    for name in _KPI_SCALARS:
        value = figures.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            scalars.labels(shop_id, name).set(value)
    for dimension in _KPI_COUNTS:
        node = figures.get(dimension)
        if isinstance(node, Mapping):
            for value, n in node.items():
                if isinstance(n, int) and not isinstance(n, bool):
                    counts.labels(shop_id, dimension, str(value)).set(n)


def add_process_metrics(metrics: Metrics) -> None:
    """Register prometheus_client's default collectors on this worker's registry.

    ``process_*`` (CPU seconds, resident memory, open fds, start time; Linux
    only), ``python_info`` and ``python_gc_*``, the series every Prometheus
    dashboard expects. Called once per worker process (a second call raises
    ``ValueError``: duplicated time series); not in :class:`Metrics` itself
    because several test apps in one process would report the same process.
    """
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    ProcessCollector(registry=metrics.registry)
    PlatformCollector(registry=metrics.registry)
    GCCollector(registry=metrics.registry)


class GroupedHistogram:
    """A histogram observed in groups of equal values, exposed as prometheus_client's.

    The agent observes every record of a batch with the batch's time:
    prometheus_client's ``Histogram.observe`` takes a lock and searches the
    buckets in Python per record, this once per group (measured in
    docs/performance-history.md). Exposition: the same ``_bucket``/``_count``/``_sum``
    series as a ``Histogram`` with these buckets fed value by value (a test
    compares them); no ``_created`` series. Safe to scrape from another thread.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(float(b) for b in buckets)
        if list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError(f"{name}: buckets must increase: {buckets}")
        self._counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float, count: int = 1) -> None:
        """Observe ``value`` ``count`` times (``le`` buckets: ``value <= bound``)."""
        if count <= 0:
            return
        i = bisect_left(self.bounds, value)
        with self._lock:
            self._counts[i] += count
            self._sum += value * count

    def collect(self) -> Iterable[Any]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, buckets = 0, []
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            cumulative += n
            buckets.append((floatToGoString(bound), cumulative))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets,
                                    sum_value=total)


class _StateCacheCollector:
    """:meth:`Metrics.watch_state_cache`'s series, read off the cache when scraped."""

    def __init__(self, cache: StateCache) -> None:
        self.cache = cache

    def collect(self) -> Iterable[Any]:
        c = self.cache
        yield GaugeMetricFamily("loyalty_state_cache_states",
                                "Customers whose live state the state cache holds.", value=len(c))
        yield GaugeMetricFamily("loyalty_state_cache_bytes",
                                "Memory the state cache's live states take, by the engine's "
                                "estimate (bounded by LOYALTY_STATE_CACHE_MB).", value=c.weight)
        lookups = CounterMetricFamily(
            "loyalty_state_cache_lookups", "States the agent read, by how: live (the cached "
            "state), head (decoded, its kept head), decoded (decoded and re-folded).",
            labels=["result"])
        lookups.add_metric(["live"], c.hits)
        lookups.add_metric(["head"], c.head_hits)
        lookups.add_metric(["decoded"], c.misses - c.head_hits)
        yield lookups
