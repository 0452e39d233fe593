"""The commit protocol against the real broker, with the in-memory row store.

Every record goes to real topics of a unique app; the rows go to the memory
row store through the same code the RocksDB store runs in production.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scoring.shop import ShopTally
from streams import compat
from streams.app import LoyaltyService, create_service
from streams.commit import Change, Committer
from streams.settings import Settings
from streams.shops import TallyDelta
from streams.topics import (
    CUSTOMERS_TABLE,
    all_topic_specs,
    changelog_topic_name,
    ensure_topics,
    message_key,
    partition_for,
    tally_key,
)
from tests.conftest import run_async
from tests.streams.broker_io import read_topic, with_producer

PARTITIONS = 2


@pytest.fixture
def svc(bootstrap: str, unique_name, create_topic, tmp_path: Path) -> Iterator[LoyaltyService]:
    name = unique_name("commit").replace(".", "-")
    settings = Settings(app_id=name, broker=f"kafka://{bootstrap}", store="memory://",
                        partitions=PARTITIONS, data_dir=tmp_path,
                        **{f"topic_{t}": f"{name}.{t}" for t in (
                            "purchases", "visits", "feedback", "redemptions", "forget", "transitions",
                            "rewards", "scores", "dead_letter", "clv_params")})
    specs = all_topic_specs(settings)
    run_async(ensure_topics([bootstrap], specs))
    create_topic.track(*(s.name for s in specs))
    yield create_service(settings, web_enabled=False, sweep_enabled=False)


def _key(partition: int) -> bytes:
    i = 0
    while partition_for(message_key("s1", f"c{i}"), PARTITIONS) != partition:
        i += 1
    return message_key("s1", f"c{i}")


def _tally(svc: LoyaltyService, partition: int) -> ShopTally:
    """Shop s1's tally of ``partition`` as a reader sees it (held deltas applied first)."""
    [raw] = svc.context.shop_tally_rows("s1", [partition])
    return ShopTally.decode(raw)


def _row(svc: LoyaltyService, partition: int) -> bytes | None:
    """Shop s1's tally row of ``partition`` as it is in the table now."""
    with compat.partition_context(svc.context.rekey.get_topic_name(), partition):
        return svc.context.tallies.get(tally_key("s1", partition))


def _flush_interval(svc: LoyaltyService, seconds: float) -> None:
    ctx = svc.context
    ctx.settings = ctx.settings.model_copy(update={"tally_flush_interval_s": seconds})


def test_outputs_then_changelog_then_rows_offset_and_tally(svc: LoyaltyService,
                                                          bootstrap: str) -> None:
    ctx = svc.context
    committer = Committer(ctx)
    scores = ctx.scores.get_topic_name()
    changelog = changelog_topic_name(ctx.settings, CUSTOMERS_TABLE)
    keys = [_key(0), _key(1)]
    changes = [Change(partition_for(k, PARTITIONS), k, b"state-" + k, TallyDelta(None, "new"),
                      123) for k in keys]
    written: list[bytes] = []

    async def body() -> Any:
        result = await committer.commit([(scores, k, b"snap", None, None) for k in keys],
                                        changes, on_written=lambda c: written.append(c.key))
        return result, await read_topic(bootstrap, scores, 2), await read_topic(bootstrap, changelog, 2)

    result, outputs, logged = with_producer(svc.app, body)
    assert result.complete and [c.key for c in result.written] == keys and written == keys
    assert sorted(m.key for m in outputs) == sorted(keys)
    for m in logged:  # each state's changelog record on its row's partition
        assert m.partition == partition_for(m.key, PARTITIONS) and m.value == b"state-" + m.key
    for k in keys:
        p = partition_for(k, PARTITIONS)
        assert ctx.rows.get(p, k) == b"state-" + k
        assert ctx.rows.persisted_offset(p) == max(m.offset for m in logged if m.partition == p)
        assert _tally(svc, p).funnel.get("new") == 1


