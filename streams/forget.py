"""Right to erasure in the service: forget requests, requested and applied.

How a customer is forgotten:

1. ``loyalty forget SHOP CUSTOMER`` or ``DELETE /customers/{shop}/{customer}``
   builds a ``forget`` request (:class:`schemas.events.Forget`, made by
   :func:`forget_request`: a fresh request id, ``occurred_at`` = the request
   time) and produces it keyed like the customer's events to the forget topic
   (:mod:`streams.topics`), co-partitioned with them. It is durable once the
   broker acknowledges it; the erasure itself completes asynchronously.
2. The state agent receives it with the customer's other input, ordered by
   ``occurred_at`` like any input record (:mod:`streams.align`), so events
   that happened before the request are folded before it and later ones after.
   A wrongly keyed request is forwarded through the rekey topic like an event;
   a request produced to another input topic is dead-lettered (``wrong_topic``),
   so who may erase is who may write the forget topic.
3. :func:`plan_erasure` plans it as an ordinary state change, committed by
   the one commit protocol (:mod:`streams.commit`): a tombstone (null value)
   under the customer's key on the compacted scores topic, acknowledged; a
   tombstone in the customers changelog, acknowledged; the row deleted; the
   customer's whole share subtracted from its shop tally
   (the engine's ``forget``, :mod:`scoring.engine`); the key dropped from the time sweep's due
   index. Counted as ``loyalty_events_applied_total{type="forget"}``.

At-least-once: a redelivered (or repeated) request finds no row and writes
the two tombstones again, which changes nothing (counted as a duplicate); a
crash between the protocol's steps is covered by :mod:`streams.commit` like
any state change. Events of the customer processed after the request start a
new, empty history. Records already published on the delete-retention topics
(transitions, rewards, dead letters) are not touched; they expire with the
topics' retention.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from schemas import codec
from scoring.engine import State
from streams.publish import futures
from streams.records import Record
from streams.shops import TallyDelta
from streams.topics import input_topic_for_event_type, message_key

if TYPE_CHECKING:
    from streams.context import ServiceContext
    from streams.planning import Plan

log = logging.getLogger(__name__)


def forget_request(shop_id: str, customer_id: str,
                   now: datetime | None = None) -> tuple[str, bytes, dict[str, Any]]:
    """``(request id, record key, record value)`` of a request to forget a customer.

    Raises :class:`ValueError` for ids the event contract refuses (the agent
    would dead-letter the request instead of forgetting anyone).
    """
    from schemas.events import Forget

    key = message_key(shop_id, customer_id)
    request_id = f"forget-{uuid.uuid4()}"
    at = (now or datetime.now(UTC)).astimezone(UTC)
    value = {"type": "forget", "event_id": request_id, "shop_id": shop_id,
             "customer_id": customer_id,
             "occurred_at": at.isoformat(timespec="microseconds").replace("+00:00", "Z")}
    try:
        Forget.model_validate(value)
    except ValueError as exc:  # pydantic's ValidationError: one line, no links
        first = exc.errors(include_url=False)[0] if hasattr(exc, "errors") else {}
        raise ValueError(f"invalid {'.'.join(map(str, first.get('loc', ())))}: "
                         f"{first.get('msg', exc)}") from None
    return request_id, key, value


def forget_topic(settings: Any) -> str:
    """The topic forget requests are produced to (the registry's route for ``forget``)."""
    return input_topic_for_event_type(settings, "forget")


def erasure_refused(service: ServiceContext, record: Record) -> str | None:
    """Why a forget request must not be applied (None: apply it).

    Only requests that entered through the forget topic (possibly forwarded
    through the rekey topic since) are honoured, so that who may erase
    customers is decided by who may write that one topic.
    """
    want = forget_topic(service.settings)
    entered = record.origin().get("topic") if record.headers else record.topic
    if entered == want:
        return None
    return f"a forget request is only honoured from topic {want!r}, not {entered!r}"


def plan_erasure(service: ServiceContext, plan: Plan, partition: int, key: bytes,
                 old: State | None, *, damaged: bool = False) -> Plan:
    """Fill ``plan`` with the erasure of the customer ``key`` whose state is ``old``.

    The plan erases (:meth:`streams.planning.Planner.settle` then deletes the
    row with a changelog tombstone and publishes a scores tombstone, unless a
    later record of the batch starts a new history) and carries the tally
    delta that removes the customer's whole share; the deleted row leaves the
    due index. With no state (already forgotten, or never seen) the tombstones
    are written again and nothing else changes; the status is then
    ``duplicate``. ``damaged``: the row holds no readable state. It is erased
    all the same (the way an operator removes such a row), but its share of
    the shop figures cannot be computed: the tally keeps it until the
    partition's next full recount (README "Guarantees"). Reads nothing,
    writes nothing.
    """
    if damaged:
        log.warning("erasing customer %r, whose stored state is unreadable: its shop figures "
                    "are corrected by the next full recount of partition %d", key, partition)
        plan.status, delta = "applied", TallyDelta(None, None)
    elif old is None:
        plan.status, delta = "duplicate", TallyDelta(None, None)
    else:
        erasure = service.engine.forget(old, service.policies.for_shop(old.shop_id))
        plan.status, delta = "applied", TallyDelta(old.stage, None, erased=erasure.tally)
    plan.erase = True  # Planner.settle: the row deleted, both tombstones
    plan.tally_delta = (partition, key, delta)
    return plan


async def request_erasure(service: ServiceContext, shop_id: str,
                          customer_id: str) -> tuple[int, dict[str, Any]]:
    """``DELETE /customers/{shop}/{customer}``: produce a forget request, await the broker.

    Returns ``(HTTP status, JSON body)``: 202 with the request id once the
    broker has acknowledged the request (the erasure then completes
    asynchronously), 400 for ids the contract refuses, 503 when the broker
    did not acknowledge (nothing was requested; retry). Never raises.
    """
    try:
        request_id, key, value = forget_request(shop_id, customer_id)
    except ValueError as exc:
        return 400, {"error": "bad_request", "detail": str(exc)}
    try:
        sent = await service.publisher.publish(
            [(forget_topic(service.settings), key, codec.dumps(value), None, None)])
        await asyncio.gather(*futures(sent))
    except Exception as exc:  # noqa: BLE001 - any producer failure: not requested
        log.warning("forget request for %r not acknowledged: %r", key, exc)
        return 503, {"error": "not_acknowledged",
                     "detail": "the broker did not acknowledge the request; nothing was "
                               "requested, retry"}
    return 202, {"request_id": request_id, "shop_id": shop_id, "customer_id": customer_id,
                 "status": "accepted",
                 "detail": "the erasure completes asynchronously, in order with the "
                           "customer's events; GET on the customer answers 404 once done"}
