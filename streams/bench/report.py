"""The machine description and the two output formats of ``loyalty bench``.

JSON (``--json``): one object with exactly the keys of :data:`RESULT_KEYS`
plus ``"population"`` (the ``--population`` figures, or null), ``"machine"``
and ``"params"``. ``params`` holds the run's inputs and,
under ``params["observed"]``, the conditions each figure was measured under
(offered latency rate, samples, phase durations, CPU seconds, event statuses,
load average), so a number can be judged without re-running.
"""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

#: the figures, in table order, with their units and a one-line meaning
RESULT_KEYS: dict[str, tuple[str, str]] = {
    "events_per_cpu_s": ("events/CPU-s", "service: events per CPU-second of the worker, "
                         "start-up excluded (the headline: least sensitive to other load)"),
    "baseline_events_per_cpu_s": ("events/CPU-s", "plain aiokafka loop on the same input"),
    "cpu_ratio": ("x", "service / baseline, per CPU-second"),
    "wall_ratio": ("x", "service / baseline, per wall-clock second (events_per_s)"),
    "events_per_s": ("events/s", "service throughput, cold start excluded, until all committed"),
    "baseline_events_per_s": ("events/s", "plain aiokafka loop on the same input"),
    "cold_start_s": ("s", "worker launch -> first event processed"),
    "latency_p50_ms": ("ms", "produce -> snapshot on scores, at half the max rate"),
    "latency_p99_ms": ("ms", "same, 99th percentile"),
    "latency_p99_ms_at_1000": ("ms", "same, 99th percentile at a fixed 1000 events/s"),
    "rss_mb": ("MiB", "peak RSS of the worker with the preloaded population"),
    "customers": ("", "customers in the table"),
    "recovery_customers_per_s": ("customers/s", "table rebuild from the changelog after a wipe"),
}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _mem_total_mb() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def machine(kafka_version: str) -> dict[str, Any]:
    """Cores, memory, Python/Kafka/library versions, load average, date (UTC)."""
    return {
        "cores": os.cpu_count(),
        "mem_total_mb": _mem_total_mb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "kafka": kafka_version,
        "faust_streaming": _version("faust-streaming"),
        "aiokafka": _version("aiokafka"),
        "orjson": _version("orjson"),
        "rocksdict": _version("rocksdict"),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value >= 1000:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}" if value >= 1 else f"{value:.3f}"
    return "n/a" if value is None else str(value)


def table(result: dict[str, Any]) -> str:
    """The human-readable report: figures, then the conditions they were measured under."""
    lines = []
    width = max(len(k) for k in RESULT_KEYS)
    for key, (unit, meaning) in RESULT_KEYS.items():
        lines.append(f"{key:<{width}}  {_fmt(result[key]):>12} {unit:<12}  {meaning}")
    obs = result["params"].get("observed", {})
    pop = result.get("population")
    if pop:
        n = f"{pop['customers']:,}"
        lines.append(f"{'population rss_mb':<{width}}  {_fmt(pop['rss_mb']):>12} {'MiB':<12}  "
                     f"peak RSS with {n} customers in the table, after the first sweep")
        lines.append(f"{'population recovery':<{width}}  "
                     f"{_fmt(pop['recovery_customers_per_s']):>12} {'customers/s':<12}  "
                     f"restore of {n} customers, one changelog record each (compacted)")
    lines.append("")
    m = result["machine"]
    lines.append(f"machine: {m['cores']} cores, {m['mem_total_mb']} MiB, Python {m['python']}, "
                 f"Kafka {m['kafka']}, faust-streaming {m['faust_streaming']}, "
                 f"aiokafka {m['aiokafka']}, {m['date']}")
    lines.append(f"load average: start {m['loadavg_start']}, end {obs.get('loadavg_end')}")
    p = result["params"]
    lines.append(f"params: {p['events']} events, {p['customers']} customers requested, "
                 f"{p['partitions']} partitions, generator {p['generator']}, "
                 f"app id {p['app_id']}")
    for key in sorted(obs):
        if key != "loadavg_end":
            lines.append(f"  {key}: {obs[key]}")
    return "\n".join(lines)
