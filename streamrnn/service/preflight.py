"""One connection to the cluster before the clients start, and what its failure means.

kafka-python 3.0.12 retries a failed TLS handshake and a refused SASL login inside its bootstrap
until ``bootstrap_timeout_ms`` and then reports only "Unable to bootstrap", so a wrong password
would look like an unreachable broker and be retried forever. :func:`check_cluster` makes the
connection itself, with the same TLS context and kafka-python's own SASL mechanisms, and sorts
what goes wrong into two kinds:

* :class:`ConnectionSetupError` (a :class:`~streamrnn.config.ConfigError`: the service exits
  with status 2 and one line naming the setting, the broker and the cause): an unknown CA, a
  host name the certificate does not hold, an expired or revoked certificate, a client
  certificate the broker requires or refuses, TLS spoken to a plaintext port or plaintext to a
  TLS port, a mechanism the broker does not enable, a wrong password or token.
* :class:`BrokerUnreachable`: nothing listens, the name does not resolve, the broker does not
  answer in time. The caller retries with backoff, as it always did.

The exchange is Kafka's own: ApiVersions v0, then SaslHandshake v1 and SaslAuthenticate v0
(the versions every broker since Kafka 1.0 takes) with the tokens of kafka-python's mechanism
classes, made from the options the clients get, then Metadata v1 for no topic (a listener that
wants a login closes the connection there).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from ..config import ConfigError, KafkaConfig

__all__ = ["BrokerUnreachable", "ConnectionSetupError", "check_cluster", "check_server"]

log = logging.getLogger(__name__)

_API_VERSIONS, _SASL_HANDSHAKE, _SASL_AUTHENTICATE, _METADATA = 18, 17, 36, 3
_UNSUPPORTED_SASL_MECHANISM = 33
_CLIENT_ID = b"streamrnn-preflight"
_HANDSHAKE = "the TLS handshake"

# OpenSSL's X509_V_ERR codes (x509_vfy.h) that mean the CA is not among the trusted ones.
_UNKNOWN_CA = {2, 18, 19, 20, 21}
_EXPIRED, _NOT_YET_VALID, _REVOKED, _NO_CRL = 10, 9, 23, 3
_NAME_MISMATCH = {62, 64}  # hostname, IP address
# TLS alerts a broker sends about our certificate (OpenSSL's reason names).
_CLIENT_CERT_REQUIRED = ("CERTIFICATE_REQUIRED", "HANDSHAKE_FAILURE")
_CLIENT_CERT_REFUSED = ("BAD_CERTIFICATE", "UNKNOWN_CA", "CERTIFICATE_UNKNOWN", "CERTIFICATE_EXPIRED",
                        "ACCESS_DENIED", "UNSUPPORTED_CERTIFICATE", "DECRYPT_ERROR")  # fmt: skip
# Answers of a server that is not speaking TLS to a TLS client.
_NOT_TLS = ("WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
            "HTTP_REQUEST", "UNEXPECTED_EOF")  # fmt: skip


class ConnectionSetupError(ConfigError):
    """The cluster refuses this configuration; retrying cannot help (exit status 2)."""


class BrokerUnreachable(Exception):
    """No broker answered; worth retrying with backoff."""


def _split(server: str) -> tuple[str, int]:
    host, sep, port = server.strip().rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(
            f"service.bootstrap_servers: must list host:port addresses, got {server!r}"
        )
    return host.strip("[]"), int(port)


def check_cluster(
    servers: Sequence[str], kafka: KafkaConfig, security: Mapping[str, Any], timeout_s: float = 10.0
) -> str:
    """Connect to the first server that answers, with TLS and login as configured; returns it.

    ``security`` is :func:`streamrnn.service.kafka_security.security_options` of ``kafka`` (the same
    TLS context and credentials the clients get). Raises :class:`ConnectionSetupError` on the
    first answer that refuses the configuration, :class:`BrokerUnreachable` when none answers.
    """
    away = []
    for server in servers:
        try:
            check_server(server, kafka, security, timeout_s)
            return server
        except BrokerUnreachable as e:
            away.append(str(e))
    raise BrokerUnreachable("; ".join(away) or "service.bootstrap_servers: no server listed")


def check_server(
    server: str, kafka: KafkaConfig, security: Mapping[str, Any], timeout_s: float
) -> None:
    """One server: TCP, TLS, ApiVersions, login. See :func:`check_cluster`."""
    host, port = _split(server)
    try:
        raw = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as e:
        raise BrokerUnreachable(f"{server}: {e.strerror or e}") from None
    with contextlib.ExitStack() as stack:
        sock: socket.socket = stack.enter_context(raw)
        if kafka.security_protocol in ("SSL", "SASL_SSL"):
            sock = stack.enter_context(_tls(raw, host, server, kafka, security["ssl_context"]))
        _api_versions(sock, server, kafka)
        if kafka.security_protocol.startswith("SASL_"):
            _login(sock, host, server, kafka, security)
        _metadata(sock, server, kafka)
    log.debug("preflight: %s accepts %s", server, kafka.security_protocol)


# ---------------------------------------------------------------------------------------------
# TLS


def _tls(
    raw: socket.socket, host: str, server: str, kafka: KafkaConfig, ctx: ssl.SSLContext
) -> ssl.SSLSocket:
    try:
        return ctx.wrap_socket(raw, server_hostname=host.rstrip("."))
    except ssl.SSLCertVerificationError as e:
        raise _verify_error(e, host, server, kafka) from None
    except ssl.SSLError as e:
        raise _alert_error(e, server, kafka, during=_HANDSHAKE) from None
    except TimeoutError:
        raise _not_tls(server, kafka, "no TLS answer in time") from None
    except (ConnectionError, OSError) as e:
        raise _not_tls(
            server, kafka, f"closed the connection during the TLS handshake ({e})"
        ) from None


def _verify_error(
    e: ssl.SSLCertVerificationError, host: str, server: str, kafka: KafkaConfig
) -> ConnectionSetupError:
    code, why = e.verify_code, e.verify_message
    broker = f"the certificate of the broker at {server}"
    if code in _UNKNOWN_CA:
        where = kafka.ssl_cafile or "null (the system's trusted CAs)"
        return ConnectionSetupError(
            f"service.kafka.ssl_cafile: does not hold the CA that signed {broker} ({why}), got {where!r}"
        )
    if code in _NAME_MISMATCH:
        return ConnectionSetupError(
            f"service.bootstrap_servers: {broker} does not name {host!r} ({why}); connect by a name "
            "it holds (service.kafka.ssl_check_hostname: false only for a test cluster), "
            f"got {server!r}"
        )
    if code == _EXPIRED:
        return ConnectionSetupError(
            f"service.bootstrap_servers: {broker} has expired ({why}); the broker needs a renewed "
            f"certificate, got {server!r}"
        )
    if code == _NOT_YET_VALID:
        return ConnectionSetupError(
            f"service.bootstrap_servers: {broker} is not valid yet ({why}); check this machine's "
            f"clock, got {server!r}"
        )
    if code == _REVOKED:
        return ConnectionSetupError(
            f"service.kafka.ssl_crlfile: revokes {broker} ({why}), got {kafka.ssl_crlfile!r}"
        )
    if code == _NO_CRL:
        return ConnectionSetupError(
            f"service.kafka.ssl_crlfile: has no revocation list of the CA that signed {broker} "
            f"({why}), got {kafka.ssl_crlfile!r}"
        )
    return ConnectionSetupError(
        f"service.kafka.ssl_cafile: {broker} does not verify ({why}), got {kafka.ssl_cafile!r}"
    )


def _alert_error(
    e: ssl.SSLError, server: str, kafka: KafkaConfig, during: str
) -> ConfigError | BrokerUnreachable:
    reason = (e.reason or "").upper()
    handshake = during == _HANDSHAKE
    if handshake and (any(r in reason for r in _NOT_TLS) or isinstance(e, ssl.SSLEOFError)):
        return _not_tls(server, kafka, f"{during} failed: {e.reason or e}")
    if isinstance(e, ssl.SSLEOFError):
        cert = " (does it refuse the client certificate?)" if kafka.ssl_certfile else ""
        return BrokerUnreachable(f"{server}: the connection closed after {_HANDSHAKE}{cert}")
    if any(r in reason for r in _CLIENT_CERT_REQUIRED) and kafka.ssl_certfile is None:
        return ConnectionSetupError(
            f"service.kafka.ssl_certfile: the broker at {server} requires a client certificate "
            f"(mutual TLS; it answered {e.reason}), got None"
        )
    if any(r in reason for r in _CLIENT_CERT_REFUSED + _CLIENT_CERT_REQUIRED):
        return ConnectionSetupError(
            f"service.kafka.ssl_certfile: the broker at {server} refused the client certificate "
            f"({e.reason}), got {kafka.ssl_certfile!r}"
        )
    return ConnectionSetupError(
        f"service.kafka.security_protocol: {during} with the broker at {server} failed "
        f"({e.reason or e}), got {kafka.security_protocol!r}"
    )


def _not_tls(server: str, kafka: KafkaConfig, what: str) -> ConnectionSetupError:
    return ConnectionSetupError(
        f"service.kafka.security_protocol: the broker at {server} does not speak TLS ({what}): "
        f"is it a plaintext listener (PLAINTEXT or SASL_PLAINTEXT)?, got {kafka.security_protocol!r}"
    )


# ---------------------------------------------------------------------------------------------
# Kafka requests


def _request(
    sock: socket.socket, api_key: int, version: int, correlation_id: int, body: bytes
) -> bytes:
    header = struct.pack(">hhih", api_key, version, correlation_id, len(_CLIENT_ID)) + _CLIENT_ID
    sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
    head = _recv(sock, 4)
    size = struct.unpack(">i", head)[0]
    if not 4 <= size <= 1 << 20:
        raise _Garbled(head)
    response = _recv(sock, size)
    if struct.unpack(">i", response[:4])[0] != correlation_id:
        raise _Garbled(head)
    return response[4:]


class _Garbled(Exception):
    """The answer is not a Kafka response (a TLS record, an HTTP reply, ...)."""

    def __init__(self, head: bytes) -> None:
        super().__init__(head)
        self.head = head


def _recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError("the broker closed the connection")
        data += chunk
    return data


def _api_versions(sock: socket.socket, server: str, kafka: KafkaConfig) -> None:
    tls = kafka.security_protocol in ("SSL", "SASL_SSL")
    try:
        _request(sock, _API_VERSIONS, 0, 1, b"")
    except ssl.SSLError as e:
        raise _alert_error(
            e, server, kafka, during="the first request after the TLS handshake"
        ) from None
    except TimeoutError:
        raise BrokerUnreachable(f"{server}: no answer to ApiVersions in time") from None
    except (_Garbled, ConnectionError) as e:
        if tls:
            raise BrokerUnreachable(
                f"{server}: the connection closed after the TLS handshake ({e})"
            ) from None
        looks_tls = isinstance(e, _Garbled) and e.head[:1] in (b"\x15", b"\x16")
        answer = "answered with a TLS record" if looks_tls else "closed the connection"
        raise ConnectionSetupError(
            f"service.kafka.security_protocol: the broker at {server} {answer} on a plaintext "
            "request: is it a TLS listener (SSL or SASL_SSL)?, "
            f"got {kafka.security_protocol!r}"
        ) from None


def _metadata(sock: socket.socket, server: str, kafka: KafkaConfig) -> None:
    """Metadata v1 for no topic: a listener that wants a login closes the connection here."""
    try:
        _request(sock, _METADATA, 1, 9, struct.pack(">i", 0))
    except ssl.SSLError as e:
        raise _alert_error(e, server, kafka, during="the Metadata request") from None
    except TimeoutError:
        raise BrokerUnreachable(f"{server}: no answer to Metadata in time") from None
    except (_Garbled, ConnectionError) as e:
        if kafka.security_protocol.startswith("SASL_"):
            raise BrokerUnreachable(
                f"{server}: the connection closed after the login ({e})"
            ) from None
        raise ConnectionSetupError(
            f"service.kafka.security_protocol: the broker at {server} closed the connection on a "
            "Metadata request without a login: does the listener want SASL (SASL_SSL or "
            f"SASL_PLAINTEXT)?, got {kafka.security_protocol!r}"
        ) from None


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def _login(
    sock: socket.socket, host: str, server: str, kafka: KafkaConfig, security: Mapping[str, Any]
) -> None:
    mech = str(kafka.sasl_mechanism)
    try:
        body = _request(sock, _SASL_HANDSHAKE, 1, 2, _string(mech))
    except (_Garbled, ConnectionError, OSError) as e:
        raise BrokerUnreachable(f"{server}: no answer to SaslHandshake ({e})") from None
    error, offered = _handshake_answer(body)
    if error == _UNSUPPORTED_SASL_MECHANISM:
        raise ConnectionSetupError(
            f"service.kafka.sasl_mechanism: the broker at {server} does not enable {mech} "
            f"(it offers {', '.join(offered) or 'none'}), got {mech!r}"
        )
    if error:
        raise ConnectionSetupError(
            f"service.kafka.sasl_mechanism: the broker at {server} refused SaslHandshake for {mech} "
            f"(error {error}), got {mech!r}"
        )
    mechanism = _mechanism(mech, host, kafka, security)
    if mechanism is None:
        return  # an unknown kafka-python layout: the clients make the login themselves
    correlation = 3
    while not mechanism.is_done():
        try:
            answer = _request(
                sock, _SASL_AUTHENTICATE, 0, correlation, _bytes(mechanism.auth_bytes())
            )
        except (_Garbled, ConnectionError, OSError) as e:
            raise _refused(server, kafka, f"the broker closed the connection ({e})") from None
        correlation += 1
        code, message, data = _authenticate_answer(answer)
        if code:
            raise _refused(server, kafka, message or f"error {code}")
        try:
            mechanism.receive(data)
        except Exception as e:  # kafka-python's SCRAM client raises on a server error message
            said = data.decode("utf-8", "replace")
            raise _refused(
                server, kafka, said if said.startswith("e=") else f"{type(e).__name__}: {e}"
            ) from None
    if not mechanism.is_authenticated():
        raise _refused(server, kafka, "the login did not complete")


def _bytes(data: bytes) -> bytes:
    return struct.pack(">i", len(data)) + data


def _handshake_answer(body: bytes) -> tuple[int, list[str]]:
    error, count = struct.unpack(">hi", body[:6])
    pos, out = 6, []
    for _ in range(max(count, 0)):
        n = struct.unpack(">h", body[pos : pos + 2])[0]
        out.append(body[pos + 2 : pos + 2 + n].decode())
        pos += 2 + n
    return error, out


def _authenticate_answer(body: bytes) -> tuple[int, str | None, bytes]:
    error, n = struct.unpack(">hh", body[:4])
    pos = 4 + max(n, 0)
    message = body[4:pos].decode("utf-8", "replace") if n >= 0 else None
    size = struct.unpack(">i", body[pos : pos + 4])[0]
    return error, message, body[pos + 4 : pos + 4 + max(size, 0)]


def _mechanism(mech: str, host: str, kafka: KafkaConfig, security: Mapping[str, Any]) -> Any:
    try:
        from kafka.net.sasl import get_sasl_mechanism
    except ImportError:  # pragma: no cover - kafka-python moved its SASL code
        log.debug("preflight: kafka-python has no kafka.net.sasl; the clients log in themselves")
        return None
    return get_sasl_mechanism(mech)(host=host, **security)


def _refused(server: str, kafka: KafkaConfig, why: str) -> ConnectionSetupError:
    mech = kafka.sasl_mechanism
    if mech == "OAUTHBEARER":
        return ConnectionSetupError(
            f"service.kafka.sasl_oauth_token: the broker at {server} refused the OAUTHBEARER token "
            f"({why}), got {kafka.sasl_oauth_token!r}"
        )
    return ConnectionSetupError(
        f"service.kafka.sasl_password: the broker at {server} refused the {mech} login of user "
        f"{kafka.sasl_username!r} ({why}: a wrong password or an unknown user), "
        f"got {kafka.sasl_password!r}"
    )
