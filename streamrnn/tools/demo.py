"""The demo tour: one run of ``streamrnn demo`` (its command line is :mod:`streamrnn.cli.demo`).

:class:`Demo` starts an embedded broker with the demo topics, the detector in a thread with the
shipped model, a console view (:mod:`.console`) and a generator of synthetic readings
(:mod:`.stream`) with injected anomalies and a few malformed messages; it stops them in reverse
order and prints a summary with the alerts' recall and precision against the injected anomalies.

Given a :class:`~streamrnn.service.clients.Connection` (``streamrnn demo --bootstrap-servers``),
it runs against that cluster instead, with its TLS and SASL settings for every client: the topics
and the group are then named for the run (``streamrnn-demo-<id>.readings``, ...), so nothing of
an earlier run or of anyone else mixes in, and the topics are deleted at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import logging
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ..service.clients import Connection
from . import synth
from .console import Console, Scoreboard, score_alerts
from .produce import (
    DEFAULT_INTERVAL_S,
    ProduceStats,
    install_stop_signals,
    make_producer,
    produce_events,
)
from .stream import SyntheticStream, synthetic_series

__all__ = ["DEMO_TOPICS", "Demo"]

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


def _sample(registry: Any, name: str, labels: dict[str, str] | None = None) -> float:
    v = registry.get_sample_value(name, labels or {})
    return float(v) if v is not None else 0.0


class Demo:
    """One run of the demo; :meth:`run` owns every resource and releases it in reverse order."""

    def __init__(
        self, args: argparse.Namespace, out: TextIO, connection: Connection | None = None
    ) -> None:
        self.args = args
        self.out = out
        self.stop = threading.Event()
        self.gen_stop = threading.Event()
        self.gen_stats = ProduceStats()
        self.board = Scoreboard()
        self.detector_rc: int | None = None
        self.detector_error: BaseException | None = None
        # The resources of a run, released by _stop_all in reverse order of their start.
        from .broker import EmbeddedBroker

        self.connection = connection
        self.broker = EmbeddedBroker("127.0.0.1", 0) if connection is None else None
        prefix = "" if connection is None else f"streamrnn-demo-{uuid.uuid4().hex[:8]}."
        self.topic = {name: prefix + name for name in DEMO_TOPICS}  # demo name -> topic
        self.group = GROUP if connection is None else prefix + "detector"
        self.state_dir = Path(tempfile.mkdtemp(prefix="streamrnn-demo-state-"))
        self.detector: Any = None
        self.det_thread: threading.Thread | None = None
        self.stream: SyntheticStream | None = None
        self.console: Console | None = None
        self.producer: Any = None
        self.gen: threading.Thread | None = None
        self.url = ""
        self._restore_signals: Callable[[], None] = lambda: None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def run(self) -> int:
        t0 = time.monotonic()
        self._restore_signals = install_stop_signals(
            self.stop, lambda name: print(f"\n{name}: stopping the demo ...", flush=True)
        )
        try:
            failed = self._start(t0)
            if failed is not None:
                return failed
            assert self.detector is not None and self.det_thread is not None
            assert self.stream is not None
            self._watch(self.detector, self.det_thread, self.stream, self.url, t0)
        finally:
            self._stop_all()
        if self.detector is not None and self.stream is not None:
            self._summary(self.detector, self.stream, time.monotonic() - t0)
        if self.detector_error is not None or self.detector_rc is None:
            return 1
        return self.detector_rc

    def _start(self, t0: float) -> int | None:
        """Broker, detector, console and generator; an exit status when one cannot start."""
        from .broker import BrokerError, create_topics

        args = self.args
        try:
            if self.broker is not None:
                self.broker.start()
            conn = self.connection or Connection.of(self.broker_address)
            wanted = {self.topic[name]: n for name, n in DEMO_TOPICS.items()}
            made = create_topics(conn, wanted)
            topics = {name: made[self.topic[name]] for name in DEMO_TOPICS}
        except BrokerError as e:
            where = "the embedded broker" if self.broker is not None else "the Kafka cluster"
            print(f"error: {where}: {e}", file=sys.stderr)
            return 1
        where = "embedded Kafka broker" if self.broker is not None else "Kafka cluster"
        self.say(
            f"streamrnn demo: {where} on {','.join(conn.servers)} "
            f"({conn.kafka.security_protocol}, {time.monotonic() - t0:.1f} s); topics "
            + ", ".join(f"{self.topic[t]} ({n})" for t, n in topics.items())
        )
        self.detector = detector = self._detector(conn, self.state_dir)
        if detector is None:
            return 2
        self.stream = stream = self._stream()
        self.say(
            f"generator: {len(stream.keys)} keys (energy demand and sensors), 5-minute "
            f"readings; {args.backfill} per key of history at full speed, then "
            f"{args.rate:g} readings/s with anomalies ("
            + ", ".join(synth.ANOMALY_KINDS)
            + f"); a malformed message every {stream.malformed_every} readings"
        )
        self.det_thread = threading.Thread(
            target=self._run_detector, args=(detector,), name="demo-detector", daemon=True
        )
        self.det_thread.start()
        shown = {self.topic[ALERTS]: topics[ALERTS], self.topic[SCORES]: topics[SCORES]}
        self.console = Console(
            conn,
            shown,
            stream,
            self.board,
            self.out,
            alerts_topic=self.topic[ALERTS],
            slack=args.match_events,
        )
        self.console.start()
        self.producer = make_producer(conn)
        self.gen = threading.Thread(
            target=self._generate, args=(self.producer, stream), name="demo-generator", daemon=True
        )
        self.gen.start()
        port = self._wait_metrics_port(detector)
        self.url = url = f"http://127.0.0.1:{port}" if port else "(metrics endpoint not up)"
        self.say(
            f"metrics: {url}/metrics  health: {url}/healthz  ready: {url}/readyz"
            f"  (started in {time.monotonic() - t0:.1f} s"
            + (f"; stopping after {args.seconds:g} s" if args.seconds else "; Ctrl+C stops")
            + ")"
        )
        return None

    def _stop_all(self) -> None:
        """Generator, then the detector (gracefully), the console, the broker; in that order."""
        self.gen_stop.set()
        if self.gen is not None:
            self.gen.join(10)
        if self.producer is not None:
            with contextlib.suppress(Exception):
                self.producer.close(timeout=5)
        if self.detector is not None and self.det_thread is not None:
            self.detector.stop()
            self.det_thread.join(self.detector.svc.shutdown_timeout_s + 10)
        if self.console is not None:
            self.console.finish()
        self._restore_signals()
        if self.broker is not None:
            self.broker.stop()
        elif self.connection is not None:
            self._delete_topics(self.connection)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    @property
    def broker_address(self) -> str:
        assert self.broker is not None
        return self.broker.bootstrap_servers

    def _delete_topics(self, conn: Connection) -> None:
        """The run's topics on an external cluster; a refusal (no ACL to delete) is logged."""
        from ..service.clients import admin_client

        names = list(self.topic.values())
        try:
            admin = admin_client(conn, "streamrnn-demo-admin", request_timeout_ms=10_000)
            try:
                admin.delete_topics(names, timeout_ms=10_000)
            finally:
                admin.close()
            self.say(f"deleted the demo's topics: {', '.join(names)}")
        except Exception as e:  # cleanup is best effort; say what is left behind
            self.say(f"could not delete the demo's topics ({e!r}); left: {', '.join(names)}")

    # -- parts -----------------------------------------------------------------------------------

    def _detector(self, conn: Connection, state_dir: Path) -> Any:
        """The detector, constructed in this thread (model load, config checks); None on error."""
        from prometheus_client import CollectorRegistry

        from ..config import ConfigError, load_config
        from ..service.app import Detector
        from . import demo_model

        args = self.args
        model = args.model if args.model is not None else demo_model.path()
        overrides: dict[str, Any] = {
            "service.bootstrap_servers": list(conn.servers),
            "service.topics": [self.topic[READINGS]],
            "service.group": self.group,
            "service.model": str(model),
            "service.alerts_topic": self.topic[ALERTS],
            "service.dlq_topic": self.topic[DLQ],
            "service.scores_topic": self.topic[SCORES],
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
            # The cluster's TLS and SASL, as resolved from the flags, environment and --config.
            service = dataclasses.replace(config.service, kafka=conn.kafka)
            config = dataclasses.replace(config, service=service)
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
                    self.topic[READINGS],
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
                    f"detector ready: consuming {self.topic[READINGS]} as group {self.group} "
                    f"({now - t0:.1f} s after start)"
                )
            if now >= next_status:
                processed = _sample(reg, "streamrnn_events_total", {"outcome": "processed"})
                self.say(
                    f"[status {now - t0:5.0f} s] produced {self.gen_stats.sent}, processed "
                    f"{processed:.0f} ({(processed - last_processed) / (now - last_at):.0f}/s), "
                    f"rejected {_sample(reg, 'streamrnn_events_total', {'outcome': 'rejected'}):.0f}, "
                    f"anomalies {_sample(reg, 'streamrnn_anomalies_total', {'topic': self.topic[READINGS]}):.0f}, "
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
