"""Planning: what one input record causes, computed before anything is written.

:meth:`Planner.plan` turns a record into a :class:`Plan` - the dead letter,
the rekey forward, or the new customer state with its outputs and tally
delta - reading the row store and writing nothing, so an exception while
planning changes nothing. The checks, in this order:

1. empty or larger than ``max_event_bytes`` -> dead letter (``empty``,
   ``too_large``);
2. the engine's ``parse`` (:func:`schemas.events.parse_event`'s judgement) ->
   :class:`schemas.events.InvalidEvent` -> dead letter with its reason;
3. keying: if the record's key is not ``b"shop|customer"`` of the event or
   its partition is not :func:`streams.topics.partition_for` of that key,
   forward the original bytes, correctly keyed, to the rekey topic (the same
   agent consumes it there, on the right partition); correctly keyed input
   is processed directly, without a hop;
4. the customer's state: the one planned for an earlier record of the batch,
   else the live object of the engine's state cache (:mod:`scoring.engine`) when the row
   still holds exactly what that object encoded to, else the row decoded
   (rows are read for the whole batch before planning, :meth:`Planner.read_rows`);
   the engine's ``apply``; a changed state brings its effects and tally delta;
5. a ``rejected`` outcome goes to the dead letter with the fold's reason,
   except a ``too_late`` record at or before the offset of its partition
   that last changed the state (:func:`streams.positions.redelivered`): that record was
   applied before and is redelivered, so it is a ``duplicate``. A changed
   state records the record's offset.

:meth:`Planner.settle` then turns a batch of plans into what the commit
writes, coalesced per customer: every effect, dead letter and rekey of every
record, but one changelog record and one score snapshot per customer per
batch (its last state), with the tally deltas of its records merged. A crash
before the batch's writes redelivers the whole batch (the states were not
written), so coalescing changes no guarantee: the outputs repeat with the
same ids and the last snapshot per customer is the one a record-at-a-time
commit would have left on the compacted scores topic.

A ``forget`` request (right to erasure) takes steps 1-4 like an event and is
then planned by :func:`streams.forget.plan_erasure` instead of the fold; one
that did not enter through the forget topic is dead-lettered (``wrong_topic``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from schemas import codec
from schemas.events import InvalidEvent
from scoring.engine import NewerStateFormat, State, StateCache, StateFormatError
from streams.commit import Change
from streams.context import ServiceContext
from streams.forget import erasure_refused, plan_erasure
from streams.positions import input_source, redelivered
from streams.publish import OutRecord
from streams.records import ORIGIN_HEADER, Outgoing, Record, dead_letter_record, effect_messages
from streams.shops import TallyDelta, delta_for_event
from streams.topics import message_key, partition_for

log = logging.getLogger(__name__)

#: rows read ahead for a batch, by (partition, customer key); None: no row
Rows = dict[tuple[int, bytes], bytes | None]
_UNREAD: Any = object()


@dataclass
class Plan:
    """Everything one record causes, computed before anything is written."""

    #: the new customer state (a live object, not yet encoded) when it changed
    state: State | None = None
    #: the plan erases the customer (right to erasure): its row is deleted
    erase: bool = False
    # (partition, customer key, delta); applied to the tally row at write time,
    # not plan time, because the sweep may rewrite the row while the agent
    # waits for the broker.
    tally_delta: tuple[int, bytes, TallyDelta] | None = None
    #: effects, dead letters and rekeys (the score snapshot comes from settle())
    sends: list[Outgoing] = field(default_factory=list)
    event_type: str = "invalid"
    status: str = "invalid"
    #: dead-letter reason of an invalid record or rejected outcome; "redelivered" for a
    #: duplicate told by its input offset (:mod:`streams.positions`)
    reason: str | None = None
    occurred_at: datetime | None = None
    effects: Sequence[dict[str, Any]] = field(default_factory=list)


#: per changed customer key, in order of its first change: (partition, its last state,
#: None: erased, the tally deltas of its plans merged)
LastStates = dict[bytes, tuple[int, State | None, TallyDelta]]


@dataclass
class Settled:
    """What a batch of plans writes: :meth:`Planner.settle`.

    The states are encoded by :meth:`changes`, not by ``settle``: the commit
    calls it while the outputs travel to the broker
    (:meth:`streams.commit.Committer.commit`), so the encoding overlaps that
    round trip.
    """

    outputs: list[OutRecord]
    last: LastStates
    planner: Planner

    def changes(self) -> list[Change]:
        """One :class:`Change` per customer, in order of its first change, its state
        encoded (each call encodes again: call it once)."""
        return self.planner.encoded(self.last)


class Planner:
    """Turns one input record into a :class:`Plan` (module docstring)."""

    def __init__(self, service: ServiceContext) -> None:
        self.service = service
        self.rekey_name = service.rekey.get_topic_name()

    @property
    def states(self) -> StateCache:
        """Live states of recently written customers (see :meth:`remember`): the
        service's cache, which the time sweep reads too."""
        return self.service.states

    def read_rows(self, records: Sequence[Record]) -> Rows:
        """The rows ``records`` will read, by (partition, key): one batch read per partition.

        Keyed by each record's own key and partition (:meth:`plan` uses an
        entry only for a record keyed as its event is). Never raises: a
        partition not open here, or whose batch read fails, is left out, and
        :meth:`plan` reads those rows itself (its failures are retried and
        dead-lettered per record). Valid until the next write: read and plan
        in one synchronous slice (the time sweep writes rows between awaits).
        """
        keys: dict[int, dict[bytes, None]] = {}
        for record in records:
            if record.key:
                keys.setdefault(record.partition, {})[record.key] = None
        rows: Rows = {}
        store = self.service.rows
        trusted_row = self.states.trusted_row
        for partition, wanted in keys.items():
            try:
                if not store.is_open(partition):
                    continue
                # A live state kept with the partition's current stamp is what its
                # row holds: nothing but this worker's own writes (which keep the
                # cache in step) changed the partition since (RowStore.stamp).
                stamp = store.stamp(partition)
                unread = []
                for key in wanted:
                    if (row := trusted_row(key, stamp)) is not None:
                        rows[partition, key] = row
                    else:
                        unread.append(key)
                if not unread:
                    continue
                values = store.get_many(partition, unread)
            except Exception as exc:  # noqa: BLE001 - plan() reads these rows one by one
                log.warning("reading %d rows of partition %d at once failed (%r): "
                            "reading them one at a time", len(wanted), partition, exc)
                continue
            for key, value in zip(unread, values, strict=True):
                rows[partition, key] = value
        return rows

    def plan(self, record: Record, *, now: datetime | None = None,
             overlay: dict[bytes, State | None] | None = None,
             rows: Rows | None = None) -> Plan:
        """Compute what ``record`` causes. Reads the tables, writes nothing.

        ``now`` (wall clock UTC by default) is only used by the parser to
        reject timestamps more than a day in the future. ``overlay`` holds the
        states planned (not yet written) for earlier records of the same batch:
        a customer's second record in a batch folds onto the first one's result.
        The fold never changes the state it is given, so a plan that is
        dropped (a failed commit) leaves the overlay's and the cache's objects
        as they were. ``rows`` are the batch's rows read before planning
        (:meth:`read_rows`); a row not among them is read here.
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
            event = svc.engine.parse(raw, now=now, policies=svc.policies, read=record.event)
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
        forget = event.type == "forget"  # right to erasure: streams/forget.py
        if forget:
            refused = erasure_refused(svc, record)
            if refused is not None:
                return self._reject(record, "wrong_topic", refused)
        damaged = False
        if overlay is not None and key in overlay:
            old: State | None = overlay[key]
        else:
            row = _UNREAD if rows is None else rows.get((record.partition, key), _UNREAD)
            if row is _UNREAD:
                row = svc.rows.get(record.partition, key)
            try:
                old = self.states.get(key, row)
            except StateFormatError as exc:
                if not forget or isinstance(exc, NewerStateFormat):
                    raise  # Processor.handle: unreadable_state, or the stop for a newer build
                old, damaged = None, True  # erasing is how a damaged row is removed (README)
        if forget:
            return plan_erasure(svc, Plan(event_type=event.type, occurred_at=event.occurred_at),
                                record.partition, key, old, damaged=damaged)
        outcome = svc.engine.apply(old, event, policy)
        source = input_source(record)
        if (outcome.status == "rejected" and outcome.reason == "too_late"
                and redelivered(old, source, record.offset)):
            # This very record changed the state before (and its outputs were
            # published before the state was written): it was redelivered, after
            # a crash or a takeover, behind more of the customer's events than
            # the remembered ids cover. An exact duplicate, not a late event.
            return Plan(event_type=event.type, status="duplicate", reason="redelivered",
                        occurred_at=event.occurred_at)
        plan = Plan(event_type=event.type, status=outcome.status, occurred_at=event.occurred_at)
        if outcome.changed:
            plan.state = svc.engine.at_position(outcome.state, source, record.offset)
            plan.tally_delta = (record.partition, key,
                                delta_for_event(outcome, event, policy, old is None))
        plan.effects = outcome.effects
        plan.sends.extend(effect_messages(svc, key, outcome.effects))
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


    def settle(self, plans: list[Plan]) -> Settled:
        """The outputs and state changes of ``plans``, coalesced per customer.

        Every plan's sends in order, then per changed customer (in order of
        its first change) one score snapshot of its last state, or a scores
        tombstone when its last plan erased it; and, from :meth:`Settled.changes`
        (encoded when called), one :class:`Change` per customer: the last
        state, encoded once (None: the row is deleted), with the tally deltas
        of all its plans merged in order.
        """
        svc = self.service
        sends = [out for plan in plans for out in plan.sends]
        last = self.last_states(plans)
        for key, (_, state, _) in last.items():
            if state is None:  # erased: tombstones on the scores topic and the changelog
                sends.append(Outgoing(svc.scores, key, None))
                continue
            shop = state.shop_id
            snap = svc.engine.snapshot_json(state, None, svc.policies.for_shop(shop),
                                            svc.clv_model(shop), svc.rfm_model(shop))
            sends.append(Outgoing(svc.scores, key, snap))
        outputs = [(out.topic.get_topic_name(), out.key, out.value, out.headers, None)
                   for out in sends]
        return Settled(outputs, last, self)

    def changes(self, plans: list[Plan]) -> list[Change]:
        """One :class:`Change` per customer of ``plans``, in order of its first change:
        the last state encoded once (``value`` None: erased), the tally deltas merged."""
        return self.encoded(self.last_states(plans))

    def last_states(self, plans: list[Plan]) -> LastStates:
        """Each changed customer's last state in ``plans`` (None: erased), with the tally
        deltas of all its plans merged in order."""
        last: LastStates = {}
        for plan in plans:
            if plan.tally_delta is None or (plan.state is None and not plan.erase):
                continue
            partition, key, delta = plan.tally_delta
            before = last.get(key)
            if before is not None:
                delta = before[2].then(delta)
            last[key] = (partition, None if plan.erase else plan.state, delta)
        return last

    def encoded(self, last: LastStates) -> list[Change]:
        """A :class:`Change` per entry of ``last``, its state encoded (None: erased)."""
        return [Change(partition, key, None, delta, None) if state is None
                else Change(partition, key, self.service.encode_state(state), delta, state.next_due,
                            state=state)
                for key, (partition, state, delta) in last.items()]

    def remember(self, change: Change) -> None:
        """Keep the live state of a change just written (its row now holds ``value``)."""
        if change.state is not None and change.value is not None:
            self.states.put(change.key, change.value, change.state,
                            self.service.rows.stamp(change.partition))
        else:
            self.states.discard(change.key)