def test_changes_handed_as_a_function_are_computed_once_while_the_outputs_travel(
        svc: LoyaltyService, bootstrap: str) -> None:
    # The agent hands its changes as a function (its states are encoded then): it
    # is called after the outputs went to the producer and before the changelog
    # records, once, and what it returns is written as a list would be.
    ctx = svc.context
    scores = ctx.scores.get_topic_name()
    keys = [_key(0), _key(1)]
    order: list[str] = []
    publish = ctx.publisher.publish

    async def publish_logged(records: Any) -> Any:
        records = list(records)
        order.append("publish " + ",".join(sorted({r[0] for r in records})))
        return await publish(records)

    def changes() -> list[Change]:
        order.append("changes")
        return [Change(partition_for(k, PARTITIONS), k, b"state-" + k, TallyDelta(None, "new"),
                       None) for k in keys]

    ctx.publisher.publish = publish_logged  # type: ignore[method-assign]

    async def body() -> Any:
        return await Committer(ctx).commit([(scores, k, b"snap", None, None) for k in keys],
                                           changes)

    result = with_producer(svc.app, body)
    changelog = changelog_topic_name(ctx.settings, CUSTOMERS_TABLE)
    assert order == [f"publish {scores}", "changes", f"publish {changelog}"]
    assert result.complete and [c.key for c in result.written] == keys
    assert all(ctx.rows.get(partition_for(k, PARTITIONS), k) == b"state-" + k for k in keys)
    assert _tally(svc, partition_for(keys[0], PARTITIONS)).funnel.get("new") == 1


def test_changes_that_cannot_be_computed_fail_like_step_3(svc: LoyaltyService,
                                                         bootstrap: str) -> None:
    # Computing the changes raises only on a bug; the outputs are then on their way
    # already: the error is raised after their acknowledgement, nothing is written.
    ctx = svc.context
    scores = ctx.scores.get_topic_name()
    key = _key(0)

    def changes() -> list[Change]:
        raise RuntimeError("cannot encode")

    async def body() -> Any:
        with pytest.raises(RuntimeError, match="cannot encode"):
            await Committer(ctx).commit([(scores, key, b"snap", None, None)], changes)
        return await read_topic(bootstrap, scores, 1)

    [published] = with_producer(svc.app, body)
    assert published.key == key and published.value == b"snap"
    assert ctx.rows.get(0, key) is None and ctx.rows.persisted_offset(0) is None


def test_a_guarded_change_yields_to_a_changed_row(svc: LoyaltyService) -> None:
    ctx = svc.context
    committer = Committer(ctx)
    key = _key(0)
    ctx.rows.write(0, [(key, b"agent")], None)
    stale = Change(0, key, b"sweep", TallyDelta("new", "old"), None, base=b"before")
    yielded: list[bytes] = []

    async def body() -> Any:
        return await committer.commit([], [stale], on_yielded=lambda c: yielded.append(c.key))

    result = with_producer(svc.app, body)
    assert result.written == [] and yielded == [key]
    assert ctx.rows.get(0, key) == b"agent" and ctx.rows.persisted_offset(0) is None
    assert _tally(svc, 0).funnel.get("old") is None


def test_lost_ownership_after_the_outputs_writes_nothing(svc: LoyaltyService) -> None:
    ctx = svc.context
    key = _key(1)
    change = Change(1, key, b"state", TallyDelta(None, "new"), None, base=None)

    async def body() -> Any:
        return await Committer(ctx).commit([], [change], owns=lambda: False)

    result = with_producer(svc.app, body)
    assert not result.complete and result.written == []
    assert ctx.rows.get(1, key) is None


def test_tally_deltas_are_held_until_a_reader_or_the_interval_applies_them(
        svc: LoyaltyService) -> None:
    # A live batch moves the rows of most shops of its partitions: the commit holds
    # the deltas and rewrites (and logs) each row once per interval, not per batch.
    # Whoever reads a tally applies what is held first, so no reader sees less.
    _flush_interval(svc, 3600)
    ctx = svc.context
    keys = [_key(0), _key(1)]
    changes = [Change(partition_for(k, PARTITIONS), k, b"state-" + k, TallyDelta(None, "new"),
                      None) for k in keys]

    async def body() -> Any:
        result = await Committer(ctx).commit([], changes)
        held = (_row(svc, 0), _row(svc, 1), len(ctx.tally_deltas))
        funnels = [_tally(svc, 0).funnel, _tally(svc, 1).funnel]  # a reader: applied
        return result, held, funnels

    result, held, funnels = with_producer(svc.app, body)
    assert [c.key for c in result.written] == keys
    assert held == (None, None, 2)
    assert funnels == [{"new": 1}, {"new": 1}] and len(ctx.tally_deltas) == 0
    assert all(_row(svc, p) is not None for p in (0, 1))


