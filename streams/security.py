"""Kafka security settings turned into client configuration (SSL, SASL PLAIN/SCRAM).

The ``LOYALTY_SECURITY_PROTOCOL``, ``LOYALTY_SASL_*`` and ``LOYALTY_SSL_*``
settings are validated by :class:`streams.settings.Settings`. This module is
the one place that turns them into client configuration:

* :func:`client_kwargs` - keyword arguments for every aiokafka client
  (``AIOKafkaProducer``, ``AIOKafkaConsumer``, ``AIOKafkaAdminClient``,
  ``AIOKafkaClient``): ``AIOKafkaProducer(bootstrap_servers=..., **client_kwargs(s))``.
* :func:`faust_credentials` - the ``broker_credentials`` of ``faust.App``.

Guarantees: PLAINTEXT yields ``{"security_protocol": "PLAINTEXT"}`` and no
credentials, so the defaults change nothing. TLS always verifies the broker
certificate and host name (the CA file, or the system CAs when none is given).
The password is read from its ``SecretStr`` only here and is never logged.
Raises :class:`ssl.SSLError` or :class:`OSError` when a certificate or key
file cannot be loaded (the settings model already checked that they exist).
"""

from __future__ import annotations

import ssl
from typing import Any

from streams.settings import Settings


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The verifying TLS context of the SSL protocols; None for the others."""
    if settings.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    from aiokafka.helpers import create_ssl_context

    def opt(path: Any) -> str | None:
        return None if path is None else str(path)

    return create_ssl_context(cafile=opt(settings.ssl_cafile),
                              certfile=opt(settings.ssl_certfile),
                              keyfile=opt(settings.ssl_keyfile))


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Security keyword arguments for any aiokafka client, from the settings."""
    kwargs: dict[str, Any] = {"security_protocol": settings.security_protocol}
    context = ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    if settings.security_protocol.startswith("SASL_"):
        assert settings.sasl_password is not None  # checked by the settings model
        kwargs.update(sasl_mechanism=settings.sasl_mechanism,
                      sasl_plain_username=settings.sasl_username,
                      sasl_plain_password=settings.sasl_password.get_secret_value())
    return kwargs


def faust_credentials(settings: Settings) -> Any:
    """``broker_credentials`` for ``faust.App``: None (PLAINTEXT) or Faust credentials.

    Faust turns these back into the same aiokafka arguments as
    :func:`client_kwargs` for its consumer, producer and admin client.
    """
    from faust.auth import SASLCredentials, SSLCredentials

    protocol = settings.security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(settings)
    if protocol == "SSL":
        return SSLCredentials(context)
    assert settings.sasl_password is not None  # checked by the settings model
    # SASLCredentials picks SASL_SSL when it gets a TLS context, else SASL_PLAINTEXT.
    return SASLCredentials(username=settings.sasl_username,
                           password=settings.sasl_password.get_secret_value(),
                           ssl_context=context, mechanism=settings.sasl_mechanism)
