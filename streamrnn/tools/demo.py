"""The one-command tour: embedded broker, synthetic streams, a model, the detector, live alerts.

``streamrnn demo`` starts, all in one process and with no network beyond loopback:

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
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson

from ..times import parse_iso
from . import synth
from .produce import (
    DEFAULT_INTERVAL_S,
    InjectedAnomaly,
    ProduceStats,
    SyntheticStream,
    install_stop_signals,
    make_producer,
    produce_events,
    synthetic_series,
)

__all__ = ["DEMO_TOPICS", "Scoreboard", "add_arguments", "run", "score_alerts"]

logger = logging.getLogger(__name__)

READINGS = "readings"
ALERTS = "streamrnn.alerts"
DLQ = "streamrnn.dlq"
SCORES = "streamrnn.scores"
DEMO_TOPICS: dict[str, int] = {READINGS: 4, ALERTS: 1, DLQ: 1, SCORES: 1}
GROUP = "streamrnn-demo"
BLOCK_STEPS = 2016  # one week of 5-minute readings, cycled
BACKFILL_STEPS = 576  # two days per key sent at full speed first: the detector's warm-up
LIVE_CLEAN_STEPS = 40  # steps after the backfill before the first anomaly
MIN_CLEAN_PREFIX = 300  # steps per cycle without anomalies: past the detector's warm-up (150)
ANOMALIES_PER_KEY = 6  # per key and cycle, spread evenly after the clean prefix
STATUS_EVERY_S = 5.0
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

An alert counts for an injected anomaly when it falls inside the anomaly's window or up to
--match-events readings after it; an anomaly is evaluated once the detector has scored its key
that far (or alerted on it).
"""


# ----------------------------------------------------------------------------------------------
# Matching alerts with injected anomalies


@dataclass
class Scoreboard:
    """What the console saw: alerts and each key's progress, as global steps of the stream."""

    alerts: list[tuple[str, int, float]] = field(default_factory=list)  # (key, step, score)
    progress: dict[str, int] = field(default_factory=dict)  # key -> last scored step
    scored: int = 0  # score messages read
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_alert(self, key: str, step: int, score: float) -> None:
        with self._lock:
            self.alerts.append((key, step, score))

    def add_progress(self, key: str, step: int) -> None:
        with self._lock:
            self.scored += 1
            if step > self.progress.get(key, -1):
                self.progress[key] = step

    def snapshot(self) -> tuple[list[tuple[str, int, float]], dict[str, int]]:
        with self._lock:
            return list(self.alerts), dict(self.progress)


@dataclass
class Evaluation:
    """Recall over the injected anomalies that could be judged, precision over the alerts."""

    injected: int
    evaluated: int
    detected: int
    by_kind: dict[str, tuple[int, int]]  # kind -> (detected, evaluated)
    alerts: int
    matched_alerts: int

    @property
    def recall(self) -> float | None:
        return self.detected / self.evaluated if self.evaluated else None

    @property
    def precision(self) -> float | None:
        return self.matched_alerts / self.alerts if self.alerts else None


def _match(a: InjectedAnomaly, key: str, step: int, slack: int) -> bool:
    return a.key == key and a.start_step <= step < a.end_step + slack


