"""Write the JSON Schema files of event contract v1 to ``schemas/jsonschema/``.

Shops validate on their side with these files: ``<type>.json`` per input
event, ``out-<Model>.json`` per output record, per output topic
(``out-TransitionsValue.json``, ``out-RewardsValue.json``: every value of
the topic, voids included) and per HTTP body. They are generated from the
models; ``tests/core/test_schemas.py`` fails when the committed files drift.
Every file has an ``$id`` (``loyalty-scorer/v1/<file name>``), so a
validator can hold them all and tell them apart. The OpenAPI description
(:mod:`streams.openapi`) embeds the HTTP bodies from these files.

    python -m schemas.export            # rewrite the files
    python -m schemas.export --check    # exit 1 if they differ
"""

from __future__ import annotations

import sys
from pathlib import Path

from schemas.codec import dumps_pretty
from schemas.events import MODELS
from schemas.outputs import (
    CustomerPage,
    CustomerSnapshot,
    DeadLetter,
    DetractorAlert,
    LedgerEntry,
    RewardsValue,
    ShopFigures,
    StageTransition,
    TransitionsValue,
    VoidRecord,
)

OUT_DIR = Path(__file__).parent / "jsonschema"
OUTPUT_MODELS = (CustomerSnapshot, StageTransition, LedgerEntry, DetractorAlert, VoidRecord,
                 DeadLetter, TransitionsValue, RewardsValue, ShopFigures, CustomerPage)


def schema_id(name: str) -> str:
    """The ``$id`` of the committed file ``name`` (e.g. ``out-DeadLetter.json``)."""
    return f"loyalty-scorer/v1/{name}"


def documents() -> dict[str, bytes]:
    docs = {}
    for name, model in MODELS.items():
        schema = model.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = schema_id(f"{name}.json")
        docs[f"{name}.json"] = dumps_pretty(schema)
    for model in OUTPUT_MODELS:
        schema = model.model_json_schema(by_alias=True)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = schema_id(f"out-{model.__name__}.json")
        docs[f"out-{model.__name__}.json"] = dumps_pretty(schema)
    return docs


def load(name: str) -> dict:
    """The committed schema file ``name`` (shipped with the package) as a dict."""
    from schemas.codec import loads

    return loads((OUT_DIR / name).read_bytes())


def main(argv: list[str]) -> int:
    docs = documents()
    if "--check" in argv:
        stale = [n for n, b in docs.items() if not (OUT_DIR / n).exists() or (OUT_DIR / n).read_bytes() != b]
        if stale:
            print("stale JSON Schema files (run python -m schemas.export): " + ", ".join(stale))
            return 1
        return 0
    OUT_DIR.mkdir(exist_ok=True)
    for name, data in docs.items():
        (OUT_DIR / name).write_bytes(data)
    print(f"wrote {len(docs)} files to {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
