"""The metrics endpoint behind its web config: TLS per connection, basic auth per request.

:class:`GuardedMetricsServer` is :class:`streamrnn.service.metrics.MetricsServer` with a
:class:`~.webconfig.WebGuard`: the TLS handshake runs in each connection's own thread (a slow or
hostile client never holds up the accepting thread), a request for anything but ``/healthz`` and
``/readyz`` without a valid ``Authorization: Basic`` header gets 401 with
``WWW-Authenticate: Basic``, and the web config's ``headers`` go on every answer.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from ..service.metrics import MetricsServer, Probe, _Handler
from .webconfig import WebGuard

__all__ = ["GuardedMetricsServer", "start_guarded_http"]

log = logging.getLogger(__name__)


class _GuardedHandler(_Handler):
    server: GuardedMetricsServer

    def _respond(self, *, head: bool) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        guard = self.server.guard
        if guard.needs_auth(path) and not guard.authorized(self.headers.get("Authorization")):
            body = b"unauthorized: basic auth required\n"
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="streamrnn", charset="UTF-8"')
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)
            return
        super()._respond(head=head)

    def end_headers(self) -> None:
        for name, value in self.server.guard.headers().items():
            self.send_header(name, value)
        super().end_headers()


class GuardedMetricsServer(MetricsServer):
    """A :class:`MetricsServer` whose connections and requests pass ``guard`` first."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int, health: Probe,
                 ready: Probe, guard: WebGuard) -> None:  # fmt: skip
        self.guard = guard
        super().__init__(registry, host, port, health, ready)
        self.RequestHandlerClass = _GuardedHandler

    def finish_request(self, request: Any, client_address: Any) -> None:
        if not self.guard.tls:
            super().finish_request(request, client_address)
            return
        wrapped = self.guard.wrap(request)
        if wrapped is None:
            return
        try:
            super().finish_request(wrapped, client_address)
        finally:
            wrapped.close()


def start_guarded_http(registry: CollectorRegistry, host: str, port: int, health: Probe,
                       ready: Probe, web_config: str | Path) -> GuardedMetricsServer:  # fmt: skip
    """Serve like :func:`streamrnn.service.metrics.start_http`, guarded by ``web_config``."""
    server = GuardedMetricsServer(registry, host, port, health, ready, WebGuard(web_config))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name=f"metrics-https-{server.server_port}", daemon=True)  # fmt: skip
    server._thread = thread
    thread.start()
    scheme = "https" if server.guard.tls else "http"
    log.info("metrics and health endpoints on %s://%s:%d/ (web config %s)", scheme, host,
             server.server_port, web_config)  # fmt: skip
    return server
