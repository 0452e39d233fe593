"""Reading back records Faust's consumer read but never handed to the agent
(:func:`streams.gaps.reread_dropped`), with the consumer stubbed as Faust and
aiokafka leave it after a rebalance; the seek and commit bookkeeping."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata
from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP

from schemas import codec
from streams import compat
from streams.gaps import REREAD_CONFIRM_S, Progress, install_seek_tracking, reread_dropped
from streams.records import Record

TOPIC = "svc.redemptions"
GENERATION = 7


class _Counter:
    def __init__(self) -> None:
        self.value = 0

    def labels(self, *_: Any) -> _Counter:
        return self

    def inc(self, n: int = 1) -> None:
        self.value += n


class _Reader:
    """The private consumer: partition ``TOPIC[0]`` holds offsets 0 .. end-1."""

    def __init__(self, end: int) -> None:
        self.end = end

    async def end_offsets(self, tps: list[TP]) -> dict[TP, int]:
        return {tp: self.end for tp in tps}

    async def fetch(self, topic: str, partition: int, start: int, end: int) -> list[Record]:
        return [Record(topic, partition, o, b"s|c", codec.dumps(
            {"type": "redemption", "shop_id": "s", "customer_id": f"c{o}", "points": 1}))
            for o in range(start, end)]


def _service(read_offset: int | None, consumed: int) -> Any:
    """A service whose consumer was positioned at the committed offset by a seek, and
    whose aiokafka client has since handed ``consumed`` - the next offset - to Faust,
    which dropped those records (they never reached the agent)."""
    assignment = SimpleNamespace(all_consumed_offsets=lambda: {
        TopicPartition(TOPIC, 0): OffsetAndMetadata(consumed, "")})
    aiokafka_consumer = SimpleNamespace(_subscription=SimpleNamespace(
        subscription=SimpleNamespace(assignment=assignment)))
    consumer = SimpleNamespace(
        # Faust's read offset after perform_seek: the committed offset (the
        # *next* record) or None without one; dropped records never move it.
        _read_offset={TP(TOPIC, 0): read_offset},
        _thread=SimpleNamespace(_ensure_consumer=lambda: aiokafka_consumer))
    return SimpleNamespace(
        app=SimpleNamespace(consumer_generation_id=GENERATION, consumer=consumer),
        metrics=SimpleNamespace(offset_gaps=_Counter()))


class _Input:
    """The agent's input as the read-back sees it: the intake's waiting partitions
    (None: full) and the aligned input's ``receive``."""

    def __init__(self, queued: set[tuple[str, int]] | None = None) -> None:
        self.queued: set[tuple[str, int]] | None = queued if queued is not None else set()
        self.received: list[Record] = []

    async def check(self, service: Any, progress: Progress, end: int = 10) -> int:
        return await reread_dropped(service, progress, _Reader(end=end), self.received.extend,
                                    lambda: self.queued, confirm_s=0.0)


def _seeked(progress: Progress, offset: int) -> None:
    progress.seeks[(TOPIC, 0)] = (GENERATION, offset)
    progress.done[(TOPIC, 0)] = offset - 1


@pytest.mark.parametrize("committed", [None, 4])
async def test_records_dropped_right_after_a_seek_are_read_back_once_confirmed(
        committed: int | None) -> None:
    # A sparse partition (redemptions), or a whole backlog fetched in one go:
    # after the rebalance the consumer was positioned at the committed offset,
    # fetched every record up to 10 and Faust dropped them; no later record
    # arrives to reveal the gap.
    start = committed or 0
    service = _service(committed, consumed=10)
    progress = Progress(SimpleNamespace())
    _seeked(progress, start)
    agent = _Input()

    assert await agent.check(service, progress) == 0  # first sight: may be on its way
    n = await agent.check(service, progress)  # still nothing received: dropped

    assert n == 10 - start
    # Into the agent's own input, in offset order, as records of their partition.
    assert [(r.topic, r.partition, r.offset) for r in agent.received] == [
        (TOPIC, 0, o) for o in range(start, 10)]
    assert progress.last_offset[(TOPIC, 0)] == (GENERATION, 9)
    assert service.metrics.offset_gaps.value == 10 - start
    # Processed only when the aligned input releases them: nothing is done yet.
    assert progress.done[(TOPIC, 0)] == start - 1
    # Nothing left: the next checks read back nothing more.
    assert await agent.check(service, progress) == 0
    assert await agent.check(service, progress) == 0