def test_held_tally_deltas_are_applied_by_the_first_commit_after_the_interval(
        svc: LoyaltyService) -> None:
    _flush_interval(svc, 0.2)
    ctx = svc.context
    keys = iter(k for i in range(100) if partition_for(k := message_key("s1", f"c{i}"),
                                                         PARTITIONS) == 0)
    rows: list[bytes | None] = []

    async def commit() -> None:
        await Committer(ctx).commit([], [Change(0, next(keys), b"state",
                                                TallyDelta(None, "new"), None)])
        rows.append(_row(svc, 0))

    async def body() -> None:
        await commit()
        await commit()
        await asyncio.sleep(0.25)
        await commit()  # the oldest held delta is due: all three applied

    with_producer(svc.app, body)
    assert rows[:2] == [None, None]
    assert rows[2] is not None and ShopTally.decode(rows[2]).funnel == {"new": 3}
    assert len(ctx.tally_deltas) == 0


def test_a_rebalance_drops_the_held_tally_deltas_for_the_recount(svc: LoyaltyService) -> None:
    # The rows of a partition may have moved away and back: deltas of an older
    # consumer generation are not applied to them; the recount that follows every
    # rebalance counts those states (and logs no drift warning for them).
    _flush_interval(svc, 3600)
    ctx = svc.context
    change = Change(0, _key(0), b"state", TallyDelta(None, "new"), None)

    async def body() -> None:
        await Committer(ctx).commit([], [change])

    with_producer(svc.app, body)
    assert len(ctx.tally_deltas) == 1
    svc.app.consumer_generation_id += 1
    assert ctx.flush_tallies() == 0
    assert _row(svc, 0) is None and len(ctx.tally_deltas) == 0
    assert ctx.tally_deltas.recounted(0) and not ctx.tally_deltas.recounted(0)


def test_a_tally_row_rewritten_meanwhile_gets_the_deltas_on_top(svc: LoyaltyService) -> None:
    # Another writer of the row (the sweep's recount of a shop's row) may write it
    # while deltas are held: they are applied to the row as it is then.
    _flush_interval(svc, 3600)
    ctx = svc.context
    key = _key(0)
    change = Change(0, key, b"state", TallyDelta(None, "new"), None)

    async def body() -> None:
        await Committer(ctx).commit([], [change])

    with_producer(svc.app, body)
    recount = ShopTally.empty()
    recount.move(None, "loyal")
    with compat.partition_context(ctx.rekey.get_topic_name(), 0):
        ctx.tallies[tally_key("s1", 0)] = bytes(recount.encode())
    assert _tally(svc, 0).funnel == {"loyal": 1, "new": 1}
    assert ctx.rows.get(0, key) == b"state"


def test_tally_rows_kept_decoded_follow_the_row_not_the_object(svc: LoyaltyService) -> None:
    # The worker keeps each tally row it wrote decoded (DecodedTallies). The
    # next update starts from that object only while the row holds what it
    # wrote: another writer of the row must not leak into the figures, nor a
    # commit abandoned after its changelog step.
    _flush_interval(svc, 0)
    ctx = svc.context
    committer = Committer(ctx)
    keys = iter(k for i in range(100) if partition_for(k := message_key("s1", f"c{i}"),
                                                         PARTITIONS) == 0)
    funnels: list[dict[str, int]] = []

    async def commit(owns: Any = None) -> bool:
        change = Change(0, next(keys), b"state", TallyDelta(None, "new"), None)
        complete = (await committer.commit([], [change], owns=owns)).complete
        funnels.append(_tally(svc, 0).funnel)
        return complete

    async def body() -> None:
        await commit()
        await commit()
        answers = iter([True, False])  # states logged, then ownership lost
        assert not await commit(lambda: next(answers))
        await commit()
        recount = ShopTally.empty()
        recount.move(None, "loyal")
        with compat.partition_context(ctx.rekey.get_topic_name(), 0):
            ctx.tallies[tally_key("s1", 0)] = bytes(recount.encode())  # the sweep's recount
        await commit()

    with_producer(svc.app, body)
    assert funnels == [{"new": 1}, {"new": 2}, {"new": 2}, {"new": 3}, {"loyal": 1, "new": 1}]
    # commits 2 and 4 start from the kept object; 1 (no row yet) and 5 (after the
    # recount) decode the row; the abandoned 3 held no delta
    assert (ctx.tallies_kept.hits, ctx.tallies_kept.misses) == (2, 2)
