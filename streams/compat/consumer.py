"""Hooks into Faust's consumer: where it seeks, what it commits, how far it has read.

Also pausing and resuming fetches, how long the broker may hold a fetch, the
high-water marks (as of the records delivered to the streams) and the assignment,
so that every consumer control the service uses is named in one place.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import TP

#: ``(offset each assigned partition starts from) -> None``, run after every seek
SeekListener = Callable[[Mapping[TP, int]], None]
#: ``(partitions) -> first offset of each``, asked with a client of its own
FirstOffsets = Callable[[list[TP]], Awaitable[Mapping[TP, int]]]
#: ``(offsets Faust wants to commit) -> offsets to commit`` (may drop or lower entries)
CommitCap = Callable[[Mapping[TP, int]], dict[TP, int]]


def on_seek_to_committed(app: faust.App, topics: Collection[str], listener: SeekListener,
                         first_offsets: FirstOffsets) -> None:
    """Tell ``listener`` where each assigned partition of ``topics`` starts, each time
    Faust positions its consumer after a rebalance.

    Works around: Faust offers no hook at the moment it positions every
    assigned partition (``Consumer.perform_seek``, after each rebalance's
    recovery); the first record the agent then sees must be there, and the
    known rebalance bugs (faust-streaming#216, #221, #606) break exactly
    that. Wraps the instance's public ``seek_to_committed`` (which
    ``perform_seek`` calls; aiokafka's answers with the broker's committed
    offset per assigned partition) and passes on where each partition of
    ``topics`` starts:

    * its committed offset;
    * its first offset when it has none (or 0). aiokafka gives every partition
      of a new assignment a fresh position, the committed offset or else the
      reset one, ``earliest``: the log start, which ``first_offsets`` asks with
      a client of its own (over the group consumer's connection the request
      waited behind its fetch long-poll, over a second of every rebalance).
      Without a position for such a partition the worker could not see that
      Faust dropped its first records after a rebalance (no gap check, no
      read-back), and those are exactly the partitions the aligned input holds
      longest without a commit: redemptions.

    Not Faust's ``_committed_offset`` map: Faust records there the offsets it
    asked to commit, uncapped (:func:`cap_commits`), and keeps an entry for a
    partition the broker has no commit for. If ``first_offsets`` fails, the
    rebalance fails, as for any broker error in it: nothing is skipped silently.
    """
    consumer = app.consumer
    original = consumer.seek_to_committed

    async def seek_to_committed() -> Mapping[TP, int]:
        committed = await original()
        ours = {TP(tp.topic, tp.partition): offset for tp, offset in committed.items()
                if tp.topic in topics}
        unset = [tp for tp, offset in ours.items() if offset is None or offset <= 0]
        first = await first_offsets(unset) if unset else {}
        listener({tp: int(first[tp]) if tp in first else int(offset)
                  for tp, offset in ours.items()})
        return committed

    consumer.seek_to_committed = seek_to_committed  # type: ignore[method-assign]


def cap_commits(app: faust.App, cap: CommitCap) -> Callable[[Mapping[TP, int]],
                                                               Awaitable[bool]]:
    """Pass every offset commit of Faust's consumer through ``cap`` first.

    Works around: Faust acknowledges records it drops around rebalances
    (faust-streaming#216, #221), so its committable offset can run ahead of
    what the agent processed; there is no public hook on the commit. Wraps the
    instance's private ``Consumer._commit``. When ``cap`` leaves nothing to
    commit, the commit reports success without a broker round trip. Returns
    the original commit, for offsets the caller has already capped itself.
    """
    consumer = app.consumer
    original = consumer._commit

    async def commit(offsets: Mapping[TP, int]) -> bool:
        capped = cap(offsets)
        if not capped:
            return True
        return bool(await original(capped))

    consumer._commit = commit  # type: ignore[method-assign]
    return original  # type: ignore[no-any-return]


def consumed_positions(app: faust.App) -> dict[TP, int]:
    """Per assigned partition, the offset after the last record aiokafka handed to Faust.

    Works around: Faust does not expose how far its consumer got, which is the
    only evidence that records were read and then dropped before reaching the
    agent (see :func:`streams.gaps.reread_dropped`). Faust's own
    ``_read_offset`` is no such evidence: a seek sets it to the committed
    offset (the *next* record) or None, and records Faust drops never
    update it. aiokafka's consumed position moves past every record it
    returns, dropped by Faust or not, and not past the records of a paused
    partition. Read from the consumer thread's client (private
    ``ThreadDelegateConsumer._thread``, ``AIOKafkaConsumerThread._ensure_consumer``,
    ``AIOKafkaConsumer._subscription``); an int read, no call into the thread.
    """
    return _consumed_offsets(app.consumer._thread._ensure_consumer())  # type: ignore[attr-defined]


def generation(app: faust.App) -> int:
    """The consumer group generation of the current assignment (changes on every rebalance)."""
    return int(app.consumer_generation_id)


async def set_fetching(app: faust.App, pause: Iterable[tuple[str, int]],
                       resume: Iterable[tuple[str, int]], generation: int | None) -> bool:
    """Pause / resume fetching of topic-partitions in the aiokafka consumer itself,
    as decided in consumer group ``generation``; False when that generation is over.

    Works around: Faust's public ``Consumer.pause_partitions`` only removes a
    partition from its set of active partitions, and its ``getmany`` filters
    the records of an already fetched batch by that live set: the records of
    a partition paused while a batch is handed out are dropped, never
    acknowledged, and the consumer's position has already moved past them.
    aiokafka's own ``pause`` discards fetched records of a paused partition
    *without* advancing its position, so they are fetched again on resume.
    The call runs in Faust's consumer thread, which owns the aiokafka client:
    private ``ThreadDelegateConsumer._thread``, ``AIOKafkaConsumerThread
    ._ensure_consumer`` and ``call_thread`` (:func:`apply_fetching` there).
    """
    from aiokafka import TopicPartition

    pause_tps = [TopicPartition(*tp) for tp in pause]
    resume_tps = [TopicPartition(*tp) for tp in resume]
    thread = app.consumer._thread  # type: ignore[attr-defined]
    consumer = thread._ensure_consumer()

    async def apply() -> bool:
        return apply_fetching(consumer, pause_tps, resume_tps, generation)

    return bool(await thread.call_thread(apply))


def apply_fetching(consumer: Any, pause: Collection[Any], resume: Collection[Any],
                   generation: int | None) -> bool:
    """Pause / resume ``consumer``'s partitions (aiokafka ``TopicPartition``s) if its
    group generation is still ``generation``; in the thread that owns ``consumer``.

    A decision of an earlier generation is dropped (False): a new assignment
    starts every partition unpaused, and its caller forgets its pauses when it
    sees the new generation, so a pause that landed after the assignment would
    stop the partition for good. The generation is aiokafka's own
    (``AIOKafkaConsumer._coordinator.generation``, private), which changes when
    the group answers the join, before the assignment, so the check and the
    calls cannot straddle it. Partitions not assigned (during a rebalance:
    none) are left out instead of failing the rest.
    """
    coordinator = consumer._coordinator
    if coordinator is None or coordinator.generation != generation:
        return False
    assigned = consumer.assignment()
    paused = [tp for tp in pause if tp in assigned]
    resumed = [tp for tp in resume if tp in assigned]
    if paused:
        consumer.pause(*paused)
    if resumed:
        consumer.resume(*resumed)
    return True


#: skipped ranges remembered per partition; a gap an older one would have
#: explained is read back instead, which is harmless
SKIPPED_KEPT = 64


@dataclass
class _Fetches:
    """What the consumer thread fetched (see :func:`track_fetches`)."""

    #: (generation, marks) taken in the consumer thread right after its last fetch
    taken: tuple[int, dict[TP, int | None]] | None = None
    #: the ``taken`` of the fetch before the current one, whose records are delivered
    delivered: tuple[int, dict[TP, int | None]] | None = None
    #: generation of ``last_record`` and ``skipped``
    generation: int | None = None
    #: per partition, the offset after the last record fetched in ``generation``
    last_record: dict[TP, int] = field(default_factory=dict)
    #: per partition, ``[start, end)`` offset ranges aiokafka passed over without
    #: returning a record (transaction markers, aborted records), newest last;
    #: replaced, never mutated, so the main thread reads them without a lock
    skipped: dict[TP, tuple[tuple[int, int], ...]] = field(default_factory=dict)

    def skip(self, tp: TP, start: int, end: int) -> None:
        self.skipped[tp] = (*self.skipped.get(tp, ())[-(SKIPPED_KEPT - 1):], (start, end))


_FETCHES: weakref.WeakKeyDictionary[Any, _Fetches] = weakref.WeakKeyDictionary()


def _consumed_offsets(consumer: Any) -> dict[TP, int]:
    """aiokafka's consumed position per assigned partition (private ``_subscription``)."""
    subscription = consumer._subscription.subscription
    assignment = None if subscription is None else subscription.assignment
    if assignment is None:
        return {}
    return {TP(tp.topic, tp.partition): int(meta.offset)
            for tp, meta in assignment.all_consumed_offsets().items()}


