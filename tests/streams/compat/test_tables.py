"""The table manager's start without Faust's fixed wait (streams/compat/tables.py),
on the service's real Faust app, its recovery not started (that needs a broker)."""

from __future__ import annotations

from pathlib import Path

from streams.app import create_service
from streams.settings import Settings


async def test_the_tables_are_registered_at_once_then_the_recovery_starts(tmp_path: Path) -> None:
    svc = create_service(Settings(app_id="unit-compat-tables", store="memory://", partitions=2,
                                  data_dir=tmp_path), web_enabled=False, sweep_enabled=False)
    tables = svc.context.app.tables
    steps: list[str] = []

    async def recovery_start() -> None:
        steps.append("recovery" if tables._tables_registered.is_set() else "too early")

    tables.recovery.start = recovery_start  # type: ignore[method-assign]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:  # Faust's on_start begins with sleep(1.0)
        slept.append(seconds)

    tables.sleep = sleep  # type: ignore[method-assign]
    # Nothing assigned yet (the consumer thread is not running without a broker).
    svc.context.app.consumer.assignment = set  # type: ignore[method-assign]

    await tables.on_start()

    # Faust's own on_start sleeps a full second before anything is registered
    # (counted, not timed: a loaded machine can take that long for the rest).
    assert slept == []
    assert tables._tables_registered.is_set()
    assert steps == ["recovery"]
