"""Produce readings into a Kafka topic: replay CSV files, or generate synthetic streams.

Every reading becomes one JSON message ``{"key": ..., "ts": ..., "value": ...}`` (``ts`` in ISO
8601, UTC, with a ``Z``; ``value`` null where a CSV cell is missing; ``values``, an object by
column name, for CSV files with several value columns), keyed by the reading's key in UTF-8, so
Kafka keeps each key on one partition. Readings of all keys are interleaved in event-time order.

Sources:

- ``--csv PATH...``: files or directories in the layouts ``streamrnn train`` reads (one file per
  key, or a long format with ``--key-column``), replayed in time order; ``--start`` moves them in
  time; ``--loop`` starts over with the times moved on by the data's span.
- ``--synthetic sensor|energy|mixed``: :mod:`streamrnn.tools.synth` streams (:mod:`streamrnn.tools.stream`) (daily and weekly
  seasonality, noise, per-key scales) with injected anomalies (spikes, level shifts, stuck
  values, drifts) after a clean prefix, every ``--interval-s`` seconds of event time from
  ``--start``. Without ``--steps`` the stream never ends: a week of readings is cycled with time
  moving on (each cycle made seamless, so the wrap is no anomaly). ``--labels`` writes the
  injected anomaly windows.

The send rate is held by a token bucket (``--rate`` messages per second, 0 for as fast as the
producer goes); progress is logged every few seconds and a summary printed at the end (also on
Ctrl+C or SIGTERM, which stop the run after flushing what was sent).

A secured cluster: the Kafka security flags (``--security-protocol``, ``--ssl-cafile``,
``--sasl-mechanism``, ...), the ``STREAMRNN_SERVICE__KAFKA__*`` variables, or ``--config`` with
the service's own config file (its ``service.bootstrap_servers`` and ``service.kafka``), in that
order of precedence. A cluster that refuses them stops with exit status 2 and a line naming the
setting, as ``streamrnn run`` does.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import threading
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from ..service.clients import Connection
from ..tools import synth
from ..tools.produce import (
    DEFAULT_INTERVAL_S,
    DEFAULT_START,
    Message,
    ProduceStats,
    csv_messages,
    install_stop_signals,
    make_producer,
    produce_events,
)
from ..tools.stream import (
    MAX_BLOCK,
    MIN_BLOCK,
    STEPS_PER_ANOMALY,
    WEEK_S,
    SyntheticStream,
    parse_start,
    synthetic_series,
    write_labels,
)
from . import kafka_flags

logger = logging.getLogger(__name__)


EPILOG = """\
examples:
  streamrnn produce --bootstrap-servers localhost:9092 --topic readings --synthetic energy \\
      --keys 200 --rate 200
  streamrnn produce --topic readings --synthetic sensor --keys 50 --steps 5000 --rate 0 \\
      --anomalies spike,level_shift --seed 3 --labels labels.json --partitions 4
  streamrnn produce --topic readings --csv history/ --rate 1000 --start 2025-01-01T00:00:00Z
  streamrnn produce --topic readings --csv long.csv --key-column meter --loop
  streamrnn produce --topic readings --csv demand.csv --target-columns demand --covariate-columns temp
  streamrnn produce --config service.yaml --topic readings --synthetic sensor --keys 20
  streamrnn produce --bootstrap-servers kafka:9093 --security-protocol SASL_SSL \\
      --ssl-cafile ca.crt --sasl-mechanism SCRAM-SHA-512 --sasl-username loader \\
      --sasl-password-file /run/secrets/kafka-password --topic readings --synthetic energy

