"""Planning: what one input record causes, computed before anything is written.

:meth:`Planner.plan` turns a record into a :class:`Plan` - the dead letter,
the rekey forward, or the new customer state with its outputs and tally
delta - reading the row store and writing nothing, so an exception while
planning changes nothing. The checks, in this order:

1. empty or larger than ``max_event_bytes`` -> dead letter (``empty``,
   ``too_large``);
2. ``parse_event`` -> :class:`schemas.events.InvalidEvent` -> dead letter
   with its reason;
3. keying: if the record's key is not ``b"shop|customer"`` of the event or
   its partition is not :func:`streams.topics.partition_for` of that key,
   forward the original bytes, correctly keyed, to the rekey topic (the same
   agent consumes it there, on the right partition); correctly keyed input
   is processed directly, without a hop;
4. row lookup (or the state planned for an earlier record of the batch),
   ``fold.apply``; a changed state brings its snapshot, effects and tally
   delta;
5. a ``rejected`` outcome goes to the dead letter with the fold's reason.

A ``forget`` request (right to erasure) takes steps 1-4 like an event and is
then planned by :func:`streams.forget.plan_erasure` instead of the fold; one
that did not enter through the forget topic is dead-lettered (``wrong_topic``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from schemas import codec
from schemas.events import InvalidEvent, parse_event
from scoring import fold
from scoring.snapshot import snapshot
from scoring.state import CustomerState
from streams.commit import Change
from streams.context import ServiceContext
from streams.forget import erasure_refused, plan_erasure
from streams.publish import OutRecord
from streams.records import ORIGIN_HEADER, Outgoing, Record, dead_letter_record, effect_messages
from streams.shops import TallyDelta, delta_for_event
from streams.topics import message_key, partition_for


@dataclass
class Plan:
    """Everything one record causes, computed before anything is written."""

    #: (customer key, encoded new state; None deletes the row: an erasure)
    state_write: tuple[bytes, bytes | None] | None = None
    # (partition, customer key, delta); applied to the tally row at write time,
    # not plan time, because the sweep may rewrite the row while the agent
    # waits for the broker.
    tally_delta: tuple[int, bytes, TallyDelta] | None = None
    # next_due of the state written (for the time sweep's due index)
    next_due: int | None = None
    sends: list[Outgoing] = field(default_factory=list)
    event_type: str = "invalid"
    status: str = "invalid"
    reason: str | None = None  # dead-letter reason of an invalid record or rejected outcome
    occurred_at: datetime | None = None
    effects: list[dict[str, Any]] = field(default_factory=list)


class Planner:
    """Turns one input record into a :class:`Plan` (module docstring)."""

    def __init__(self, service: ServiceContext) -> None:
        self.service = service
        self.rekey_name = service.rekey.get_topic_name()

    def plan(self, record: Record, *, now: datetime | None = None,
             overlay: dict[bytes, bytes | None] | None = None) -> Plan:
        """Compute what ``record`` causes. Reads the tables, writes nothing.

        ``now`` (wall clock UTC by default) is only used by ``parse_event`` to
        reject timestamps more than a day in the future. ``overlay`` holds the
        states planned (not yet written) for earlier records of the same batch:
        a customer's second record in a batch folds onto the first one's result.
        """
        svc = self.service
        now = now or datetime.now(UTC)
        raw = record.value
        if raw is None or len(raw) == 0:
            return self._reject(record, "empty", "record has no value")
        if len(raw) > svc.settings.max_event_bytes:
            return self._reject(record, "too_large",
                                f"{len(raw)} bytes > max_event_bytes={svc.settings.max_event_bytes}")
        try:
            event = parse_event(raw, now=now, policies=svc.policies)
        except InvalidEvent as exc:
            return self._reject(record, exc.reason, exc.detail)

        key = message_key(event.shop_id, event.customer_id)
        want_partition = partition_for(key, svc.partitions)
        if record.key != key or record.partition != want_partition:
            if record.topic == self.rekey_name:
                # Already re-keyed and still misplaced: the rekey topic's partition
                # count differs from settings.partitions. Looping would never end.
                return self._reject(record, "partition_mismatch",
                                    f"rekeyed record on partition {record.partition}, "
                                    f"expected {want_partition}")
            origin = codec.dumps(record.origin())
            plan = Plan(event_type=event.type, status="rekeyed")
            plan.sends.append(Outgoing(svc.rekey, key, raw, [(ORIGIN_HEADER, origin)]))
            return plan

        policy = svc.policies.for_shop(event.shop_id)
        if overlay is not None and key in overlay:
            old_raw = overlay[key]
        else:
            old_raw = svc.rows.get(record.partition, key)
        old = _decode_state(old_raw)
        if event.type == "forget":  # right to erasure: streams/forget.py
            refused = erasure_refused(svc, record)
            if refused is not None:
                return self._reject(record, "wrong_topic", refused)
            return plan_erasure(svc, Plan(event_type=event.type, occurred_at=event.occurred_at),
                                record.partition, key, old)
        outcome = fold.apply(old, event, policy)
        plan = Plan(event_type=event.type, status=outcome.status, occurred_at=event.occurred_at)
        if outcome.changed:
            new_state = outcome.state
            plan.state_write = (key, bytes(new_state.encode()))
            plan.tally_delta = (record.partition, key,
                                delta_for_event(outcome, event, policy, old is None))
            plan.next_due = new_state.next_due
            snap = snapshot(new_state, None, policy, svc.clv_model(event.shop_id),
                            svc.rfm_model(event.shop_id))
            plan.sends.append(Outgoing(svc.scores, key, codec.dumps(snap)))
        plan.effects = list(outcome.effects)
        plan.sends.extend(effect_messages(svc, plan.effects))
        if outcome.status == "rejected":
            reason = getattr(outcome, "reason", None) or "rejected"
            detail = getattr(outcome, "detail", None) or reason
            plan.reason = reason
            plan.sends.append(Outgoing(svc.dead_letter, record.key,
                                       dead_letter_record(record, reason, detail)))
        return plan

    def _reject(self, record: Record, reason: str, detail: str) -> Plan:
        plan = Plan(event_type="invalid", status="invalid")
        plan.sends.append(Outgoing(self.service.dead_letter, record.key,
                                   dead_letter_record(record, reason, detail)))
        plan.status = "invalid"
        plan.reason = reason
        return plan


def outputs(plans: list[Plan]) -> list[OutRecord]:
    """Every output record of ``plans``, in order, for :class:`streams.publish.Publisher`."""
    return [(out.topic.get_topic_name(), out.key, out.value, out.headers, None)
            for plan in plans for out in plan.sends]


def changes(plans: list[Plan]) -> list[Change]:
    """The state changes of ``plans``, in order (state and tally always come together)."""
    return [Change(plan.tally_delta[0], key, value, plan.tally_delta[2], plan.next_due)
            for plan in plans if plan.state_write is not None and plan.tally_delta is not None
            for key, value in (plan.state_write,)]


def _decode_state(raw: bytes | None) -> CustomerState | None:
    if raw is None:
        return None
    return CustomerState.decode(raw)