async def test_a_drop_is_confirmed_only_after_the_wait_with_nothing_received() -> None:
    service = _service(0, consumed=10)
    progress = Progress(SimpleNamespace())
    _seeked(progress, 0)
    agent = _Input()

    async def check() -> int:
        return await reread_dropped(service, progress, _Reader(end=10), agent.received.extend,
                                    lambda: agent.queued)

    assert await check() == 0
    assert await check() == 0  # seen again at once: not confirmed yet
    # A record arrives meanwhile (it was on its way): the wait starts again from it.
    progress.find_gap(_record(0), GENERATION)
    first = progress.suspects[(TOPIC, 0)][1]
    assert await check() == 0
    assert progress.suspects[(TOPIC, 0)][0] == (GENERATION, 1)
    assert progress.suspects[(TOPIC, 0)][1] >= first
    progress.suspects[(TOPIC, 0)] = ((GENERATION, 1), time.monotonic() - REREAD_CONFIRM_S)
    assert await check() == 9
    assert [r.offset for r in agent.received] == list(range(1, 10))


async def test_records_waiting_in_the_intake_or_behind_a_full_one_are_not_dropped() -> None:
    service = _service(0, consumed=10)
    progress = Progress(SimpleNamespace())
    _seeked(progress, 0)
    agent = _Input(queued={(TOPIC, 0)})
    for _ in range(3):
        assert await agent.check(service, progress) == 0
    assert not progress.suspects
    agent.queued = None  # full: the fetcher's delivery may hold more in front of it
    for _ in range(3):
        assert await agent.check(service, progress) == 0
    assert agent.received == []


async def test_records_delivered_while_the_range_is_read_are_not_read_back() -> None:
    service = _service(0, consumed=10)
    progress = Progress(SimpleNamespace())
    _seeked(progress, 0)
    agent = _Input()

    class _LateReader(_Reader):
        async def fetch(self, topic: str, partition: int, start: int, end: int) -> list[Record]:
            for offset in range(4):  # the consumer hands on 0-3 after all meanwhile
                progress.find_gap(_record(offset), GENERATION)
            return await super().fetch(topic, partition, start, end)

    assert await agent.check(service, progress) == 0
    n = await reread_dropped(service, progress, _LateReader(end=10), agent.received.extend,
                             lambda: set(), confirm_s=0.0)
    assert n == 6 and [r.offset for r in agent.received] == list(range(4, 10))


async def test_a_range_that_reads_back_empty_is_not_read_again() -> None:
    # Offsets without a record (transaction markers) the skip tracking did not see.
    service = _service(0, consumed=3)
    progress = Progress(SimpleNamespace())
    _seeked(progress, 0)

    class _Markers(_Reader):
        calls = 0

        async def fetch(self, topic: str, partition: int, start: int, end: int) -> list[Record]:
            self.calls += 1
            return []

    reader, received = _Markers(end=3), []
    for _ in range(4):
        assert await reread_dropped(service, progress, reader, received.extend, lambda: set(),
                                    confirm_s=0.0) == 0
    assert reader.calls == 1 and received == []
    assert progress.last_offset[(TOPIC, 0)] == (GENERATION, 2)


async def test_a_partition_read_up_to_what_the_agent_expects_is_left_alone() -> None:
    service = _service(4, consumed=4)
    progress = Progress(SimpleNamespace())
    _seeked(progress, 4)
    agent = _Input()
    assert await agent.check(service, progress) == 0
    assert await agent.check(service, progress) == 0
    assert agent.received == [] and not progress.suspects


