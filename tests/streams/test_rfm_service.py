"""RFM in the service, without a broker: the refit fits it, the API serves what replay prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from schemas import codec
from schemas.policy import PolicyBook
from scoring.replay import fold_lines, snapshots
from scoring.rfm import RFM_FIELDS
from streams.app import create_service
from streams.clv_models import ClvModels
from streams.settings import Settings
from streams.topics import message_key, partition_for
from streams.web import ROUTED_HEADER
from tests.core.test_rfm import AS_OF, population

PARTITIONS = 4
AS_OF_TEXT = "2026-01-01T00:00:00Z"


@pytest.mark.slow
async def test_served_rfm_fields_equal_replays_after_a_refit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policies = PolicyBook()
    res = fold_lines(population(210), policies=policies, as_of=AS_OF)
    _, snaps, _ = snapshots(res, policies, AS_OF, with_clv=True)
    want = {s["customer_id"]: {k: s[k] for k in RFM_FIELDS} for s in snaps}
    assert {w["rfm_segment"] for w in want.values()} >= {"champions", "hibernating"}
    assert want["visitor"] == dict.fromkeys(RFM_FIELDS)

    svc = create_service(Settings(app_id="unit-rfm", store="memory://", partitions=PARTITIONS,
                                  data_dir=tmp_path), sweep_enabled=True)
    ctx = svc.context
    for (shop, customer), state in res.states.items():
        key = message_key(shop, customer)
        ctx.rows.write(partition_for(key, PARTITIONS), [(key, bytes(state.encode()))], None)
    published: list[tuple[bytes, bytes]] = []

    async def send(*, key: bytes, value: bytes, **_: Any) -> None:
        published.append((key, value))

    assert svc.clv is not None
    monkeypatch.setattr(svc.clv.topic, "send", send)
    monkeypatch.setattr(ctx, "tables_ready", lambda: True)
    assert ctx.rfm_model("s1") is None  # null until the first refit
    await svc.clv.refit(AS_OF, force=True)
    assert ctx.rfm_model("s1") is not None and ctx.rfm_model("s1").customers == 210

    # Every worker reads the cut points back from the params topic record.
    reader = ClvModels()
    for key, value in published:
        reader.apply_record(key, value)
    assert reader.rfm("s1") == ctx.rfm_model("s1")

    async with TestClient(TestServer(svc.app.web.web_app)) as c:
        for customer, expected in want.items():
            resp = await c.get(f"/customers/s1/{customer}?as_of={AS_OF_TEXT}",
                               headers={ROUTED_HEADER: "1"})
            body = codec.loads(await resp.read())
            assert resp.status == 200
            assert {k: body[k] for k in RFM_FIELDS} == expected, customer


def test_a_params_record_of_an_earlier_version_has_no_rfm() -> None:
    table = ClvModels()
    table.apply_record(b"s1", codec.dumps({"shop_id": "s1", "pool": "p", "reason": "too few",
                                           "model": None}))
    assert table.rfm("s1") is None
    table.apply_record(b"s2", codec.dumps({"shop_id": "s2", "pool": "p", "reason": "too few",
                                           "model": None, "rfm": {"customers": 1}}))
    assert table.rfm("s2") is None  # malformed: ignored, logged
