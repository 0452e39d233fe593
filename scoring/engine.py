"""The scoring core's one interface: an :class:`Engine`.

The service (``streams/``) and its tools reach the fold, the snapshot and
the state format only through an engine; no module of ``streams/`` imports
:mod:`scoring.fold`, :mod:`scoring.aggregate`, :mod:`scoring.snapshot` or
:mod:`scoring.state` (``tests/core/test_engine.py`` checks it). That is what
lets a second engine (native code, ``docs/native-core.md``) replace the
Python fold without touching the runtime.

A customer's state is a handle the engine gives out (:meth:`Engine.decode`,
:meth:`Engine.apply`, ...). Callers read only the derived fields of
:class:`State` and pass the handle back; they never change it. Its bytes
(:meth:`Engine.encode`) are the changelog's state format, which every engine
reads and writes identically. A *head* (from :meth:`Engine.rederive`) is
opaque too: only the engine that made it reads it.

:data:`PYTHON` is the reference engine: :mod:`scoring.fold` and its
neighbours. Every engine must pass the conformance suite,
``tests/core/test_engine.py``, with equal bytes: rows, effects, snapshots.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from schemas.codec import dumps, loads
from schemas.events import Event, parse_event
from schemas.policy import PolicyBook, ShopPolicy
from scoring import fold, rfm
from scoring import snapshot as _snapshot
from scoring.aggregate import Agg
from scoring.clock import day_of
from scoring.fold import Erasure, Outcome
from scoring.shop import ShopTally
from scoring.snapshot import AsOfTooEarly
from scoring.state import (
    FORMAT_VERSION,
    READABLE_VERSIONS,
    WRITABLE_VERSIONS,
    CustomerState,
    NewerStateFormat,
    StateCache,
    StateFormatError,
)

__all__ = [
    "FORMAT_VERSION", "PYTHON", "READABLE_VERSIONS", "WRITABLE_VERSIONS", "AsOfTooEarly",
    "BuyerSummary", "EffectMark", "EncodedEffects", "Engine", "Erasure", "NewerStateFormat",
    "Outcome", "PythonEngine", "State", "StateCache", "StateFormatError", "effect_marks",
    "effect_values",
]

#: What the service counts of an effect: ``(kind, void, from, to, entry, points)``, None
#: for a field the effect has not (``streams.metrics``).
EffectMark = tuple[Any, Any, Any, Any, Any, Any]


class EncodedEffects(Sequence[dict[str, Any]]):
    """An outcome's effects as an engine may hand them over: each effect's JSON (the
    bytes ``dumps`` writes for its dict: the output record's value) and its
    :data:`EffectMark`. Read as a sequence, each effect is decoded to its dict,
    once, on first read; the service's hot path reads :func:`effect_values` and
    :func:`effect_marks` instead and decodes nothing."""

    __slots__ = ("_dicts", "json", "marks")

    def __init__(self, json: list[bytes], marks: list[EffectMark]) -> None:
        self.json = json
        self.marks = marks
        self._dicts: list[dict[str, Any]] | None = None

    def _decoded(self) -> list[dict[str, Any]]:
        if self._dicts is None:
            self._dicts = [loads(raw) for raw in self.json]
        return self._dicts

    def __len__(self) -> int:
        return len(self.json)

    def __getitem__(self, index: Any) -> Any:
        return self._decoded()[index]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"EncodedEffects({self._decoded()!r})"


def effect_values(effects: Sequence[Mapping[str, Any]]) -> list[tuple[Any, bytes]]:
    """``(kind, JSON bytes)`` of each effect, in order: what its output record carries."""
    if isinstance(effects, EncodedEffects):
        return [(mark[0], raw) for mark, raw in zip(effects.marks, effects.json, strict=True)]
    return [(eff.get("kind"), dumps(eff)) for eff in effects]


def effect_marks(effects: Sequence[Mapping[str, Any]]) -> list[EffectMark]:
    """The :data:`EffectMark` of each effect, in order."""
    if isinstance(effects, EncodedEffects):
        return effects.marks
    return [(eff.get("kind"), eff.get("void"), eff.get("from"), eff.get("to"), eff.get("entry"),
             eff.get("points")) for eff in effects]


#: A buyer's CLV inputs ``(x, t_x_days, T_days, repeat_spend)`` and RFM values as of
#: an instant (:meth:`Engine.buyer_summary`).
BuyerSummary = tuple[tuple[int, int, int, int], rfm.Values]


class State(Protocol):
    """What a caller may read of a state handle: its identity and derived fields.

    Every field is as of the state's ``clock`` and was derived under the
    policy of the engine call that produced the state.
    """

    @property
    def shop_id(self) -> str: ...
    @property
    def customer_id(self) -> str: ...
    @property
    def key(self) -> str: ...
    #: instant up to which time-driven effects are accounted (None: no event yet)
    @property
    def clock(self) -> int | None: ...
    #: the loyalty stage as of ``clock``
    @property
    def stage(self) -> str | None: ...
    #: earliest instant after ``clock`` at which time alone changes the state
    @property
    def next_due(self) -> int | None: ...
    #: the customer's shop-KPI contribution (:func:`scoring.shop.contribution`;
    #: None in a format-1 state)
    @property
    def kpi(self) -> list[Any] | None: ...
    #: input partition -> offset of the last record that changed the state
    @property
    def positions(self) -> Mapping[str, int]: ...


class Engine(Protocol):
    """The scoring core as the service and the tools use it.

    Every method but :meth:`at_position` is pure: it reads its arguments,
    never changes a state it is given, and keeps nothing between calls except
    what a returned handle carries (the Python engine's in-memory head).
    :meth:`at_position` marks a state :meth:`apply` has just returned, before
    anyone else holds it. Input that the contract of :mod:`schemas.events`
    accepts never makes a method raise, except where stated.
    """

    #: shown in ``loyalty bench --core-only`` and ``loyalty_build_info``
    name: str

    def read(self, raw: bytes | None) -> Any:
        """The event in ``raw`` if the engine's fast path takes it, else None (only
        :meth:`parse` can tell then). Never raises. What it returns has the fields of
        :meth:`parse`'s events and ``ts_us`` (``occurred_at`` in microseconds); the
        rules that need the shop's policy are not checked: pass it to :meth:`parse`."""
        ...

    def parse(self, raw: bytes, *, now: datetime, policies: PolicyBook, read: Any = None) -> Event:
        """The event in ``raw``, as :func:`schemas.events.parse_event` judges it (the
        same acceptance, the same :class:`schemas.events.InvalidEvent` reasons); what
        it returns is only for this engine's :meth:`apply`, read by the caller
        through the model's fields (``type``, ``event_id``, ``shop_id``,
        ``customer_id``, ``occurred_at``, ``nps``, ``touchpoint``). ``read`` is
        :meth:`read`'s answer for ``raw`` when the caller has it (not read again)."""
        ...

    def decode(self, raw: bytes) -> State:
        """The state in ``raw``. Raises :class:`NewerStateFormat` for a format newer
        than this build's, :class:`StateFormatError` for bytes that are not a state."""
        ...

    def encode(self, state: State, version: int = FORMAT_VERSION) -> bytes:
        """The state's bytes in format ``version`` (one of :data:`WRITABLE_VERSIONS`;
        ValueError for another). Equal states encode to equal bytes."""
        ...

    def apply(self, state: State | None, event: Event, policy: ShopPolicy) -> Outcome:
        """Fold one event into ``state`` (None: a new customer); the new state, the
        effects to publish and the tally's inputs (:class:`scoring.fold.Outcome`)."""
        ...

    def advance(self, state: State, now_us: int, policy: ShopPolicy, *,
                stale: bool = False) -> Outcome:
        """Account for time up to ``now_us``: point expiries and time-driven stage
        changes (``stale``: as :meth:`rederive` said; see :func:`scoring.fold.advance`)."""
        ...

    def rederive(self, state: State, policy: ShopPolicy) -> tuple[Any, bool]:
        """(head, stale): the state's head as of its clock under ``policy`` (opaque,
        for :meth:`count_customer`; None without events), and whether its derived
        fields differ from what ``policy`` gives."""
        ...

    def forget(self, state: State, policy: ShopPolicy) -> Erasure:
        """The erasure of the customer: the undo of its share in the shop figures."""
        ...

    def at_position(self, state: State, source: str, offset: int) -> State:
        """``state``, new from :meth:`apply` and not yet shared, marked as changed by the
        record at ``offset`` of input partition ``source`` (its ``positions``)."""
        ...

    def snapshot(self, state: State, as_of: datetime | int | None, policy: ShopPolicy,
                 clv_model: Any = None, rfm_model: rfm.RfmModel | None = None) -> dict[str, Any]:
        """The customer snapshot as of ``as_of`` (None: the state's clock). Raises
        :class:`AsOfTooEarly` for an instant before :meth:`finalized_until`."""
        ...

    def snapshot_json(self, state: State, as_of: datetime | int | None, policy: ShopPolicy,
                      clv_model: Any = None, rfm_model: rfm.RfmModel | None = None) -> bytes:
        """:meth:`snapshot` encoded: exactly the bytes ``schemas.codec.dumps`` gives for
        it (the score record). Raises as :meth:`snapshot`."""
        ...

    def finalized_until(self, state: State) -> int | None:
        """The end of the state's finalized history: the earliest instant it can be
        read as of (None: nothing is finalized)."""
        ...

    def buyer_summary(self, state: State, as_of_us: int, policy: ShopPolicy) -> BuyerSummary | None:
        """The customer's CLV inputs and RFM values as of ``as_of_us`` (at or after
        :meth:`finalized_until`), None if it bought nothing by then."""
        ...

    def count_customer(self, tally: ShopTally, state: State, policy: ShopPolicy,
                       head: Any = None) -> None:
        """Add the customer's whole share (as of its clock) to ``tally``: an exact
        recount. ``head``: from :meth:`rederive` under ``policy``, if the caller has it."""
        ...

    def state_cache(self, capacity: int, head_budget: int, budget: int | None = None) -> StateCache:
        """A bounded cache of this engine's live states, checked against the row's
        bytes (:class:`scoring.state.StateCache`): at most ``capacity`` of them and
        ``budget`` bytes (None: no bound) by this engine's estimate of a live state."""
        ...


def summary_of_head(head: Agg, as_of_us: int) -> BuyerSummary | None:
    """A buyer's summary read off its head as of ``as_of_us`` (every engine's)."""
    inputs = _snapshot.clv_inputs(head, day_of(as_of_us))
    if inputs is None:
        return None
    return inputs, rfm.values(head, day_of(as_of_us))  # type: ignore[return-value] # a buyer


class PythonEngine:
    """The reference engine: :mod:`scoring.fold`, :mod:`scoring.snapshot` and
    :mod:`scoring.state`. ``decode``, ``apply``, ``advance``, ``rederive``,
    ``forget`` and ``snapshot`` are the core's functions themselves, so the
    agent's per-event call is the call it made before the interface; the other
    methods are one-line adapters."""

    name = "python"
    decode = staticmethod(CustomerState.decode)
    apply = staticmethod(fold.apply)
    advance = staticmethod(fold.advance)
    rederive = staticmethod(fold.rederive)
    forget = staticmethod(fold.forget)
    snapshot = staticmethod(_snapshot.snapshot)

    @staticmethod
    def read(raw: bytes | None) -> None:
        return None  # no fast path: the contract's parser reads every event

    @staticmethod
    def parse(raw: bytes, *, now: datetime, policies: PolicyBook, read: Any = None) -> Event:
        return parse_event(raw, now=now, policies=policies)

    @staticmethod
    def encode(state: CustomerState, version: int = FORMAT_VERSION) -> bytes:
        return state.encode(version)

    @staticmethod
    def snapshot_json(state: CustomerState, as_of: datetime | int | None, policy: ShopPolicy,
                      clv_model: Any = None, rfm_model: rfm.RfmModel | None = None) -> bytes:
        return dumps(_snapshot.snapshot(state, as_of, policy, clv_model, rfm_model))

    @staticmethod
    def at_position(state: CustomerState, source: str, offset: int) -> CustomerState:
        # The dict is replaced, not updated: earlier states share the old one.
        state.positions = {**state.positions, source: offset}
        return state

    @staticmethod
    def finalized_until(state: CustomerState) -> int | None:
        return state.ckpt.t_us

    @staticmethod
    def buyer_summary(state: CustomerState, as_of_us: int, policy: ShopPolicy) -> BuyerSummary | None:
        return summary_of_head(_snapshot.head_as_of(state, as_of_us, policy), as_of_us)

    @staticmethod
    def count_customer(tally: ShopTally, state: CustomerState, policy: ShopPolicy,
                       head: Any = None) -> None:
        if head is None:
            head = _snapshot.head_as_of(state, state.clock if state.clock is not None else 0, policy)
        tally.add_customer(head, state.stage, policy)

    @staticmethod
    def state_cache(capacity: int, head_budget: int, budget: int | None = None) -> StateCache:
        return StateCache(capacity, head_budget=head_budget, budget=budget)


#: The engine every caller uses unless given another.
PYTHON: Engine = PythonEngine()
