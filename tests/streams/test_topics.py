"""Kafka's default partitioner as the worker computes it (:func:`streams.topics.partition_for`).

Every producer of the input topics (Java, librdkafka, aiokafka) puts a key
where its default partitioner says; the worker must compute the same
partition for its own outputs and for the check that an input record is
keyed where its customer lives. Both implementations of the hash (the
native one and aiokafka's behind a cache) are compared with aiokafka's
partitioner; the native one also with the Java client's vectors in Rust.
"""

from __future__ import annotations

import sys

import pytest
from aiokafka.partitioner import DefaultPartitioner, murmur2
from hypothesis import given
from hypothesis import strategies as st

from streams import topics
from streams.topics import partition_for
from tests.core.conftest import NEEDS_NATIVE

keys = st.binary(min_size=0, max_size=80)
counts = st.integers(min_value=1, max_value=64)


def kafka_partition(key: bytes, partitions: int) -> int:
    all_partitions = list(range(partitions))
    return DefaultPartitioner()(key, all_partitions, all_partitions)


@given(keys, counts)
def test_partition_for_is_kafkas_default_partitioner(key: bytes, partitions: int) -> None:
    assert partition_for(key, partitions) == kafka_partition(key, partitions)


@NEEDS_NATIVE
@given(keys)
def test_the_native_hash_is_aiokafkas_murmur2(key: bytes) -> None:
    from loyalty_native import partition_hash

    assert partition_hash(key) == murmur2(key) & 0x7FFFFFFF


@NEEDS_NATIVE
def test_the_worker_uses_the_native_hash_when_it_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    from loyalty_native import partition_hash

    monkeypatch.setattr(topics, "_key_hash", None)
    partition_for(b"s1|c1", 4)
    assert topics._key_hash is partition_hash


def test_without_the_native_engine_aiokafkas_hash_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topics, "_key_hash", None)
    monkeypatch.setitem(sys.modules, "loyalty_native", None)  # import fails as if never built
    samples = [b"", b"a", b"s1|c1", b"shop-3|cust-0001234", bytes(range(256))]
    assert [partition_for(k, 7) for k in samples] == [kafka_partition(k, 7) for k in samples]
    assert topics._key_hash is not None and topics._key_hash.__module__ == "streams.topics"
