"""The one-command tour: embedded broker, synthetic streams, a model, the detector, live alerts.

``streamrnn demo`` (:class:`streamrnn.tools.demo.Demo`) starts, all in one process and with no network beyond loopback:

1. an embedded Kafka-compatible broker (Tansu, in memory) on a free port, with the topics
   ``readings`` (4 partitions), ``streamrnn.alerts``, ``streamrnn.dlq`` and ``streamrnn.scores``;
2. a generator: synthetic energy-demand and sensor streams (5-minute readings, daily and weekly
   seasonality, per-key scales) with injected spikes, level shifts, stuck values and drifts,
   sent at ``--rate`` messages per second, plus a malformed message every few seconds so the
   dead-letter topic has something to show;
3. the detector (``streamrnn run``'s :class:`~streamrnn.service.app.Detector`, in a thread) with
   the small model shipped in the package (or ``--model``), serving ``/metrics``, ``/healthz``
   and ``/readyz``;
4. a console view: one line per alert (event time, key, value, expected, score, and which
   injected anomaly it belongs to, if any) and a status line every few seconds.

Ctrl+C, SIGTERM or ``--seconds`` stop the generator, then the detector (gracefully: flush,
commit, checkpoint), then the broker, and print a summary: events, alerts, dead letters, and how
many injected anomalies got an alert (recall) and how many alerts belong to an injected anomaly
(precision).

With ``--bootstrap-servers`` the tour runs against that Kafka cluster instead of an embedded
broker, with the Kafka security flags (or ``STREAMRNN_SERVICE__KAFKA__*``, or ``--config`` with
a service config) for every client: a quick check that streamrnn reaches a secured cluster. Its
topics and group are then named for the run (``streamrnn-demo-<id>.readings``, ...) and the
topics deleted at the end; the principal needs the rights to create and delete them.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from ..tools.demo import BACKFILL_STEPS, BLOCK_STEPS, Demo
from . import kafka_flags

__all__ = ["EPILOG", "add_arguments", "run"]

# logger -> level while the demo runs (without --verbose)
QUIET_LOGGERS = {
    "kafka": logging.ERROR,  # "task ran for 0.1 s" warnings on a busy CPU; errors at shutdown
    "streamrnn.service": logging.WARNING,  # the resolved config, partition assignments
    "streamrnn.tools.broker": logging.WARNING,
    "streamrnn.tools.produce": logging.WARNING,
    "streamrnn.detector.modeldir": logging.WARNING,
}


EPILOG = """\
examples:
  streamrnn demo                          # until Ctrl+C; metrics on http://127.0.0.1:9108/metrics
  streamrnn demo --seconds 60 --keys 40 --rate 1000
  streamrnn demo --metrics-port 0 --model models/demand --device cuda
  streamrnn demo --bootstrap-servers kafka:9093 --security-protocol SSL --ssl-cafile ca.crt

An alert counts for an injected anomaly when it falls inside the anomaly's window or up to
--match-events readings after it; an anomaly is evaluated once the detector has scored its key
that far (or alerted on it).
"""


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _quiet_logs(verbose: bool) -> Callable[[], None]:
    """Raise the chatty loggers to WARNING for the demo (unless verbose); returns the restorer."""
    if verbose:
        return lambda: None
    previous = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)

    def restore() -> None:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)

    return restore


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``streamrnn demo``."""
    parser.add_argument(
        "--keys",
        type=int,
        default=20,
        help="synthetic keys, half energy demand and half sensors (default: %(default)s)",
    )
    parser.add_argument(
        "--rate", type=float, default=400.0, help="readings per second (default: %(default)s)"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=0.0,
        help="stop after this many seconds; 0 = until Ctrl+C (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=9108,
        help="port of /metrics, /healthz, /readyz on 127.0.0.1; 0 picks a free one "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)"
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model directory (default: the small model shipped in the package)",
    )
    parser.add_argument(
        "--backfill",
        type=int,
        default=BACKFILL_STEPS,
        help="readings per key sent at full speed before the live rate, as history the detector "
        "warms up on; anomalies start after it (default: %(default)s, two days)",
    )
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default: %(default)s)")
    parser.add_argument(
        "--match-events",
        type=int,
        default=20,
        help="readings after an injected anomaly's window in which an alert still counts for it "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="keep the broker's, detector's and Kafka's logs"
    )
    parser.add_argument(
        "--bootstrap-servers",
        help="run against this Kafka cluster (comma-separated host:port) instead of an embedded "
        "broker; topics and group are named for the run and the topics deleted at the end",
    )
    parser.add_argument(
        "--config",
        help="with --bootstrap-servers: a service config file whose service.kafka (TLS, SASL) "
        "applies",
    )
    kafka_flags.add_arguments(parser)


def _check(args: argparse.Namespace) -> str | None:
    if args.keys < 1:
        return f"--keys: must be >= 1, got {args.keys}"
    if not args.rate > 0:
        return f"--rate: must be > 0, got {args.rate}"
    if args.seconds < 0:
        return f"--seconds: must be >= 0, got {args.seconds}"
    if not 0 <= args.metrics_port <= 65535:
        return f"--metrics-port: must be in [0, 65535], got {args.metrics_port}"
    if not 0 <= args.backfill <= BLOCK_STEPS // 2:
        return f"--backfill: must be in [0, {BLOCK_STEPS // 2}], got {args.backfill}"
    if args.match_events < 0:
        return f"--match-events: must be >= 0, got {args.match_events}"
    external = kafka_flags.given(args) + (["--config"] if args.config else [])
    if args.bootstrap_servers is None and external:
        return (
            f"{external[0]}: needs --bootstrap-servers (the embedded broker speaks PLAINTEXT "
            f"only), got {external[0]} without it"
        )
    if args.metrics_port and not _port_free("127.0.0.1", args.metrics_port):
        return (
            f"--metrics-port: port {args.metrics_port} on 127.0.0.1 is in use "
            "(another detector or demo?); pick another, or 0 for a free one"
        )
    return None


def run(args: argparse.Namespace) -> int:
    """Entry point of ``streamrnn demo``: the detector's exit status (0 after a clean stop)."""
    problem = _check(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    connection = None
    if args.bootstrap_servers is not None:
        try:
            servers, kafka = kafka_flags.connection(args.config, args.bootstrap_servers, args)
            connection = kafka_flags.preflight(servers, kafka)
        except ValueError as e:  # ConfigError, ConnectionSetupError: the key, the cause
            print(f"error: {e}", file=sys.stderr)
            return 2
    restore_logs = _quiet_logs(args.verbose)
    try:
        return Demo(args, sys.stdout, connection).run()
    finally:
        restore_logs()
