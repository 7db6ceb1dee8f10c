"""The HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz`` from a daemon thread.

``/metrics`` answers in Prometheus text or OpenMetrics, by the ``Accept`` header. ``/healthz``
(liveness) and ``/readyz`` (readiness) run a check each (:mod:`.health` gives the service's):
200 with ``ok``, or 503 with the reason.

With a web config (``service.metrics_web_config``, :mod:`.webconfig`: Prometheus's own format)
the endpoint is guarded: the TLS handshake runs in each connection's own thread (a slow or
hostile client never holds up the accepting thread), a request for anything but ``/healthz``
and ``/readyz`` without a valid ``Authorization: Basic`` header gets 401 with
``WWW-Authenticate: Basic``, and the web config's ``headers`` go on every answer.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from .webconfig import WebGuard

__all__ = ["MetricsServer", "Probe", "start_http"]

log = logging.getLogger(__name__)


Probe = Callable[[], Any]


def _probe(check: Probe, what: str) -> tuple[bool, str]:
    """Run a health or readiness check: it returns a bool, or ``(bool, reason)``."""
    try:
        result = check()
    except Exception as e:  # a failing check is a failed probe, not a crashed endpoint
        log.warning("%s check raised", what, exc_info=True)
        return False, f"{what} check failed: {type(e).__name__}"
    reason = ""
    if isinstance(result, tuple):
        result, reason = result[0], str(result[1]) if len(result) > 1 else ""
    if result:
        return True, "ok"
    return False, reason or f"not {what}"


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._respond(head=False)

    def do_HEAD(self) -> None:
        self._respond(head=True)

    def _respond(self, *, head: bool) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        srv = self.server
        guard = srv.guard
        if (
            guard is not None
            and guard.needs_auth(path)
            and not guard.authorized(self.headers.get("Authorization"))
        ):
            self._unauthorized(head)
            return
        if path == "/metrics":
            try:
                encoder, content_type = choose_encoder(self.headers.get("Accept") or "")
                body = encoder(srv.registry)
            except Exception:
                log.exception("collecting metrics failed")
                self._text(500, "collecting metrics failed", head)
                return
            self._send(200, body, content_type, head)
        elif path == "/healthz":
            ok, text = _probe(srv.health, "healthy")
            self._text(200 if ok else 503, text, head)
        elif path == "/readyz":
            ok, text = _probe(srv.ready, "ready")
            self._text(200 if ok else 503, text, head)
        elif path == "/":
            self._text(200, "streamrnn: /metrics /healthz /readyz", head)
        else:
            self._text(404, "not found", head)

    def _unauthorized(self, head: bool) -> None:
        body = b"unauthorized: basic auth required\n"
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="streamrnn", charset="UTF-8"')
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def end_headers(self) -> None:
        if self.server.guard is not None:
            for name, value in self.server.guard.headers().items():
                self.send_header(name, value)
        super().end_headers()

    def _text(self, status: int, text: str, head: bool) -> None:
        self._send(status, (text + "\n").encode(), "text/plain; charset=utf-8", head)

    def _send(self, status: int, body: bytes, content_type: str, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class signature
        log.debug("%s - %s", self.address_string(), format % args)


class MetricsServer(ThreadingHTTPServer):
    """``/metrics``, ``/healthz`` and ``/readyz`` served from a daemon thread.

    Start one with :meth:`start_http` (or the module-level :func:`start_http`); ``port=0``
    picks a free port, readable as ``server.server_port``. :meth:`shutdown` stops it.
    ``guard`` (a :class:`~.webconfig.WebGuard`) adds TLS and basic auth.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        health: Probe,
        ready: Probe,
        guard: WebGuard | None = None,
    ) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.registry = registry
        self.health = health
        self.ready = ready
        self.guard = guard
        self._thread: threading.Thread | None = None
        super().__init__((host, port), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Serve one connection (in its own thread): the TLS handshake first, when guarded."""
        if self.guard is None or not self.guard.tls:
            super().finish_request(request, client_address)
            return
        wrapped = self.guard.wrap(request)
        if wrapped is None:
            return
        try:
            super().finish_request(wrapped, client_address)
        finally:
            wrapped.close()

    @classmethod
    def start_http(
        cls,
        registry: CollectorRegistry,
        host: str,
        port: int,
        health: Probe,
        ready: Probe,
        web_config: str | Path | None = None,
    ) -> MetricsServer:
        """Serve ``registry`` on ``http://host:port/metrics`` plus ``/healthz`` and ``/readyz``.

        ``health`` and ``ready`` return a bool (or ``(bool, reason)``); a false one answers
        503 with a short reason, an exception answers 503 too. ``web_config`` names a
        Prometheus web-config file (TLS, basic auth); a bad one raises ``ConfigError``.
        """
        guard = WebGuard(web_config) if web_config is not None else None
        server = cls(registry, host, port, health, ready, guard)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"metrics-http-{server.server_port}",
            daemon=True,
        )
        server._thread = thread
        thread.start()
        scheme = "https" if guard is not None and guard.tls else "http"
        log.info(
            "metrics and health endpoints on %s://%s:%d/%s",
            scheme,
            host,
            server.server_port,
            f" (web config {web_config})" if web_config is not None else "",
        )
        return server

    def shutdown(self) -> None:
        """Stop serving, close the socket and wait for the serving thread."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            super().shutdown()
            thread.join(timeout=5)
        self._thread = None
        self.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


#: Serve a registry with the health and readiness checks (:meth:`MetricsServer.start_http`).
start_http = MetricsServer.start_http
