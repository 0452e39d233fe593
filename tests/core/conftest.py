from __future__ import annotations

import os
import shutil
from datetime import datetime
from typing import Any

import pytest
from hypothesis import settings

from schemas.policy import PolicyBook
from scoring.engine import PYTHON, Engine, effect_marks, effect_values
from scoring.native import NATIVE
from tests.core.factory import parse

# CI must be reproducible: the same examples on every run (a failure there is
# a real regression, not a lucky draw). Locally, exploration stays random so
# new counterexamples keep being looked for.
#: Every scoring engine of this build (scoring.engine): the conformance suite
#: (test_engine.py) and the engine-neutral property tests run against each. A new
#: engine is added here and must pass as is.
ENGINES = [pytest.param(PYTHON, id="python")]
if NATIVE is not None:
    ENGINES.append(pytest.param(NATIVE, id="native"))
#: For a test of the native engine alone. It is built wherever a Rust toolchain is
#: (make venv); where cargo is installed and it is missing,
#: test_native.py::test_the_native_engine_is_built_wherever_rust_is fails as well,
#: so such a run is red whatever this skip says.
NEEDS_NATIVE = pytest.mark.skipif(
    NATIVE is None,
    reason="the native engine is not built: run `make native` (test_native.py's build check "
    "fails for it)" if shutil.which("cargo") else "the native engine is not built: this "
    "machine has no Rust toolchain (README, Engines); the Python engine serves alone")

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


class Customer:
    """Feeds events through an engine's fold the way the service does (state encoded
    between events), the reference engine unless told another."""

    def __init__(self, policies: PolicyBook | None = None, *, keep_objects: bool = False,
                 cache: Any = None, engine: Engine = PYTHON) -> None:
        # keep_objects=False round-trips the state through its encoding after
        # every event, as the service's changelog table does (full re-fold path);
        # True keeps the live object, as replay does (in-order fast path).
        # ``cache`` (the engine's state cache) passes every state through it,
        # as the service's agent does, instead of either.
        self.keep_objects = keep_objects
        self.cache = cache
        self.engine = engine
        self.policies = policies or PolicyBook()
        self.state = None
        self.effects: list[dict[str, Any]] = []
        #: each effect as the service publishes it: (kind, value bytes), and its mark
        self.published: list[tuple[Any, bytes]] = []
        self.marks: list[Any] = []
        self.outcomes: list[Any] = []

    def send(self, *events: bytes) -> Customer:
        engine = self.engine
        for data in events:
            ev = parse(data, self.policies)
            out = engine.apply(self.state, ev, self.policies.for_shop(ev.shop_id))
            self.outcomes.append(out)
            self.effects.extend(out.effects)
            self.published.extend(effect_values(out.effects))
            self.marks.extend(effect_marks(out.effects))
            if not out.changed:
                continue
            if self.cache is not None:
                raw = engine.encode(out.state)
                self.cache.put(out.state.key.encode(), raw, out.state)
                self.state = self.cache.get(out.state.key.encode(), raw)
            else:
                self.state = out.state if self.keep_objects else engine.decode(engine.encode(out.state))
        return self

    def snap(self, as_of: datetime | None = None) -> dict[str, Any]:
        return self.engine.snapshot(self.state, as_of, self.policies.for_shop(self.state.shop_id))


@pytest.fixture
def customer() -> Customer:
    return Customer()
