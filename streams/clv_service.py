"""Predictive CLV in the service: a periodic per-shop refit and a model table.

Where the models live
---------------------
The compacted topic ``settings.topic_clv_params`` (key: shop id, value: the
fitted :class:`scoring.clv.ShopModel` as JSON, ``to_dict`` form) is the table
of record. Every worker materializes it into :class:`ClvModels`, an
in-memory ``shop -> model`` map, with a plain aiokafka reader that assigns
every partition and reads from the beginning, then follows new records: a
GlobalKTable in Kafka Streams terms. (Faust's own GlobalTable is avoided on
purpose: faust-streaming issue #283, replicas stop following with several
workers.)

Who fits, on what
-----------------
Every ``clv_refit_interval_s`` the worker that actively owns partition 0 of
the customer table refits each shop that has at least ``clv_min_customers``
buyers (and 20 repeat buyers), from the customers of the partitions it owns.
Customers are spread over partitions by a hash of their key, so with several
workers this is a uniform random sample of each shop, enough for a 4+3
parameter model. Statistics are computed as of the worker's wall clock, in
weeks (the paper's unit). The fit runs in a thread so it does not hold the
event loop; the customer scan yields every :data:`CHUNK` rows.

Failure modes
-------------
* A refit that fails for a shop (not identifiable yet) leaves its previous
  model in place; the error is logged and counted.
* A crash during a refit publishes nothing; the next interval tries again.
* Until a shop's first model arrives its CLV fields are null, as DOMAIN.md says.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas import codec
from scoring.clock import day_of, from_us, to_us
from scoring.snapshot import clv_inputs, head_as_of
from scoring.state import CustomerState
from streams.clv_models import ClvModels
from streams.context import ServiceContext

if TYPE_CHECKING:
    from scoring.clv import ShopModel

log = logging.getLogger(__name__)

CHUNK = 500
MIN_REPEAT_BUYERS = 20


def collect_stats(states: Any, now_us: int, policies: Any) -> dict[str, list[tuple[int, int, int, int]]]:
    """Per shop, the (x, t_x_days, T_days, repeat_spend) of each buyer as of ``now_us``."""
    by_shop: dict[str, list[tuple[int, int, int, int]]] = {}
    for raw in states:
        state = CustomerState.decode(raw)
        policy = policies.for_shop(state.shop_id)
        # A state finalized past the wall clock (events up to a day ahead are
        # valid) is read as of its own finalized instant.
        as_of = max(now_us, state.ckpt.t_us or now_us)
        inputs = clv_inputs(head_as_of(state, as_of, policy), day_of(as_of))
        if inputs is not None:
            by_shop.setdefault(state.shop_id, []).append(inputs)
    return by_shop


def fit_all(by_shop: dict[str, list[tuple[int, int, int, int]]], min_customers: int,
            as_of_day: Any = None) -> tuple[dict[str, ShopModel], dict[str, str]]:
    """Fit every shop with enough data; returns (models, errors by shop)."""
    # scoring.clv pulls in scipy (most of a second): imported by the refit only.
    from scoring import clv

    models, errors = {}, {}
    for shop, stats in by_shop.items():
        if len(stats) < min_customers or sum(1 for s in stats if s[0] > 0) < MIN_REPEAT_BUYERS:
            continue
        try:
            models[shop] = clv.fit_shop(stats, unit_days=7, as_of=as_of_day)
        except ValueError as exc:
            errors[shop] = str(exc)
    return models, errors


class ClvService:
    """Owns the params topic, the model table and the refit timer of one worker."""

    def __init__(self, service: ServiceContext) -> None:
        self.service = service
        self.models: ClvModels = service.clv_models
        self.topic = service.app.topic(service.settings.topic_clv_params, key_type=bytes,
                                       value_type=bytes, key_serializer="raw",
                                       value_serializer="raw")
        self.last_refit: dict[str, Any] = {}

    async def read_forever(self) -> None:
        """Materialize the params topic into :attr:`models` (every partition, from the start)."""
        settings = self.service.settings
        name = settings.topic_clv_params
        while True:
            consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                        enable_auto_commit=False, auto_offset_reset="earliest")
            try:
                await consumer.start()
                parts = consumer.partitions_for_topic(name) or set()
                if not parts:
                    await consumer.stop()
                    log.warning("CLV params topic %s not found; run `loyalty topics create`", name)
                    await asyncio.sleep(10)
                    continue
                consumer.assign([TopicPartition(name, p) for p in sorted(parts)])
                await consumer.seek_to_beginning()
                while True:
                    batch = await consumer.getmany(timeout_ms=1000)
                    for records in batch.values():
                        for rec in records:
                            self.models.apply_record(rec.key, rec.value)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a broker hiccup must not end the reader
                log.exception("CLV params reader failed; restarting in 5 s")
                await asyncio.sleep(5)
            finally:
                await consumer.stop()

    async def refit(self, now: datetime | None = None, *, force: bool = False) -> dict[str, Any]:
        """One refit pass (only on the owner of partition 0 unless ``force``)."""
        svc = self.service
        if not force and 0 not in svc.owned_partitions():
            return {"skipped": "not the owner of partition 0"}
        started = time.perf_counter()
        now_us = to_us(now or datetime.now(UTC))
        rows: list[bytes] = []
        for i, (_key, raw) in enumerate(list(svc.customers.items())):
            if raw is not None:
                rows.append(bytes(raw))
            if i % CHUNK == CHUNK - 1:
                await asyncio.sleep(0)  # let the agent run between chunks
        loop = asyncio.get_running_loop()
        by_shop = await loop.run_in_executor(None, collect_stats, rows, now_us, svc.policies)
        models, errors = await loop.run_in_executor(
            None, fit_all, by_shop, svc.settings.clv_min_customers, from_us(now_us).date())
        for shop, model in models.items():
            self.models.put(shop, model)
            value = codec.dumps({"shop_id": shop, "fitted_at": datetime.now(UTC).isoformat(),
                                 "model": model.to_dict()})
            await self.topic.send(key=shop.encode(), value=value, force=True)
        for shop, err in errors.items():
            log.warning("CLV refit for shop %s failed: %s", shop, err)
        self.last_refit = {"shops": sorted(models), "errors": errors, "customers": len(rows),
                           "seconds": round(time.perf_counter() - started, 3)}
        log.info("CLV refit: %s", self.last_refit)
        return self.last_refit


def register_clv(service: ServiceContext) -> ClvService:
    """Attach the model reader task and the refit timer to the app."""
    clv = ClvService(service)
    app = service.app

    @app.task
    async def clv_params_reader() -> None:
        await clv.read_forever()

    @app.timer(interval=service.settings.clv_refit_interval_s)
    async def clv_refit() -> None:
        try:
            await clv.refit()
        except Exception:  # noqa: BLE001 - a failed refit must not stop the worker
            log.exception("CLV refit failed")

    return clv
