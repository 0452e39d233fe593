"""docs/domain.md and data/ keep the repository self-contained and the reference complete."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from schemas.outputs import CustomerSnapshot, DeadLetter, LedgerEntry, StageTransition
from tests.contracts import assert_valid

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "domain.md").read_text()


def test_every_output_field_is_defined_in_the_domain_reference() -> None:
    documented = set(re.findall(r"`([a-z_0-9]+)`", DOC))
    # windows written as `purchase_days_30d`, `_90d`, ...: expand the short forms
    documented |= {f"purchase_days{suffix}" for suffix in re.findall(r"`(_\d+d)`", DOC)}
    for model in (CustomerSnapshot, StageTransition, LedgerEntry, DeadLetter):
        names = {f.alias or name for name, f in model.model_fields.items()}
        missing = sorted(names - documented)
        assert not missing, f"{model.__name__} fields not in docs/domain.md: {missing}"


def test_every_json_example_parses_and_every_output_topic_has_one() -> None:
    blocks = re.findall(r"```json\n(.*?)```", DOC, flags=re.S)
    parsed = [json.loads(block) for block in blocks]
    kinds = {p.get("kind") for p in parsed} | {"dead_letter" for p in parsed if "reason" in p} \
        | {"clv" for p in parsed if "model" in p} | {"snapshot" for p in parsed if "stage" in p}
    assert {"transition", "ledger", "dead_letter", "clv", "snapshot"} <= kinds
    snapshot = next(p for p in parsed if "stage" in p)
    assert set(snapshot) == set(CustomerSnapshot.model_fields)
    assert "alert" in kinds
    # every example of a topic's record follows that topic's committed schema
    for p in parsed:
        if "stage" in p:
            assert_valid("out-CustomerSnapshot.json", p)
        elif "reason" in p:
            assert_valid("out-DeadLetter.json", p)
        elif p.get("kind") == "ledger":
            assert_valid("out-RewardsValue.json", p)
        elif p.get("kind") in ("transition", "alert"):
            assert_valid("out-TransitionsValue.json", p)


def test_nothing_refers_outside_the_repository() -> None:
    proc = subprocess.run(["git", "grep", "-nE", r"\.\./shared|shared/data|shared/DOMAIN"],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode == 128:  # not a git checkout (e.g. an sdist): scan the files instead
        hits = [str(p) for p in ROOT.rglob("*") if p.is_file() and p.suffix in {".py", ".md", ".toml"}
                and re.search(r"\.\./shared|shared/data|shared/DOMAIN", p.read_text(errors="replace"))
                and p != Path(__file__)]
    else:
        hits = [line for line in proc.stdout.splitlines() if not line.startswith("tests/unit/test_docs_domain.py")]
    assert not hits, hits


def test_the_cdnow_log_ships_with_the_repository() -> None:
    from tests.cdnow import CDNOW_PATH

    assert CDNOW_PATH == ROOT / "data" / "cdnow_master.txt" and CDNOW_PATH.is_file()
    assert "cdnow_master.txt" in (ROOT / "data" / "README.md").read_text()
