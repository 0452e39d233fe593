"""Predictive CLV in the service: a periodic refit and a model table.

Where the models live
---------------------
The compacted topic ``settings.topic_clv_params`` is the table of record. Key:
a shop id, value ``{"shop_id", "pool", "fitted_at", "model": ShopModel.to_dict()
or null, "reason": why the shop's own model is not served, or null}``; key
``|pooled|<pool>`` (``|`` never occurs in a shop id, so it cannot collide), value
``{"pool", "fitted_at", "model", "reason"}``: the pooled model of that pool.
Every worker materializes the topic into :class:`ClvModels` with a plain
aiokafka reader that assigns every partition and reads from the beginning,
then follows new records: a GlobalKTable in Kafka Streams terms. (Faust's own
GlobalTable is avoided on purpose: faust-streaming issue #283, replicas stop
following with several workers.)

RFM
---
The same refit fits each shop's RFM cut points (:mod:`scoring.rfm`) from the
same customers, with the same minimum (``clv_min_customers`` buyers), and
publishes them in the shop's record (``"rfm"``: the cut points, or null);
:meth:`ClvModels.rfm` serves them to the snapshot builders.

Which model scores a shop
-------------------------
Its own if that fit is sound (converged, not degenerate: see
``scoring.clv.FitDiagnostics``), else its pool's if that one is sound, else
none (CLV fields null). The choice is made in one place,
:meth:`ClvModels.get`, and exported as the ``loyalty_clv_model`` and
``loyalty_clv_fit_degenerate`` metrics; ``GET /shops/{shop}`` shows it with
parameters and diagnostics.

Who fits, on what
-----------------
Every ``clv_refit_interval_s`` the worker that actively owns partition 0 of
the customer table fits every shop (``scoring.clv.fit_models_for``: shops
passing ``scoring.clv.ineligibility`` with ``clv_min_customers`` get their own
fit; every pool with a shop that needs it gets a pooled fit), from the
customers of the partitions it owns. Customers are spread over partitions by a
hash of their key, so with several workers this is a uniform random sample of
each shop. Statistics are computed as of the worker's wall clock, in weeks
(the paper's unit). The fit runs in a thread so it does not hold the event
loop; the customer scan yields every :data:`CHUNK` rows.

Failure modes
-------------
* A degenerate or failed fit is published with its reason and never served:
  the shop falls back to its pool's model.
* A crash during a refit publishes nothing; the next interval tries again.
* A record that cannot be read (corrupt, or version 1 without diagnostics) is
  logged and ignored; the next refit replaces it.
* Until a shop's first record arrives its CLV fields are null.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from schemas import codec
from scoring import rfm
from scoring.engine import PYTHON, Engine
from scoring.rfm import RfmModel
from streams.clv_models import POOLED_PREFIX, ClvModels
from streams.context import ServiceContext
from streams.security import client_kwargs

if TYPE_CHECKING:
    from scoring.clv import ClvFits

log = logging.getLogger(__name__)

CHUNK = 500
#: Key prefix of pooled models on the params topic (shop ids never contain ``|``).


def params_records(fits: ClvFits, fitted_at: str,
                   rfm_fits: dict[str, RfmModel | None] | None = None) -> list[tuple[bytes, bytes]]:
    """The (key, value) records a refit publishes: one per shop, one per fitted pool.

    A shop's record also carries its RFM cut points (``"rfm"``, null: too few
    buyers), fitted by the same refit from the same customers.
    """
    out = []
    rfm_fits = rfm_fits or {}
    for shop, fit in sorted(fits.shops.items()):
        rfm_model = rfm_fits.get(shop)
        out.append((shop.encode(), codec.dumps({
            "shop_id": shop, "pool": fit.pool, "fitted_at": fitted_at, "reason": fit.reason,
            "model": None if fit.model is None else fit.model.to_dict(),
            "rfm": None if rfm_model is None else rfm_model.to_dict()})))
    for pool, model in sorted(fits.pooled.items()):
        out.append(((POOLED_PREFIX + pool).encode(), codec.dumps({
            "pool": pool, "fitted_at": fitted_at, "reason": fits.pooled_reasons.get(pool),
            "model": None if model is None else model.to_dict()})))
    return out


def collect_stats(states: Any, now_us: int, policies: Any) -> dict[str, list[tuple[int, int, int, int]]]:
    """Per shop, the (x, t_x_days, T_days, repeat_spend) of each buyer as of ``now_us``."""
    return collect_summaries(states, now_us, policies)[0]


def collect_summaries(states: Any, now_us: int, policies: Any, engine: Engine = PYTHON) -> tuple[
        dict[str, list[tuple[int, int, int, int]]], dict[str, list[rfm.Values]]]:
    """Per shop, each buyer's CLV inputs and RFM values as of ``now_us`` (one pass
    over the encoded ``states``, read by ``engine``)."""
    by_shop: dict[str, list[tuple[int, int, int, int]]] = {}
    rfm_by_shop: dict[str, list[rfm.Values]] = {}
    for raw in states:
        state = engine.decode(raw)
        policy = policies.for_shop(state.shop_id)
        # A state finalized past the wall clock (events up to a day ahead are
        # valid) is read as of its own finalized instant.
        as_of = max(now_us, engine.finalized_until(state) or now_us)
        summary = engine.buyer_summary(state, as_of, policy)
        if summary is not None:
            by_shop.setdefault(state.shop_id, []).append(summary[0])
            rfm_by_shop.setdefault(state.shop_id, []).append(summary[1])
    return by_shop, rfm_by_shop


def fit_all(by_shop: dict[str, list[tuple[int, int, int, int]]], policies: Any, min_customers: int,
            as_of_day: Any = None) -> ClvFits:
    """Every shop's own fit (if eligible) and the pooled fits, in weeks (never raises per shop)."""
    from scoring import clv

    return clv.fit_models_for(by_shop, policies, 7, min_customers=min_customers, as_of=as_of_day)


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
        from aiokafka import AIOKafkaConsumer, TopicPartition

        settings = self.service.settings
        name = settings.topic_clv_params
        while True:
            consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                        enable_auto_commit=False, auto_offset_reset="earliest",
                                        **client_kwargs(settings))
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
        from scoring.clock import from_us, to_us

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
        by_shop, rfm_by_shop = await loop.run_in_executor(None, collect_summaries, rows, now_us,
                                                          svc.policies, svc.engine)
        fits = await loop.run_in_executor(
            None, fit_all, by_shop, svc.policies, svc.settings.clv_min_customers,
            from_us(now_us).date())
        rfm_fits = rfm.fit_shops(rfm_by_shop, svc.settings.clv_min_customers)
        for key, value in params_records(fits, datetime.now(UTC).isoformat(), rfm_fits):
            self.models.apply_record(key, value)  # serve at once; the topic follows
            await self.topic.send(key=key, value=value, force=True)
        own = sorted(s for s, f in fits.shops.items() if f.reason is None)
        self.last_refit = {"own": own, "fallback": {s: f.reason for s, f in sorted(fits.shops.items())
                                                    if f.reason is not None},
                           "pools": {p: fits.pooled_reasons.get(p) for p in sorted(fits.pooled)},
                           "customers": len(rows), "seconds": round(time.perf_counter() - started, 3)}
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
