"""An event that arrives in order costs one application of that event, whatever
the customer's open buffer holds (issue 12: "in-order events must not cost time
proportional to the buffer").

Counted, not timed: every call of ``scoring.fold.apply_record`` (the fold of one
record into an aggregate) is counted through a wrapper around the real function.
A re-fold of the open buffer per event, the path a late event takes, would
count the buffer's length per event.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from scoring import fold
from scoring.state import StateCache
from tests.core.conftest import Customer
from tests.core.factory import at, feedback, purchase, redeem, visit


@pytest.fixture
def applications(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One element per record folded into an aggregate by ``scoring.fold``."""
    calls: list[int] = []
    real = fold.apply_record

    def counted(*args: object) -> None:
        calls.append(1)
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(fold, "apply_record", counted)
    return calls


def _busy_week(n: int) -> Iterator[bytes]:
    """``n`` events of one customer in time order, all inside six days (the
    allowed lateness is seven): nothing is finalized, the buffer only grows."""
    step_minutes = 6 * 24 * 60 / n
    for i in range(n):
        when = at(minutes=i * step_minutes)
        kind = i % 5
        if kind == 0:
            yield purchase(when, 1_000 + i, order_id=f"o{i}")
        elif kind == 1:
            yield visit(when)
        elif kind == 2:
            yield feedback(when, i % 11)
        elif kind == 3:
            yield redeem(when, 1)
        else:
            yield purchase(when, 500, order_id=f"p{i}")


@pytest.mark.parametrize("path", ["live objects", "state cache, live tier",
                                  "state cache, kept heads"])
def test_in_order_events_are_applied_once_each(path: str, applications: list[int]) -> None:
    n = 300
    cache = {"live objects": None,
             "state cache, live tier": StateCache(capacity=10),
             "state cache, kept heads": StateCache(capacity=0, head_budget=1 << 24)}[path]
    c = Customer(keep_objects=cache is None, cache=cache)
    first = next(_busy_week(n))
    c.send(first)  # a first event has nothing to append to: one application as well
    applications.clear()
    c.send(*list(_busy_week(n))[1:])
    assert all(o.changed for o in c.outcomes)
    assert len(c.state.buf) == n  # everything still open: the buffer held up to 300 events
    assert len(applications) == n - 1


def test_decoded_states_refold_the_buffer(applications: list[int]) -> None:
    """The counter can fail: without a live head every event re-folds the open
    buffer (what the service did before the state cache), quadratic in it."""
    n = 60
    Customer(keep_objects=False).send(*_busy_week(n))
    assert len(applications) >= n * (n - 1) // 2


def test_finalized_events_are_applied_at_most_once_more(applications: list[int]) -> None:
    """Events spread over two months: each leaves the open window once, and the
    checkpoint takes it then, one more application, never a re-fold."""
    n = 240
    events = [purchase(at(hours=6 * i), 700, order_id=f"o{i}") if i % 3 else visit(at(hours=6 * i))
              for i in range(n)]
    c = Customer(keep_objects=True).send(*events)
    assert c.state.ckpt.t_us is not None  # events were finalized
    assert n < len(applications) <= 2 * n
