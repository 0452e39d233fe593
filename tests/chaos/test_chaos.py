"""CI's short chaos run: every scenario of :mod:`tests.chaos.scenarios` with the SHORT
profile; each must end with every customer and ledger entry equal to replay."""

from __future__ import annotations

import pytest

from tests.chaos.scenarios import SCENARIOS, SHORT


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in SCENARIOS if n not in SHORT.skip])
def test_chaos_short(name: str, bootstrap: str, tmp_path) -> None:
    out = SCENARIOS[name](bootstrap, tmp_path, SHORT)
    print(out.line())
    assert out.ok, out.line() + "\n" + "\n".join(out.examples)


def test_the_poison_catalogue_covers_every_reason() -> None:
    from schemas.events import REASONS
    from streams import synthetic
    from tests.chaos.poison import catalogue
    from tests.integration.service_harness import AS_OF

    kinds = catalogue(synthetic.SHOP_NAMES[0], AS_OF)
    assert len(kinds) >= 40 and len({p.kind for p in kinds}) == len(kinds)
    assert {p.reason for p in kinds} == {*REASONS, "empty"}
