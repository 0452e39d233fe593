"""Offline replay: the same fold as the service, over a JSON-lines file.

Input lines are events in *arrival* order (as a Kafka partition would deliver
them); a ``forget`` line erases the customer it names at that point (whatever
``as_of``). Memory is the customer states plus one line at a time: the input is
streamed, never loaded whole.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from schemas.events import InvalidEvent, parse_event
from schemas.policy import PolicyBook
from scoring.clock import day_of, from_us, to_us
from scoring.fold import APPLIED, DUPLICATE, apply
from scoring.shop import ShopTally
from scoring.snapshot import clv_inputs, head_as_of, snapshot_of_head
from scoring.state import CustomerState


def tune_gc() -> None:
    """Make the cyclic garbage collector rare.

    Customer states are trees of lists, dicts and ints: they hold no reference
    cycles, so reference counting frees them. With default thresholds the
    collector keeps re-walking every live state (tens of thousands of objects
    per customer table), which measured 2-3x the cost of the fold itself.
    """
    import gc

    gc.freeze()
    gc.set_threshold(100_000, 50, 1_000)


@dataclass
class ReplayResult:
    states: dict[tuple[str, str], CustomerState] = field(default_factory=dict)
    invalid: Counter = field(default_factory=Counter)  # reason -> count (contract violations)
    rejected: Counter = field(default_factory=Counter)  # reason -> count (too_late, conflicting_duplicate)
    applied: int = 0
    duplicates: int = 0
    #: customers erased by a ``forget`` line (one that named no customer state is not counted)
    forgotten: int = 0
    lines: int = 0
    skipped_after_as_of: int = 0
    max_ts: int | None = None

    def summary(self) -> dict[str, Any]:
        return {"lines": self.lines, "applied": self.applied, "duplicates": self.duplicates,
                "forgotten": self.forgotten,
                "invalid": dict(sorted(self.invalid.items())),
                "rejected": dict(sorted(self.rejected.items())),
                "after_as_of": self.skipped_after_as_of, "customers": len(self.states)}


#: ``(1-based line number, line, reason, detail)``, told about every rejected line
RejectListener = Callable[[int, bytes, str, str], None]


def fold_lines(lines: Iterable[bytes | str], *, policies: PolicyBook, as_of: datetime | None = None,
               now: datetime | None = None,
               on_reject: RejectListener | None = None) -> ReplayResult:
    """Validate and fold every line; events after ``as_of`` are counted and skipped.

    ``on_reject`` hears about each invalid or rejected line with its number
    among ``lines`` (blank lines count, so it is the file's line number).
    """
    now = now or datetime.now(UTC)
    limit = to_us(as_of) if as_of is not None else None
    tune_gc()
    res = ReplayResult()
    states = res.states
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        res.lines += 1
        if isinstance(line, str):
            line = line.encode("utf-8", "surrogatepass")
        line = line.rstrip(b"\r\n")
        try:
            event = parse_event(line, now=now, policies=policies)
        except InvalidEvent as exc:
            res.invalid[exc.reason] += 1
            if on_reject is not None:
                on_reject(lineno, line, exc.reason, exc.detail)
            continue
        key = (event.shop_id, event.customer_id)
        if event.type == "forget":
            # Right to erasure, as the service does it: the state goes, and the
            # customer's later lines start a new, empty history. Whatever
            # ``as_of``: a forgotten customer is never shown again.
            res.forgotten += states.pop(key, None) is not None
            continue
        ts = to_us(event.occurred_at)
        if limit is not None and ts > limit:
            res.skipped_after_as_of += 1
            continue
        out = apply(states.get(key), event, policies.for_shop(event.shop_id))
        if out.status == APPLIED:
            states[key] = out.state
            res.applied += 1
            res.max_ts = ts if res.max_ts is None else max(res.max_ts, ts)
        elif out.status == DUPLICATE:
            res.duplicates += 1
        else:
            res.rejected[out.reason] += 1
            if on_reject is not None:
                on_reject(lineno, line, out.reason, out.detail or "")
    return res


def clv_stats(heads: dict[tuple[str, str], Any], as_of_us: int) -> dict[str, list[tuple[int, int, int, int]]]:
    """Per shop, the (x, t_x_days, T_days, repeat_spend) of each buyer as of A."""
    by_shop: dict[str, list[tuple[int, int, int, int]]] = {}
    day = day_of(as_of_us)
    for (shop, _cust), head in heads.items():
        inputs = clv_inputs(head, day)
        if inputs is not None:
            by_shop.setdefault(shop, []).append(inputs)
    return by_shop


def fit_clv_models(heads: dict[tuple[str, str], Any], as_of_us: int, policies: PolicyBook,
                   min_customers: int | None = None, unit_days: int = 7) -> Any:
    """Fit the CLV models as of A: every eligible shop its own, plus the pooled models.

    Returns a ``scoring.clv.ClvFits``; ``.select(shop)`` is the model that scores the
    shop (its own if sound, else its pool's, else None). ``min_customers`` defaults
    to ``scoring.clv.MIN_CUSTOMERS`` (the eligibility rule is ``clv.ineligibility``).
    """
    from scoring import clv

    return clv.fit_models_for(
        clv_stats(heads, as_of_us), policies, unit_days,
        min_customers=clv.MIN_CUSTOMERS if min_customers is None else min_customers,
        as_of=from_us(as_of_us).date())


def fit_clv_as_of(states: dict[tuple[str, str], CustomerState], as_of_us: int,
                  policies: PolicyBook, min_customers: int | None = None,
                  unit_days: int = 7) -> Any:
    """:func:`fit_clv_models` over each customer's fold as of A (``loyalty clv fit``)."""
    heads = {key: head_as_of(state, as_of_us, policies.for_shop(key[0]))
             for key, state in states.items()}
    return fit_clv_models(heads, as_of_us, policies, min_customers, unit_days)


def fit_rfm_models(heads: dict[tuple[str, str], Any], as_of_us: int,
                   min_customers: int | None = None) -> dict[str, Any]:
    """Every shop's RFM cut points as of A (``scoring.rfm.fit``; None: too few buyers).

    ``min_customers`` defaults to ``scoring.clv.MIN_CUSTOMERS``, the refit's minimum.
    """
    from scoring import rfm
    from scoring.clv import MIN_CUSTOMERS

    day = day_of(as_of_us)
    by_shop: dict[str, list[rfm.Values]] = {}
    for (shop, _cust), head in heads.items():
        buyer = rfm.values(head, day)
        if buyer is not None:
            by_shop.setdefault(shop, []).append(buyer)
    return rfm.fit_shops(by_shop, MIN_CUSTOMERS if min_customers is None else min_customers)


def snapshots(res: ReplayResult, policies: PolicyBook, as_of: datetime | None = None,
              with_clv: bool = True) -> tuple[int | None, Iterator[dict[str, Any]], dict[str, ShopTally]]:
    """(as_of_us, snapshots sorted by shop then customer, shop tallies).

    ``with_clv``: fit the refit's models as of A - CLV and RFM, as the service's
    periodic refit does - and fill their fields; without, they are null.
    """
    as_of_us = to_us(as_of) if as_of is not None else res.max_ts
    if as_of_us is None:
        return None, iter(()), {}
    heads = {}
    tallies: dict[str, ShopTally] = {}
    day = day_of(as_of_us)
    from scoring.stages import stage_on

    for key in sorted(res.states):
        policy = policies.for_shop(key[0])
        head = head_as_of(res.states[key], as_of_us, policy)
        heads[key] = head
        tallies.setdefault(key[0], ShopTally()).add_customer(head, stage_on(head, day, policy), policy)
    fits = fit_clv_models(heads, as_of_us, policies) if with_clv else None
    rfm_fits = fit_rfm_models(heads, as_of_us) if with_clv else {}

    def gen() -> Iterator[dict[str, Any]]:
        for key, head in heads.items():
            yield snapshot_of_head(key[0], key[1], head, as_of_us, policies.for_shop(key[0]),
                                   None if fits is None else fits.select(key[0]),
                                   rfm_fits.get(key[0]))

    return as_of_us, gen(), tallies


def replay(lines: Iterable[bytes | str], *, policies: PolicyBook | None = None,
           as_of: datetime | None = None, now: datetime | None = None,
           with_clv: bool = True) -> list[dict[str, Any]]:
    """Convenience for tests and tools: the list ``loyalty replay`` would print."""
    policies = policies or PolicyBook()
    res = fold_lines(lines, policies=policies, as_of=as_of, now=now)
    _, snaps, _ = snapshots(res, policies, as_of, with_clv=with_clv)
    return list(snaps)