async def test_a_seek_reports_the_brokers_answer_and_the_first_offset_without_one() -> None:
    # Faust's own perform_seek, on a consumer whose map still holds an offset it
    # asked to commit (the cap dropped it) before the partition moved away.
    consumer = SimpleNamespace(_read_offset={}, _committed_offset={TP(TOPIC, 0): 50})

    async def broker() -> dict[TopicPartition, int | None]:
        return {TopicPartition(TOPIC, 0): None, TopicPartition(TOPIC, 1): 7,
                TopicPartition(TOPIC, 2): 0, TopicPartition("svc-changelog", 0): None}

    asked: list[list[TP]] = []

    async def first_offsets(tps: list[TP]) -> dict[TP, int]:
        asked.append(tps)
        return {tp: 3 for tp in tps}  # retention removed offsets 0-2

    consumer.seek_to_committed = broker
    seen: list[dict[TP, int]] = []
    compat.on_seek_to_committed(SimpleNamespace(consumer=consumer), {TOPIC}, seen.append,
                                first_offsets)

    await FaustConsumer.perform_seek(consumer)  # type: ignore[arg-type]

    assert consumer._committed_offset[TP(TOPIC, 0)] == 50  # Faust keeps the stale entry
    # Without a commit (or with 0) aiokafka starts the partition at the log
    # start: that is its position, asked once for all such partitions of the
    # watched topics (not for the changelog).
    assert seen == [{TP(TOPIC, 0): 3, TP(TOPIC, 1): 7, TP(TOPIC, 2): 3}]
    assert asked == [[TP(TOPIC, 0), TP(TOPIC, 2)]]
    # Faust itself goes on with aiokafka's answer.
    assert consumer._read_offset == {TopicPartition(TOPIC, 0): None, TopicPartition(TOPIC, 1): 7,
                                     TopicPartition(TOPIC, 2): 0,
                                     TopicPartition("svc-changelog", 0): None}


def test_a_partition_assigned_again_without_a_commit_keeps_nothing_old() -> None:
    progress = Progress(SimpleNamespace())
    progress.seeked({TP(TOPIC, 0): 40, TP(TOPIC, 1): 3}, generation=1)
    assert progress.seeks[(TOPIC, 0)] == (1, 40)
    assert progress.done[(TOPIC, 0)] == 39 and progress.covered[TP(TOPIC, 0)] == 40
    progress.done[(TOPIC, 1)] = 99  # processed further, never committed, then given away

    # Assigned again with no commit: positioned at its first offset.
    progress.seeked({TP(TOPIC, 1): 0}, generation=3)

    # Nothing from generation 1 may let a commit pass records no one processed.
    assert progress.seeks[(TOPIC, 1)] == (3, 0)
    assert progress.done[(TOPIC, 1)] == -1 and progress.covered[TP(TOPIC, 1)] == 0


def _record(offset: int) -> Record:
    return Record(TOPIC, 0, offset, b"s|c", b"{}")


def test_offsets_the_consumer_passed_over_are_no_gap_but_a_record_in_between_is() -> None:
    passed_over = {(5, 6)}  # a transaction's commit marker at offset 5
    gaps = _Counter()
    progress = Progress(SimpleNamespace(offset_gaps=gaps),
                        skipped=lambda tp, start, end: (start, end) in passed_over)
    progress.seeks[(TOPIC, 0)] = (GENERATION, 3)
    assert progress.find_gap(_record(3), GENERATION) is None
    assert progress.find_gap(_record(4), GENERATION) is None
    assert progress.find_gap(_record(6), GENERATION) is None  # 5 held no record
    assert progress.find_gap(_record(9), GENERATION) == (7, 9)  # 7-8 were dropped
    assert gaps.value == 2


async def test_a_partition_read_past_markers_only_is_not_read_back() -> None:
    service = _service(4, consumed=6)  # 4-5: markers the consumer passed over
    progress = Progress(SimpleNamespace(),
                        skipped=lambda tp, start, end: (tp, start, end) == ((TOPIC, 0), 4, 6))
    _seeked(progress, 4)
    agent = _Input()
    assert await agent.check(service, progress) == 0
    assert await agent.check(service, progress) == 0
    assert agent.received == []
    # Nothing lies before the markers: they count as done, so the commit passes them.
    assert progress.done[(TOPIC, 0)] == 5 and progress.owed[TP(TOPIC, 0)] == 6


