"""The settings model and the topic registry built from it (no broker needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from streams import settings as settings_module
from streams.settings import Settings, broker_addresses, get_settings
from streams.topics import (
    EVENT_TYPES,
    input_topic_for_event_type,
    input_topics,
    message_key,
    parse_message_key,
    topic_specs,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No LOYALTY_* from the caller's shell leaks into these tests."""
    import os

    for key in list(os.environ):
        if key.startswith("LOYALTY_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return monkeypatch


def test_defaults(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = Settings()
    assert s.broker == "kafka://127.0.0.1:9092"
    assert s.bootstrap_servers == ["127.0.0.1:9092"]
    assert (s.broker_port, s.controller_port) == (9092, 9093)
    assert s.app_id == "loyalty-scorer" and s.web_port == 6066 and s.partitions == 4
    assert s.data_dir == Path("var/data") and s.broker_dir == Path("var/broker")
    assert s.api_token is None and s.policy_file is None
    assert s.kafka_version == "3.9.1" and s.broker_heap == "512m"
    assert s.kafka_jars_dir == tmp_path / "cache" / "loyalty-scorer" / "kafka-3.9.1"


def test_environment_overrides(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("LOYALTY_WEB_PORT", "7001")
    clean_env.setenv("LOYALTY_BROKER", "kafka://10.0.0.5:19092;10.0.0.6")
    clean_env.setenv("LOYALTY_PARTITIONS", "8")
    clean_env.setenv("LOYALTY_TOPIC_SCORES", "x.scores")
    clean_env.setenv("LOYALTY_POLICY_FILE", "")
    clean_env.setenv("LOYALTY_KAFKA_VERSION", "3.8.0")
    s = Settings()
    assert s.web_port == 7001 and s.partitions == 8 and s.topic_scores == "x.scores"
    assert s.bootstrap_servers == ["10.0.0.5:19092", "10.0.0.6:9092"]
    assert s.controller_port == 19093
    assert s.policy_file is None
    assert s.kafka_jars_dir.name == "kafka-3.8.0"
    # keyword arguments beat the environment
    assert Settings(web_port=7002).web_port == 7002


@pytest.mark.parametrize(("var", "value"), [
    ("LOYALTY_WEB_PORT", "not-a-number"),
    ("LOYALTY_PARTITIONS", "0"),
    ("LOYALTY_BROKER", "kafka://host:notaport"),
    ("LOYALTY_BROKER_HEAP", "lots"),
])
def test_invalid_values_fail_at_construction(clean_env: pytest.MonkeyPatch, var: str,
                                             value: str) -> None:
    clean_env.setenv(var, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert var.removeprefix("LOYALTY_").lower() in str(info.value)


def test_get_settings_is_cached(clean_env: pytest.MonkeyPatch) -> None:
    get_settings.cache_clear()
    try:
        first = get_settings()
        clean_env.setenv("LOYALTY_WEB_PORT", "7003")
        assert get_settings() is first
        get_settings.cache_clear()
        assert get_settings().web_port == 7003
    finally:
        get_settings.cache_clear()


def test_settings_are_immutable(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError):
        Settings().partitions = 2  # type: ignore[misc]


def test_every_field_is_documented_with_its_default() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, name
        assert field.description.startswith("Default "), name


def test_readme_settings_table_lists_every_field() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(LOYALTY_[A-Z0-9_]+)` \|", readme, re.M))
    expected = {f"LOYALTY_{name.upper()}" for name in Settings.model_fields}
    assert documented == expected


def test_broker_addresses() -> None:
    assert broker_addresses("kafka://a:1;b:2") == [("a", 1), ("b", 2)]
    assert broker_addresses("a:1,b") == [("a", 1), ("b", 9092)]
    with pytest.raises(ValueError):
        broker_addresses("kafka://a:65535")  # no room for the controller port


def test_module_has_no_env_file_support() -> None:
    assert settings_module.Settings.model_config.get("env_file") is None


# --- topic registry --------------------------------------------------------------------


def test_registry_names_partitions_and_policies(clean_env: pytest.MonkeyPatch) -> None:
    s = Settings(partitions=6)
    specs = topic_specs(s)
    names = {field: getattr(s, field) for field in Settings.model_fields
             if field.startswith("topic_")}
    assert sorted(spec.name for spec in specs) == sorted(names.values())
    assert {spec.partitions for spec in specs} == {6}
    assert [spec.name for spec in specs if spec.compacted] == [s.topic_scores,
                                                               s.topic_clv_params]
    assert {spec.name: spec.config["cleanup.policy"] for spec in specs}[s.topic_rewards] == "delete"
    assert input_topics(s) == [s.topic_purchases, s.topic_visits, s.topic_feedback,
                               s.topic_redemptions, s.topic_forget]


def test_event_types_route_to_input_topics(clean_env: pytest.MonkeyPatch) -> None:
    s = Settings()
    route = {t: input_topic_for_event_type(s, t) for t in EVENT_TYPES}
    assert route == {
        "purchase": "loyalty.purchases", "refund": "loyalty.purchases",
        "visit": "loyalty.visits", "feedback": "loyalty.feedback",
        "redemption": "loyalty.redemptions", "forget": "loyalty.forget",
    }
    assert set(route.values()) == set(input_topics(s))
    with pytest.raises(ValueError, match="unknown event type"):
        input_topic_for_event_type(s, "purchased")


def test_message_key() -> None:
    assert message_key("shop-1", "cust|42") == b"shop-1|cust|42"
    assert message_key("café", "é") == "café|é".encode()
    assert parse_message_key(b"shop-1|cust|42") == ("shop-1", "cust|42")
    for shop, customer in [("a|b", "c"), ("", "c"), ("s", "")]:
        with pytest.raises(ValueError):
            message_key(shop, customer)
    with pytest.raises(ValueError):
        parse_message_key(b"no-separator")


def test_a_compression_codec_without_its_library_is_refused_at_startup(monkeypatch) -> None:  # noqa: ANN001
    import importlib.util

    import pydantic

    from streams.settings import Settings

    assert Settings(producer_compression="gzip").producer_compression == "gzip"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "cramjam" else real(name, *a))
    try:
        Settings(producer_compression="lz4")
    except pydantic.ValidationError as exc:
        assert "cramjam" in str(exc)
    else:
        raise AssertionError("lz4 without cramjam was accepted")


@pytest.mark.parametrize(("value", "shops"), [
    ("", None), ("-", frozenset()), ("s1", frozenset({"s1"})),
    (" s1 , s2 ", frozenset({"s1", "s2"})),
])
def test_shop_metrics_lists_the_exported_shops(value: str, shops: frozenset[str] | None) -> None:
    assert Settings(shop_metrics=value).exported_shops == shops


def test_shop_metrics_with_an_empty_id_is_refused_with_the_fix() -> None:
    with pytest.raises(ValidationError, match="an empty shop id"):
        Settings(shop_metrics="s1,,s2")
