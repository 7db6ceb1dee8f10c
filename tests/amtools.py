"""Test helpers for a real Alertmanager: finding (or installing) it, running it, its HTTP API, and
a recording webhook receiver (Alertmanager's own receiver in these tests, and the target of the
detector's webhook sink).

    ensure_alertmanager()                                # skips the test when unavailable
    with Recorder() as pager, AlertmanagerServer(tmp_path, receiver_url=pager.url) as am:
        ...  # post alerts to am.url; am.alerts() is GET /api/v2/alerts
        pager.wait_for(lambda r: r.json()["status"] == "firing")

The Alertmanager config routes everything to ``receiver_url`` (a webhook receiver, resolved
notifications included) with ``group_wait`` and ``group_interval`` of one second, so a test sees a
page or its resolution within seconds. Debian's ``prometheus-alertmanager`` package is installed
with apt-get when missing and running as root, as tests/promtools.py does for Prometheus.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from promtools import ServerProcess, _which, ensure_debian_package

_FOUND: str | None = None


def _find() -> str | None:
    return _which("prometheus-alertmanager") or _which("alertmanager")


def ensure_alertmanager() -> str:
    """The path of Alertmanager's binary; installs ``prometheus-alertmanager`` when missing."""
    global _FOUND
    if _FOUND is None:
        _FOUND = ensure_debian_package("prometheus-alertmanager", _find)
    return _FOUND


def amtool(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``amtool`` (from the same Debian package) with ``args``."""
    ensure_alertmanager()
    tool = ensure_debian_package("prometheus-alertmanager", lambda: _which("amtool"))
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _request(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def wait_until(
    what: str, check: Callable[[], Any], timeout: float = 30.0, every: float = 0.2
) -> Any:
    """Call ``check`` until it returns something truthy; that value. AssertionError naming
    ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(every)


class AlertmanagerServer(ServerProcess):
    """An Alertmanager process on a free loopback port (no cluster), data under ``tmp_path``.

    Every alert is routed to ``receiver_url`` when given (a webhook, ``send_resolved: true``),
    else to a receiver that sends nothing. :meth:`stop` and :meth:`start` may be called again
    (same port and data directory) to take it away and bring it back mid-test.
    """

    name = "alertmanager"

    def __init__(
        self,
        tmp_path: str | os.PathLike[str],
        *,
        receiver_url: str | None = None,
        group_by: tuple[str, ...] = ("alertname", "key"),
        config: dict[str, Any] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        super().__init__(Path(tmp_path) / "alertmanager", startup_timeout)
        self.receiver_url = receiver_url
        self.group_by = group_by
        self._config = config

    def config(self) -> dict[str, Any]:
        """``config`` when one was given, else a route of everything to ``receiver_url``."""
        if self._config is not None:
            return self._config
        receiver: dict[str, Any] = {"name": "pager"}
        if self.receiver_url:
            receiver["webhook_configs"] = [{"url": self.receiver_url, "send_resolved": True}]
        return {
            "route": {
                "receiver": "pager",
                "group_by": list(self.group_by),
                "group_wait": "1s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [receiver],
        }

    def prepare(self) -> None:
        (self.dir / "alertmanager.yml").write_text(yaml.safe_dump(self.config(), sort_keys=False))

    def command(self) -> list[str]:
        return [
            ensure_alertmanager(),
            f"--config.file={self.dir / 'alertmanager.yml'}",
            f"--storage.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]

    # -- HTTP API v2 --------------------------------------------------------------------------

    def alerts(self, **matchers: str) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts`` (active, silenced and inhibited; resolved ones are not listed),
        filtered by label equality."""
        params = [("filter", f'{k}="{v}"') for k, v in matchers.items()]
        query = "?" + urllib.parse.urlencode(params) if params else ""
        status, body = _request("GET", f"{self.url}/api/v2/alerts{query}")
        if status != 200:
            raise AssertionError(f"GET /api/v2/alerts answered {status}: {body}")
        return list(body)

    def post_alerts(self, alerts: list[dict[str, Any]]) -> int:
        status, _ = _request("POST", f"{self.url}/api/v2/alerts", alerts)
        return status

    def silence(self, minutes: float = 30.0, comment: str = "test", **matchers: str) -> str:
        """Create a silence of label equality matchers; its id."""
        now = datetime.now(timezone.utc)
        body = {
            "matchers": [
                {"name": k, "value": v, "isRegex": False, "isEqual": True}
                for k, v in matchers.items()
            ],
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(minutes=minutes)).isoformat(),
            "createdBy": "streamrnn tests",
            "comment": comment,
        }
        status, answer = _request("POST", f"{self.url}/api/v2/silences", body)
        if status != 200:
            raise AssertionError(f"POST /api/v2/silences answered {status}: {answer}")
        return str(answer["silenceID"])


# ---------------------------------------------------------------------------------------------
# A webhook receiver that records what it is sent


@dataclass
class Received:
    """One request a :class:`Recorder` received."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


class Recorder:
    """An HTTP server on a free loopback port that records every POST and answers ``status``.

    ``status`` may be changed while it runs (500 to play a failing receiver). Use as a context
    manager. ``received`` is the list of :class:`Received`, in arrival order.
    """

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[Received] = []
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                with recorder._lock:
                    recorder.received.append(
                        Received(self.path, dict(self.headers.items()), body, time.time())
                    )
                    status = recorder.status
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}/hook"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def wait_for(
        self, check: Callable[[Received], bool], timeout: float = 30.0, what: str = ""
    ) -> list[Received]:
        """The requests ``check`` accepts, once there is at least one."""
        return wait_until(
            what or "a matching request at the recorder",
            lambda: [r for r in self.requests() if check(r)],
            timeout,
        )

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def alertmanager_pages(recorder: Recorder) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(status, alert)`` for each alert of each notification Alertmanager sent ``recorder``."""
    for r in recorder.requests():
        for alert in r.json().get("alerts", []):
            yield alert.get("status", ""), alert


def pages(recorder: Recorder, key: str) -> list[str]:
    """The statuses of the alerts of ``key`` that Alertmanager paged ``recorder`` with, in order."""
    return [s for s, a in alertmanager_pages(recorder) if a["labels"].get("key") == key]
