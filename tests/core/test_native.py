"""The native engine (:mod:`scoring.native`) on whole streams, against the reference.

The conformance suite (``test_engine.py``) runs every engine over generated
customers and the first lines of CDNOW. Here the native engine folds what
the bench and the demo send, and the whole of CDNOW: every customer's row,
every effect and outcome, a sweep far ahead and the final snapshot must be
the reference engine's bytes. The reference folds with live objects (the
replay path); the native engine as the service's agent does, through its
state cache, or from its row before every event.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import codec
from schemas.events import InvalidEvent
from schemas.policy import PolicyBook
from scoring.cdnow import cdnow_events
from scoring.clock import US_PER_DAY
from scoring.engine import PYTHON, Engine, effect_marks, effect_values
from scoring.native import NATIVE
from scoring.replay import fit_clv_as_of, fit_rfm_models, fold_lines
from scoring.snapshot import head_as_of
from streams.bench.generator import fast_stream, heavy_stream, regulars_stream, synthetic_stream
from tests.cdnow import CDNOW_PATH
from tests.core.conftest import NEEDS_NATIVE, Customer
from tests.core.factory import at, parse, purchase


def test_the_native_engine_is_built_wherever_rust_is() -> None:
    """`make venv` builds it when cargo is on PATH; a missing build there is a broken setup."""
    if shutil.which("cargo") is None:
        pytest.skip("no Rust toolchain on this machine: the Python engine serves alone (README)")
    assert NATIVE is not None, "cargo is installed but loyalty_native is not: run `make native`"


@NEEDS_NATIVE
@pytest.mark.parametrize(("env", "seen"), [(None, "0"), ("0", "0"), ("1", "1")])
def test_its_allocator_is_told_not_to_ask_for_transparent_huge_pages(env: str | None,
                                                                     seen: str) -> None:
    """loyalty_native/__init__.py sets MIMALLOC_ALLOW_THP=0 before the library loads
    (mimalloc's purged segments were faulted back as zeroed 2 MiB pages), unless the
    environment sets it: what a fresh process's mimalloc reads at load. (Its effect,
    PR_SET_THP_DISABLE, is inherited by child processes, so a child of this test
    process cannot show it; perf did, README "Performance".)"""
    import os
    import subprocess
    import sys

    child_env = {k: v for k, v in os.environ.items() if k != "MIMALLOC_ALLOW_THP"}
    if env is not None:
        child_env["MIMALLOC_ALLOW_THP"] = env
    code = "import os, loyalty_native; print(os.environ['MIMALLOC_ALLOW_THP'])"
    out = subprocess.run([sys.executable, "-c", code], env=child_env, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == seen


def _fold(engine: Engine, events: Iterable[bytes], driver: Callable[[Engine], Customer]) -> dict[str, Any]:
    """Per customer: row bytes, effects, outcomes, then a sweep a year on and a snapshot."""
    policies = PolicyBook()
    customers: dict[str, Customer] = {}
    for data in events:
        try:
            event = parse(data, policies)
        except InvalidEvent:
            continue  # the contract's rejections are the parser's, shared by every engine
        key = f"{event.shop_id}|{event.customer_id}"
        if key not in customers:
            customers[key] = driver(engine)
        customers[key].send(data)
    out: dict[str, Any] = {}
    for key, c in customers.items():
        policy = policies.for_shop(c.state.shop_id)
        later = engine.advance(c.state, c.state.clock + 365 * US_PER_DAY, policy)
        # Effects as published (kind and value bytes) and as counted (marks).
        out[key] = (engine.encode(c.state), c.published, c.marks,
                    [f"{o.status}:{o.reason}:{o.detail}:{o.kpi_before}:{o.kpi_after}" for o in c.outcomes],
                    engine.encode(later.state), effect_values(later.effects), effect_marks(later.effects),
                    codec.dumps(engine.snapshot(later.state, None, policy)),
                    engine.snapshot_json(c.state, None, policy))
    return out


def _live(engine: Engine) -> Customer:
    return Customer(engine=engine, keep_objects=True)


def _cached(engine: Engine) -> Customer:
    return Customer(engine=engine, cache=engine.state_cache(10, 0))


def _decoded(engine: Engine) -> Customer:
    return Customer(engine=engine)


STREAMS: dict[str, Callable[[], list[bytes]]] = {
    "default": lambda: [v for _t, _k, v in fast_stream(12_000, 3_000)],
    "heavy": lambda: [v for _t, _k, v in heavy_stream(12_000, 3_000)],
    "regulars": lambda: [v for _t, _k, v in regulars_stream(12_000, 3_000)],
    "synthetic, with its faults": lambda: [v for _t, _k, v in synthetic_stream(1_500)],
}


@functools.cache
def _reference(stream: str) -> tuple[list[bytes], dict[str, Any]]:
    """The stream's events and the reference engine's fold of them (shared by both drivers)."""
    events = STREAMS[stream]()
    return events, _fold(PYTHON, events, _live)


@NEEDS_NATIVE
@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("driver", [_cached, _decoded], ids=["state cache", "row decoded per event"])
def test_the_bench_streams_fold_to_the_reference_bytes(stream: str, driver: Callable[[Engine], Customer]) -> None:
    events, want = _reference(stream)
    got = _fold(NATIVE, events, driver)  # type: ignore[arg-type]
    assert len(want) > 1_000 and got.keys() == want.keys()
    for key in want:
        assert got[key] == want[key], key


@NEEDS_NATIVE
def test_all_of_cdnow_folds_to_the_reference_bytes() -> None:
    """69 659 purchases of 23 570 customers over 18 months (years of repeat buyers)."""
    with CDNOW_PATH.open("rb") as f:
        events = list(cdnow_events(f))
    want = _fold(PYTHON, events, _live)
    got = _fold(NATIVE, events, _cached)  # type: ignore[arg-type]
    assert len(want) > 23_000
    assert got == want


@NEEDS_NATIVE
def test_snapshots_scored_by_fitted_models_are_the_references() -> None:
    """CLV (BG/NBD + Gamma-Gamma) and RFM fields: the models are fitted from the
    reference's fold of CDNOW's first 20 000 lines and score both engines' states."""
    with CDNOW_PATH.open("rb") as f:
        lines = [next(f) for _ in range(20_000)]
    events = list(cdnow_events(lines))
    policies = PolicyBook()
    reference = fold_lines(events, policies=policies).states
    native: dict[tuple[str, str], Customer] = {}
    for data in events:
        try:
            event = parse(data, policies)
        except InvalidEvent:
            continue
        native.setdefault((event.shop_id, event.customer_id), _cached(NATIVE)).send(data)  # type: ignore[arg-type]
    as_of = max(state.clock for state in reference.values()) + 30 * US_PER_DAY
    clv_models = fit_clv_as_of(reference, as_of, policies)
    rfm_models = fit_rfm_models({key: head_as_of(state, as_of, policies.for_shop(key[0]))
                                 for key, state in reference.items()}, as_of)
    scored = 0
    for key, state in reference.items():
        policy = policies.for_shop(key[0])
        models = (clv_models.select(key[0]), rfm_models.get(key[0]))
        want = PYTHON.snapshot(state, as_of, policy, *models)
        assert codec.dumps(NATIVE.snapshot(native[key].state, as_of, policy, *models)) == codec.dumps(want)  # type: ignore[union-attr]
        assert NATIVE.snapshot_json(native[key].state, as_of, policy, *models) == codec.dumps(want)  # type: ignore[union-attr]
        scored += want["clv_model"] is not None and want["rfm_segment"] is not None
    assert scored > 1_000


