"""HTTP for the sinks: one request, its outcome, and what may be retried.

Outcomes: a 2xx answer is delivered. A connection error, a timeout, 408, 429 or a 5xx may
succeed later: :class:`Retry`. Any other answer (400: a payload the target refuses, 401, 404)
cannot succeed by sending it again: :class:`Rejected`, and the notification is dropped and
counted rather than retried.

Secrets (a bearer token, a URL's user and password) never reach logs or metric labels:
:func:`display_url` is the URL as they may show it.
"""

from __future__ import annotations

import base64
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from .. import __version__
from ..config import ConfigError

__all__ = ["DeliveryError", "Rejected", "Retry", "Transport", "display_url", "read_secret"]

USER_AGENT = f"streamrnn/{__version__}"
_RETRY_STATUS = {408, 425, 429}
_BODY_CHARS = 300  # of an error answer, for the log


class DeliveryError(Exception):
    """A request did not deliver; ``status`` is the HTTP status (None: no answer)."""

    def __init__(self, text: str, status: int | None = None) -> None:
        super().__init__(text)
        self.status = status


class Retry(DeliveryError):
    """May succeed later: no answer, a timeout, 408, 425, 429 or 5xx."""


class Rejected(DeliveryError):
    """Cannot succeed as it is: any other 4xx (or 3xx) answer."""


def display_url(url: str) -> str:
    """``url`` without user, password, query and fragment (for logs and metric labels).

    >>> display_url("https://bot:s3cret@hooks.example.com:8443/in/abc?token=x")
    'https://hooks.example.com:8443/in/abc'
    """
    p = urllib.parse.urlsplit(url)
    host = p.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if p.port is None else f"{host}:{p.port}"
    return urllib.parse.urlunsplit((p.scheme, netloc, p.path, "", ""))


def read_secret(path: str, key: str) -> bytes:
    """The bytes of a secret file without the trailing newline; ConfigError naming ``key``."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(
            f"{key}: must be a readable file ({e.strerror or e}), got {path!r}"
        ) from None
    data = data.rstrip(b"\r\n")
    if not data:
        raise ConfigError(f"{key}: must be a file holding the secret, got an empty file {path!r}")
    return data


class Transport:
    """Requests to one target URL (thread-confined: each target's worker owns one)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        bearer_token: bytes | None = None,
        ca_file: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.display = display_url(url)
        self.timeout_s = timeout_s
        self._headers = {"User-Agent": USER_AGENT}
        if bearer_token is not None:
            self._headers["Authorization"] = "Bearer " + bearer_token.decode("utf-8", "replace")
        handlers: list[urllib.request.BaseHandler] = []
        if ca_file is not None:
            handlers.append(
                urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=ca_file))
            )
        parts = urllib.parse.urlsplit(url)
        if parts.username is not None:  # sent at once, not after a 401 challenge
            pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
            netloc = parts.netloc.rsplit("@", 1)[1]
            self.url = urllib.parse.urlunsplit(parts._replace(netloc=netloc)).rstrip("/")
        self._open = urllib.request.build_opener(*handlers).open

    def request(
        self,
        method: str,
        path: str = "",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> int:
        """Send one request to ``url + path``; the 2xx status, else :class:`Retry` or
        :class:`Rejected`."""
        req = urllib.request.Request(self.url + path, data=body, method=method)
        for k, v in {**self._headers, **(headers or {})}.items():
            req.add_header(k, v)
        where = f"{method} {self.display}{path}"
        try:
            with self._open(req, timeout=timeout_s or self.timeout_s) as resp:
                resp.read()
                return int(resp.status)
        except urllib.error.HTTPError as e:
            text = e.read(_BODY_CHARS).decode("utf-8", "replace").strip()
            e.close()
            msg = f"{where}: HTTP {e.code} {text}".rstrip()
            if e.code in _RETRY_STATUS or e.code >= 500:
                raise Retry(msg, e.code) from None
            raise Rejected(msg, e.code) from None
        except (urllib.error.URLError, OSError, ValueError) as e:  # refused, reset, timeout, TLS
            reason = getattr(e, "reason", e)
            raise Retry(f"{where}: {reason}") from None
