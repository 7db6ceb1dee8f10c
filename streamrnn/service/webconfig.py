"""The metrics endpoint's guard: Prometheus's web-config file (TLS and basic auth).

``service.metrics_web_config`` names a file in the format of Prometheus's exporter toolkit
(``--web.config.file``), so one file serves Prometheus itself, its exporters and streamrnn::

    tls_server_config:
      cert_file: /etc/streamrnn/tls/tls.crt
      key_file: /etc/streamrnn/tls/tls.key
      client_auth_type: RequireAndVerifyClientCert   # optional: mutual TLS
      client_ca_file: /etc/streamrnn/tls/ca.crt
      min_version: TLS12
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      prometheus: $2y$10$...                          # bcrypt (htpasswd -nBC 10 prometheus)

Taken: ``cert_file``, ``key_file``, ``client_auth_type`` (``NoClientCert``,
``VerifyClientCertIfGiven``, ``RequireAndVerifyClientCert``), ``client_ca_file``,
``client_allowed_sans``, ``min_version`` and ``max_version`` (``TLS12``, ``TLS13``),
``prefer_server_cipher_suites`` and ``http2`` (accepted, no effect), ``headers``,
``basic_auth_users``. Refused with an error, not ignored: ``cipher_suites`` and
``curve_preferences`` (Go's names), and ``RequestClientCert``/``RequireAnyClientCert`` (they take
unverified certificates, which Python's ``ssl`` cannot). Any other key is an error too.

``/healthz`` and ``/readyz`` stay open to anyone who reaches the port (over TLS when it is on):
Kubernetes probes carry no credentials, and they answer only ``ok`` or a short reason.
Everything else (``/metrics``, ``/``) needs a user and password from ``basic_auth_users`` when
that section is present. The file is read again when it changes, and the certificate and key
files when they change, so rotated certificates and users take effect without a restart; a
file that became invalid keeps the last good one in force and is logged.

Successful logins are remembered (by a SHA-256 of user, password and hash) so a scrape every few
seconds does not pay bcrypt's cost each time; an unknown user still costs one bcrypt check, so
timing does not tell which users exist.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError

__all__ = ["OPEN_PATHS", "TlsServerConfig", "WebConfig", "WebGuard", "load_web_config"]

log = logging.getLogger(__name__)

#: Paths served without basic auth (probes); documented in docs/security.md.
OPEN_PATHS = ("/healthz", "/readyz")
_KEY = "service.metrics_web_config"
_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_UNVERIFIED = ("RequestClientCert", "RequireAnyClientCert")
_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_TLS_KEYS = {
    "cert_file", "key_file", "client_auth_type", "client_ca_file", "client_allowed_sans",
    "min_version", "max_version", "prefer_server_cipher_suites",
}  # fmt: skip
_REFUSED = {"cipher_suites", "curve_preferences", "cert", "key"}
# A bcrypt hash to check unknown users against, so they cost what known ones do.
_DUMMY_HASH = b"$2b$10$CwTycUXWue0Thq9StjUM0uJ8DPLKXt1FYlwYpQW2G3cAwjKoh2WZK"


@dataclass(frozen=True)
class TlsServerConfig:
    cert_file: str
    key_file: str
    client_auth: ssl.VerifyMode = ssl.CERT_NONE
    client_ca_file: str | None = None
    client_allowed_sans: tuple[str, ...] = ()
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3


@dataclass(frozen=True)
class WebConfig:
    tls: TlsServerConfig | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    headers: Mapping[str, str] = field(default_factory=dict)


def _fail(path: str | Path, key: str, rule: str, got: Any) -> ConfigError:
    return ConfigError(f"{_KEY}: {path}: {key}: {rule}, got {got!r}")


def _mapping(path: str | Path, key: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(path, key, "must be a mapping", value)
    return value


def load_web_config(path: str | Path) -> WebConfig:
    """Read and check a web-config file; :class:`ConfigError` names the file, key and rule."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise ConfigError(
            f"{_KEY}: must be a readable file ({e.strerror or e}), got {str(path)!r}"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{_KEY}: must be valid YAML ({e}), got {str(path)!r}") from None
    top = _mapping(path, "the file", raw)
    for k in top:
        if k not in ("tls_server_config", "http_server_config", "basic_auth_users"):
            known = "tls_server_config, http_server_config, basic_auth_users"
            raise _fail(path, str(k), f"unknown key (known: {known})", "...")
    base = Path(path).parent
    tls = _tls(path, base, _mapping(path, "tls_server_config", top.get("tls_server_config")))
    http = _mapping(path, "http_server_config", top.get("http_server_config"))
    for k in http:
        if k not in ("headers", "http2"):
            raise _fail(
                path, f"http_server_config.{k}", "unknown key (known: headers, http2)", http[k]
            )
    headers = _mapping(path, "http_server_config.headers", http.get("headers"))
    users = _users(path, _mapping(path, "basic_auth_users", top.get("basic_auth_users")))
    return WebConfig(tls, users, {str(k): str(v) for k, v in headers.items()})


