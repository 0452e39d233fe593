"""The compatibility layer's startup check against the installed faust-streaming and aiokafka."""

from __future__ import annotations

from importlib.metadata import version

import pytest
from faust.tables.recovery import Recovery
from faust.transport.consumer import ThreadDelegateConsumer

from streams import compat
from streams.compat.check import Touch


def test_every_touched_name_exists_in_the_installed_versions() -> None:
    compat.check()  # raises CompatError otherwise
    modules = {t.module for t in compat.TOUCHES}
    assert {"faust.streams", "faust.stores.rocksdb", "faust.tables.recovery",
            "faust.transport.consumer", "faust.transport.drivers.aiokafka",
            "aiokafka.admin", "aiokafka.client"} <= modules


def test_a_missing_method_fails_naming_versions_and_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(Recovery, "_build_offsets")
    with pytest.raises(compat.CompatError) as err:
        compat.check()
    message = str(err.value)
    assert f"faust-streaming {version('faust-streaming')}" in message
    assert f"aiokafka {version('aiokafka')}" in message
    assert "faust.tables.recovery.Recovery._build_offsets is missing" in message
    assert "on_recovery_offsets" in message


def test_a_missing_declared_instance_attribute_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    annotations = dict(vars(ThreadDelegateConsumer)["__annotations__"])
    del annotations["_thread"]
    monkeypatch.setattr(ThreadDelegateConsumer, "__annotations__", annotations)
    with pytest.raises(compat.CompatError,
                       match=r"ThreadDelegateConsumer\._thread is missing"):
        compat.check()


def test_a_missing_module_fails_clearly() -> None:
    gone = Touch("faust.no_such_module", "Thing", "name", "events.partition_context")
    with pytest.raises(compat.CompatError, match=r"faust\.no_such_module\.Thing is missing"):
        compat.check((gone,))


def test_an_instance_attribute_set_in_init_counts_and_a_missing_one_fails() -> None:
    compat.check((Touch("aiokafka", "AIOKafkaConsumer", "_client",
                        "clients.refresh_topic_metadata", set_in_init=True),))
    gone = Touch("aiokafka", "AIOKafkaConsumer", "_no_such_client",
                 "clients.refresh_topic_metadata", set_in_init=True)
    with pytest.raises(compat.CompatError, match=r"AIOKafkaConsumer\._no_such_client is missing"):
        compat.check((gone,))


def test_a_missing_compression_library_fails_naming_the_codecs_and_the_package(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from aiokafka import codec

    monkeypatch.setattr(codec, "cramjam", None)
    with pytest.raises(compat.CompatError, match="snappy, lz4, zstd: the cramjam package"):
        compat.check()