@NEEDS_NATIVE
def test_a_figure_beyond_64_bits_is_an_error_the_agent_catches_not_a_wrong_answer() -> None:
    """Python's integers never overflow; the native engine's release build checks every
    operation, and a failure is a RuntimeError (the agent's handlers catch Exception and
    dead-letter the record), never a wrapped figure nor a panic that stops the worker."""
    policies = PolicyBook(defaults={"lapsed_days": 2**63 - 10})
    event = parse(purchase(at(0), 1_000), policies)
    policy = policies.for_shop(event.shop_id)
    assert PYTHON.apply(None, event, policy).status == "applied"  # the reference copes
    with pytest.raises(RuntimeError, match="overflow"):
        NATIVE.apply(None, event, policy)  # type: ignore[union-attr]


@NEEDS_NATIVE
@settings(max_examples=2_000, deadline=None)
@given(st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                 st.integers(0, 10**9).map(lambda n: n / 10_000),  # the snapshot's 4-decimal figures
                 st.integers(0, 10**12).map(lambda n: round(n / 7, 4))))
def test_the_native_json_writer_writes_floats_as_orjson(value: float) -> None:
    """The snapshot's floats are written in Rust (score records are its bytes): each
    must be orjson's text for it, or score records would differ between engines."""
    import loyalty_native

    assert loyalty_native.json_float(value) == codec.dumps(value)
