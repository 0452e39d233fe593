"""Readiness of a worker and the broker probe behind it (with consumer lag).

:class:`BrokerProbe` runs inside the worker (a Faust task) and, every
``interval_s`` (a third of ``LOYALTY_READY_BROKER_MAX_AGE_S``, at most 5 s):

1. sends a Kafka Metadata request for no topic through its own aiokafka
   admin client - success records the time of the last broker contact. (A
   request for all topics, as ``consumer.topics()`` sends, made every worker
   parse the whole cluster's metadata in its event loop every round, a cost
   that grows with the cluster, not with the worker: README "Performance".)
2. for the input partitions assigned to this worker, reads the end offsets
   (ListOffsets) and the consumer group's committed offsets (OffsetFetch) and
   sets ``loyalty_consumer_lag{topic,partition}`` = end offset - committed
   offset (end - beginning while nothing is committed). The committed offset
   trails the worker's position by at most the commit interval (1 s).

The probe's own clients (a consumer with no group, which never joins or
commits, and an admin client) track only the worker's input and rekey
topics (:func:`streams.compat.track_only`), so their metadata refreshes stay
as small; the rest is public aiokafka and Faust API (``describe_topics``,
``end_offsets``, ``list_consumer_group_offsets``, Faust's
``consumer.assignment()``).

:func:`readiness` combines three checks: partitions assigned, tables
recovered (no rebalance or changelog recovery under way), and a broker
contact within ``max_age_s``. Failure modes: a probe round that cannot reach
the broker records the error text and leaves the last contact time as it
was, so readiness turns false ``max_age_s`` after the last success; a round
never waits longer than the interval; errors while reading lag leave the
previous lag values in place (they never affect readiness).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from streams import compat

if TYPE_CHECKING:
    from streams.context import ServiceContext

log = logging.getLogger(__name__)


class BrokerProbe:
    """Periodic broker contact and lag measurement of one worker."""

    def __init__(self, service: ServiceContext, *, max_age_s: float,
                 interval_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.service = service
        self.max_age_s = max_age_s
        self.interval_s = interval_s if interval_s is not None else min(5.0, max_age_s / 3)
        self.last_ok: float | None = None
        self.last_error: str | None = None
        self._clock = clock
        self._consumer: Any = None
        self._admin: Any = None
        self._lag_series: set[tuple[str, str]] = set()

    def broker_age(self) -> float | None:
        """Seconds since the last successful broker request; None if there was none."""
        return None if self.last_ok is None else self._clock() - self.last_ok

    def broker_ok(self) -> bool:
        age = self.broker_age()
        return age is not None and age <= self.max_age_s

    async def run(self) -> None:
        """Probe forever (until cancelled); closes its clients on the way out."""
        try:
            while True:
                await self.probe_once()
                self.publish()
                await asyncio.sleep(self.interval_s)
        finally:
            await self.close()

    async def probe_once(self) -> bool:
        """One round: broker contact, then lag. Returns whether the broker answered."""
        timeout = max(1.0, self.interval_s)
        try:
            admin = await asyncio.wait_for(self._ensure_admin(), timeout)
            # An empty topic list, not None (which means every topic): a real
            # round trip whose answer is the brokers only, on a cluster of any size.
            await asyncio.wait_for(admin.describe_topics([]), timeout)
            consumer = await asyncio.wait_for(self._ensure_consumer(), timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
            self.last_error = f"{type(exc).__name__}: {exc}".rstrip(": ")
            await self._drop_clients()  # a fresh bootstrap next round
            return False
        self.last_ok, self.last_error = self._clock(), None
        try:
            await asyncio.wait_for(self._update_lag(consumer), timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - lag is best effort, never readiness
            log.debug("consumer lag not updated: %r", exc)
        return True

    def publish(self) -> None:
        """Export readiness and broker contact age as metrics."""
        m = self.service.metrics
        ready, _ = readiness(self.service, self)
        m.ready.set(1 if ready else 0)
        age = self.broker_age()
        if age is not None:
            m.broker_contact_age.set(age)

    async def _ensure_consumer(self) -> Any:
        if self._consumer is None:
            from aiokafka import AIOKafkaConsumer

            from streams.security import client_kwargs

            s = self.service.settings
            consumer = AIOKafkaConsumer(
                bootstrap_servers=s.bootstrap_servers, group_id=None, enable_auto_commit=False,
                client_id=f"{s.app_id}-probe",
                request_timeout_ms=int(max(1.0, self.interval_s) * 1000) + 1000,
                **client_kwargs(s))
            try:
                await consumer.start()
                await compat.track_only(consumer, self._topic_names())
            except BaseException:
                await consumer.stop()
                raise
            self._consumer = consumer
        return self._consumer

    async def _ensure_admin(self) -> Any:
        if self._admin is None:
            from aiokafka.admin import AIOKafkaAdminClient

            from streams.security import client_kwargs

            s = self.service.settings
            admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap_servers,
                                        client_id=f"{s.app_id}-probe-admin",
                                        request_timeout_ms=10_000, **client_kwargs(s))
            await admin.start()
            try:
                await compat.track_only(admin, self._topic_names())
            except BaseException:
                await admin.close()
                raise
            self._admin = admin
        return self._admin

    def _topic_names(self) -> list[str]:
        """The topics the state agent reads (inputs, rekey): all the probe asks about."""
        return sorted(self.service.agent_topic_names)

    def _input_partitions(self) -> list[Any]:
        from aiokafka import TopicPartition

        names = set(self._topic_names())
        try:
            assigned = self.service.app.consumer.assignment()
        except Exception:  # noqa: BLE001 - consumer not started yet
            return []
        return sorted(TopicPartition(tp.topic, tp.partition) for tp in assigned
                      if tp.topic in names)

    async def _update_lag(self, consumer: Any) -> None:
        tps = self._input_partitions()
        gauge = self.service.metrics.consumer_lag
        series = set()
        if tps:
            end = await consumer.end_offsets(tps)
            admin = await self._ensure_admin()
            committed = await admin.list_consumer_group_offsets(
                self.service.settings.app_id, partitions=tps)
            uncommitted = [tp for tp in tps
                           if committed.get(tp) is None or committed[tp].offset < 0]
            begin = await consumer.beginning_offsets(uncommitted) if uncommitted else {}
            for tp in tps:
                meta = committed.get(tp)
                base = begin[tp] if tp in begin else meta.offset
                labels = (tp.topic, str(tp.partition))
                gauge.labels(*labels).set(max(0, end[tp] - base))
                series.add(labels)
        for labels in self._lag_series - series:  # partitions that moved to another worker
            gauge.remove(*labels)
        self._lag_series = series

    async def _drop_clients(self) -> None:
        consumer, admin, self._consumer, self._admin = self._consumer, self._admin, None, None
        for client, stop in ((consumer, "stop"), (admin, "close")):
            if client is not None:
                try:
                    await getattr(client, stop)()
                except Exception as exc:  # noqa: BLE001 - closing a broken client
                    log.debug("closing probe client: %r", exc)

    async def close(self) -> None:
        await self._drop_clients()


def assignment(service: ServiceContext) -> list[int]:
    """Partition numbers (active or standby) of the tables assigned to this worker."""
    try:
        return sorted({tp.partition for tp in service.app.consumer.assignment()})
    except Exception:  # noqa: BLE001 - consumer not started / no rebalance yet
        return []


def readiness(service: ServiceContext, probe: BrokerProbe) -> tuple[bool, dict[str, Any]]:
    """``(ready, checks)``: each check has ``ok`` and a human ``detail``."""
    assigned = assignment(service)
    tables = service.tables_ready()
    age = probe.broker_age()
    broker_ok = probe.broker_ok()
    if broker_ok:
        broker_detail = f"last broker contact {age:.1f} s ago"
    elif age is None:
        broker_detail = "no successful broker request yet"
    else:
        broker_detail = (f"no successful broker request for {age:.0f} s "
                         f"(limit {probe.max_age_s:g} s)")
    if not broker_ok and probe.last_error:
        broker_detail += f": {probe.last_error}"
    checks = {
        "assignment": {"ok": bool(assigned), "detail": (
            f"partitions assigned: {assigned}" if assigned
            else "no partitions assigned yet (joining the consumer group or rebalancing)")},
        "tables": {"ok": tables, "detail": (
            "tables recovered" if tables
            else "a rebalance or changelog recovery is under way")},
        "broker": {"ok": broker_ok, "detail": broker_detail,
                   "last_contact_s": None if age is None else round(age, 3),
                   "max_age_s": probe.max_age_s},
    }
    return all(c["ok"] for c in checks.values()), checks


def not_ready_reason(checks: dict[str, Any]) -> str | None:
    """The failing checks' details joined into one sentence; None when all pass."""
    failing = [c["detail"] for c in checks.values() if not c["ok"]]
    return "; ".join(failing) if failing else None
