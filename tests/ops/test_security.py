"""Kafka security settings: validation and the client configuration they generate.

Checked for every protocol and mechanism, with real TLS contexts built from
real certificate files, and against Faust's own conversion of its
credentials. The real SASL_PLAINTEXT round trip through a broker is in
tests/integration/test_ops_sasl.py.
"""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from streams.security import client_kwargs, faust_credentials
from streams.settings import Settings

SECRET = "s3cr3t-Pa55"


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and its key, made by openssl (real PEM files)."""
    d = tmp_path_factory.mktemp("pem")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    s = Settings()
    assert client_kwargs(s) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(s) is None


def test_ssl_verifies_the_broker_with_the_given_ca_and_client_cert(pem) -> None:
    cert, key = pem
    s = Settings(security_protocol="SSL", ssl_cafile=cert, ssl_certfile=cert, ssl_keyfile=key)
    kw = client_kwargs(s)
    assert set(kw) == {"security_protocol", "ssl_context"}
    assert kw["security_protocol"] == "SSL"
    ctx = kw["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    # The CA file was loaded: exactly our self-signed certificate is trusted.
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "localhost"),),)]
    creds = faust_credentials(s)
    from faust.auth import SSLCredentials
    assert isinstance(creds, SSLCredentials) and creds.protocol.value == "SSL"


def test_ssl_without_ca_uses_the_system_store() -> None:
    kw = client_kwargs(Settings(security_protocol="SSL"))
    assert kw["ssl_context"].verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext(mechanism: str) -> None:
    s = Settings(security_protocol="SASL_PLAINTEXT", sasl_mechanism=mechanism,
                 sasl_username="svc", sasl_password=SECRET)
    assert client_kwargs(s) == {"security_protocol": "SASL_PLAINTEXT",
                                "sasl_mechanism": mechanism, "sasl_plain_username": "svc",
                                "sasl_plain_password": SECRET}


def test_sasl_ssl_has_both_the_context_and_the_credentials(pem) -> None:
    cert, _ = pem
    s = Settings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                 sasl_username="svc", sasl_password=SECRET, ssl_cafile=cert)
    kw = client_kwargs(s)
    assert kw["security_protocol"] == "SASL_SSL"
    assert kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kw["sasl_plain_username"], kw["sasl_plain_password"]) == ("svc", SECRET)
    assert isinstance(kw["ssl_context"], ssl.SSLContext)


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL", "SSL"])
def test_faust_gets_the_same_client_configuration(protocol: str, pem) -> None:
    """Faust converts broker_credentials to aiokafka kwargs: they must equal ours."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    cert, _ = pem
    extra = {"ssl_cafile": cert} if "SSL" in protocol else {}
    if protocol.startswith("SASL_"):
        extra |= {"sasl_username": "svc", "sasl_password": SECRET,
                  "sasl_mechanism": "SCRAM-SHA-256"}
    s = Settings(security_protocol=protocol, **extra)
    ours = client_kwargs(s)
    theirs = dict(credentials_to_aiokafka_auth(faust_credentials(s)))
    context = theirs.pop("ssl_context", None)
    assert (context is not None) == ("SSL" in protocol)
    ours.pop("ssl_context", None)
    theirs = {k: v for k, v in theirs.items() if v is not None}
    assert theirs == ours


def test_faust_app_is_built_with_the_credentials() -> None:
    from streams.app import create_service

    s = Settings(security_protocol="SASL_PLAINTEXT", sasl_username="svc", sasl_password=SECRET,
                 store="memory://")
    service = create_service(s, web_enabled=False, sweep_enabled=False)
    creds = service.app.conf.broker_credentials
    assert (creds.username, creds.password, creds.mechanism.value) == ("svc", SECRET, "PLAIN")


@pytest.mark.parametrize(("kw", "message"), [
    ({"security_protocol": "SASL_SSL", "sasl_username": "u"}, "LOYALTY_SASL_PASSWORD"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_password": "p"}, "LOYALTY_SASL_USERNAME"),
    ({"sasl_username": "u", "sasl_password": "p"}, "does not use SASL"),
    ({"ssl_cafile": str(Path(__file__))}, "does not use TLS"),
    ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"}, "no such file"),
    ({"security_protocol": "SSL", "ssl_keyfile": str(Path(__file__))}, "needs LOYALTY_SSL_CERTFILE"),
    ({"security_protocol": "TLS"}, "security_protocol"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI", "sasl_username": "u",
      "sasl_password": "p"}, "sasl_mechanism"),
])
def test_bad_security_settings_name_the_problem(kw: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        Settings(**kw)
    assert message in str(err.value)


def test_env_variables_are_read_and_the_password_never_shows(monkeypatch) -> None:
    monkeypatch.setenv("LOYALTY_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("LOYALTY_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("LOYALTY_SASL_USERNAME", "svc")
    monkeypatch.setenv("LOYALTY_SASL_PASSWORD", SECRET)
    s = Settings()
    assert client_kwargs(s)["sasl_plain_password"] == SECRET
    assert SECRET not in repr(s) and SECRET not in str(s.model_dump())
    assert SECRET not in repr(faust_credentials(s))


#: aiokafka clients, and our helpers that build them from a ``client`` argument
_CLIENTS = {"AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaAdminClient", "AIOKafkaClient"}
_TAKES_CLIENT = {"ensure_topics", "bulk_restore"}


def test_every_kafka_client_of_the_service_and_cli_gets_the_security_settings() -> None:
    # A client built without them works against the local PLAINTEXT broker and
    # fails only on a managed cluster: check the code, not just the runs.
    # streams/bench/ measures against the local broker only (it refuses others).
    import ast

    root = Path(__file__).resolve().parents[2] / "streams"
    unwired, seen = [], 0
    for path in sorted(root.rglob("*.py")):
        if "bench" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name in _CLIENTS:
                seen += 1
                # **client_kwargs(settings), or **(client or {}) in a helper given them
                if not any(k.arg is None for k in node.keywords):
                    unwired.append(f"{path.relative_to(root.parent)}:{node.lineno} {name}")
            elif name in _TAKES_CLIENT:
                seen += 1
                if not any(k.arg == "client" for k in node.keywords):
                    unwired.append(f"{path.relative_to(root.parent)}:{node.lineno} {name}")
    assert seen >= 15  # the walk found the clients (12 direct, 4 through helpers today)
    assert unwired == []


def test_the_bench_refuses_a_secured_broker_with_a_clear_message() -> None:
    from streams.bench.harness import BenchError, check_broker

    with pytest.raises(BenchError, match="PLAINTEXT"):
        check_broker(Settings(security_protocol="SASL_PLAINTEXT", sasl_username="u",
                              sasl_password=SECRET))
