"""``service.kafka`` to the keyword arguments of kafka-python's clients.

:func:`client_options` gives, for ``"consumer"``, ``"producer"`` or ``"admin"``, the security
arguments (``security_protocol``, one shared ``ssl_context``, the SASL login or token provider)
followed by the pass-through map of that client (``service.kafka.consumer_options``, ...).
The caller adds its own arguments (bootstrap servers, group, timeouts) first, and the
pass-through map may override those it does not own.

:func:`check_options` checks a pass-through map against the options kafka-python 3 knows
(``KafkaConsumer.DEFAULT_CONFIG`` and its siblings). It refuses an unknown name (with the
closest known one), an option with a streamrnn key of its own (``group_id`` is
``service.group``), one that would break an invariant (``enable_auto_commit``: offsets are
committed only after the alerts are acknowledged; a producer's ``acks``), one that takes a
Python object, and a value of the wrong type.

The password handed to kafka-python is a ``str`` whose ``repr`` is ``'***'``: kafka-python logs
its configuration as a dict at DEBUG, and a dict shows its values by ``repr``. Every revealed
value is also registered with :mod:`.redact`, which masks it in every log record.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

from ..config import ConfigError, KafkaConfig
from ..redact import protect
from ..secret import MASK, Secret, SecretError, looks_secret

__all__ = ["Role", "check_options", "client_options", "known_options", "reveal"]

Role = Literal["consumer", "producer", "admin"]

_CLIENT_CLASS = {
    "consumer": "KafkaConsumer",
    "producer": "KafkaProducer",
    "admin": "KafkaAdminClient",
}

_SECURITY = "set in service.kafka"
#: Options streamrnn sets itself, and why a pass-through map may not.
_OWNED: dict[str, str] = {
    "bootstrap_servers": "set in service.bootstrap_servers",
    "security_protocol": _SECURITY,
    "ssl_context": _SECURITY,
    "ssl_check_hostname": _SECURITY,
    "ssl_cafile": _SECURITY,
    "ssl_certfile": _SECURITY,
    "ssl_keyfile": _SECURITY,
    "ssl_password": _SECURITY,
    "ssl_crlfile": _SECURITY,
    "sasl_mechanism": _SECURITY,
    "sasl_plain_username": "set in service.kafka.sasl_username",
    "sasl_plain_password": "set in service.kafka.sasl_password",
    "sasl_oauth_token_provider": "set in service.kafka.sasl_oauth_token",
    "sasl_kerberos_name": "GSSAPI is not a supported mechanism",
    "sasl_kerberos_service_name": "GSSAPI is not a supported mechanism",
    "sasl_kerberos_domain_name": "GSSAPI is not a supported mechanism",
}
_OWNED_BY_ROLE: dict[str, dict[str, str]] = {
    "consumer": {
        "group_id": "set in service.group",
        "enable_auto_commit": "streamrnn commits offsets only after their alerts are acknowledged",
        "auto_offset_reset": "set in service.auto_offset_reset",
        "allow_auto_create_topics": "streamrnn waits for a missing input topic, never creates it",
        "max_poll_records": "set in service.max_poll_records",
        "fetch_max_wait_ms": "set in service.fetch_max_wait_ms",
        "max_partition_fetch_bytes": "set in service.max_partition_fetch_bytes",
        "max_poll_interval_ms": "set in service.max_poll_interval_ms",
        "session_timeout_ms": "set in service.session_timeout_ms",
        "heartbeat_interval_ms": "set in service.heartbeat_interval_ms",
        "retry_backoff_ms": "set in service.client_retry_backoff_ms",
    },
    "producer": {
        "acks": "streamrnn's producer needs acks=all: offsets are committed after the acks",
        "transactional_id": "streamrnn does not produce in transactions",
    },
    "admin": {},
}
#: Options whose values are Python objects (functions, classes), which a YAML file cannot give.
_OBJECTS = {
    "key_deserializer", "value_deserializer", "key_serializer", "value_serializer",
    "default_offset_commit_callback", "partition_assignment_strategy", "partitioner",
    "selector", "kafka_client", "metric_reporters", "socket_options", "socks5_proxy",
}  # fmt: skip


def known_options(role: Role) -> dict[str, Any]:
    """kafka-python's options of the ``role`` client and their defaults."""
    import kafka

    return dict(getattr(kafka, _CLIENT_CLASS[role]).DEFAULT_CONFIG)


