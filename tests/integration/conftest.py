"""Integration tier: everything under tests/integration runs against the real broker.

Every test collected here is marked ``integration`` (select or deselect with
``-m integration``). The broker fixtures themselves live in ``tests/conftest.py``
so other tiers can use them too; they fail, never skip, when the broker is down.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Hooks in a sub-directory conftest still see the whole session's items,
    # so restrict the marker to tests that live below this directory.
    for item in items:
        if _HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)
