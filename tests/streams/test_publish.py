"""The batch publisher against the real broker: partitioning, order, offsets, acknowledgements;
over both of its batch builders (native, and aiokafka's); and the native batches byte for
byte against aiokafka's builder."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import publish
from streams.app import create_service
from streams.publish import futures, last_offsets
from streams.settings import Settings
from streams.topics import message_key, partition_for
from tests.core.conftest import NEEDS_NATIVE
from tests.streams.broker_io import read_topic, with_producer

PARTITIONS = 3

try:
    from loyalty_native import record_batches
except ImportError:  # no Rust toolchain: aiokafka's builder serves (test_native.py says why)
    record_batches = None


@pytest.fixture(params=[pytest.param("native", marks=NEEDS_NATIVE), "aiokafka"])
def builder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each publisher test over both batch builders."""
    if request.param == "aiokafka":
        monkeypatch.setattr(publish, "_native_builder", lambda producer: None)
    return request.param


def test_records_land_where_kafka_would_put_them_in_order(bootstrap: str, create_topic,
                                                         unique_name, tmp_path: Path,
                                                         builder: str) -> None:
    topic = create_topic(partitions=PARTITIONS)
    settings = Settings(app_id=unique_name("publish"), broker=f"kafka://{bootstrap}",
                        store="memory://", partitions=PARTITIONS, data_dir=tmp_path)
    ctx = create_service(settings, web_enabled=False, sweep_enabled=False).context
    keyed = [(topic, message_key("s1", f"c{i % 7}"), f"k{i}".encode(), None, None)
             for i in range(40)]
    pinned = [(topic, b"any|key", f"p{i}".encode(), [("h", b"v")], 1) for i in range(5)]
    unkeyed = [(topic, None, b"u", None, None)]

    async def run() -> tuple[list[Any], dict[tuple[str, int], int]]:
        sent = await ctx.publisher.publish([*keyed, *pinned, *unkeyed])
        await asyncio.gather(*futures(sent))
        return await read_topic(bootstrap, topic, 46), last_offsets(sent)

    read, last = with_producer(ctx.app, run)
    assert len(read) == 46
    for m in read:
        if m.value.startswith(b"k"):
            assert m.partition == partition_for(m.key, PARTITIONS)
        elif m.value.startswith(b"p"):
            assert m.partition == 1 and m.headers == (("h", b"v"),)
    # Per partition, the records keep the order they were given in.
    for p in range(PARTITIONS):
        got = [m.value for m in sorted(read, key=lambda m: m.offset) if m.partition == p
               and m.value != b"u"]
        want = [v for _, k, v, _, part in [*keyed, *pinned]
                if (part if part is not None else partition_for(k, PARTITIONS)) == p]
        assert got == want, p
    # last_offsets: the offset of each partition's last record.
    for (t, p), offset in last.items():
        assert t == topic
        assert offset == max(m.offset for m in read if m.partition == p)
    assert {p for _, p in last} == {m.partition for m in read}


def test_a_commits_records_for_a_partition_go_in_one_batch(bootstrap: str, create_topic,
                                                           unique_name, tmp_path: Path,
                                                           builder: str) -> None:
    """``producer_batch_bytes`` sizes the batches: 300 KiB of records for one partition
    (a busy commit's changelog records) are one batch, one produce request's share, by
    default; with Kafka's 16 KiB they are about twenty, each a round trip of its own."""
    topic = create_topic(partitions=1)
    records = [(topic, f"c{i}".encode(), bytes(1024), None, 0) for i in range(300)]

    def batches(**kw: Any) -> list[int]:
        settings = Settings(app_id=unique_name("batches"), broker=f"kafka://{bootstrap}",
                            store="memory://", partitions=1, data_dir=tmp_path, **kw)
        ctx = create_service(settings, web_enabled=False, sweep_enabled=False).context

        async def run() -> list[int]:
            sent = await ctx.publisher.publish(records)
            await asyncio.gather(*futures(sent))
            return [s.count for s in sent]

        return with_producer(ctx.app, run)

    assert batches() == [300]
    small = batches(producer_batch_bytes=16_384)
    assert len(small) >= 18 and sum(small) == 300