def track_fetches(app: faust.App) -> None:
    """Record what the consumer fetched: high-water marks as of the records Faust has
    delivered (:func:`highwater`) and the offsets it passed over (:func:`skipped_offsets`).

    Works around: Faust's ``Consumer.highwater`` is aiokafka's live mark, which
    the consumer thread moves as soon as a fetch response arrives, while that
    response's records still wait in aiokafka's buffer or in Faust's fetcher.
    A partition whose records were that close looked not caught up to the
    aligned input, which then held every other partition's records back for
    one more round of the agent (README "Performance"). Here the consumer
    thread's ``_fetch_records`` (private) also takes every assigned
    partition's mark right after it returns (no await in between: the marks
    cover exactly what was fetched so far, returned or still buffered), and
    that snapshot becomes :func:`highwater`'s answer when Faust's fetcher asks
    for its next batch (the instance's ``getmany``), by which time it has
    delivered every record of the batch the snapshot came with. A snapshot
    taken in an earlier consumer generation is never used. The mark is the
    last stable offset when the consumer reads committed records only
    (:func:`read_committed`): records of an open transaction cannot be
    fetched before it ends, so they are not waited for.

    Also works around: offsets that hold no record for the consumer. A
    transactional producer ends every transaction with a commit marker, and
    records of aborted transactions are not returned, so offsets are not
    contiguous: the mark stayed one past anything the worker could receive
    (the aligned input held every other partition back for ``max_idle_ms``
    after each transaction), and each marker looked like a record Faust
    dropped (a re-read per transaction). aiokafka's consumed position
    (private ``AIOKafkaConsumer._subscription``) moves past such offsets:
    comparing it before and after each fetch with the offsets of the records
    returned gives the ranges passed over, remembered per partition for the
    current generation (a fetch during which the generation changed records
    none). When the position has passed the mark, the snapshot holds the
    offset after the last record fetched in this generation (0 if none)
    instead: what follows it holds no record.
    """
    thread = app.consumer._thread  # type: ignore[attr-defined]
    fetches = _FETCHES[app] = _Fetches()
    fetch_records = thread._fetch_records
    getmany = thread.getmany

    async def fetch_and_mark(consumer: Any, active_partitions: Any,
                             timeout: float | None = None, max_records: int | None = None) -> Any:
        gen = generation(app)
        before = _consumed_offsets(consumer)
        records = await fetch_records(consumer, active_partitions, timeout=timeout,
                                      max_records=max_records)
        after = _consumed_offsets(consumer)
        if generation(app) != gen:
            return records  # positions moved by a rebalance's seeks: nothing to learn
        if fetches.generation != gen:
            fetches.generation, fetches.last_record, fetches.skipped = gen, {}, {}
        ended: dict[TP, int] = {}
        for tp, fetched in records.items():
            if not fetched:
                continue
            key = TP(tp.topic, tp.partition)
            first, last = fetched[0].offset, fetched[-1].offset
            start = before.get(key)
            if start is not None and first > start:
                fetches.skip(key, start, first)
            if last - first + 1 != len(fetched):
                for a, b in zip(fetched, fetched[1:], strict=False):
                    if b.offset > a.offset + 1:
                        fetches.skip(key, a.offset + 1, b.offset)
            fetches.last_record[key] = ended[key] = last + 1
        for key, position in after.items():
            start = ended.get(key, before.get(key))
            if start is not None and position > start:
                fetches.skip(key, start, position)
        committed_only = consumer._isolation_level == "read_committed"
        taken: dict[TP, int | None] = {}
        for tp in consumer.assignment():
            key = TP(tp.topic, tp.partition)
            mark = consumer.highwater(tp)
            if committed_only:
                stable = consumer.last_stable_offset(tp)
                mark = stable if stable is not None and stable >= 0 else mark
            position = after.get(key)
            if mark is not None and position is not None and position >= mark:
                mark = min(mark, fetches.last_record.get(key, 0))
            taken[key] = mark
        fetches.taken = (gen, taken)
        return records

    async def getmany_delivered(active_partitions: Any, timeout: float) -> Any:
        fetches.delivered = fetches.taken  # Faust delivered the previous batch before asking
        return await getmany(active_partitions, timeout)

    thread._fetch_records = fetch_and_mark
    thread.getmany = getmany_delivered