def _tls(path: str | Path, base: Path, raw: Mapping[str, Any]) -> TlsServerConfig | None:
    if not raw:
        return None
    for k in raw:
        if k in _REFUSED:
            raise _fail(
                path, f"tls_server_config.{k}", "is not supported by streamrnn (remove it)", raw[k]
            )
        if k not in _TLS_KEYS:
            raise _fail(
                path,
                f"tls_server_config.{k}",
                f"unknown key (known: {', '.join(sorted(_TLS_KEYS))})",
                raw[k],
            )

    def file(key: str, required: bool) -> str | None:
        value = raw.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise _fail(path, f"tls_server_config.{key}", "must name a PEM file", value)
        full = (base / value) if not os.path.isabs(value) else Path(value)
        if not full.is_file():
            raise _fail(path, f"tls_server_config.{key}", "must be an existing file", str(full))
        return str(full)

    auth_name = raw.get("client_auth_type", "NoClientCert")
    if auth_name in _UNVERIFIED:
        raise _fail(path, "tls_server_config.client_auth_type", "must verify the certificate "
                    "(VerifyClientCertIfGiven or RequireAndVerifyClientCert)", auth_name)  # fmt: skip
    if auth_name not in _AUTH_TYPES:
        raise _fail(
            path,
            "tls_server_config.client_auth_type",
            f"must be one of {', '.join(_AUTH_TYPES)}",
            auth_name,
        )
    auth = _AUTH_TYPES[auth_name]
    ca = file("client_ca_file", auth != ssl.CERT_NONE)
    versions = {}
    for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        name = raw.get(key, default)
        if name not in _VERSIONS:
            raise _fail(path, f"tls_server_config.{key}", "must be TLS12 or TLS13", name)
        versions[key] = _VERSIONS[name]
    sans = raw.get("client_allowed_sans") or []
    if not isinstance(sans, list) or not all(isinstance(s, str) for s in sans):
        raise _fail(path, "tls_server_config.client_allowed_sans", "must be a list of names", sans)
    return TlsServerConfig(str(file("cert_file", True)), str(file("key_file", True)), auth, ca,
                           tuple(sans), versions["min_version"], versions["max_version"])  # fmt: skip


def _users(path: str | Path, raw: Mapping[str, Any]) -> dict[str, bytes]:
    import bcrypt

    out = {}
    for user, hashed in raw.items():
        key = f"basic_auth_users.{user}"
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise ConfigError(
                f"{_KEY}: {path}: {key}: must be a bcrypt hash ($2y$...), got a {type(hashed).__name__}"
            )
        try:
            bcrypt.checkpw(b"", hashed.encode())
        except ValueError:
            raise ConfigError(
                f"{_KEY}: {path}: {key}: must be a bcrypt hash ($2y$...), got a malformed one"
            ) from None
        out[str(user)] = hashed.encode()
    return out


def _stamp(*paths: str | None) -> tuple[tuple[int, int], ...]:
    out = []
    for p in paths:
        try:
            st = os.stat(p) if p else None
        except OSError:
            st = None
        out.append((st.st_mtime_ns, st.st_ino) if st else (0, 0))
    return tuple(out)