def test_a_batch_the_topic_refuses_as_too_large_fails_its_future(
        bootstrap: str, create_topic, unique_name, tmp_path: Path, builder: str) -> None:
    """A topic whose ``max.message.bytes`` is below the batch size refuses the batch:
    its future raises, so the agent's commit fails before any write and its records
    go through one at a time (``Processor.handle_batch``), each commit small."""
    from aiokafka.errors import MessageSizeTooLargeError

    topic = create_topic(partitions=1, configs={"max.message.bytes": "65536"})
    settings = Settings(app_id=unique_name("toolarge"), broker=f"kafka://{bootstrap}",
                        store="memory://", partitions=1, data_dir=tmp_path)
    ctx = create_service(settings, web_enabled=False, sweep_enabled=False).context

    async def failure(records: list[Any]) -> BaseException | None:
        sent = await ctx.publisher.publish(records)
        results = await asyncio.gather(*futures(sent), return_exceptions=True)
        return next((r for r in results if isinstance(r, BaseException)), None)

    big = [(topic, f"c{i}".encode(), bytes(1024), None, 0) for i in range(300)]

    async def run() -> tuple[BaseException | None, BaseException | None]:
        return await failure(big), await failure(big[:3])  # one record's outputs fit

    too_large, small = with_producer(ctx.app, run)
    assert isinstance(too_large, MessageSizeTooLargeError)
    assert small is None


def test_a_publisher_over_a_plain_producer_partitions_as_the_worker_s(
        bootstrap: str, create_topic, builder: str) -> None:
    """``Publisher.over`` (the bench's load generator) needs no Faust app: the same
    partitions and order, one acknowledged batch per topic-partition."""
    from aiokafka import AIOKafkaProducer

    topic = create_topic(partitions=PARTITIONS)
    keyed = [(topic, message_key("s1", f"c{i % 5}"), f"k{i}".encode(), None, None)
             for i in range(30)]

    async def run() -> tuple[list[Any], list[Any]]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            sent = await publish.Publisher.over(producer).publish(keyed)
            await asyncio.gather(*futures(sent))
        finally:
            await producer.stop()
        return sent, await read_topic(bootstrap, topic, 30)

    sent, read = asyncio.run(run())
    assert len({(s.topic, s.partition) for s in sent}) == len(sent)
    assert sum(s.count for s in sent) == 30
    for p in range(PARTITIONS):
        got = [m.value for m in sorted(read, key=lambda m: m.offset) if m.partition == p]
        assert got == [v for _, k, v, _, _ in keyed if partition_for(k, PARTITIONS) == p]


@NEEDS_NATIVE
def test_the_native_builder_serves_this_producer(bootstrap: str, unique_name, tmp_path: Path) -> None:
    """Built, it is the publisher's (the worker's producer is neither idempotent nor
    compressing); a compressing producer keeps aiokafka's builder."""

    def native(**kw: Any) -> bool:
        settings = Settings(app_id=unique_name("builder"), broker=f"kafka://{bootstrap}",
                            store="memory://", partitions=1, data_dir=tmp_path, **kw)
        ctx = create_service(settings, web_enabled=False, sweep_enabled=False).context

        async def run() -> bool:
            from streams.compat import aiokafka_producer
            return publish._native_builder(aiokafka_producer(ctx.app)) is not None

        return with_producer(ctx.app, run)

    assert native() is True
    assert native(producer_compression="gzip") is False


blobs = st.one_of(st.none(), st.binary(max_size=300))
records = st.lists(st.tuples(blobs, blobs, st.one_of(st.none(), st.lists(
    st.tuples(st.text(max_size=8), blobs), max_size=3))), min_size=1, max_size=40)


@NEEDS_NATIVE
@given(records, st.integers(0, 2**41), st.integers(100, 5000))
@settings(max_examples=300, deadline=None)
def test_native_batches_are_aiokafka_s_bytes(recs: list[Any], ts: int, max_bytes: int) -> None:
    """The same records at the same instant: aiokafka's builder writes the same bytes
    and splits at the same records; its reader reads them back, CRC and all."""
    from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

    want: list[tuple[bytes, int]] = []
    b, n = None, 0
    for key, value, headers in recs:
        for _ in range(2):
            if b is None:
                b, n = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0,
                                                 producer_id=-1, producer_epoch=-1,
                                                 base_sequence=-1, batch_size=max_bytes), 0
            if b.append(n, timestamp=ts, key=key, value=value, headers=headers or []) is not None:
                n += 1
                break
            want.append((bytes(b.build()), n))
            b = None
    want.append((bytes(b.build()), n))
    got = record_batches(recs, ts, max_bytes)
    assert got == want
    read = [m for data, _ in got for m in DefaultRecordBatch(data)]
    assert [(m.key, m.value, m.headers) for m in read] == [
        (k, v, list(h or [])) for k, v, h in recs]
    assert all(DefaultRecordBatch(data).validate_crc() for data, _ in got)
