"""HTTP API on the worker's Faust web server (aiohttp).

Endpoints:

* ``GET /customers/{shop_id}/{customer_id}[?as_of=RFC3339]`` - the snapshot,
  the same JSON object ``loyalty replay`` prints. 404 for an unknown customer,
  400 for a bad ``as_of`` or one before the customer's finalized history.
  When several workers share the partitions, the request is proxied to the
  worker that actively owns the customer's partition (one hop at most: a
  proxied request carries ``X-Loyalty-Routed`` and is always answered
  locally, so inconsistent routing metadata during a rebalance cannot loop).
* ``DELETE /customers/{shop_id}/{customer_id}`` - right to erasure: produces
  a forget request (:mod:`streams.forget`) and answers 202 with its
  ``request_id`` once the broker acknowledged it; the erasure completes
  asynchronously (the snapshot then answers 404). 503 if not acknowledged.
* ``GET /shops/{shop_id}[?as_of=RFC3339]`` - NPS (all time, window, per
  touchpoint), the stage funnel and the rule-v2 KPIs (``ShopTally.figures``:
  the same object ``loyalty replay --shops-out`` writes per shop). The
  tallies hold the present: stage-dependent figures are as of each
  customer's last event or time sweep and every event consumed so far
  counts (see :mod:`scoring.shop`). So ``as_of`` is honoured only near the
  worker's clock (:data:`streams.shops.AS_OF_TOLERANCE`), where it places the 90-day
  NPS and 365-day spend windows; any other instant is a 400
  ``as_of_unsupported`` naming ``loyalty replay --as-of``, which can answer
  it, rather than figures that would silently mix two instants. Shop
  tallies are partitioned like the customers; the answering
  worker merges its own partitions with those of every other worker (fan-out
  over ``/internal/shops/{shop}/tally``). Chosen over a ``GlobalTable``
  because every worker would otherwise replay every shop's changelog and
  Faust's global tables have a history of recovery bugs; fan-out costs one
  request per worker and reads only active (never standby) rows. 503 if some
  partition has no owner right now (rebalance in progress).
* ``GET /shops/{shop_id}/customers?stage=&loyalty_type=&wallet_band=&detractor_status=&limit=&cursor=``
  - one page of the shop's customers in a segment, for campaigns
  (:mod:`streams.listing`), fanned out the same way over
  ``/internal/shops/{shop}/customers``.
* ``GET /openapi.json`` - the OpenAPI 3.1 description of all of this
  (:mod:`streams.openapi`); no token needed.
* ``GET /health/live``, ``GET /health/ready`` (200 or 503 with a JSON reason) and
  the ``GET /health`` summary: see :func:`register_health`. ``GET /metrics`` - the
  Prometheus text format. None of them needs the token.

Authentication: when ``LOYALTY_API_TOKEN`` is set, data endpoints need
``Authorization: Bearer <token>`` (compared in constant time), else 401.
Malformed requests get a JSON 4xx (bad ids, bad/oversized query);
aiohttp itself answers 400 for oversized request lines and headers.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from faust.web import View
from yarl import URL

from schemas import codec
from streams import listing, openapi
from streams.forget import request_erasure
from streams.metrics import CONTENT_TYPE_LATEST
from streams.shops import AS_OF_TOLERANCE
from streams.topics import message_key

if TYPE_CHECKING:
    from streams.context import ServiceContext

log = logging.getLogger(__name__)

ROUTED_HEADER = "X-Loyalty-Routed"
#: room for a cursor of the longest customer id next to the listing's filters
MAX_QUERY_CHARS = 1024
_ID_LIMITS = {"shop_id": 64, "customer_id": 128}


def _ident(url: URL | str) -> tuple[str, int]:
    u = URL(str(url))
    return (u.host or "", int(u.port or 80))


def parse_as_of(text: str | None) -> datetime | None:
    """``?as_of=`` as an aware UTC datetime; ``None`` when absent.

    Raises :class:`ValueError` for anything that is not an RFC 3339 instant
    with an offset.
    """
    if text is None or text == "":
        return None
    if len(text) > 64:
        raise ValueError("as_of too long")
    from scoring.clock import parse_instant

    try:
        return parse_instant(text).astimezone(UTC)
    except Exception as exc:  # the parser may raise its own error types
        raise ValueError(f"as_of is not an RFC 3339 instant with offset: {text!r}") from exc


def register_web(service: ServiceContext) -> None:
    """Add the API views to ``service.app``."""
    app = service.app
    token = service.settings.api_token
    expected = f"Bearer {token}".encode() if token else None

    def json(view: View, obj: Any, status: int = 200,
             headers: dict[str, str] | None = None) -> Any:
        return view.bytes(codec.dumps(obj), content_type="application/json", status=status,
                          headers=headers)

    def error(view: View, status: int, code: str, detail: str = "") -> Any:
        return json(view, {"error": code, "detail": detail}, status)

    def check(view: View, request: Any, **ids: str) -> Any:
        """Common request validation; returns an error response or None."""
        if expected is not None:
            got = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(got, expected):
                # RFC 6750: a 401 names the scheme the client must use.
                return json(view, {"error": "unauthorized",
                                   "detail": "missing or wrong bearer token"}, 401,
                            headers={"WWW-Authenticate": 'Bearer realm="loyalty-scorer"'})
        if len(request.query_string) > MAX_QUERY_CHARS:
            return error(view, 400, "bad_request", "query string too long")
        for name, value in ids.items():
            if not value or len(value) > _ID_LIMITS.get(name, 128):
                return error(view, 400, "bad_request", f"invalid {name}")
            if name == "shop_id" and "|" in value:
                return error(view, 400, "bad_request", "shop_id may not contain '|'")
        return None

    def forward_headers(request: Any) -> dict[str, str]:
        headers = {ROUTED_HEADER: "1"}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        return headers

    async def proxy(view: View, request: Any, dest: URL) -> Any:
        host, port = _ident(dest)
        url = request.url.with_host(host).with_port(port)
        try:
            async with app.http_client.get(url, headers=forward_headers(request)) as resp:
                body = await resp.read()
                return view.bytes(body, content_type=resp.content_type, status=resp.status)
        except Exception as exc:  # noqa: BLE001 - the owner may be leaving right now
            log.warning("routing to %s failed: %r", dest, exc)
            return error(view, 503, "owner_unavailable",
                         f"the worker owning this customer ({dest}) did not answer; retry")

    @app.page("/customers/{shop_id}/{customer_id:.+}")
    class CustomerView(View):
        async def get(self, request: Any, shop_id: str, customer_id: str) -> Any:
            bad = check(self, request, shop_id=shop_id, customer_id=customer_id)
            if bad is not None:
                return bad
            try:
                as_of = parse_as_of(request.query.get("as_of"))
            except ValueError as exc:
                return error(self, 400, "bad_as_of", str(exc))
            key = message_key(shop_id, customer_id)
            if not request.headers.get(ROUTED_HEADER):
                try:
                    dest = app.router.key_store(service.customers.name, key)
                except KeyError:
                    dest = None  # no assignment yet: answer from local data
                if dest is not None and _ident(dest) != _ident(app.conf.canonical_url):
                    return await proxy(self, request, dest)
            if not service.tables_ready():
                # During a rebalance or changelog recovery the table is partial:
                # "unknown customer" would be a lie.
                return error(self, 503, "recovering", "tables are being restored; retry shortly")
            raw = service.customers.get(key)
            if raw is None:
                return error(self, 404, "not_found", "unknown customer")
            from scoring.clock import from_us, to_us
            from scoring.engine import AsOfTooEarly, NewerStateFormat, StateFormatError

            engine = service.engine
            try:
                state = engine.decode(raw)
            except NewerStateFormat as exc:
                return error(self, 503, "newer_state_format",
                             f"{exc}: this worker must be upgraded (README: Upgrading a running group)")
            except StateFormatError as exc:  # a damaged row: the operator's problem, said plainly
                log.error("GET /customers/%s/%s: %s", shop_id, customer_id, exc)
                return error(self, 500, "unreadable_state", str(exc))
            if as_of is None:
                # Default: now (wall clock), so recency, tenure and windows are
                # current. An instant inside already-finalized history (events
                # may be up to a day ahead of the clock) reads at its end.
                as_of = datetime.now(UTC)
                finalized = engine.finalized_until(state)
                if finalized is not None and to_us(as_of) < finalized:
                    as_of = from_us(finalized)
            try:
                snap = engine.snapshot(state, as_of, service.policies.for_shop(shop_id),
                                service.clv_model(shop_id), service.rfm_model(shop_id))
            except AsOfTooEarly as exc:
                return error(self, 400, "as_of_too_early", str(exc))
            return json(self, snap)

        async def delete(self, request: Any, shop_id: str, customer_id: str) -> Any:
            """Right to erasure: :func:`streams.forget.request_erasure` (202 when durable)."""
            bad = check(self, request, shop_id=shop_id, customer_id=customer_id)
            if bad is not None:
                return bad
            status, body = await request_erasure(service, shop_id, customer_id)
            return json(self, body, status)

    @app.page("/internal/shops/{shop_id}/tally")
    class ShopTallyView(View):
        async def get(self, request: Any, shop_id: str) -> Any:
            bad = check(self, request, shop_id=shop_id)
            if bad is not None:
                return bad
            owned, tally = service.local_tally(shop_id)
            return json(self, {"partitions": owned,
                               "tally": base64.b64encode(tally.encode()).decode()})

    async def fan_out(request: Any, path: str, covered: set[int],
                      query: str = "") -> list[dict[str, Any]]:
        """``GET path`` on every other worker: the answers that add only partitions not
        in ``covered`` (which grows by them). A peer that fails or overlaps is skipped;
        the caller answers 503 for the partitions still missing."""
        me = _ident(app.conf.canonical_url)
        try:
            hosts = list(app.router.table_metadata(service.tallies.name))
        except Exception:  # noqa: BLE001 - no assignment yet
            hosts = []
        answers = []
        for host in hosts:
            if _ident(host) == me:
                continue
            url = URL(str(host)).with_path(path).with_query(query)
            try:
                async with app.http_client.get(url, headers=forward_headers(request)) as r:
                    if r.status != 200:
                        continue
                    data = codec.loads(await r.read())
            except Exception as exc:  # noqa: BLE001 - a peer may be leaving
                log.warning("fan-out to %s failed: %r", host, exc)
                continue
            parts = set(data["partitions"])
            if not parts & covered:
                answers.append(data)
                covered |= parts
        return answers

    def unavailable(view: View, covered: set[int]) -> Any:
        """503 when some partition has no reachable owner, else None."""
        missing = sorted(set(range(service.partitions)) - covered)
        if not missing:
            return None
        recounting = sorted(set(missing) & service.tallies_to_recount)
        if recounting:  # this worker owns them: a damaged tally row (ServiceContext.tally_unreadable)
            return error(view, 503, "partitions_unavailable",
                         f"the shop figures of partitions {recounting} are being recounted "
                         "(a tally row could not be read); retry after the next time sweep")
        return error(view, 503, "partitions_unavailable",
                     f"no reachable owner for partitions {missing}; retry shortly")

    @app.page("/shops/{shop_id}")
    class ShopView(View):
        async def get(self, request: Any, shop_id: str) -> Any:
            bad = check(self, request, shop_id=shop_id)
            if bad is not None:
                return bad
            now = datetime.now(UTC)
            try:
                as_of = parse_as_of(request.query.get("as_of")) or now
            except ValueError as exc:
                return error(self, 400, "bad_as_of", str(exc))
            if abs(as_of - now) > AS_OF_TOLERANCE:
                # The tallies hold the present: stage figures as of the last sweep
                # and every event consumed so far. Another instant would be a lie.
                return error(self, 400, "as_of_unsupported",
                             f"the service's shop figures are as of now; as_of must be within "
                             f"{int(AS_OF_TOLERANCE.total_seconds() // 60)} minutes of "
                             f"{now.isoformat()} (for another instant use "
                             "`loyalty replay --as-of ... --shops-out`)")
            from scoring.clock import day_of, to_us
            from scoring.shop import ShopTally

            if not service.tables_ready():
                return error(self, 503, "recovering", "tables are being restored; retry shortly")
            covered, tally = service.local_tally(shop_id)
            covered = set(covered)
            for data in await fan_out(request, f"/internal/shops/{shop_id}/tally", covered):
                tally = tally.merge(ShopTally.decode(base64.b64decode(data["tally"])))
            bad = unavailable(self, covered)
            if bad is not None:
                return bad
            policy = service.policies.for_shop(shop_id)
            figures = tally.figures(shop_id, day_of(to_us(as_of)), policy)
            # which CLV model scores this shop, its parameters and fit diagnostics
            figures["clv"] = service.clv_models.describe(shop_id)
            return json(self, figures)

    async def list_here(view: View, request: Any, shop_id: str) -> Any:
        """Validate a listing request and list this worker's matches:
        ``(query, partitions read, items)``, or the error response."""
        bad = check(view, request, shop_id=shop_id)
        if bad is not None:
            return bad
        try:
            query = listing.parse_query(request.query, [k for k, _ in request.query.items()])
        except ValueError as exc:
            return error(view, 400, "bad_query", str(exc))
        if not service.tables_ready():
            return error(view, 503, "recovering", "tables are being restored; retry shortly")
        owned, items = await listing.local_page(service, shop_id, query)
        return query, owned, items

    @app.page("/internal/shops/{shop_id}/customers")
    class ShopCustomersPartView(View):
        async def get(self, request: Any, shop_id: str) -> Any:
            got = await list_here(self, request, shop_id)
            if not isinstance(got, tuple):
                return got
            _, owned, items = got
            return json(self, {"partitions": owned, "items": items})

    @app.page("/shops/{shop_id}/customers")
    class ShopCustomersView(View):
        async def get(self, request: Any, shop_id: str) -> Any:
            got = await list_here(self, request, shop_id)
            if not isinstance(got, tuple):
                return got
            query, owned, items = got
            covered = set(owned)
            pages = [items] + [data["items"] for data in await fan_out(
                request, f"/internal/shops/{shop_id}/customers", covered,
                request.query_string)]
            bad = unavailable(self, covered)
            if bad is not None:
                return bad
            return json(self, listing.merge(pages, query.limit))

    @app.page("/openapi.json")
    class OpenApiView(View):
        async def get(self, request: Any) -> Any:
            return json(self, openapi.document())

    register_health(service)

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Any) -> Any:
            # Rendering walks every series, thousands with many shops (their
            # figure gauges): in a thread, so the agent keeps running meanwhile
            # (the two share the interpreter in slices) instead of waiting for it.
            body = await asyncio.get_running_loop().run_in_executor(None, service.metrics.render)
            # aiohttp refuses a charset inside content_type=, so set the header.
            return self.bytes(body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def register_health(service: ServiceContext) -> None:
    """Add ``/health``, ``/health/live`` and ``/health/ready`` and start the broker probe.

    * ``/health/live``: 200 ``{"live": true}`` whenever the web server answers (the
      event loop runs). For liveness probes: restart the worker only when this fails.
    * ``/health/ready``: 200 when partitions are assigned, the tables are recovered
      and the broker answered within ``LOYALTY_READY_BROKER_MAX_AGE_S``; else 503.
      The body has ``ready``, ``reason`` (the failing checks, or null) and ``checks``.
    * ``/health``: the summary for people and dashboards: always 200 while the
      process serves (existing clients read its body), with ``ready``, ``reason``,
      ``checks``, owned partitions and the last sweep. Gate traffic on ``/health/ready``.

    None of them needs the API token.
    """
    from streams.health import BrokerProbe, not_ready_reason, readiness

    app = service.app
    probe = BrokerProbe(service, max_age_s=service.settings.ready_broker_max_age_s)

    @app.task
    async def broker_probe() -> None:  # runs for the life of the worker
        await probe.run()

    def respond(view: View, obj: Any, status: int = 200) -> Any:
        return view.bytes(codec.dumps(obj), content_type="application/json", status=status)

    @app.page("/health/live")
    class LiveView(View):
        async def get(self, request: Any) -> Any:
            return respond(self, {"live": True, "app_id": service.settings.app_id})

    @app.page("/health/ready")
    class ReadyView(View):
        async def get(self, request: Any) -> Any:
            ready, checks = readiness(service, probe)
            return respond(self, {"ready": ready, "reason": not_ready_reason(checks),
                                  "checks": checks}, 200 if ready else 503)

    @app.page("/health")
    class HealthView(View):
        async def get(self, request: Any) -> Any:
            last = service.last_sweep
            ready, checks = readiness(service, probe)
            return respond(self, {
                "status": "ok",
                "ready": ready,
                "reason": not_ready_reason(checks),
                "checks": checks,
                "app_id": service.settings.app_id,
                "partitions": service.partitions,
                "owned_partitions": service.owned_partitions(),
                "last_sweep": None if last is None else {
                    "now": last.now.isoformat(),
                    "advanced_to": (None if last.advanced_to is None
                                    else last.advanced_to.isoformat()),
                    "customers": last.customers,
                    "visited": last.visited, "full_scans": last.full_scans,
                    "changed": last.changed, "seconds": round(last.seconds, 3)},
            })