def skipped_offsets(app: faust.App, tp: tuple[str, int], start: int, end: int) -> bool:
    """True if the consumer passed over every offset in ``[start, end)`` without a record.

    Such offsets hold transaction markers or aborted records (or records
    retention deleted before they were read: aiokafka then moves its position
    to the log start), never a record Faust dropped (those were returned).
    Known only for the current generation and the last :data:`SKIPPED_KEPT`
    ranges of a partition, and only with :func:`track_fetches` installed;
    False when unknown, so the caller reads the range back.
    """
    fetches = _FETCHES.get(app)
    if fetches is None or fetches.generation != generation(app) or start >= end:
        return False
    reached = start
    for a, b in sorted(fetches.skipped.get(TP(*tp), ())):
        if a > reached:
            break
        reached = max(reached, b)
        if reached >= end:
            return True
    return False


def read_committed(app: faust.App) -> None:
    """Make the worker's consumer read committed records only.

    Works around: Faust creates its consumer with ``isolation_level``
    ``read_uncommitted`` unless the app is ``exactly_once``
    (``AIOKafkaConsumerThread._create_worker_consumer``, private, no
    setting), so records of transactions a producer aborted would be
    processed as events. Sets the consumer's private ``_isolation_level``
    before it starts (its fetcher is built from it in ``start``). Changes
    nothing for producers that do not use transactions. Install before the
    app starts.
    """
    thread = app.consumer._thread  # type: ignore[attr-defined]
    create = thread._create_worker_consumer

    def create_committed(transport: Any) -> Any:
        consumer = create(transport)
        consumer._isolation_level = "read_committed"
        return consumer

    thread._create_worker_consumer = create_committed


