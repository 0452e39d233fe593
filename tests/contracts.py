"""Validate JSON against the committed JSON Schema files with an independent validator.

The models in :mod:`schemas.outputs` generate the files; checking real output
against the *files* with ``jsonschema`` (not pydantic) tests what consumers get.
"""

from __future__ import annotations

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