def _type_rule(default: Any) -> tuple[Callable[[Any], bool], str] | None:
    if isinstance(default, bool):
        return (lambda v: isinstance(v, bool)), "true or false"
    if isinstance(default, int):
        return (lambda v: isinstance(v, int) and not isinstance(v, bool)), "an integer"
    if isinstance(default, float):
        return (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)), "a number"
    if isinstance(default, str):
        return (lambda v: isinstance(v, str)), "a string"
    return None  # None and others: kafka-python checks the value itself


def check_options(role: Role, options: Mapping[str, Any], name: Callable[[str], str]) -> None:
    """Raise :class:`ConfigError` for the first option kafka-python's ``role`` client would not
    take, or that streamrnn owns. ``name(option)`` is how the error names it."""
    if not options:
        return
    known = known_options(role)
    cls = _CLIENT_CLASS[role]
    for opt, value in options.items():
        shown = MASK if looks_secret(opt) else repr(value)
        if opt not in known:
            near = difflib.get_close_matches(opt, list(known), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(
                f"{name(opt)}: must be an option of kafka-python's {cls}{hint}, got {shown}"
            )
        why = _OWNED.get(opt) or _OWNED_BY_ROLE[role].get(opt)
        if why is not None:
            raise ConfigError(f"{name(opt)}: cannot be passed through ({why}), got {shown}")
        if opt in _OBJECTS:
            raise ConfigError(
                f"{name(opt)}: takes a Python object, which a config file cannot give, got {shown}"
            )
        rule = _type_rule(known[opt])
        if rule is not None and not rule[0](value):
            raise ConfigError(
                f"{name(opt)}: must be {rule[1]} (kafka-python's default is "
                f"{_default_text(known[opt])}), got {shown}"
            )


def _default_text(default: Any) -> str:
    return "unbounded" if isinstance(default, float) and math.isinf(default) else repr(default)


class _Masked(str):
    """A password for kafka-python: the text itself, but ``'***'`` when shown by ``repr``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(MASK)


def reveal(secret: Secret, key: str) -> str:
    """The secret's value, or :class:`ConfigError` naming ``key`` when it cannot be read."""
    try:
        value = secret.reveal()
    except SecretError as e:
        raise ConfigError(f"{key}: {e}, got {secret!r}") from None
    if value == MASK:
        raise ConfigError(
            f"{key}: is {MASK!r}, the mask streamrnn prints in place of a secret, not the secret; "
            f"give the value, {{env: NAME}} or {{file: PATH}}, got {secret!r}"
        )
    protect(value)
    return _Masked(value)


def security_options(kafka: KafkaConfig) -> dict[str, Any]:
    """The TLS and SASL arguments of every client; builds the TLS context (reads the files)."""
    from .kafka_tls import client_context
    from .kafka_tokens import SecretTokenProvider

    out: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        out["ssl_context"] = client_context(kafka)
        out["ssl_check_hostname"] = kafka.ssl_check_hostname
    if not kafka.security_protocol.startswith("SASL_"):
        return out
    out["sasl_mechanism"] = kafka.sasl_mechanism
    if kafka.sasl_mechanism == "OAUTHBEARER":
        assert kafka.sasl_oauth_token is not None  # config rule: OAUTHBEARER needs it
        token = kafka.sasl_oauth_token
        reveal(token, "service.kafka.sasl_oauth_token")  # readable now, not at the first connect
        out["sasl_oauth_token_provider"] = SecretTokenProvider(
            token, "service.kafka.sasl_oauth_token"
        )
    else:
        assert kafka.sasl_password is not None  # config rule: PLAIN and SCRAM need it
        out["sasl_plain_username"] = kafka.sasl_username
        out["sasl_plain_password"] = reveal(kafka.sasl_password, "service.kafka.sasl_password")
    return out


def client_options(
    kafka: KafkaConfig, role: Role, security: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Security arguments and the ``role``'s pass-through options, for ``KafkaConsumer(**...)``
    and its siblings. ``security`` is a :func:`security_options` result to share between the
    clients of one service (one TLS context, one token provider); by default a new one."""
    out = dict(security if security is not None else security_options(kafka))
    passthrough = getattr(kafka, f"{role}_options")
    out.update({k: tuple(v) if isinstance(v, list) else v for k, v in passthrough.items()})
    return out
