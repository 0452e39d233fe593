"""The engine conformance suite: what every scoring engine (:mod:`scoring.engine`) does.

Every test runs against each engine of :data:`ENGINES`. The Python fold is
the reference: where a test compares bytes with an expected value, the value
comes from the reference engine folding with live objects, the path offline
replay takes. So a second engine passes only if it writes the reference's
bytes (rows, effects, snapshots) on every path the service takes: a state
decoded from its row before every event, a state served by the engine's
state cache (live tier, kept heads), and a live object.

Also here: the boundary itself. The runtime (``streams/``) reaches the core
only through the engine, so that an engine can be swapped without touching it.
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import codec
from schemas.events import InvalidEvent
from schemas.policy import PolicyBook
from scoring.cdnow import cdnow_events
from scoring.clock import day_of, to_us
from scoring.engine import (
    FORMAT_VERSION,
    PYTHON,
    AsOfTooEarly,
    Engine,
    NewerStateFormat,
    StateFormatError,
)
from scoring.replay import fold_lines
from scoring.shop import ShopTally
from tests.cdnow import CDNOW_PATH
from tests.core.conftest import ENGINES, Customer
from tests.core.factory import at, parse, purchase, refund, visit
from tests.core.test_properties import FAST, arrival_order, customer_events

#: Core modules only the engine may import for the runtime.
BEHIND_THE_ENGINE = ("scoring.fold", "scoring.aggregate", "scoring.snapshot", "scoring.state")

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = pathlib.Path(__file__).resolve().parent / "data"


def _imports(path: pathlib.Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function-level imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_runtime_reaches_the_core_only_through_the_engine() -> None:
    modules = sorted((ROOT / "streams").rglob("*.py"))
    assert len(modules) > 30  # the scan sees the package
    reached = {str(path.relative_to(ROOT)): sorted(name for name in _imports(path)
                                                    if name.startswith(BEHIND_THE_ENGINE))
               for path in modules}
    assert {path: names for path, names in reached.items() if names} == {}


def test_the_scan_sees_function_level_imports(tmp_path: pathlib.Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from scoring import fold\n    from scoring.state import X\n")
    assert {"scoring.fold", "scoring.state"} <= _imports(probe)


#: One way each the service gets a state to fold onto: path -> a new customer on it.
PATHS: dict[str, Callable[[Engine], Customer]] = {
    "row decoded before every event": lambda engine: Customer(engine=engine),
    "live object": lambda engine: Customer(engine=engine, keep_objects=True),
    "state cache, live tier": lambda engine: Customer(engine=engine,
                                                      cache=engine.state_cache(10, 0)),
    "state cache, kept heads": lambda engine: Customer(engine=engine,
                                                       cache=engine.state_cache(0, 1 << 24)),
    "state cache, a budget nothing fits": lambda engine: Customer(
        engine=engine, cache=engine.state_cache(10, 0, 1)),
}


def _bytes(c: Customer) -> tuple[bytes, list[Any], list[Any], list[str], bytes]:
    """A customer's row, its effects as published (kind and value bytes, which must be
    each effect's ``dumps``) with their marks, its outcomes and its snapshot, as bytes
    (the score record's, which must be the snapshot's ``dumps``)."""
    policy = c.policies.default
    snapshot = c.engine.snapshot_json(c.state, None, policy)
    assert snapshot == codec.dumps(c.engine.snapshot(c.state, None, policy))
    assert [value for _, value in c.published] == [codec.dumps(e) for e in c.effects]
    return (c.engine.encode(c.state), c.published, c.marks,
            [f"{o.status}:{o.reason}:{o.changed}" for o in c.outcomes], snapshot)


@pytest.mark.parametrize("engine", ENGINES)
def test_the_state_cache_keeps_the_latest_states_its_byte_budget_holds(engine: Engine) -> None:
    policy = PolicyBook().default
    states: dict[bytes, tuple[bytes, Any]] = {}
    for n in range(4):  # c3 bought twenty times: a longer row, a heavier state
        state = None
        for k in range(1 if n < 3 else 20):
            event = parse(purchase(at(k), 100 + k, order_id=f"o{k}", customer_id=f"c{n}"))
            state = engine.apply(state, event, policy).state
        states[f"c{n}".encode()] = (engine.encode(state), state)
    probe = engine.state_cache(10, 0, 1 << 30)
    weigh = probe.weigh
    w = {key: weigh(raw) for key, (raw, _) in states.items()}
    assert w[b"c3"] > max(w[b"c0"], w[b"c1"], w[b"c2"]) > 0  # the estimate grows with the row
    small = max(w[b"c0"], w[b"c1"], w[b"c2"])
    cache = engine.state_cache(100, 0, 2 * small + small // 2)
    for key in (b"c0", b"c1", b"c2"):
        cache.put(key, *states[key])
    # Two fit: the least recently written left, and the weight is the live rows'.
    assert list(cache._items) == [b"c1", b"c2"] and cache.weight == w[b"c1"] + w[b"c2"]
    assert cache.get(b"c0", states[b"c0"][0]) is not states[b"c0"][1]  # decoded
    assert cache.get(b"c2", states[b"c2"][0]) is states[b"c2"][1]
    # Heavier than the whole budget: never kept, and a stale entry of its key goes
    # (the light one pushed c1 out first).
    cache.put(b"c3", *states[b"c0"])
    assert list(cache._items) == [b"c2", b"c3"]
    cache.put(b"c3", *states[b"c3"])
    assert list(cache._items) == [b"c2"] and cache.weight == w[b"c2"]
    # Another writer's bytes change the entry's weight in place; a deleted row frees it.
    cache.replace(b"c2", *states[b"c1"])
    assert cache.weight == w[b"c1"] and cache.get(b"c2", states[b"c1"][0]) is states[b"c1"][1]
    cache.discard(b"c2")
    assert len(cache) == 0 and cache.weight == 0
    # The count still caps it, whatever the budget.
    capped = engine.state_cache(1, 0, 1 << 30)
    for key in (b"c0", b"c1"):
        capped.put(key, *states[key])
    assert list(capped._items) == [b"c1"] and capped.weight == w[b"c1"]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_live_entry_s_row_is_trusted_only_with_the_stamp_it_was_kept_with(
        engine: Engine) -> None:
    policy = PolicyBook().default
    first = engine.apply(None, parse(purchase(at(0), 100, order_id="o0")), policy).state
    second = engine.apply(first, parse(purchase(at(1), 200, order_id="o1")), policy).state
    raw1, raw2 = engine.encode(first), engine.encode(second)
    cache = engine.state_cache(4, 0)
    cache.put(b"k", raw1, first)  # a store that gives no stamps: never trusted
    assert cache.trusted_row(b"k", None) is None
    cache.put(b"k", raw1, first, stamp=7)
    assert cache.trusted_row(b"k", 7) == raw1
    assert cache.trusted_row(b"k", 8) is None  # the store moved on: read the row
    assert cache.trusted_row(b"other", 7) is None  # nothing kept
    # A writer other than the agent: its stamp, or none (then the row is read).
    cache.replace(b"k", raw2, second, stamp=9)
    assert cache.trusted_row(b"k", 9) == raw2 and cache.trusted_row(b"k", 7) is None
    cache.replace(b"k", raw2, second)
    assert cache.trusted_row(b"k", 9) is None
    assert cache.get(b"k", raw2) is second  # still served once its row is read
    # About to be written: no longer trusted until the written state is kept.
    cache.put(b"k", raw2, second, stamp=10)
    cache.untrust([b"k", b"absent"])
    assert cache.trusted_row(b"k", 10) is None and cache.get(b"k", raw2) is second
    cache.put(b"k", raw2, second, stamp=10)
    assert cache.trusted_row(b"k", 10) == raw2
    cache.discard(b"k")
    assert cache.trusted_row(b"k", 9) is None


@pytest.mark.parametrize("engine", ENGINES)
def test_the_state_cache_copies_rows_unless_the_engine_makes_them_exact(engine: Engine) -> None:
    policy = PolicyBook().default
    state = engine.apply(None, parse(purchase(at(0), 100, order_id="o0")), policy).state
    # orjson's output (the Python engine's rows) may share a larger buffer: copied.
    raw = engine.encode(state)
    cache = engine.state_cache(4, 0)
    cache.put(b"k", raw, state)
    kept = cache._items[b"k"][0]
    assert kept == raw and (kept is raw) == (engine.name != "python")
    assert cache.get(b"k", raw) is state


@pytest.mark.parametrize("engine", ENGINES)
@FAST
@given(customer_events(), st.integers(0, 2**32))
def test_every_path_writes_the_reference_bytes(engine: Engine, events: Any, seed: int) -> None:
    arrivals = arrival_order(events, seed)
    want = _bytes(Customer(keep_objects=True).send(*arrivals))
    for path, new_customer in PATHS.items():
        assert _bytes(new_customer(engine).send(*arrivals)) == want, path


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("path", ["row decoded before every event", "live object",
                                  "state cache, kept heads"])
def test_a_real_purchase_log_folds_to_replays_bytes(engine: Engine, path: str) -> None:
    """The first 4 000 lines of CDNOW (real customers, years of repeat purchases,
    $0.00 rows the contract rejects), customer by customer, against offline replay."""
    with CDNOW_PATH.open("rb") as f:
        lines = [next(f) for _ in range(4_000)]
    events = list(cdnow_events(lines))
    want = {f"{shop}|{cust}": PYTHON.encode(state)
            for (shop, cust), state in fold_lines(events, policies=PolicyBook()).states.items()}
    customers: dict[str, Customer] = {}
    for data in events:
        try:
            event = parse(data)
        except InvalidEvent:  # the $0.00 rows: replay skips them too
            continue
        key = f"{event.shop_id}|{event.customer_id}"
        if key not in customers:
            customers[key] = PATHS[path](engine)
        customers[key].send(data)
    assert len(want) > 1_000
    assert {key: engine.encode(c.state) for key, c in customers.items()} == want


@pytest.mark.parametrize("engine", ENGINES)
def test_the_finest_margin_rate_folds_to_the_reference_bytes_once_finalized(engine: Engine) -> None:
    """A rate of 18 decimal places (the contract's finest) is exact in 64-bit integers:
    its order is written into the finalized aggregate, refunded, and read back."""
    events = [purchase(at(0), 999_999_999_999, event_id="p1", order_id="o1", margin_rate=1e-18),
              purchase(at(1), 7, event_id="p2", margin_rate=0.123456789012345678),
              refund(at(20), "o1", 5, event_id="r1"), visit(at(40), event_id="v1")]
    want = _bytes(Customer(keep_objects=True).send(*events))
    assert b',1,1000000000000000000,' in want[0]  # o1's exact rate, in the finalized aggregate
    assert _bytes(Customer(engine=engine).send(*events)) == want


@pytest.mark.parametrize("engine", ENGINES)
def test_a_format_1_state_folds_on_to_the_reference_bytes(engine: Engine) -> None:
    """A state of the first format (no detractor or touchpoint slots, no KPI
    contribution) is upgraded on read and folds on exactly as the reference does."""
    raw = (DATA / "state_v1_detractor.json").read_bytes()
    assert raw.startswith(b"[1,")
    policy = PolicyBook().default
    event = parse(visit(at(30)))
    want = PYTHON.apply(PYTHON.decode(raw), event, policy)
    got = engine.apply(engine.decode(raw), event, policy)
    assert engine.encode(got.state) == PYTHON.encode(want.state)
    assert (got.kpi_before, got.kpi_after) == (want.kpi_before, want.kpi_after)
    assert got.kpi_before is not None  # computed from the old state: the tally moves by it
    assert (codec.dumps(engine.snapshot(engine.decode(raw), None, policy))
            == codec.dumps(PYTHON.snapshot(PYTHON.decode(raw), None, policy)))


@pytest.mark.parametrize("engine", ENGINES)
def test_a_state_round_trips_through_its_bytes_in_every_writable_format(engine: Engine) -> None:
    c = Customer(engine=engine).send(purchase(at(0), 1_000, event_id="p1"), visit(at(9)))
    c.state = engine.at_position(engine.apply(c.state, parse(visit(at(10))), c.policies.default).state,
                                 "visits:3", 41)
    raw = engine.encode(c.state)
    assert raw.startswith(f"[{FORMAT_VERSION},".encode())
    assert engine.encode(engine.decode(raw)) == raw
    assert engine.decode(raw).positions == {"visits:3": 41}
    old = engine.encode(c.state, 3)  # a rolling upgrade's format: no positions
    assert old.startswith(b"[3,") and engine.decode(old).positions == {}
    assert engine.encode(engine.decode(old), 3) == old
    with pytest.raises(ValueError):
        engine.encode(c.state, FORMAT_VERSION + 1)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("raw", [b"not json", b"", b"5", b"null", b'"4"', b"[]", b"[0]", b'["4"]',
                                 b"[4]", b'{"v": 4}', b'[4, "shop-1"]'])
def test_bytes_that_are_no_state_are_a_format_error(engine: Engine, raw: bytes) -> None:
    with pytest.raises(StateFormatError) as caught:
        engine.decode(raw)
    assert not isinstance(caught.value, NewerStateFormat)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False)
                    | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=16) | st.dictionaries(st.text(max_size=3), inner),
                    max_leaves=40)


@pytest.mark.parametrize("engine", ENGINES)
@FAST
@given(st.sampled_from([1, 2, 3, 4]), st.lists(JSON, max_size=16), st.integers(0, 15))
def test_a_readable_version_with_any_other_content_is_a_state_or_a_format_error(
        engine: Engine, version: int, fields: list[Any], keep: int) -> None:
    """Any JSON after a readable version: decoded (and then encodable), or
    StateFormatError, never another exception. Half the draws start from a
    real state's fields, so the decoder gets past its first checks."""
    real = codec.loads(engine.encode(Customer(engine=engine).send(
        purchase(at(0), 1_000, event_id="p1"), visit(at(2))).state))
    raw = codec.dumps([version, *(real[1:1 + keep] if keep % 2 else []), *fields])
    try:
        state = engine.decode(raw)
    except StateFormatError:
        return
    engine.encode(state)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_newer_format_is_told_apart_from_a_corrupt_state(engine: Engine) -> None:
    raw = engine.encode(Customer(engine=engine).send(visit(at(0))).state)
    newer = f"[{FORMAT_VERSION + 1}".encode() + raw[raw.index(b","):]
    with pytest.raises(NewerStateFormat):
        engine.decode(newer)


@pytest.mark.parametrize("engine", ENGINES)
def test_nothing_changes_the_state_it_is_given(engine: Engine) -> None:
    policy = PolicyBook().default
    raw = engine.encode(Customer(engine=engine).send(purchase(at(0), 1_000, event_id="p1")).state)
    old = engine.decode(raw)
    out = engine.apply(old, parse(purchase(at(1), 2_000, event_id="p2")), policy)
    new = engine.at_position(out.state, "purchases:0", 7)
    engine.advance(new, to_us(at(400)), policy)
    engine.forget(old, policy)
    engine.snapshot(old, to_us(at(30)), policy)
    engine.count_customer(ShopTally(), old, policy)
    assert engine.encode(old) == raw and dict(old.positions) == {}
    assert dict(new.positions) == {"purchases:0": 7}


@pytest.mark.parametrize("engine", ENGINES)
@FAST
@given(customer_events(), st.integers(0, 2**32), st.integers(0, 800))
def test_advancing_to_an_instant_reads_as_the_snapshot_as_of_it(engine: Engine, events: Any,
                                                               seed: int, days: int) -> None:
    policy = PolicyBook().default
    state = Customer(engine=engine).send(*arrival_order(events, seed)).state
    when = to_us(events[-1][0] + timedelta(days=days))
    out = engine.advance(state, when, policy)
    if out.changed:
        assert out.state.clock == when
        assert engine.snapshot(out.state, None, policy) == engine.snapshot(state, when, policy)
    else:  # nothing was due: the state is handed back as it was
        assert out.state is state and (state.next_due is None or when < state.next_due)


@pytest.mark.parametrize("engine", ENGINES)
@FAST
@given(customer_events(), st.integers(0, 2**32))
def test_forget_takes_back_exactly_the_customers_count(engine: Engine, events: Any,
                                                      seed: int) -> None:
    policy = PolicyBook().default
    state = Customer(engine=engine).send(*arrival_order(events, seed)).state
    counted = ShopTally()
    engine.count_customer(counted, state, policy)
    assert counted.funnel  # the customer counts somewhere
    day = day_of(state.clock)
    assert (counted.merge(engine.forget(state, policy).tally).figures("shop-1", day, policy)
            == ShopTally().figures("shop-1", day, policy))


@pytest.mark.parametrize("engine", ENGINES)
def test_rederive_tells_a_state_of_another_policy_and_its_head_counts_the_same(
        engine: Engine) -> None:
    c = Customer(engine=engine).send(purchase(at(0), 5_000, event_id="p1"),
                                     purchase(at(3), 1_000, event_id="p2"))
    state = engine.decode(engine.encode(c.state))
    same, other = PolicyBook().default, PolicyBook({"points_per_unit": "2"}).default
    head, stale = engine.rederive(state, same)
    assert head is not None and not stale
    assert engine.rederive(state, other)[1] is True
    with_head, without = ShopTally(), ShopTally()
    engine.count_customer(with_head, state, same, head)
    engine.count_customer(without, state, same)
    assert bytes(with_head.encode()) == bytes(without.encode())


@pytest.mark.parametrize("engine", ENGINES)
def test_finalized_history_cannot_be_read_before_its_end(engine: Engine) -> None:
    policy = PolicyBook().default
    state = Customer(engine=engine).send(purchase(at(0), 1_000, event_id="p1"),
                                         purchase(at(30), 2_000, event_id="p2")).state
    end = engine.finalized_until(state)
    assert end is not None and to_us(at(0)) <= end < to_us(at(30))
    assert engine.snapshot(state, end, policy)["as_of"]
    with pytest.raises(AsOfTooEarly):
        engine.snapshot(state, end - 1, policy)
    assert engine.finalized_until(Customer(engine=engine).send(visit(at(0))).state) is None


@pytest.mark.parametrize("engine", ENGINES)
def test_a_buyers_summary_holds_the_clv_inputs_and_rfm_values(engine: Engine) -> None:
    policy = PolicyBook().default
    state = Customer(engine=engine).send(
        purchase(at(0), 1_000, event_id="p1"), purchase(at(0, hours=2), 500, event_id="p1b"),
        purchase(at(10), 2_000, event_id="p2"), purchase(at(30), 3_000, event_id="p3")).state
    # three purchase days: x = 2 repeat days, t_x = 30, T = 40; repeat spend leaves out
    # the first day's 1 500; RFM: 10 days since the last purchase, 3 days, 6 500 spent
    assert engine.buyer_summary(state, to_us(at(40)), policy) == ((2, 30, 40, 5_000), (10, 3, 6_500))
    visitor = Customer(engine=engine).send(visit(at(0)), visit(at(5))).state
    assert engine.buyer_summary(visitor, to_us(at(40)), policy) is None



def test_encoded_effects_read_as_the_dicts_they_encode() -> None:
    from scoring.engine import EncodedEffects, effect_marks, effect_values

    dicts = [{"kind": "ledger", "entry": "earn", "points": 5},
             {"kind": "transition", "from": None, "to": "first_visit"}]
    marks = effect_marks(dicts)
    encoded = EncodedEffects([codec.dumps(d) for d in dicts], marks)
    assert encoded._dicts is None  # nothing decoded until read as dicts
    assert effect_values(encoded) == effect_values(dicts) == [
        ("ledger", codec.dumps(dicts[0])), ("transition", codec.dumps(dicts[1]))]
    assert effect_marks(encoded) == marks == [("ledger", None, None, None, "earn", 5),
                                              ("transition", None, None, "first_visit", None, None)]
    assert encoded._dicts is None
    assert len(encoded) == 2 and encoded[1]["to"] == "first_visit" and list(encoded) == dicts
    assert encoded == dicts and encoded != dicts[:1] and encoded != 3