#: the fetch wait while no records flow: Faust's own (a long poll answered by the first record)
IDLE_FETCH_WAIT_MS = 1500
#: the fetch wait instead while partitions of the topics the agent reads are left out
PARTIAL_FETCH_WAIT_MS = 50


def batch_fetches(app: faust.App, min_bytes: int, max_wait_ms: int,
                  read_topics: Collection[str]) -> None:
    """While records flow, let the broker hold each fetch of the worker's consumer until
    ``min_bytes`` are there or ``max_wait_ms`` have passed; while none flow, long-poll.

    Works around: Faust builds its group consumer with aiokafka's
    ``fetch_min_bytes=1`` and a fixed ``fetch_max_wait_ms=1500``
    (``AIOKafkaConsumerThread._create_worker_consumer``, private, no setting),
    so every fetch returns as soon as one record is there. On a live feed the
    consumer thread then sends a fetch request per round trip, each naming
    every assigned partition and each encoded and decoded in Python while the
    agent waits for the GIL (measured in the README's "Performance").

    Guarantees: a fetch that buffered records makes the next one wait, up to
    ``max_wait_ms``, for ``min_bytes``; a fetch that buffered none makes the
    next one Faust's long poll (one byte, :data:`IDLE_FETCH_WAIT_MS`), so an
    idle worker fetches no more often than Faust's and the first record after
    a quiet spell is not held. A backlog fills every fetch at once. With
    several brokers the last response decides for all (at worst Faust's
    behaviour). Records, order and positions are aiokafka's: only the wait
    changes.

    Also works around: a long poll that leaves partitions out. aiokafka
    leaves out of a fetch request every partition whose fetched records are
    still waiting to be consumed (after its 0.1 s prefetch backoff) and every
    paused one, and while a fetch to a broker is in flight it sends that
    broker no other. A long poll naming only quiet partitions (the rekey
    topic's, say) is answered only when its wait ends, so the busy
    partitions, consumed meanwhile, were not fetched again for up to 1.5 s:
    a worker that took longer than the backoff over a batch stalled its
    input, in a backlog and on a live feed alike (README "Performance").
    A request is therefore a long poll only when it names every partition of
    ``read_topics`` (the topics the worker's agent reads: the tables'
    changelog partitions stay assigned with records fetched during their
    recovery that wait for good, and Faust takes a partition out of its
    ``getmany`` while that partition's stream buffer is full, so neither
    what waits nor what Faust asks for tells); otherwise it waits at most
    :data:`PARTIAL_FETCH_WAIT_MS` for one byte: a partition consumed meanwhile
    waits that long at most. Not ``max_wait_ms``: while a backlog's records
    wait, requests that often, mostly empty, cost about 8 % of a backlog's
    events per CPU-second (README "Performance").

    Wraps the instance's ``_create_worker_consumer``, then the ``start`` of
    the consumer it returns; once started, the consumer's ``_fetcher``
    (private) gets its ``_proc_fetch_request`` (private: handles one fetch
    response, true when it buffered records) and ``_get_actions_per_node``
    (private: builds the fetch requests) wrapped, and its
    ``_fetch_min_bytes`` and ``_fetch_max_wait_ms`` (private, read for every
    fetch request) set after each response, and before a request is built
    while its ``_records`` (private: the fetched records not consumed yet)
    or the consumer's paused partitions leave some out. Install before the
    app starts.
    """
    thread = app.consumer._thread  # type: ignore[attr-defined]
    create = thread._create_worker_consumer
    flowing, idle = (min_bytes, max_wait_ms), (1, IDLE_FETCH_WAIT_MS)
    partial = (1, PARTIAL_FETCH_WAIT_MS)
    topics = frozenset(read_topics)

    def create_batching(transport: Any) -> Any:
        consumer = create(transport)
        start = consumer.start

        async def start_batching() -> None:
            await start()
            fetcher = consumer._fetcher
            fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms = idle
            handle = fetcher._proc_fetch_request
            #: whether the next request is a long poll (the last response buffered nothing)
            polling = [True]

            async def handle_and_adapt(assignment: Any, node_id: int, request: Any) -> bool:
                buffered = await handle(assignment, node_id, request)
                fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms = (
                    flowing if buffered else idle)
                polling[0] = not buffered
                return buffered

            fetcher._proc_fetch_request = handle_and_adapt
            build = fetcher._get_actions_per_node

            def build_without_partial_long_poll(assignment: Any) -> Any:
                if polling[0]:
                    # a partition the agent reads left out of this request: no long poll
                    left_out = any(tp.topic in topics
                                   for tp in fetcher._records.keys() | consumer.paused())
                    fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms = (
                        partial if left_out else idle)
                return build(assignment)

            fetcher._get_actions_per_node = build_without_partial_long_poll

        consumer.start = start_batching
        return consumer

    thread._create_worker_consumer = create_batching


