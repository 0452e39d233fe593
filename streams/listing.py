"""A shop's customers by segment: the worker side of ``GET /shops/{shop}/customers``.

A campaign service asks for, say, the at-risk customers or the detractors of
a shop. Each worker lists the matching customers of the partitions it
actively owns (:func:`local_page`); the answering worker fans the request out
to the others and merges the pages (:func:`merge`, :mod:`streams.web`).

**What is filtered on.** The stage, loyalty type, wallet band and detractor
status a customer's state holds as of its last event or time sweep (the
``stage`` and the shop-KPI contribution of a state, :class:`scoring.engine.State`):
the very figures the funnel and the KPI counts of ``GET /shops/{shop}`` are
summed from, so ``?stage=at_risk`` lists exactly the customers the funnel
counts as ``at_risk``. Each item is the customer's snapshot at that same
instant (its ``as_of``), cut to :data:`schemas.outputs.LIST_FIELDS`. Time
moves customers only when the sweep notices it (every
``LOYALTY_SWEEP_INTERVAL_S``), so a listing lags the clock by at most that.

**Order and pages.** Items are ordered by ``customer_id`` (code points, the
same as the UTF-8 byte order of the row keys). The cursor is the last
``customer_id`` of a page, base64url-encoded: opaque to clients, stable
while customers come and go (a page starts strictly after it).

**Cost.** A worker reads its rows of the shop in key order from the cursor
until it has ``limit + 1`` matches per partition, decoding each state (no
fold) and computing a snapshot only for the items it returns. A rare
segment of a large shop means reading many rows: the scan runs in slices of
:data:`SLICE_S` and yields to the event loop between them, so the agent is
never held up for longer than a slice.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from schemas.outputs import LIST_FIELDS
from scoring.engine import State, StateFormatError
from scoring.shop import C_DET, C_TYPE, C_WALLET, DETRACTOR_STATUSES, LOYALTY_TYPES, WALLET_BANDS
from scoring.stages import STAGES

if TYPE_CHECKING:
    from streams.context import ServiceContext

#: query parameter -> its allowed values
FILTERS: dict[str, tuple[str, ...]] = {
    "stage": STAGES, "loyalty_type": LOYALTY_TYPES, "wallet_band": WALLET_BANDS,
    "detractor_status": DETRACTOR_STATUSES,
}
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: seconds of row reading before the scan yields to the event loop
SLICE_S = 0.005


@dataclass(frozen=True)
class Query:
    """A validated listing request."""

    filters: dict[str, str]
    limit: int = DEFAULT_LIMIT
    after: str | None = None  # the cursor: list customers strictly after this id


def encode_cursor(customer_id: str) -> str:
    return base64.urlsafe_b64encode(customer_id.encode()).decode().rstrip("=")


def decode_cursor(text: str) -> str:
    """The customer id of a cursor; :class:`ValueError` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        customer_id = raw.decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("cursor is not one this API returned") from None
    if not customer_id or encode_cursor(customer_id) != text:
        raise ValueError("cursor is not one this API returned")
    return customer_id


def parse_query(query: Mapping[str, str], names: list[str]) -> Query:
    """Validate the query parameters (``names``: every name given, repeats included).

    Raises :class:`ValueError` with the reason for an unknown or repeated
    parameter or a value outside its allowed set.
    """
    allowed = {*FILTERS, "limit", "cursor"}
    for name in names:
        if name not in allowed:
            raise ValueError(f"unknown parameter {name!r}; allowed: {', '.join(sorted(allowed))}")
        if names.count(name) > 1:
            raise ValueError(f"parameter {name!r} given more than once")
    filters = {}
    for name, values in FILTERS.items():
        if name in query:
            if query[name] not in values:
                raise ValueError(f"{name} must be one of {', '.join(values)}")
            filters[name] = query[name]
    limit = DEFAULT_LIMIT
    if "limit" in query:
        text = query["limit"]
        if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
            raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}")
        limit = int(text)
    after = decode_cursor(query["cursor"]) if "cursor" in query else None
    return Query(filters, limit, after)


def dimensions(state: State) -> dict[str, str | None]:
    """The filterable values of a customer as of its last event or sweep."""
    kpi = state.kpi
    if kpi is None:  # a version-1 state (no KPI contribution yet): no attitude values
        return {"stage": state.stage, "loyalty_type": None, "wallet_band": None,
                "detractor_status": None}
    return {"stage": state.stage, "loyalty_type": kpi[C_TYPE], "wallet_band": kpi[C_WALLET],
            "detractor_status": kpi[C_DET]}


def _scan_slice(ctx: ServiceContext, partition: int, prefix: bytes, cursor: bytes, query: Query,
                found: list[State]) -> bytes | None:
    """Read rows after ``cursor`` for one slice; the key to resume after, None when done."""
    deadline = time.monotonic() + SLICE_S
    for key in ctx.rows.keys_after(partition, cursor):
        if not key.startswith(prefix):
            return None  # past the shop's rows
        raw = ctx.rows.get(partition, key)
        if raw is not None:
            try:
                state = ctx.engine.decode(raw)
            except StateFormatError:
                state = None  # the agent reports unreadable rows; a listing skips them
            if state is not None and all(dimensions(state).get(name) == want
                                         for name, want in query.filters.items()):
                found.append(state)
                if len(found) > query.limit:
                    return None
        if time.monotonic() >= deadline:
            return key
    return None


async def local_page(ctx: ServiceContext, shop_id: str, query: Query) -> tuple[list[int], list[dict]]:
    """``(partitions read, items)``: this worker's first ``limit + 1`` matches, in order.

    A partition that is not open here (being revoked) is left out of the
    partitions read, so the caller reports it as unavailable.
    """
    prefix = shop_id.encode() + b"|"
    start = prefix + (query.after.encode() if query.after else b"")
    covered: list[int] = []
    found: list[State] = []
    for partition in ctx.owned_partitions():
        mine: list[State] = []
        cursor: bytes | None = start
        try:
            while cursor is not None:
                cursor = _scan_slice(ctx, partition, prefix, cursor, query, mine)
                await asyncio.sleep(0)
        except KeyError:
            continue
        covered.append(partition)
        found.extend(mine)
    found.sort(key=lambda s: s.customer_id)
    return covered, [item(ctx, s) for s in found[:query.limit + 1]]


def item(ctx: ServiceContext, state: State) -> dict[str, Any]:
    """The listed fields of the customer's snapshot as of its last event or sweep."""
    snap = ctx.engine.snapshot(state, None, ctx.policies.for_shop(state.shop_id),
                    ctx.clv_model(state.shop_id))
    return {name: snap[name] for name in LIST_FIELDS}


def merge(pages: list[list[dict]], limit: int) -> dict[str, Any]:
    """One page from every worker's items (each ordered, each at most ``limit + 1``)."""
    items = sorted((i for page in pages for i in page), key=lambda i: i["customer_id"])
    more = len(items) > limit
    items = items[:limit]
    return {"items": items,
            "next_cursor": encode_cursor(items[-1]["customer_id"]) if more else None}
