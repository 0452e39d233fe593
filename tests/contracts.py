"""Validate JSON against the committed JSON Schema files and the API description,
with an independent validator (``jsonschema``).

The models in :mod:`schemas.outputs` generate the files; checking real output
against the *files* with ``jsonschema`` (not pydantic) tests what consumers get.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator

from schemas import export


@cache
def validator(name: str) -> Draft202012Validator:
    """A validator for the committed file ``name`` (e.g. ``out-DeadLetter.json``)."""
    schema = export.load(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def errors(name: str, obj: Any) -> list[str]:
    """Why ``obj`` does not follow ``name`` (empty: it does)."""
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator(name).iter_errors(obj)]


def assert_valid(name: str, obj: Any) -> None:
    bad = errors(name, obj)
    assert not bad, f"{name}: {bad[:5]} in {str(obj)[:300]}"


def response_errors(template: str, status: int, content_type: str, body: bytes,
                    headers: Mapping[str, str] | None = None) -> list[str]:
    """Why a real answer of ``GET template`` is not what /openapi.json describes."""
    from streams import openapi

    doc = openapi.document()
    answer = doc["paths"][template]["get"]["responses"].get(str(status))
    if answer is None:
        return [f"{template}: status {status} is not described"]
    missing = [h for h in answer.get("headers", {}) if h not in (headers or {})]
    if missing:
        return [f"{template} {status}: header(s) {missing} missing"]
    content = answer.get("content", {})
    media = content_type.split(";")[0].strip()
    if media not in content:
        return [f"{template} {status}: content type {media!r} is not described"]
    schema = content[media]["schema"]
    if media != "application/json":
        return []
    v = Draft202012Validator({**schema, "components": doc["components"]})
    return [f"{template} {status} {'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in v.iter_errors(json.loads(body))]
