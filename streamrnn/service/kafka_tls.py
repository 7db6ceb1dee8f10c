"""The client TLS context of every Kafka client, built once from ``service.kafka``.

kafka-python would build a context per connection from its ``ssl_*`` options; streamrnn builds
one with the same settings (TLS 1.2 or later, the broker's certificate verified against
``ssl_cafile`` or the system's CAs, its host name checked unless ``ssl_check_hostname`` is
false, the CRL applied to the broker's certificate) and hands it over as ``ssl_context``. The
files are read once, at start-up, so a missing or wrong file stops start-up naming its key, and
the key's password never reaches kafka-python.

An encrypted key without ``ssl_password`` is an error, never an interactive prompt (OpenSSL
would ask on the terminal).
"""

from __future__ import annotations

import ssl

from ..config import ConfigError, KafkaConfig
from .kafka_security import reveal

__all__ = ["client_context"]

_KEY = "service.kafka."


class _NoPassword(Exception):
    """The key file is encrypted and no ssl_password is configured."""


def _no_password() -> bytes:
    raise _NoPassword


def _file_error(key: str, path: str, what: str, e: Exception) -> ConfigError:
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return ConfigError(f"{_KEY}{key}: must be {what} ({reason}), got {path!r}")


def client_context(kafka: KafkaConfig) -> ssl.SSLContext:
    """An ``SSLContext`` for kafka-python's ``ssl_context``; :class:`ConfigError` names the key
    whose file is missing, unreadable or wrong."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = kafka.ssl_check_hostname
    if kafka.ssl_cafile:
        _load_verify(ctx, "ssl_cafile", kafka.ssl_cafile, "a PEM file of CA certificates")
    else:
        ctx.load_default_certs()
    if kafka.ssl_certfile:
        _load_chain(ctx, kafka)
    if kafka.ssl_crlfile:
        _load_verify(ctx, "ssl_crlfile", kafka.ssl_crlfile, "a PEM certificate revocation list")
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def _load_verify(ctx: ssl.SSLContext, key: str, path: str, what: str) -> None:
    try:
        ctx.load_verify_locations(cafile=path)
    except (OSError, ssl.SSLError) as e:
        raise _file_error(key, path, what, e) from None


def _load_chain(ctx: ssl.SSLContext, kafka: KafkaConfig) -> None:
    certfile = str(kafka.ssl_certfile)
    keyfile = kafka.ssl_keyfile
    password = (
        reveal(kafka.ssl_password, _KEY + "ssl_password")
        if kafka.ssl_password is not None
        else None
    )
    try:
        ctx.load_cert_chain(certfile, keyfile, password if password is not None else _no_password)
    except _NoPassword:
        raise ConfigError(
            f"{_KEY}ssl_keyfile: is encrypted, so service.kafka.ssl_password must be set, "
            f"got {keyfile or certfile!r}"
        ) from None
    except OSError as e:
        which = "ssl_keyfile" if keyfile and e.filename == keyfile else "ssl_certfile"
        path = keyfile if which == "ssl_keyfile" and keyfile else certfile
        raise _file_error(which, path, "a readable PEM file", e) from None
    except ssl.SSLError as e:
        raise _chain_error(e, certfile, keyfile, password is not None) from None


def _chain_error(
    e: ssl.SSLError, certfile: str, keyfile: str | None, has_password: bool
) -> ConfigError:
    reason = (e.reason or "").upper()
    text = str(e)
    if has_password and ("BAD_DECRYPT" in reason or "bad decrypt" in text.lower()):
        return ConfigError(
            f"{_KEY}ssl_password: does not decrypt service.kafka.ssl_keyfile, got '***' "
            f"for {keyfile or certfile!r}"
        )
    if "KEY_VALUES_MISMATCH" in reason:
        return ConfigError(
            f"{_KEY}ssl_keyfile: must be the private key of service.kafka.ssl_certfile "
            f"{certfile!r}, got {keyfile or certfile!r}"
        )
    return ConfigError(
        f"{_KEY}ssl_certfile: must be a PEM certificate with its key "
        f"(in the file or in ssl_keyfile) ({text}), got {certfile!r}"
    )
