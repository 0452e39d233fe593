"""CI's short chaos run: every scenario of :mod:`tests.chaos.scenarios` with the SHORT
profile; each must end with every customer and ledger entry equal to replay."""

from __future__ import annotations

import pytest

from tests.chaos.scenarios import SCENARIOS, SHORT


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_chaos_short(name: str, bootstrap: str, tmp_path) -> None:
    out = SCENARIOS[name](bootstrap, tmp_path, SHORT)
    print(out.line())
    assert out.ok, out.line() + "\n" + "\n".join(out.examples)