class WebGuard:
    """The live web config of one HTTP server: TLS for each connection, basic auth per request.

    Built from ``service.metrics_web_config`` (start-up fails on a bad file); re-reads the file,
    and rebuilds the TLS context when it or the certificate files change.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self.config = load_web_config(self.path)
        self._stamp = _stamp(self.path)
        self._ctx: ssl.SSLContext | None = None
        self._ctx_stamp: tuple[tuple[int, int], ...] = ()
        self._good: dict[bytes, None] = {}  # digests of checked logins (bounded)
        if self.config.tls is not None:
            self.server_context()  # a wrong certificate or key stops start-up

    @property
    def tls(self) -> bool:
        return self._current().tls is not None

    def _current(self) -> WebConfig:
        stamp = _stamp(self.path)
        if stamp != self._stamp:
            with self._lock:
                try:
                    self.config = load_web_config(self.path)
                    self._good.clear()
                    log.info("%s: %s reloaded", _KEY, self.path)
                except ConfigError as e:
                    log.error("%s; keeping the previous web config", e)
                self._stamp = stamp
        return self.config

    def server_context(self) -> ssl.SSLContext:
        tls = self._current().tls
        if tls is None:
            raise RuntimeError("no tls_server_config")
        stamp = _stamp(tls.cert_file, tls.key_file, tls.client_ca_file)
        with self._lock:
            if self._ctx is None or stamp != self._ctx_stamp:
                self._ctx, self._ctx_stamp = _context(tls, self.path), stamp
            return self._ctx

    def wrap(self, sock: socket.socket, timeout_s: float = 10.0) -> ssl.SSLSocket | None:
        """The TLS side of one accepted connection (handshake in the caller's thread); None
        when the handshake fails or the client certificate's names are not allowed."""
        tls = self._current().tls
        sock.settimeout(timeout_s)
        try:
            wrapped = self.server_context().wrap_socket(sock, server_side=True)
        except (OSError, ssl.SSLError) as e:
            log.debug("TLS handshake with a metrics client failed: %s", e)
            sock.close()
            return None
        if (
            tls is not None
            and tls.client_allowed_sans
            and not _san_allowed(wrapped, tls.client_allowed_sans)
        ):
            log.warning("metrics client certificate names none of client_allowed_sans; closed")
            wrapped.close()
            return None
        wrapped.settimeout(None)
        return wrapped

    def needs_auth(self, path: str) -> bool:
        return bool(self._current().users) and path not in OPEN_PATHS

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header holds a user and password of basic_auth_users."""
        import base64

        import bcrypt

        config = self._current()
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = config.users.get(user)
        digest = hashlib.sha256(
            b"\0".join([user.encode(), password.encode(), hashed or b""])
        ).digest()
        if hashed is not None and digest in self._good:
            return True
        ok = bcrypt.checkpw(password.encode(), hashed or _DUMMY_HASH) and hashed is not None
        if ok:
            with self._lock:
                if len(self._good) > 64:
                    self._good.clear()
                self._good[digest] = None
        return ok

    def headers(self) -> Mapping[str, str]:
        return self._current().headers


def _context(tls: TlsServerConfig, path: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version, ctx.maximum_version = tls.min_version, tls.max_version
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file, password=lambda: b"")
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"{_KEY}: {path}: tls_server_config.cert_file: must be a PEM certificate "
                          f"with the unencrypted key in key_file ({e}), got {tls.cert_file!r}") from None  # fmt: skip
    if tls.client_ca_file:
        ctx.load_verify_locations(cafile=tls.client_ca_file)
    ctx.verify_mode = tls.client_auth
    return ctx


def _san_allowed(sock: ssl.SSLSocket, allowed: tuple[str, ...]) -> bool:
    cert: dict[str, Any] = dict(sock.getpeercert() or {})
    names = {str(pair[1]) for pair in cert.get("subjectAltName", ())}
    return bool(names & set(allowed))
