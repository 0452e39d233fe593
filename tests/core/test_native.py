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

from schemas import codec
from schemas.events import InvalidEvent
from schemas.policy import PolicyBook
from scoring.cdnow import cdnow_events
from scoring.clock import US_PER_DAY
from scoring.engine import PYTHON, Engine
from scoring.native import NATIVE
from streams.bench.generator import fast_stream, heavy_stream, regulars_stream, synthetic_stream
from tests.cdnow import CDNOW_PATH
from tests.core.conftest import Customer
from tests.core.factory import parse

needs_native = pytest.mark.skipif(NATIVE is None, reason="loyalty_native is not built (no Rust toolchain)")


def test_the_native_engine_is_built_wherever_rust_is() -> None:
    """`make venv` builds it when cargo is on PATH; a missing build there is a broken setup."""
    if shutil.which("cargo") is None:
        pytest.skip("no Rust toolchain on this machine: the Python engine serves alone (README)")
    assert NATIVE is not None, "cargo is installed but loyalty_native is not: run `make native`"


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
        out[key] = (engine.encode(c.state), [codec.dumps(e) for e in c.effects],
                    [f"{o.status}:{o.reason}:{o.detail}:{o.kpi_before}:{o.kpi_after}" for o in c.outcomes],
                    engine.encode(later.state), [codec.dumps(e) for e in later.effects],
                    codec.dumps(engine.snapshot(later.state, None, policy)))
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


@needs_native
@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("driver", [_cached, _decoded], ids=["state cache", "row decoded per event"])
def test_the_bench_streams_fold_to_the_reference_bytes(stream: str, driver: Callable[[Engine], Customer]) -> None:
    events, want = _reference(stream)
    got = _fold(NATIVE, events, driver)  # type: ignore[arg-type]
    assert len(want) > 1_000 and got.keys() == want.keys()
    for key in want:
        assert got[key] == want[key], key


@needs_native
def test_all_of_cdnow_folds_to_the_reference_bytes() -> None:
    """69 659 purchases of 23 570 customers over 18 months (years of repeat buyers)."""
    with CDNOW_PATH.open("rb") as f:
        events = list(cdnow_events(f))
    want = _fold(PYTHON, events, _live)
    got = _fold(NATIVE, events, _cached)  # type: ignore[arg-type]
    assert len(want) > 23_000
    assert got == want
