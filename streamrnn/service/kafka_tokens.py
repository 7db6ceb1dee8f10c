"""The OAUTHBEARER token provider: the token comes from a :class:`~streamrnn.secret.Secret`.

Kafka asks for a token at every login: each new connection, and each re-authentication the
broker schedules (KIP-368). With ``sasl_oauth_token: {file: PATH}`` every login reads the file
again if it changed (its modification time, size or inode), which is what Kubernetes projected
service-account tokens and rotated Secrets need: the kubelet swaps the file, the next login
sends the new token. The token is never logged; a change is, without it.
"""

from __future__ import annotations

import hashlib
import logging

from kafka.net.sasl.oauth import AbstractTokenProvider

from ..secret import Secret
from .kafka_security import reveal

__all__ = ["SecretTokenProvider"]

log = logging.getLogger(__name__)


class SecretTokenProvider(AbstractTokenProvider):
    """kafka-python's ``sasl_oauth_token_provider``, reading the token from ``secret``.

    ``key`` names the config key in errors. A token that cannot be read raises
    :class:`ConfigError` (kafka-python fails that login, and the preflight check reports it).
    """

    def __init__(self, secret: Secret, key: str) -> None:
        super().__init__()
        self.secret = secret
        self.key = key
        self._digest: bytes | None = None
        self.reads = 0  # tokens handed out (tests and logs)

    def token(self) -> str:
        value = str(reveal(self.secret, self.key))  # registered with redact: never logged
        digest = hashlib.sha256(value.encode()).digest()
        if self._digest is not None and digest != self._digest:
            log.info(
                "%s: the token changed (%s); logging in with the new one", self.key, self.secret
            )
        self._digest = digest
        self.reads += 1
        return value

    def __repr__(self) -> str:
        return f"SecretTokenProvider({self.secret!r})"
