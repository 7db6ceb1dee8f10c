"""The webhook sink: one JSON POST per notice, optionally signed with HMAC-SHA256.

The body (UTF-8 JSON)::

    {"version": "1", "id": "5c0f3e9a1b2d4e6f", "status": "firing", "key": "meter-17",
     "labels": {...}, "annotations": {"summary": ..., "description": ..., ...},
     "startsAt": "...Z", "endsAt": null, "resolvedBy": null, "flaggedEvents": 1,
     "first": {alert message}, "last": {alert message}, "generatorURL": null, "sentAt": "...Z"}

``id`` is the fingerprint of the labels, the alert's identity as in Alertmanager: every notice
of the key's alert carries it (a new alert of the key after a resolution too, unless its labels
changed), so a receiver updates one record per id. ``labels`` and
``annotations`` are those of the Alertmanager sink; ``first`` and ``last`` are the alert messages
as published to the alerts topic. ``status`` is ``resolved`` (with ``endsAt`` and ``resolvedBy``:
events, timeout or superseded) when the incident ends, if ``send_resolved``.

With ``secret_file`` each request carries ``<signature_header>: sha256=<hex>``, the HMAC-SHA256 of
the exact body bytes under the file's contents (trailing newline removed). A receiver checks it
with :func:`verify` (or the same three lines in its own language) and may refuse bodies whose
``sentAt`` is old, against replays.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

import orjson

from ..config import AlertsConfig
from ..times import iso_utc
from .incidents import Notice
from .render import describe, generator_url
from .transport import Transport

__all__ = ["WebhookSink", "sign", "verify"]


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC-SHA256 of ``body``.

    >>> sign(b"key", b"{}")
    'sha256=a777724d943eb48dc69bca8a4a6d57a04db3f9ec7e1de4e581e860265bdf3032'
    """
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the signature of ``body`` under ``secret`` (constant time)."""
    return header is not None and hmac.compare_digest(sign(secret, body), header.strip())


class WebhookSink:
    """Renders, signs and posts one notice a request; serves every webhook URL."""

    name = "webhook"
    batch_max = 1
    probe_interval_s: float | None = None  # a webhook has no health endpoint to ask

    def __init__(self, config: AlertsConfig, secret: bytes | None = None) -> None:
        self.config = config
        self.header = config.sinks.webhook.signature_header
        self._secret = secret

    def payload(self, n: Notice, now: float) -> dict[str, Any]:
        return {
            "version": "1",
            "id": n.fingerprint,
            "status": n.status,
            "key": n.key,
            "labels": dict(n.labels),
            "annotations": describe(n),
            "startsAt": iso_utc(n.starts_at),
            "endsAt": None if n.ends_at is None else iso_utc(n.ends_at),
            "resolvedBy": n.resolved_by,
            "flaggedEvents": n.flagged,
            "first": dict(n.first.raw),
            "last": dict(n.last.raw),
            "generatorURL": generator_url(self.config.generator_url, n),
            "sentAt": iso_utc(now),
        }

    def send(
        self, transport: Transport, notices: Sequence[Notice], now: float, timeout_s: float
    ) -> None:
        for n in notices:
            body = orjson.dumps(self.payload(n, now))
            headers = {"Content-Type": "application/json"}
            if self._secret is not None:
                headers[self.header] = sign(self._secret, body)
            transport.request("POST", "", body, headers, timeout_s=timeout_s)

    def probe(self, transport: Transport, timeout_s: float) -> None:
        """Never called (``probe_interval_s`` is None): a webhook has nothing to ask."""