def score_alerts(
    anomalies: Sequence[InjectedAnomaly],
    alerts: Sequence[tuple[str, int, float]],
    progress: dict[str, int],
    slack: int,
) -> Evaluation:
    """Match alerts ``(key, step, score)`` with injected anomalies.

    An alert matches an anomaly of its key when its step lies in ``[start, end + slack)``. An
    anomaly is *detected* when some alert matches it, and *evaluated* when detected or when its
    key was scored up to ``end + slack - 1`` (so anomalies still in progress count for nothing).
    """
    by_key: dict[str, list[InjectedAnomaly]] = {}
    for a in anomalies:
        by_key.setdefault(a.key, []).append(a)
    hit: set[InjectedAnomaly] = set()
    matched = 0
    for key, step, _ in alerts:
        found = [a for a in by_key.get(key, ()) if _match(a, key, step, slack)]
        if found:
            matched += 1
            hit.update(found)
    kinds: dict[str, list[int]] = {}
    evaluated = 0
    for a in anomalies:
        done = a in hit or progress.get(a.key, -1) >= a.end_step + slack - 1
        if not done:
            continue
        evaluated += 1
        k = kinds.setdefault(a.kind, [0, 0])
        k[1] += 1
        if a in hit:
            k[0] += 1
    return Evaluation(
        injected=len(anomalies),
        evaluated=evaluated,
        detected=len(hit),
        by_kind={k: (v[0], v[1]) for k, v in kinds.items()},
        alerts=len(alerts),
        matched_alerts=matched,
    )


# ----------------------------------------------------------------------------------------------
# Console view


def _ts_seconds(text: Any) -> float | None:
    try:
        return parse_iso(str(text)).timestamp()
    except ValueError:
        return None


def _fmt_num(x: Any) -> str:
    return f"{x:>10.4g}" if isinstance(x, (int, float)) else f"{'-':>10}"


class Console(threading.Thread):
    """Reads the alerts and scores topics (assigned partitions, no group) and prints alerts."""

    def __init__(
        self,
        bootstrap: str,
        topics: dict[str, int],
        stream: SyntheticStream,
        board: Scoreboard,
        out: TextIO,
        *,
        slack: int = 20,
    ) -> None:
        super().__init__(name="demo-console", daemon=True)
        from kafka import KafkaConsumer, TopicPartition

        self.stream = stream
        self.slack = slack
        self.board = board
        self.out = out
        self._stop_after_drain = threading.Event()
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id="streamrnn-demo-console",
            enable_auto_commit=False,
            fetch_max_wait_ms=100,
        )
        tps = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.error: BaseException | None = None

    def finish(self, timeout: float = 5.0) -> None:
        """Read what is left (until a poll returns nothing), then stop; waits for the thread."""
        self._stop_after_drain.set()
        self.join(timeout)

    def run(self) -> None:
        try:
            while True:
                batch = self.consumer.poll(timeout_ms=200)
                for tp, records in batch.items():
                    for r in records:
                        self._handle(tp.topic, r.value)
                if self._stop_after_drain.is_set() and not batch:
                    return
        except Exception as e:  # the view must not take the demo down
            self.error = e
            logger.exception("the console view stopped")
        finally:
            with contextlib.suppress(Exception):
                self.consumer.close(autocommit=False)

    def _handle(self, topic: str, value: bytes | None) -> None:
        try:
            msg = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            return
        key = str(msg.get("key"))
        t = _ts_seconds(msg.get("ts"))
        if t is None:
            return
        step = self.stream.step_of(t)
        if topic == ALERTS:
            score = float(msg.get("score") or 0.0)
            self.board.add_alert(key, step, score)
            self._print_alert(key, step, msg, score)
        else:
            self.board.add_progress(key, step)

    def _print_alert(self, key: str, step: int, msg: dict[str, Any], score: float) -> None:
        injected = [
            a for a in self.stream.injected(step + 1) if _match(a, key, step, slack=self.slack)
        ]
        if injected:
            a = injected[-1]
            where = f"injected {a.kind} (+{step - a.start_step} steps)"
        else:
            where = "no injected anomaly"
        when = str(msg.get("ts", "")).replace("T", " ").rstrip("Z")[:16]
        print(
            f"{time.strftime('%H:%M:%S')}  ALERT  {key:<12} {when}  value {_fmt_num(msg.get('value'))}"
            f"  expected {_fmt_num(msg.get('expected'))}  score {score:.4f}  {where}",
            file=self.out,
            flush=True,
        )


