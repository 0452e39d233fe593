"""`loyalty bench --core-only` (streams/bench/core.py): it folds what the service folds.

The figures are only worth something if the loop does the agent's work: its
rows must be exactly the states an offline replay of the same stream gives
(but for the input positions, which only the service keeps),
with or without the state cache's tiers, and the command must run without a
broker.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from schemas import codec
from schemas.policy import PolicyBook
from scoring.replay import fold_lines
from scoring.state import CustomerState
from streams.bench.core import measure_core
from streams.bench.generator import fast_stream, synthetic_stream
from streams.ports import free_port
from streams.topics import message_key

REPO = Path(__file__).resolve().parents[2]


def _replayed(stream: list[tuple[str, bytes, bytes]]) -> dict[bytes, bytes]:
    result = fold_lines([value for _, _, value in stream], policies=PolicyBook())
    return {message_key(shop, customer): state.encode()
            for (shop, customer), state in result.states.items()}


def _without_positions(rows: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """The rows as replay writes them: replay has no input positions to keep."""
    out = {}
    for key, raw in rows.items():
        state = CustomerState.decode(raw)
        assert state.positions, key  # the loop marks every changed state, as the agent does
        state.positions = {}
        out[key] = state.encode()
    return out


def test_core_only_folds_every_event_into_the_replays_states() -> None:
    stream = list(fast_stream(600, 150, seed=3))
    runs = {}
    for name, sizes in (("no cache", (0, 0)), ("tiers", (10, 1)), ("default", (2000, 64))):
        rows: dict[bytes, bytes] = {}
        runs[name] = measure_core(stream, policies=PolicyBook(), batch_max=50,
                                  cache_size=sizes[0], head_cache_mb=sizes[1], rows=rows), rows
    expected = _replayed(stream)
    for name, (figures, rows) in runs.items():
        assert _without_positions(rows) == expected, name
        assert figures["events"] == 600 and figures["customers"] == 150
        assert figures["statuses"] == {"applied": 600}
        assert figures["cpu_s"] > 0 and figures["events_per_cpu_s"] > 0
    assert runs["no cache"][0]["state_cache"]["hits"] == 0
    tiers = runs["tiers"][0]["state_cache"]
    assert tiers["head_hits"] > 0 and tiers["head_hits"] <= tiers["misses"]


def test_core_only_counts_the_records_the_agent_would_dead_letter() -> None:
    stream = list(synthetic_stream(60, seed=5))
    figures = measure_core(stream, policies=PolicyBook(), batch_max=1000, cache_size=2000,
                           head_cache_mb=64, rows=(rows := {}))
    assert figures["events"] == len(stream)
    assert sum(figures["statuses"].values()) == len(stream)
    assert figures["statuses"]["invalid"] > 0 and figures["statuses"]["applied"] > 0
    assert _without_positions(rows) == _replayed(stream)  # folded as the replay folds them


def test_core_only_runs_without_a_broker() -> None:
    env = {**os.environ, "LOYALTY_BROKER": f"kafka://127.0.0.1:{free_port()}"}
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "bench", "--core-only",
                           "--events", "300", "--customers", "40", "--json"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    figures = codec.loads(proc.stdout)
    assert figures["events"] == 300 and figures["customers"] == 40
    assert figures["statuses"] == {"applied": 300}
    assert figures["machine"]["cores"] == os.cpu_count()


def test_core_only_refuses_options_that_need_a_worker() -> None:
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "bench", "--core-only",
                           "--population", "1000"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "--core-only starts no worker" in proc.stderr and "Traceback" not in proc.stderr
