"""The Kafka connection flags of ``run``, ``produce`` and ``demo``: the common keys of
``service.kafka`` (docs/security.md).

Each flag sets one config key and wins over the environment and the config file. A password or
token is never a flag's value, since every user of the machine can read a command line (``ps``):
``--sasl-password-file`` and its siblings name a file (``{file: PATH}``, read again when it
changes), and ``STREAMRNN_SERVICE__KAFKA__SASL_PASSWORD`` (or ``..._PASSWORD__FILE``) gives one
from the environment. The other keys (``ssl_check_hostname``, ``ssl_crlfile``, the option maps)
are set in the config file or the environment.

>>> import argparse
>>> p = argparse.ArgumentParser()
>>> add_arguments(p)
>>> args = p.parse_args(["--security-protocol", "SASL_SSL", "--sasl-password-file", "/run/pw"])
>>> {k: v for k, v in overrides(args).items() if v is not None}
{'service.kafka.security_protocol': 'SASL_SSL', 'service.kafka.sasl_password': {'file': '/run/pw'}}
"""

from __future__ import annotations

import argparse
import logging
import os
import typing
from typing import Any

from ..config import KafkaConfig, SaslMechanism, SecurityProtocol
from ..service.clients import Connection, split_servers

__all__ = ["add_arguments", "connection", "given", "overrides", "preflight"]

log = logging.getLogger(__name__)

_PREFIX = "service.kafka."
# flag -> (key under service.kafka, metavar or choices, help, the value names a secret's file)
_FLAGS: dict[str, tuple[str, Any, str, bool]] = {
    "--security-protocol": (
        "security_protocol",
        typing.get_args(SecurityProtocol),
        "PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL",
        False,
    ),
    "--ssl-cafile": ("ssl_cafile", "PEM", "CA bundle of the brokers' certificates", False),
    "--ssl-certfile": ("ssl_certfile", "PEM", "client certificate, for mutual TLS", False),
    "--ssl-keyfile": ("ssl_keyfile", "PEM", "its private key, when not in --ssl-certfile", False),
    "--ssl-password-file": ("ssl_password", "FILE", "file holding the key's password", True),
    "--sasl-mechanism": (
        "sasl_mechanism",
        typing.get_args(SaslMechanism),
        "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER",
        False,
    ),
    "--sasl-username": ("sasl_username", "USER", "PLAIN and SCRAM user", False),
    "--sasl-password-file": ("sasl_password", "FILE", "file holding the SASL password", True),
    "--sasl-oauth-token-file": (
        "sasl_oauth_token",
        "FILE",
        "file holding the OAUTHBEARER token, read again when it changes",
        True,
    ),
}


def _dest(flag: str) -> str:
    return "kafka_" + flag.lstrip("-").replace("-", "_")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags, in a group of their own."""
    group = parser.add_argument_group(
        "Kafka security",
        "TLS and SASL to the brokers (service.kafka; docs/security.md). Passwords and tokens "
        "come from files or the environment, never from a flag's value.",
    )
    for flag, (key, shape, text, _) in _FLAGS.items():
        kwargs: dict[str, Any] = {"dest": _dest(flag), "help": f"{text} ({_PREFIX}{key})"}
        if isinstance(shape, tuple):
            kwargs["choices"] = shape
        else:
            kwargs["metavar"] = shape
        group.add_argument(flag, **kwargs)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted config keys of the flags (None where a flag was not given)."""
    out: dict[str, Any] = {}
    for flag, (key, _, _, secret_file) in _FLAGS.items():
        value = getattr(args, _dest(flag), None)
        out[_PREFIX + key] = {"file": value} if secret_file and value is not None else value
    return out


def given(args: argparse.Namespace) -> list[str]:
    """The flags of this module that were given."""
    return [flag for flag in _FLAGS if getattr(args, _dest(flag), None) is not None]


def connection(
    config_file: str | None, servers: str | None, args: argparse.Namespace
) -> tuple[tuple[str, ...], KafkaConfig]:
    """The bootstrap servers and ``service.kafka`` of a tool (``produce``, ``demo``): the flags,
    then the environment, then ``config_file`` (a service config), then the defaults.

    Raises :class:`~streamrnn.config.ConfigError` naming the key (and the variable)."""
    from ..configsources import resolve_config

    keys = overrides(args)
    if servers is not None:
        keys["service.bootstrap_servers"] = list(split_servers(servers))
    svc = resolve_config(config_file, keys, os.environ).config.service
    return svc.bootstrap_servers, svc.kafka


def preflight(servers: tuple[str, ...], kafka: KafkaConfig) -> Connection:
    """A :class:`~streamrnn.service.clients.Connection`, checked with one connection: raises
    :class:`~streamrnn.service.preflight.ConnectionSetupError` when the cluster refuses the
    configuration; a broker that does not answer is left to the clients' own retries."""
    from ..service.preflight import BrokerUnreachable

    conn = Connection.of(servers, kafka)
    try:
        conn.check()
    except BrokerUnreachable as e:
        log.warning("no Kafka broker answered yet (%s); the client keeps trying", e)
    return conn