def highwater(app: faust.App, tp: TP) -> int | None:
    """The offset after the last record of ``tp`` that the consumer has fetched.

    As of the records already delivered to the streams when
    :func:`track_fetches` is installed (and its snapshot is of
    the current generation and has ``tp``), else Faust's public
    ``Consumer.highwater`` (the consumer's last fetch). None while the
    consumer has not fetched from ``tp`` (aiokafka knows no high-water mark).
    """
    fetches = _FETCHES.get(app)
    delivered = None if fetches is None else fetches.delivered
    if delivered is not None and delivered[0] == generation(app) and tp in delivered[1]:
        value: Any = delivered[1][tp]
    else:
        value = app.consumer.highwater(tp)
    return None if value is None else int(value)


def assignment(app: faust.App) -> set[TP]:
    """The topic-partitions assigned to this worker (Faust's public ``assignment``)."""
    return set(app.consumer.assignment())


def leave_group_on_stop() -> None:
    """Make a static group member (``group.instance.id``) leave the group when it stops.

    Works around: aiokafka sends no LeaveGroup for a static member, as the
    Java client, so a gracefully stopped worker kept its partitions until its
    session expired (10 s of nobody serving them on a scale-down or a
    replacement). The worker wants static membership for a crash restart
    only: a kill -9 sends nothing anyway, and the process restarted in its
    place takes the partitions back without a rebalance. aiokafka speaks
    LeaveGroup v0-v1 (by member id, which the broker accepts for a static
    member too). Wraps the private ``GroupCoordinator._maybe_leave_group``
    (class-wide, once; consumers without a group never call it).
    """
    import logging

    from aiokafka import errors
    from aiokafka.consumer.group_coordinator import GroupCoordinator
    from aiokafka.protocol.group import LeaveGroupRequest

    original = GroupCoordinator._maybe_leave_group
    if getattr(original, "leaves_static_members", False):
        return

    async def maybe_leave_group(self: Any) -> None:
        if self.generation > 0 and self._group_instance_id is not None:
            try:
                await self._send_req(LeaveGroupRequest(self.group_id, self.member_id))
            except errors.KafkaError as exc:
                logging.getLogger(__name__).warning("LeaveGroup of static member %s failed: %r",
                                                    self._group_instance_id, exc)
        await original(self)  # sends nothing more for a static member; resets the generation

    maybe_leave_group.leaves_static_members = True  # type: ignore[attr-defined]
    GroupCoordinator._maybe_leave_group = maybe_leave_group  # type: ignore[method-assign]
