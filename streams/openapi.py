"""The OpenAPI 3.1 description of the worker's HTTP API, served at ``GET /openapi.json``.

This module is the one home of the description. Response bodies that are
also contracts elsewhere (the snapshot, the shop figures, a listing page) are
the committed JSON Schema files of ``schemas/jsonschema/``, read at import
(:func:`embed`): each becomes a component and its ``$defs`` become components
too, with the references rewritten, so OpenAPI tools resolve them and there
is no second copy of a shape. The small bodies only the API has (errors,
health) are written here. ``tests/streams/test_openapi.py`` checks that the
document is valid OpenAPI 3.1 and that every route of the web app is
described; ``tests/integration/test_service_poison.py`` validates real answers
of a running worker against it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from schemas import export
from streams import listing
from streams.shops import AS_OF_TOLERANCE

JSON = "application/json"


def _obj(properties: dict[str, Any], *, required: list[str] | None = None,
         extra: bool = False) -> dict[str, Any]:
    return {"type": "object", "properties": properties,
            "required": list(properties) if required is None else required,
            "additionalProperties": extra}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_NULLABLE_STR = {"type": ["string", "null"]}
_CHECK = _obj({"ok": {"type": "boolean"}, "detail": {"type": "string"}}, extra=True)
_CHECKS = {"type": "object", "additionalProperties": _ref("Check")}
_PARTITIONS = {"type": "array", "items": {"type": "integer", "minimum": 0}}


def embed(schemas: dict[str, Any], name: str, file: str) -> None:
    """Add the committed schema ``file`` as component ``name``, its ``$defs`` beside it."""
    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: ("#/components/schemas/" + v.removeprefix("#/$defs/")
                        if k == "$ref" and v.startswith("#/$defs/") else rewrite(v))
                    for k, v in node.items() if k not in ("$id", "$schema", "$defs")}
        return [rewrite(v) for v in node] if isinstance(node, list) else node

    schema = export.load(file)
    for def_name, sub in schema.get("$defs", {}).items():
        sub = rewrite(sub)
        if schemas.setdefault(def_name, sub) != sub:
            raise ValueError(f"two different schemas named {def_name!r}")
    schemas[name] = rewrite(schema)


SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": {"type": "string", "description": "a stable code"},
                   "detail": {"type": "string", "description": "for people"}}),
    "Check": _CHECK,
    "Index": _obj({"status": {"const": "OK"}}),
    "Live": _obj({"live": {"const": True}, "app_id": {"type": "string"}}),
    "ErasureAccepted": _obj({"request_id": {"type": "string"}, "shop_id": {"type": "string"},
                             "customer_id": {"type": "string"}, "status": {"const": "accepted"},
                             "detail": {"type": "string"}}),
    "Ready": _obj({"ready": {"type": "boolean"},
                   "reason": {**_NULLABLE_STR, "description": "the failing checks; null when ready"},
                   "checks": _CHECKS}),
    "Health": _obj({
        "status": {"const": "ok"}, "ready": {"type": "boolean"}, "reason": _NULLABLE_STR,
        "checks": _CHECKS, "app_id": {"type": "string"}, "partitions": {"type": "integer"},
        "owned_partitions": _PARTITIONS,
        "last_sweep": {"oneOf": [{"type": "null"}, _obj({
            "now": {"type": "string"},
            "advanced_to": {**_NULLABLE_STR, "description": (
                "the instant due customers were advanced to: now, or the event time the "
                "input is processed to while it is behind (null: nothing processed yet)")},
            "customers": {"type": "integer"},
            "visited": {"type": "integer"}, "full_scans": {"type": "integer"},
            "changed": {"type": "integer"}, "seconds": {"type": "number"}})]}}),
    "TallyPart": _obj({"partitions": _PARTITIONS,
                       "tally": {"type": "string", "contentEncoding": "base64",
                                 "description": "ShopTally.encode() of those partitions"}}),
    "CustomersPart": _obj({"partitions": _PARTITIONS, "items": {
        "type": "array", "items": _ref("CustomerListItem")}}),
}
for _name in ("CustomerSnapshot", "ShopFigures", "CustomerPage"):
    embed(SCHEMAS, _name, f"out-{_name}.json")


def _param(name: str, where: str, schema: dict[str, Any], description: str,
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path" or required,
            "schema": schema, "description": description}


SHOP = _param("shop_id", "path", {"type": "string", "minLength": 1, "maxLength": 64,
                                  "pattern": "^[^|]+$"}, "the shop")
CUSTOMER = _param("customer_id", "path", {"type": "string", "minLength": 1, "maxLength": 128},
                  "the customer (URL-encoded; may contain '/' and '|')")
AS_OF = _param("as_of", "query", {"type": "string", "format": "date-time", "maxLength": 64},
               "an RFC 3339 instant with an offset")
LISTING = [
    *[_param(name, "query", {"type": "string", "enum": list(values)}, f"only customers whose "
             f"{name} (as of their last event or time sweep) is this")
      for name, values in listing.FILTERS.items()],
    _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": listing.MAX_LIMIT,
                              "default": listing.DEFAULT_LIMIT}, "items per page"),
    _param("cursor", "query", {"type": "string"}, "`next_cursor` of the previous page"),
]


def _answer(description: str, schema: str | None = None, media: str = JSON) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = {media: {"schema": _ref(schema)}}
    return out


def _error(description: str) -> dict[str, Any]:
    return _answer(description, "Error")


UNAUTHORIZED = {**_error("missing or wrong bearer token (only when LOYALTY_API_TOKEN is set)"),
                "headers": {"WWW-Authenticate": {
                    "schema": {"type": "string", "const": 'Bearer realm="loyalty-scorer"'}}}}
BAD = _error("malformed request: bad id, bad or oversized query (`error` names the problem)")
UNAVAILABLE = _error("a rebalance or table recovery is under way, or a partition has no "
                     "reachable owner; retry shortly")


def _get(summary: str, parameters: list[dict[str, Any]], responses: dict[str, Any], *,
         secured: bool = True, description: str = "", tags: tuple[str, ...] = (),
         method: str = "get") -> dict:
    op: dict[str, Any] = {"summary": summary, "parameters": parameters, "responses": responses}
    if description:
        op["description"] = description
    if tags:
        op["tags"] = list(tags)
    if secured:
        op["security"] = [{"bearer": []}]
        op["responses"]["401"] = UNAUTHORIZED
    else:
        op["security"] = []
    return {method: op}


PATHS: dict[str, Any] = {
    "/customers/{shop_id}/{customer_id}": _get(
        "A customer's snapshot", [SHOP, CUSTOMER, AS_OF],
        {"200": _answer("the snapshot as of `as_of` (default: now)", "CustomerSnapshot"),
         "400": _error("bad id or `as_of`, or `as_of` before the customer's finalized "
                       "history (`as_of_too_early`)"),
         "404": _error("unknown customer"),
         "503": _error("a rebalance or table recovery is under way, or a partition has no "
                       "reachable owner; retry shortly; or the owner is older than the build "
                       "that wrote the customer's state (`newer_state_format`)")},
        description="Answered by the worker owning the customer's partition (proxied there "
                    "in one hop).") | _get(
        "Forget a customer (right to erasure)", [SHOP, CUSTOMER],
        {"202": _answer("the forget request is acknowledged by the broker; the erasure "
                        "completes asynchronously, after which GET answers 404",
                        "ErasureAccepted"),
         "400": _error("bad id"),
         "503": _error("the broker did not acknowledge the request: nothing was requested, "
                       "retry")}, method="delete"),
    "/shops/{shop_id}": _get(
        "A shop's figures: NPS, funnel, KPIs, CLV model", [SHOP, {
            **AS_OF, "description": "places the NPS and spend windows; must be within "
                                    f"{AS_OF_TOLERANCE.total_seconds() / 60:g} minutes of the "
                                    "worker's clock (the figures are as of now)"}],
        {"200": _answer("the shop figures, merged over every partition", "ShopFigures"),
         "400": _error("bad id, bad `as_of`, or `as_of` further from now than the figures "
                       "can answer (`as_of_unsupported`)"),
         "503": UNAVAILABLE}),
    "/shops/{shop_id}/customers": _get(
        "A shop's customers by segment, in pages", [SHOP, *LISTING],
        {"200": _answer("one page, ordered by `customer_id`", "CustomerPage"),
         "400": _error("bad id, unknown or repeated parameter, value outside its allowed "
                       "set, bad cursor (`bad_query`)"),
         "503": UNAVAILABLE},
        description="Merged over every worker (fan-out to the partition owners). Filters "
                    "combine with AND. Each item is the customer as of its last event or "
                    "time sweep, the figures the funnel of `/shops/{shop_id}` counts."),
    "/internal/shops/{shop_id}/tally": _get(
        "This worker's shop tally (fan-out of /shops/{shop_id})", [SHOP],
        {"200": _answer("the tally of the partitions this worker owns", "TallyPart"),
         "400": BAD}, tags=("internal",)),
    "/internal/shops/{shop_id}/customers": _get(
        "This worker's matches (fan-out of /shops/{shop_id}/customers)", [SHOP, *LISTING],
        {"200": _answer("the first `limit + 1` matches of the partitions this worker owns",
                        "CustomersPart"),
         "400": _error("as for /shops/{shop_id}/customers"), "503": UNAVAILABLE},
        tags=("internal",)),
    "/health/live": _get("Liveness", [], {"200": _answer("the process serves", "Live")},
                         secured=False, tags=("health",)),
    "/health/ready": _get("Readiness", [], {
        "200": _answer("ready", "Ready"), "503": _answer("not ready", "Ready")},
        secured=False, tags=("health",)),
    "/health": _get("Summary for people and dashboards (always 200 while serving)", [],
                    {"200": _answer("the summary", "Health")}, secured=False,
                    tags=("health",)),
    "/metrics": _get("Prometheus metrics", [], {"200": {
        "description": "the Prometheus text format",
        "content": {"text/plain": {"schema": {"type": "string"}}}}},
        secured=False, tags=("health",)),
    "/": _get("Faust's index page", [], {"200": _answer("always the same", "Index")},
              secured=False, tags=("health",)),
    "/openapi.json": _get("This description", [], {"200": {
        "description": "OpenAPI 3.1", "content": {JSON: {"schema": {"type": "object"}}}}},
        secured=False),
}


@cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("loyalty-scorer")
    except PackageNotFoundError:  # running from a checkout that is not installed
        v = "0"
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {"title": "loyalty-scorer worker API", "version": v,
                 "description": "Snapshots, shop figures and segment listings served by "
                                "every `loyalty worker`; see the README, \"HTTP API\"."},
        "paths": PATHS,
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "LOYALTY_API_TOKEN; without it no endpoint needs a token"}}},
    }