# ----------------------------------------------------------------------------------------------
# The demo


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _sample(registry: Any, name: str, labels: dict[str, str] | None = None) -> float:
    v = registry.get_sample_value(name, labels or {})
    return float(v) if v is not None else 0.0


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
    restore_logs = _quiet_logs(args.verbose)
    try:
        return _Demo(args, sys.stdout).run()
    finally:
        restore_logs()


class _Demo:
    """One run of the demo; :meth:`run` owns every resource and releases it in reverse order."""

    def __init__(self, args: argparse.Namespace, out: TextIO) -> None:
        self.args = args
        self.out = out
        self.stop = threading.Event()
        self.gen_stop = threading.Event()
        self.gen_stats = ProduceStats()
        self.board = Scoreboard()
        self.detector_rc: int | None = None
        self.detector_error: BaseException | None = None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def run(self) -> int:
        from .broker import BrokerError, EmbeddedBroker, create_topics

        args = self.args
        t0 = time.monotonic()
        state_dir = Path(tempfile.mkdtemp(prefix="streamrnn-demo-state-"))
        broker = EmbeddedBroker("127.0.0.1", 0)
        restore_signals = install_stop_signals(
            self.stop, lambda name: print(f"\n{name}: stopping the demo ...", flush=True)
        )
        producer: Any = None
        gen: threading.Thread | None = None
        det_thread: threading.Thread | None = None
        detector: Any = None
        stream: SyntheticStream | None = None
        console: Console | None = None
        try:
            try:
                broker.start()
                topics = create_topics(broker.bootstrap_servers, DEMO_TOPICS)
            except BrokerError as e:
                print(f"error: the embedded broker: {e}", file=sys.stderr)
                return 1
            bootstrap = broker.bootstrap_servers
            self.say(
                f"streamrnn demo: embedded Kafka broker on {bootstrap} "
                f"({time.monotonic() - t0:.1f} s); topics "
                + ", ".join(f"{t} ({n})" for t, n in topics.items())
            )

            detector = self._detector(bootstrap, state_dir)
            if detector is None:
                return 2
            stream = self._stream()
            self.say(
                f"generator: {len(stream.keys)} keys (energy demand and sensors), 5-minute "
                f"readings; {args.backfill} per key of history at full speed, then "
                f"{args.rate:g} readings/s with anomalies ("
                + ", ".join(synth.ANOMALY_KINDS)
                + f"); a malformed message every {stream.malformed_every} readings"
            )

            det_thread = threading.Thread(
                target=self._run_detector, args=(detector,), name="demo-detector", daemon=True
            )
            det_thread.start()
            console = Console(
                bootstrap,
                {ALERTS: topics[ALERTS], SCORES: topics[SCORES]},
                stream,
                self.board,
                self.out,
                slack=args.match_events,
            )
            console.start()
            producer = make_producer(bootstrap)
            gen = threading.Thread(
                target=self._generate, args=(producer, stream), name="demo-generator", daemon=True
            )
            gen.start()

            port = self._wait_metrics_port(detector)
            url = f"http://127.0.0.1:{port}" if port else "(metrics endpoint not up)"
            self.say(
                f"metrics: {url}/metrics  health: {url}/healthz  ready: {url}/readyz"
                f"  (started in {time.monotonic() - t0:.1f} s"
                + (f"; stopping after {args.seconds:g} s" if args.seconds else "; Ctrl+C stops")
                + ")"
            )
            self._watch(detector, det_thread, stream, url, t0)
        finally:
            self.gen_stop.set()
            if gen is not None:
                gen.join(10)
            if producer is not None:
                with contextlib.suppress(Exception):
                    producer.close(timeout=5)
            if detector is not None and det_thread is not None:
                detector.stop()
                det_thread.join(detector.svc.shutdown_timeout_s + 10)
            if console is not None:
                console.finish()
            restore_signals()
            broker.stop()
            shutil.rmtree(state_dir, ignore_errors=True)

        if detector is not None and stream is not None:
            self._summary(detector, stream, time.monotonic() - t0)
        if self.detector_error is not None or self.detector_rc is None:
            return 1
        return self.detector_rc

    # -- parts -----------------------------------------------------------------------------------

    def _detector(self, bootstrap: str, state_dir: Path) -> Any:
        """The detector, constructed in this thread (model load, config checks); None on error."""
        from prometheus_client import CollectorRegistry

        from ..config import ConfigError, load_config
        from ..service.app import Detector
        from . import demo_model

        args = self.args
        model = args.model if args.model is not None else demo_model.path()
        overrides: dict[str, Any] = {
            "service.bootstrap_servers": [bootstrap],
            "service.topics": [READINGS],
            "service.group": GROUP,
            "service.model": str(model),
            "service.alerts_topic": ALERTS,
            "service.dlq_topic": DLQ,
            "service.scores_topic": SCORES,
            "service.state_dir": str(state_dir),
            "service.metrics_host": "127.0.0.1",
            "service.metrics_port": args.metrics_port,
            # The embedded broker completes a group's first join after the rebalance timeout
            # (max_poll_interval_ms): keep it short so the detector consumes within seconds.
            "service.max_poll_interval_ms": 6000,
            "service.session_timeout_ms": 6000,
            "service.heartbeat_interval_ms": 1000,
            "service.checkpoint_interval_s": 5.0,
            "service.shutdown_timeout_s": 15.0,
            "service.retry_backoff_max_s": 2.0,
            "state.device": args.device,
        }
        if args.backfill > 150:
            # No flags while the detector learns the keys' daily range from the history.
            overrides["scoring.warmup"] = args.backfill
        try:
            config = load_config(None, overrides=overrides)
            detector = Detector(config, registry=CollectorRegistry())
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return None
        shipped = args.model is None
        self.say(
            f"model: {detector.model_version} "
            f"({'the demo model shipped in the package' if shipped else 'from --model'}, {model}) "
            f"on {detector.device}"
        )
        return detector

    def _stream(self) -> SyntheticStream:
        args = self.args
        series = synthetic_series(
            "mixed",
            args.keys,
            BLOCK_STEPS,
            interval_s=DEFAULT_INTERVAL_S,
            anomalies=synth.ANOMALY_KINDS,
            anomalies_per_key=ANOMALIES_PER_KEY,
            clean_prefix=max(MIN_CLEAN_PREFIX, args.backfill + LIVE_CLEAN_STEPS),
            seed=args.seed,
            seamless=True,
        )
        every = max(50, int(args.rate * STATUS_EVERY_S))
        return SyntheticStream(
            series, interval_s=DEFAULT_INTERVAL_S, cycle=True, malformed_every=every
        )

    def _run_detector(self, detector: Any) -> None:
        try:
            self.detector_rc = detector.run()
        except BaseException as e:  # reported by the watcher and the summary
            self.detector_error = e
            logger.exception("the detector failed")
        finally:
            self.stop.set()

    def _generate(self, producer: Any, stream: SyntheticStream) -> None:
        messages = iter(stream)
        backfill = self.args.backfill * len(stream.keys)
        try:
            for part, rate in (
                (itertools.islice(messages, backfill), 0.0),
                (messages, self.args.rate),
            ):
                produce_events(
                    producer,
                    READINGS,
                    part,
                    rate,
                    self.gen_stop,
                    stats=self.gen_stats,
                    progress_interval_s=3600.0,
                )
        except Exception:  # the watcher notices that nothing is produced any more
            logger.exception("the generator failed")

    def _wait_metrics_port(self, detector: Any, timeout: float = 10.0) -> int | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop.is_set():
            port = detector.metrics_port
            if port is not None:
                return int(port)
            time.sleep(0.05)
        port = detector.metrics_port
        return int(port) if port is not None else None

    def _watch(
        self,
        detector: Any,
        det_thread: threading.Thread,
        stream: SyntheticStream,
        url: str,
        t0: float,
    ) -> None:
        """Wait for the end (signal, --seconds, detector exit), printing status lines."""
        args = self.args
        reg = detector.registry
        deadline = t0 + args.seconds if args.seconds else None
        next_status = time.monotonic() + STATUS_EVERY_S
        last_processed, last_at = 0.0, time.monotonic()
        ready_said = False
        while not self.stop.wait(0.1):
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if not det_thread.is_alive():
                break
            if not ready_said and _sample(reg, "streamrnn_ready") >= 1:
                ready_said = True
                self.say(
                    f"detector ready: consuming {READINGS} as group {GROUP} "
                    f"({now - t0:.1f} s after start)"
                )
            if now >= next_status:
                processed = _sample(reg, "streamrnn_events_total", {"outcome": "processed"})
                self.say(
                    f"[status {now - t0:5.0f} s] produced {self.gen_stats.sent}, processed "
                    f"{processed:.0f} ({(processed - last_processed) / (now - last_at):.0f}/s), "
                    f"rejected {_sample(reg, 'streamrnn_events_total', {'outcome': 'rejected'}):.0f}, "
                    f"anomalies {_sample(reg, 'streamrnn_anomalies_total', {'topic': READINGS}):.0f}, "
                    f"active keys {_sample(reg, 'streamrnn_active_keys'):.0f}, checkpoint age "
                    f"{_sample(reg, 'streamrnn_checkpoint_age_seconds'):.0f} s, "
                    f"injected so far {len(stream.injected())}; {url}/metrics"
                )
                last_processed, last_at = processed, now
                next_status = now + STATUS_EVERY_S

    def _summary(self, detector: Any, stream: SyntheticStream, seconds: float) -> None:
        reg = detector.registry
        processed = _sample(reg, "streamrnn_events_total", {"outcome": "processed"})
        rejected = _sample(reg, "streamrnn_events_total", {"outcome": "rejected"})
        reasons = {
            r: _sample(reg, "streamrnn_rejected_total", {"reason": r})
            for r in detector.metrics.reasons
        }
        alerts, progress = self.board.snapshot()
        ev = score_alerts(stream.injected(), alerts, progress, self.args.match_events)
        by_reason = ", ".join(f"{r} {n:.0f}" for r, n in reasons.items() if n)
        kinds = ", ".join(
            f"{k} {ev.by_kind[k][0]}/{ev.by_kind[k][1]}"
            for k in synth.ANOMALY_KINDS
            if k in ev.by_kind
        )
        recall = f"{ev.recall:.2f}" if ev.recall is not None else "-"
        precision = f"{ev.precision:.2f}" if ev.precision is not None else "-"
        if self.detector_error is not None:
            status = f"the detector failed: {self.detector_error!r}"
        else:
            status = f"the detector stopped with exit status {self.detector_rc}"
        self.say(
            "\n".join(
                [
                    f"summary ({seconds:.1f} s; {status}):",
                    f"  readings produced   {stream.readings_sent} "
                    f"(+{stream.malformed_sent} malformed), {self.gen_stats.acked} acknowledged",
                    f"  events processed    {processed:.0f}, score messages read {self.board.scored}",
                    f"  dead letters        {rejected:.0f}"
                    + (f" ({by_reason})" if by_reason else ""),
                    f"  alerts              {ev.alerts}",
                    f"  injected anomalies  {ev.injected} sent, {ev.evaluated} evaluated "
                    f"(scored past their window + {self.args.match_events} readings)",
                    f"  recall              {ev.detected}/{ev.evaluated} = {recall}"
                    + (f"  ({kinds})" if kinds else ""),
                    f"  precision           {ev.matched_alerts}/{ev.alerts} = {precision} "
                    "(alerts inside an injected window)",
                ]
            )
        )
