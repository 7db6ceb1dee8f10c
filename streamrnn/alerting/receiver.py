"""A webhook receiver that logs what it is sent: ``streamrnn alerts receive``.

For trying a route end to end (the compose stack's Alertmanager sends its pages here) and for
checking the webhook sink's signatures. It understands two bodies:

* Alertmanager's webhook notification (``{"status", "alerts": [...], ...}``): one line per alert;
* the webhook sink's notice (``{"version": "1", "id", "status", ...}``): one line, after checking
  its signature when ``--secret-file`` is given (a missing or wrong one is answered 401 and
  logged, the body is not).

Each line: ``<status> <alertname> key=<key> [label=value ...]: <summary>``. Anything else is
answered 400. The receiver answers every path.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from .webhook import verify

__all__ = ["Receiver", "describe_body"]

log = logging.getLogger(__name__)

MAX_BODY = 4 << 20  # bytes; larger bodies are refused (413)
_SHOWN = ("alertname", "key", "status")


def _line(status: str, labels: Mapping[str, Any], annotations: Mapping[str, Any]) -> str:
    extra = " ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in _SHOWN)
    name = labels.get("alertname", "?")
    head = f"{status} {name} key={labels.get('key', '?')}" + (f" {extra}" if extra else "")
    summary = annotations.get("summary")
    return head + (f": {summary}" if summary else "")


def describe_body(body: Any) -> list[str]:
    """The log lines of one body (ValueError when it is neither kind).

    >>> describe_body({"version": "1", "id": "x", "status": "firing", "key": "m1",
    ...                "labels": {"alertname": "A", "key": "m1", "site": "n"},
    ...                "annotations": {"summary": "m1: value 9"}})
    ['firing A key=m1 site=n: m1: value 9']
    """
    if not isinstance(body, Mapping):
        raise ValueError("the body must be a JSON object")
    if isinstance(body.get("alerts"), list):  # Alertmanager's webhook
        return [
            _line(str(a.get("status", "?")), a.get("labels") or {}, a.get("annotations") or {})
            for a in body["alerts"]
            if isinstance(a, Mapping)
        ]
    if body.get("version") == "1" and "id" in body:  # the webhook sink's notice
        return [
            _line(
                str(body.get("status", "?")),
                body.get("labels") or {},
                body.get("annotations") or {},
            )
        ]
    raise ValueError("neither an Alertmanager notification nor a streamrnn webhook notice")


class Receiver(ThreadingHTTPServer):
    """The receiver on ``host:port`` (0: a free port); ``emit`` gets each line (default: log)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        host: str,
        port: int,
        *,
        secret: bytes | None = None,
        signature_header: str = "X-Streamrnn-Signature",
        emit: Callable[[str], None] | None = None,
    ) -> None:
        self.secret = secret
        self.signature_header = signature_header
        self.emit = emit or (lambda line: log.info("%s", line))
        self._thread: threading.Thread | None = None
        super().__init__((host, port), _Handler)

    def start(self) -> Receiver:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(5)
            self._thread = None
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: Receiver
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            self._answer(413, "body too large")
            return
        raw = self.rfile.read(n)
        try:
            body = orjson.loads(raw)
            lines = describe_body(body)
        except (orjson.JSONDecodeError, ValueError) as e:
            self.server.emit(f"refused a body from {self.client_address[0]}: {e}")
            self._answer(400, str(e))
            return
        srv, secret = self.server, self.server.secret
        sink_notice = "alerts" not in body  # Alertmanager's notifications are not signed
        if (
            secret is not None
            and sink_notice
            and not verify(secret, raw, self.headers.get(srv.signature_header))
        ):
            srv.emit(f"refused a notice from {self.client_address[0]}: bad or no signature")
            self._answer(401, "bad or no signature")
            return
        for line in lines:
            srv.emit(line)
        self._answer(200, "ok")

    def _answer(self, status: int, text: str) -> None:
        data = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class signature
        log.debug("%s - %s", self.address_string(), format % args)