async def test_markers_behind_records_still_held_are_not_done_yet() -> None:
    service = _service(4, consumed=6)
    progress = Progress(SimpleNamespace(),
                        skipped=lambda tp, start, end: (tp, start, end) == ((TOPIC, 0), 4, 6))
    progress.seeks[(TOPIC, 0)] = (GENERATION, 0)
    progress.last_offset[(TOPIC, 0)] = (GENERATION, 3)  # 0-3 received, 0-1 processed
    progress.done[(TOPIC, 0)] = 1
    assert await _Input().check(service, progress) == 0
    assert progress.done[(TOPIC, 0)] == 1 and not progress.owed
    progress.done[(TOPIC, 0)] = 3  # the held records were processed
    assert await _Input().check(service, progress) == 0
    assert progress.done[(TOPIC, 0)] == 5 and progress.owed[TP(TOPIC, 0)] == 6


def _seek_tracking(answers: list[bool] | None = None) -> tuple[Any, Progress, Any, TP,
                                                                list[dict[TP, int]]]:
    """Seek tracking over a stand-in consumer whose commits are recorded (and answer
    ``answers`` in turn, else True): (consumer, progress, commit_owed, tp, sent)."""
    sent: list[dict[TP, int]] = []

    async def broker_commit(offsets: dict[TP, int]) -> bool:
        sent.append(dict(offsets))
        return answers.pop(0) if answers else True

    async def seek_to_committed() -> dict[TopicPartition, int]:
        return {TopicPartition(TOPIC, 0): 0}

    async def flush() -> None:
        return None

    tp = TP(TOPIC, 0)
    consumer = SimpleNamespace(_commit=broker_commit, seek_to_committed=seek_to_committed,
                               assignment=lambda: {tp})
    app = SimpleNamespace(consumer=consumer, consumer_generation_id=GENERATION,
                          producer=SimpleNamespace(flush=flush))
    service = SimpleNamespace(app=app, agent_topic_names=frozenset({TOPIC, "svc-rekey"}))
    progress = Progress(SimpleNamespace())
    commit_owed = install_seek_tracking(service, progress,  # type: ignore[arg-type]
                                        SimpleNamespace(beginning_offsets=None))
    progress.seeked({tp: 0}, GENERATION)
    return consumer, progress, commit_owed, tp, sent


async def test_no_commit_moves_the_group_offset_back() -> None:
    """Faust never sees a transaction's trailing marker, so its own commit (the offset
    after its last acknowledged record) can come after the worker committed past the
    marker; it must not take the group's offset back."""
    consumer, progress, commit_owed, tp, sent = _seek_tracking()
    progress.processed([_record(0), _record(1), _record(2)])
    progress.done[(TOPIC, 0)], progress.owed[tp] = 3, 4  # 3: a marker, counted done
    await commit_owed()
    assert sent == [{tp: 4}]
    assert await consumer._commit({tp: 3})  # Faust's own, after acknowledging record 2
    assert sent == [{tp: 4}]  # not sent: the group stays at 4
    progress.processed([_record(4)])
    assert await consumer._commit({tp: 5})
    assert sent == [{tp: 4}, {tp: 5}]


async def test_an_owed_commit_that_fails_is_asked_again() -> None:
    """A partition that receives nothing more is committed only through what is owed:
    a commit of it that fails (Faust's commit answers False on a commit error) must
    leave it owed for the next tick, or its lag stays for good."""
    _, progress, commit_owed, tp, sent = _seek_tracking(answers=[False, True])
    progress.processed([_record(0), _record(1), _record(2)])
    progress.owed[tp] = 3
    await commit_owed()
    assert sent == [{tp: 3}] and progress.owed == {tp: 3}  # failed: still owed
    await commit_owed()
    assert sent == [{tp: 3}, {tp: 3}] and not progress.owed
    assert progress.covered[tp] == 3