Messages: {"key": KEY, "ts": "2024-01-01T00:05:00Z", "value": 12.5} keyed by KEY.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``streamrnn produce``."""
    parser.add_argument(
        "--bootstrap-servers",
        default=None,
        help="comma-separated host:port list (default: service.bootstrap_servers of --config, "
        "else localhost:9092)",
    )
    parser.add_argument(
        "--config",
        help="a service config file: its service.bootstrap_servers and service.kafka (TLS, "
        "SASL) apply",
    )
    parser.add_argument("--topic", default="readings", help="topic to write (default: %(default)s)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--csv", nargs="+", metavar="PATH", help="CSV files or directories to replay"
    )
    source.add_argument(
        "--synthetic",
        choices=["sensor", "energy", "mixed"],
        help="generate synthetic streams (mixed: half energy, half sensor keys)",
    )
    _csv_arguments(parser)
    _synthetic_arguments(parser)
    parser.add_argument(
        "--start",
        default=None,
        help=f"event time of the first reading: ISO 8601, epoch seconds or 'now' (synthetic "
        f"default: {DEFAULT_START}; CSV default: the files' own times)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=100.0,
        help="messages per second; 0 = as fast as possible (default: %(default)s)",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="create the topic with this many partitions when it is missing",
    )
    parser.add_argument(
        "--loop", action="store_true", help="start over when the data ends, until stopped"
    )
    kafka_flags.add_arguments(parser)


def _csv_arguments(parser: argparse.ArgumentParser) -> None:
    csv = parser.add_argument_group("CSV replay")
    csv.add_argument("--key-column", help="column naming the key (long format)")
    csv.add_argument(
        "--time-column", default="timestamp", help="time column (default: %(default)s)"
    )
    csv.add_argument(
        "--value-columns", help="comma-separated value columns (default: all the others)"
    )
    csv.add_argument(
        "--target-columns",
        metavar="A,B",
        help="the targets' columns; with --covariate-columns, the columns sent in `values` "
        '(targets first), e.g. {"demand": 812.0, "temp": 31.5}',
    )
    csv.add_argument(
        "--covariate-columns",
        metavar="C,D",
        help="the covariates' columns, sent beside the targets (default: none)",
    )


def _synthetic_arguments(parser: argparse.ArgumentParser) -> None:
    syn = parser.add_argument_group("synthetic streams")
    syn.add_argument("--keys", type=int, default=10, help="number of keys (default: %(default)s)")
    syn.add_argument(
        "--steps",
        type=int,
        default=None,
        help="readings per key; default: endless, a week of readings cycled with time moving on",
    )
    syn.add_argument(
        "--anomalies",
        default=",".join(synth.ANOMALY_KINDS),
        help="comma-separated kinds to inject, or 'none' (default: %(default)s)",
    )
    syn.add_argument(
        "--anomalies-per-key",
        type=int,
        default=None,
        help=f"anomalies per key and cycle (default: one per {STEPS_PER_ANOMALY} steps)",
    )
    syn.add_argument(
        "--clean-prefix",
        type=int,
        default=None,
        help="steps without anomalies at the start of each cycle (default: min(300, steps/4))",
    )
    syn.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    syn.add_argument(
        "--interval-s",
        type=float,
        default=DEFAULT_INTERVAL_S,
        help="seconds between a key's readings, in event time (default: %(default)s)",
    )
    syn.add_argument(
        "--labels", type=Path, help="write the injected anomaly windows to this JSON file"
    )
    syn.add_argument(
        "--malformed-every",
        type=int,
        default=0,
        help="slip in a malformed message after every N readings (default: none)",
    )


def _check_args(args: argparse.Namespace) -> None:
    """Raise ValueError naming the flag for bad values."""
    if args.rate < 0 or not math.isfinite(args.rate):
        raise ValueError(f"--rate: must be >= 0, got {args.rate}")
    if args.partitions is not None and args.partitions < 1:
        raise ValueError(f"--partitions: must be >= 1, got {args.partitions}")
    if args.synthetic:
        if args.keys < 1:
            raise ValueError(f"--keys: must be >= 1, got {args.keys}")
        if args.steps is not None and args.steps < 1:
            raise ValueError(f"--steps: must be >= 1, got {args.steps}")
        if not args.interval_s > 0:
            raise ValueError(f"--interval-s: must be > 0, got {args.interval_s}")
        if args.malformed_every < 0:
            raise ValueError(f"--malformed-every: must be >= 0, got {args.malformed_every}")


def _anomaly_kinds(text: str) -> tuple[str, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in synth.ANOMALY_KINDS]
    if bad:
        raise ValueError(
            f"--anomalies: must be among {', '.join(synth.ANOMALY_KINDS)} or 'none', got {text!r}"
        )
    return kinds


def build_synthetic(args: argparse.Namespace) -> SyntheticStream:
    """The synthetic stream the flags describe."""
    endless = args.steps is None
    if endless:
        week = int(round(WEEK_S / args.interval_s))
        steps = min(max(week, MIN_BLOCK), MAX_BLOCK)
    else:
        steps = args.steps
    cycle = endless or args.loop
    series = synthetic_series(
        args.synthetic,
        args.keys,
        steps,
        interval_s=args.interval_s,
        start=args.start or DEFAULT_START,
        anomalies=_anomaly_kinds(args.anomalies),
        anomalies_per_key=args.anomalies_per_key,
        clean_prefix=args.clean_prefix,
        seed=args.seed,
        seamless=cycle,
    )
    return SyntheticStream(
        series, interval_s=args.interval_s, cycle=cycle, malformed_every=args.malformed_every
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of ``streamrnn produce``: 0 when every message was acknowledged."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("kafka").setLevel(logging.WARNING)
    try:
        _check_args(args)
        servers, kafka = kafka_flags.connection(args.config, args.bootstrap_servers, args)
        messages, stream, what = _source(args)
        conn = kafka_flags.preflight(servers, kafka)
    except ValueError as e:  # ConfigError is one: a key, a rule, a value
        print(f"error: {e}", file=sys.stderr)
        return 2
    stats = ProduceStats()
    failed = _send(args, conn, messages, what, stats)
    if failed is not None:
        return failed
    print(_summary(args, stats, stream), flush=True)
    return 0 if stats.failed == 0 and stats.acked == stats.sent else 1


def _source(args: argparse.Namespace) -> tuple[Iterable[Message], SyntheticStream | None, str]:
    """The messages the flags describe, the synthetic stream (if any), and a line about them."""
    if args.synthetic:
        stream = build_synthetic(args)
        what = (
            f"synthetic {args.synthetic}: {args.keys} key(s), "
            + (f"{stream.n} steps" if args.steps else f"endless ({stream.n}-step cycle)")
            + (", looping" if args.loop and args.steps else "")
        )
        return stream, stream, what
    from ..offline.data import load_series

    columns = args.value_columns.split(",") if args.value_columns else None
    if columns is None and args.target_columns:
        columns = args.target_columns.split(",") + (
            args.covariate_columns.split(",") if args.covariate_columns else []
        )
    elif columns is None and args.covariate_columns:
        raise ValueError("--covariate-columns: needs --target-columns (or --value-columns)")
    series = load_series(
        args.csv,
        key_column=args.key_column,
        time_column=args.time_column,
        value_columns=columns,
    )
    start = parse_start(args.start) if args.start else None
    what = f"CSV replay: {len(series)} key(s), {sum(len(s) for s in series)} reading(s)" + (
        ", looping" if args.loop else ""
    )
    return csv_messages(series, loop=args.loop, start=start), None, what


def _send(
    args: argparse.Namespace,
    conn: Connection,
    messages: Iterable[Message],
    what: str,
    stats: ProduceStats,
) -> int | None:
    """Produce until the messages end or a signal; an exit status when Kafka failed."""
    from kafka.errors import KafkaError

    stop = threading.Event()
    restore = install_stop_signals(stop)
    producer = None
    try:
        if args.partitions:
            from ..tools.broker import BrokerError, create_topics

            try:
                create_topics(conn, {args.topic: args.partitions})
            except BrokerError as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
        producer = make_producer(conn)
        rate_text = f"{args.rate:g}/s" if args.rate else "as fast as possible"
        logger.info(
            "producing to %s on %s (%s) at %s; %s",
            args.topic,
            ",".join(conn.servers),
            conn.kafka.security_protocol,
            rate_text,
            what,
        )
        produce_events(producer, args.topic, messages, args.rate, stop, stats=stats)
    except KafkaError as e:
        print(f"error: Kafka at {','.join(conn.servers)}: {e!r}", file=sys.stderr)
        return 1
    finally:
        restore()
        if producer is not None:
            try:
                producer.close(timeout=5)
            except Exception as e:  # closing is best effort
                logger.debug("closing the producer: %r", e)
    return None


def _summary(args: argparse.Namespace, stats: ProduceStats, stream: SyntheticStream | None) -> str:
    summary = (
        f"sent {stats.sent} message(s) to {args.topic} in {stats.seconds:.1f} s "
        f"({stats.rate:.0f}/s); {stats.acked} acknowledged, {stats.failed} failed"
    )
    if stream is not None:
        injected = stream.injected()
        kinds = Counter(a.kind for a in injected)
        detail = ", ".join(f"{k} {kinds[k]}" for k in synth.ANOMALY_KINDS if kinds[k])
        summary += f"; anomalies injected: {len(injected)}" + (f" ({detail})" if detail else "")
        if stream.malformed_sent:
            summary += f"; malformed: {stream.malformed_sent}"
        if args.labels:
            path = write_labels(
                args.labels, injected, topic=args.topic, interval_s=stream.interval_s
            )
            summary += f"; labels: {path}"
    return summary
