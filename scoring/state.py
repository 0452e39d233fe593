"""The per-customer state: one compact value, one changelog record.

Layout (see :mod:`scoring.fold` for how it moves)::

    ckpt      Agg of every *finalized* event: those older than the frontier
    buf       accepted events at or after the frontier, canonical order
              (held open so that a late event can still be put in its place)
    seen      event-id hash -> [content digest, ts]: duplicate detection
    emitted   effect id -> [digest, at_us, kind]: what has been published for
              the open part of history, so a re-fold publishes only changes
    max_ts    newest occurred_at accepted
    frontier  events with ts < frontier are finalized; later arrivals are "too late"
    clock     instant up to which time-driven effects have been accounted
    stage     the stage as of ``clock`` (for funnel bookkeeping)
    next_due  earliest instant after ``clock`` at which time alone changes
              something (a lot expires, the stage moves); None if never
    totals    points earned/redeemed/expired/clawed back as of ``clock``
    kpi       the customer's contribution to its shop's KPIs as of ``clock``
              (:func:`scoring.shop.contribution`), so that the service can
              update shop tallies by difference; None in a version-1 state
    positions input source -> offset of the last record that changed this state
              (the service's "topic:partition"; empty offline and in states of
              formats 1-3). The fold carries it unchanged and never reads it;
              the service sets it (:mod:`streams.positions`) to tell a
              redelivered record from a late one

Size bounds (defaults; all are policy settings):

* ``buf``: events of the last ``allowed_lateness_days`` (7) of event time,
  at most ``max_buffer_events`` (512); past the cap the oldest are finalized
  early (the frontier moves up: documented as a tighter lateness).
* ``seen``: ids of the last ``dedup_retention_days`` (90) of event time and
  of the last :data:`scoring.fold.DEDUP_RECENT_IDS` (32) accepted events, in
  acceptance order, at most ``max_seen_ids`` (4096) ids, 2 integers each. A
  retry of one of them is recognised as a duplicate. Older retries are older
  than the lateness too, so they are rejected as ``too_late`` and still change
  nothing.
* ``ckpt``: see :mod:`scoring.aggregate` (orders kept 730 days, 365 days of
  purchase dates, open lots, 90 days of feedback classes).

A typical customer (a few orders a year) encodes to well under 1 KiB.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any

from schemas.codec import compact, dumps, loads
from scoring.aggregate import Agg

FORMAT_VERSION = 4
# Formats this build decodes. Version 1 (before rule v2) lacks the aggregate's
# detractor and touchpoint slots; changelogs in production still hold such
# states, and they are upgraded on read (scoring.aggregate.Agg.from_list).
# Version 3 writes ``seen`` and ``emitted`` as [keys, values] instead of rows
# [key, *value]: both are encoded and decoded without a Python loop, which
# matters for a busy customer with thousands of remembered ids. Version 4
# appends the input positions (older states decode with none).
READABLE_VERSIONS = (1, 2, 3, 4)


#: Formats :meth:`CustomerState.encode` can write. Writing 3 during a rolling
#: upgrade from a build that reads at most 3 keeps its workers able to read
#: every state (the input positions are then not kept).
WRITABLE_VERSIONS = (3, 4)


class StateFormatError(ValueError):
    """The bytes are not a customer state of a format this code can read."""


class NewerStateFormat(StateFormatError):
    """The state was written in a format newer than this build's: by a newer build.

    Unlike a corrupt state, the state is fine and this worker is too old for it.
    """


class CustomerState:
    __slots__ = ("shop_id", "customer_id", "ckpt", "buf", "seen", "emitted", "max_ts",
                 "frontier", "clock", "stage", "next_due", "totals", "kpi", "positions", "head")

    def __init__(self, shop_id: str, customer_id: str, ckpt: Agg | None = None) -> None:
        self.shop_id = shop_id
        self.customer_id = customer_id
        # The fold passes the previous state's checkpoint (shared, never
        # mutated) rather than building an empty aggregate it would replace.
        self.ckpt = Agg() if ckpt is None else ckpt
        self.buf: list[list] = []
        self.seen: dict[int, list[int]] = {}
        self.emitted: dict[int, list] = {}
        self.max_ts: int | None = None
        self.frontier: int | None = None
        self.clock: int | None = None
        self.stage: str | None = None
        self.next_due: int | None = None
        self.totals = [0, 0, 0, 0]  # head points earned, redeemed, expired, clawed back (metrics)
        self.kpi: list[Any] | None = None
        # Replaced, never mutated: states derived from this one share it.
        self.positions: dict[str, int] = {}
        # Not serialized: (policy, Agg) = the re-fold as of ``clock`` under that
        # policy object, kept while the object lives so that in-order events
        # need not re-fold the buffer. A decoded state starts without it.
        self.head: tuple[object, object] | None = None

    @property
    def key(self) -> str:
        return f"{self.shop_id}|{self.customer_id}"

    def encode(self, version: int = FORMAT_VERSION) -> bytes:
        """The state as bytes in format ``version`` (one of :data:`WRITABLE_VERSIONS`;
        format 3 leaves the input positions out). ValueError for another."""
        fields = [
            version, self.shop_id, self.customer_id, self.ckpt.to_list(), self.buf,
            [list(self.seen), list(self.seen.values())],
            [list(self.emitted), list(self.emitted.values())],
            self.max_ts, self.frontier, self.clock, self.stage, self.next_due, self.totals, self.kpi,
        ]
        if version == FORMAT_VERSION:
            fields.append(self.positions)
        elif version != 3:
            raise ValueError(f"state format {version!r}; this build writes {WRITABLE_VERSIONS}")
        return dumps(fields)

    @classmethod
    def decode(cls, data: bytes) -> CustomerState:
        try:
            raw: list[Any] = loads(data)
            if raw[0] not in READABLE_VERSIONS:
                if isinstance(raw[0], int) and raw[0] > FORMAT_VERSION:
                    raise NewerStateFormat(f"state format {raw[0]}, written by a newer build; "
                                           f"this build reads {READABLE_VERSIONS}")
                raise StateFormatError(f"state format {raw[0]!r}; this build reads {READABLE_VERSIONS}")
            new = cls.__new__(cls)
            if raw[0] == 1:
                raw = [*raw, None, {}]  # version 1 had no shop KPI contribution
            elif raw[0] < 4:
                raw = [*raw, {}]  # nor had versions 2 and 3 input positions
            (_, new.shop_id, new.customer_id, ckpt, new.buf, seen, emitted, new.max_ts,
             new.frontier, new.clock, new.stage, new.next_due, new.totals, new.kpi,
             new.positions) = raw
            if not isinstance(new.positions, dict):
                raise StateFormatError(f"unreadable customer state: positions {new.positions!r}")
            new.ckpt = Agg.from_list(ckpt)
            new.head = None
            if raw[0] >= 3:
                new.seen = dict(zip(seen[0], seen[1], strict=True))
                new.emitted = dict(zip(emitted[0], emitted[1], strict=True))
            else:
                new.seen = {row[0]: row[1:] for row in seen}
                new.emitted = {row[0]: row[1:] for row in emitted}
        except StateFormatError:
            raise
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            raise StateFormatError(f"unreadable customer state: {exc}") from None
        return new

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CustomerState) and self.encode() == other.encode()

    def __repr__(self) -> str:
        return f"CustomerState({self.key!r}, buffered={len(self.buf)}, stage={self.stage!r})"


class StateCache:
    """A bounded LRU of live state objects, keyed like the table, validated by bytes.

    The service reads each customer's state as bytes from its table. Decoding
    gives an object without the in-memory head, so the fold must re-fold the
    open buffer. This cache hands back the live object produced by the last
    :func:`scoring.fold.apply` instead, when, and only when, the table still
    holds exactly the bytes that object encoded to. Any other writer (a
    rebalance, a restore from the changelog, the sweep) changes the bytes and
    the cache falls back to decoding: it can never serve a stale state.
    Checking that costs a read of the row, which the caller may skip when its
    store vouches for the rows by a stamp (:meth:`trusted_row`): an entry kept
    with the stamp the store gives now holds its row's bytes.

    A second, larger tier keeps the *head* (the re-fold as of the state's
    clock) of states that left the live tier, encoded as bytes: live objects
    cost the garbage collector on every full collection, bytes do not. A
    decoded state then gets its head back (same policy object, same bytes
    check) instead of being re-folded. ``head_budget`` bounds that tier in
    bytes (0: no second tier); the oldest entries go first.

    The live tier holds at most ``capacity`` entries and, when ``budget`` is
    given, at most ``budget`` bytes as ``weigh`` estimates them from each
    entry's row (the engine's own estimate of what a live state of that row
    costs; :func:`live_weight` for this module's states). A count alone
    bounds memory badly: a customer with a year of history costs several
    times a newcomer. An entry heavier than the whole budget is not kept.

    Rows are kept as exact-size copies (:func:`schemas.codec.compact`) unless
    ``exact_rows`` says the engine's encodings already are (the native
    engine's): an encoding that shares a larger buffer would hold all of it.
    """

    def __init__(self, capacity: int = 10_000, head_budget: int = 0,
                 decode: Callable[[bytes], Any] | None = None, *,
                 budget: int | None = None, weigh: Callable[[bytes], int] | None = None,
                 exact_rows: bool = False) -> None:
        from collections import OrderedDict

        # Another engine's states: its decoder; their heads are the engine's own,
        # so such a cache keeps no head tier (head_budget must be 0).
        if decode is not None and head_budget:
            raise ValueError("a cache of another engine's states keeps no heads")
        self._decode_state = decode or CustomerState.decode
        self.capacity = capacity
        self.head_budget = head_budget
        #: bytes the live tier may hold by :attr:`weigh`'s estimate (None: no bound)
        self.budget = budget
        self.weigh = weigh or live_weight
        self._compact = (lambda raw: raw) if exact_rows else compact
        #: the live tier's estimated bytes (:attr:`weigh` of every entry's row)
        self.weight = 0
        #: key -> (row bytes, live state, :attr:`weigh` of the row, the store's stamp)
        self._items: OrderedDict[bytes, tuple[bytes, CustomerState, int, Hashable | None]] = (
            OrderedDict())
        #: key -> (row bytes, policy, encoded head, bytes charged to the budget)
        self._heads: OrderedDict[bytes, tuple[bytes, object, bytes, int]] = OrderedDict()
        self.head_bytes = 0
        self.hits = 0
        self.head_hits = 0
        self.misses = 0

    def get(self, key: bytes, raw: bytes | None) -> CustomerState | None:
        """The state the table's ``raw`` bytes hold (None for a new customer)."""
        if raw is None:
            return None
        item = self._items.get(key)
        if item is not None and item[0] == raw:
            self._items.move_to_end(key)
            self.hits += 1
            return item[1]
        self.misses += 1
        state, head_hit = self._decode(key, raw)
        self.head_hits += head_hit
        return state

    def trusted_row(self, key: bytes, stamp: Hashable | None) -> bytes | None:
        """The row a live entry of ``key`` was kept for, if it was kept with ``stamp``
        (not None): the caller's store promises, by that stamp, that nothing but
        its own writes changed the rows since, and those keep this cache in step
        (:meth:`put`, :meth:`replace`, :meth:`discard`), so the row need not be
        read to validate the entry. None: read the row."""
        if stamp is None:
            return None
        item = self._items.get(key)
        return item[0] if item is not None and item[3] == stamp else None

    def untrust(self, keys: Iterable[bytes]) -> None:
        """The caller is about to write the rows of ``keys``: their entries are no
        longer trusted by stamp (:meth:`trusted_row`) until :meth:`put` or
        :meth:`replace` gives them the written bytes, so a write whose entry is
        never updated (an error on the way) leaves the row to be read, not a
        stale state served."""
        items = self._items
        for key in keys:
            item = items.get(key)
            if item is not None and item[3] is not None:
                items[key] = (item[0], item[1], item[2], None)

    def peek(self, key: bytes, raw: bytes) -> CustomerState:
        """What :meth:`get` returns for a row that exists, leaving the recency order
        and the counters as they are: for readers other than the agent (the time
        sweep's scans), which must not keep entries alive. The object is shared:
        read it, never change it."""
        item = self._items.get(key)
        if item is not None and item[0] == raw:
            return item[1]
        return self._decode(key, raw)[0]

    def replace(self, key: bytes, raw: bytes, state: CustomerState,
                stamp: Hashable | None = None) -> None:
        """A writer other than the agent wrote ``raw`` (``state``'s encoding): a live
        entry of ``key`` takes it, in place in the recency order, with ``stamp``
        (:meth:`trusted_row`); a key not live is not added (its kept head, now
        stale, is dropped)."""
        item = self._items.get(key)
        if item is not None:
            raw = self._compact(raw)
            weight = self.weigh(raw)
            self.weight += weight - item[2]
            self._items[key] = (raw, state, weight, stamp)
            self._evict()
        else:
            self._drop_head(key)

    def _decode(self, key: bytes, raw: bytes) -> tuple[CustomerState, int]:
        """``raw`` decoded, with its kept head when the head tier has it for these bytes
        (second value 1, else 0)."""
        state = self._decode_state(raw)
        kept = self._heads.get(key)
        if kept is not None:
            if kept[0] == raw:
                state.head = (kept[1], Agg.from_list(loads(kept[2])))
                return state, 1
            self._drop_head(key)
        return state, 0

    def put(self, key: bytes, raw: bytes, state: CustomerState,
            stamp: Hashable | None = None) -> None:
        """Remember ``state`` as what ``raw`` (its encoding, just written) holds; with
        the store's ``stamp`` after that write, if it gives one (:meth:`trusted_row`)."""
        self._drop_head(key)
        if self.capacity <= 0 and self.head_budget <= 0:
            return  # no tier at all: not even the copy below
        raw = self._compact(raw)  # kept for long: see schemas.codec.compact
        weight = self.weigh(raw)
        self._pop_live(key)
        if self.capacity <= 0 or (self.budget is not None and weight > self.budget):
            self._keep_head(key, raw, state)
            return
        self._items[key] = (raw, state, weight, stamp)
        self.weight += weight
        self._evict()

    def _evict(self) -> None:
        """Move the least recently written live entries to the head tier until the
        live tier is within its count and its budget."""
        budget = self.budget
        while len(self._items) > self.capacity or (budget is not None and self.weight > budget):
            old_key, (old_raw, old_state, old_weight, _) = self._items.popitem(last=False)
            self.weight -= old_weight
            self._keep_head(old_key, old_raw, old_state)

    def _pop_live(self, key: bytes) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self.weight -= item[2]

    def discard(self, key: bytes) -> None:
        """Forget ``key`` (its row was deleted)."""
        self._pop_live(key)
        self._drop_head(key)

    def _keep_head(self, key: bytes, raw: bytes, state: CustomerState) -> None:
        if self.head_budget <= 0 or state.head is None:
            return
        policy, head = state.head
        data = compact(dumps(head.to_list()))  # type: ignore[attr-defined]
        size = len(key) + len(raw) + len(data) + _HEAD_ENTRY_OVERHEAD
        if size > self.head_budget:
            return
        self._heads[key] = (raw, policy, data, size)
        self.head_bytes += size
        while self.head_bytes > self.head_budget:
            self.head_bytes -= self._heads.popitem(last=False)[1][3]

    def _drop_head(self, key: bytes) -> None:
        kept = self._heads.pop(key, None)
        if kept is not None:
            self.head_bytes -= kept[3]

    def __len__(self) -> int:
        return len(self._items)


# The dict slot, the tuple and the objects' headers of one head-tier entry.
_HEAD_ENTRY_OVERHEAD = 300


def live_weight(raw: bytes) -> int:
    """Estimated bytes of memory a live :class:`CustomerState` of row ``raw`` costs in
    a :class:`StateCache`, the row's kept copy and its head included.

    Fitted to measured growth of a process's resident memory per cached state
    (a newcomer, the bench's heavy and year-long customers; docs/performance-history.md):
    within about a third of each.
    """
    return 3072 + 5 * len(raw)
