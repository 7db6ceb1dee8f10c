"""The Kafka detector daemon: consume, score, alert, commit, checkpoint.

This module is the Kafka side; the engine side (decode, model, state, scoring) is
:mod:`.worker`, by default in a child process so that it steps one poll while the Kafka client
parses the next. One poll, in order (see ``docs/design.md``):

1. ``poll(max_poll_records)``; the records go to the engine side as columns.
2. There they are decoded (:mod:`.codec`; malformed records come back as rejects, which go to
   the dead-letter topic with their original key and bytes and the reason in headers) and
   ``Engine.process`` steps every key's events in arrival order; with
   ``input.late_events: drop`` the late ones come back as rejects (``late_event``).
3. One alert per flagged event to ``service.alerts_topic`` (and every event to
   ``service.scores_topic`` when set), keyed by the event key, identified by ``source``.
4. Only once the broker acknowledged every message of a poll (acks=all; failed sends are
   retried with exponential backoff) are its offsets committed: nothing is lost. Sends are not
   awaited one poll at a time: the loop goes on polling and commits each poll, in order, as its
   acknowledgements arrive.

At most one poll is in flight beside the one being parsed; everything that reads or changes the
state (rebalances, checkpoints, model reloads, shutdown) first collects and publishes it, so the
state it sees is the committed offsets' state.
5. Every ``checkpoint_interval_s``, on revocation and on shutdown, each assigned partition's keys
   are checkpointed with the offset after the last event their state includes
   (:mod:`.checkpoint`).

On assignment a partition's checkpoint is restored and the partition is sought to its offset, so
the state equals an uninterrupted run's: a ``kill -9`` at any moment loses no event and changes
no score (events after the checkpoint are processed again and their alerts published again;
consumers dedupe on ``source``). A partition without a checkpoint starts from its committed offset
(else ``auto_offset_reset``) with fresh state, and gets an empty checkpoint at once so a crash
before the first periodic checkpoint cannot skip events.

Which config applies: the model directory's ``model`` and ``features`` sections (the network and
the normaliser it was trained with); ``scoring``, ``state``, ``input`` and ``service`` from the
service's own config.

Each key is expected to stay on one partition (Kafka's key partitioning does that); a key seen on
another partition moves there with a warning, and is checkpointed with its latest partition.

Rebalances: the listener runs inside ``poll`` (kafka-python calls it there). On revocation the
partitions are checkpointed and their keys dropped; newly assigned partitions are paused, and
restored and sought right after that ``poll`` returns, then resumed.

Operations: SIGTERM / SIGINT call :meth:`Detector.stop` (finish the batch, flush, commit,
checkpoint, leave the group, exit 0 within ``shutdown_timeout_s``; a second Ctrl+C raises
KeyboardInterrupt). SIGHUP, or a changed ``model.json`` (checked every ``model_poll_interval_s``),
reloads the model; an incompatible one is refused (``streamrnn_model_reloads_total{outcome=
"refused"}``) and the old one keeps serving. Kafka errors are logged, counted
(``streamrnn_broker_errors_total``) and retried with exponential backoff up to
``retry_backoff_max_s``. ``/healthz`` fails when the loop has not iterated for
``max(30 s, max_poll_interval_ms)``; ``/readyz`` needs the model, an assignment and every assigned
partition's state restored.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from ..config import Config, ConfigError, dump_config
from ..detector.modeldir import INFO, LoadedModel, load_model, resolve_device
from .checkpoint import (
    CheckpointError,
    CheckpointStore,
    KafkaCheckpoints,
    LocalCheckpoints,
    encode,
    offsets_key,
)
from .clients import Backoff, ensure_topics
from .decode import Part, dlq_headers
from .metrics import Metrics, MetricsServer, start_http
from .records import install as install_record_reader
from .validate import validate_service_config
from .worker import EngineClient, EngineGone, Outcome, Stats, start_engine

__all__ = ["Detector", "validate_service_config"]

log = logging.getLogger(__name__)

TP = tuple[str, int]
LAG_INTERVAL_S = 5.0  # consumer lag is refreshed at most this often
ACK_POLL_MS = 10  # longest poll while sent messages await acknowledgement (then commit)
MAX_CLIENT_FAILURES = 20  # unexpected errors from consumer.poll in a row before giving up
# /healthz fails when the loop has not iterated for max(this, max_poll_interval_ms)
HEALTH_MIN_S = 30.0


@dataclass
class _Partition:
    """What the service knows of one assigned partition."""

    offset: int | None = None  # after the last event the state includes; None until restored
    restored: bool = False
    dirty: bool = False  # events since the last checkpoint
    unsafe: bool = False  # outputs of a batch were never acknowledged: never checkpoint again
    committed: int | None = None  # the last offset this instance committed


Message = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]


@dataclass
class _Unacked:
    """A scored poll whose messages are sent but not all acknowledged: not committed yet."""

    sent: list[tuple[Message, Any]]  # each message and its send future (None: send raised)
    out: Outcome
    reasons: Counter[str]
    next_offsets: dict[TP, int]
    seconds: float  # the Kafka side's time on it so far


@dataclass
class _InFlight:
    """A poll handed to the engine side whose outcome is not published yet."""

    parts: list[Part]  # by partition, in the order sent
    headers: dict[int, list[Any]]  # the records' non-empty headers, by position in the poll
    next_offsets: dict[TP, int]
    seconds: float  # the Kafka side's time on it so far


class Detector:
    """The daemon: ``Detector(config).run()`` until :meth:`stop` (or SIGTERM / SIGINT).

    The constructor validates the config, loads the model and checks the state directory; it
    raises :class:`ConfigError` naming the key, the rule and the value. ``registry`` receives the
    metrics (a fresh one by default). ``run`` serves ``/metrics``, ``/healthz`` and ``/readyz`` on
    ``service.metrics_host:metrics_port`` and returns the exit status.

    With ``service.engine_process`` (the default) ``run`` starts the engine side in a child
    process (:mod:`.worker`); a script that runs a Detector must then guard its entry point with
    ``if __name__ == "__main__":``, as any multiprocessing program must.
    """

    def __init__(self, config: Config, *, registry: CollectorRegistry | None = None) -> None:
        validate_service_config(config)
        svc = config.service
        try:
            self.device = resolve_device(config.state.device)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        # In a child process the engine side loads the model itself (on the device); this copy
        # only validates, on the CPU.
        loaded = self._load(svc.model or "", torch.device("cpu") if svc.engine_process else None)
        names = tuple(config.input.features) or loaded.feature_names
        if len(names) != len(loaded.feature_names):
            raise ConfigError(
                f"input.features: must name the model's {len(loaded.feature_names)} feature(s) "
                f"({', '.join(loaded.feature_names)}) in order, got {list(config.input.features)}"
            )
        self.local = LocalCheckpoints(svc.state_dir, svc.group)
        try:
            self.local.check_writable()
        except OSError as e:
            raise ConfigError(
                f"service.state_dir: must be a writable directory ({e.strerror or e}), got {svc.state_dir!r}"
            ) from None
        self.config = dataclasses.replace(
            loaded.config,
            scoring=config.scoring,
            state=config.state,
            input=config.input,
            service=config.service,
        )
        self.svc = svc
        self.loaded = loaded
        self.engine: EngineClient | None = None  # started by run()
        self.feature_names = names
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry, topics=svc.topics)
        self._set_model_metric(loaded)
        self.store = CheckpointStore(self.local)
        self._model_sig = self._model_signature()
        self._stop = threading.Event()
        self._reload_requested = threading.Event()
        self._parts: dict[TP, _Partition] = {}
        self._pending: set[TP] = set()
        self._inflight: deque[_InFlight] = deque()
        self._unacked: deque[_Unacked] = deque()
        self._abandoned = False  # a batch's outputs were never acknowledged: leave, no commit
        self._consumer: Any = None
        self._producer: Any = None
        self._http: MetricsServer | None = None
        self._last_tick = time.monotonic()
        self._imputed_seen = 0
        self._evicted_seen = 0
        self.late_total = 0  # late events scored (input.late_events: score)
        self._next_late_log = 0.0
        self._client_failures = 0
        self.moved_keys_total = 0
        self._ran = False
        self._crashed = False  # no checkpoint may be written any more (state may be mid-batch)

    # ------------------------------------------------------------------------------------------
    # Start-up

    def _load(self, model_dir: str, device: torch.device | None = None) -> LoadedModel:
        try:
            return load_model(model_dir, device or self.device)
        except ConfigError as e:
            raise ConfigError(f"service.model: {e}") from None
        except (ValueError, OSError) as e:
            raise ConfigError(
                f"service.model: must be a model directory written by `streamrnn train` ({e}), "
                f"got {model_dir!r}"
            ) from None

    def _set_model_metric(self, loaded: LoadedModel) -> None:
        m = loaded.config.model
        self.metrics.set_model(loaded.version, m.cell, m.hidden_size, str(self.device))

    @property
    def model_version(self) -> str:
        """The version of the model serving now."""
        return self.engine.stats.model_version if self.engine is not None else self.loaded.version

    @property
    def metrics_port(self) -> int | None:
        """The port ``/metrics`` is served on (known once :meth:`run` started the endpoint)."""
        return self._http.server_port if self._http is not None else None

    def _connect(self) -> bool:
        """Producer, topics, consumer and subscription, retried while the broker is away.

        Returns False when :meth:`stop` was called first."""
        from kafka import KafkaConsumer, KafkaProducer
        from kafka.consumer.subscription_state import ConsumerRebalanceListener
        from kafka.errors import KafkaError

        svc = self.svc
        detector = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                detector._on_revoked(revoked)

            def on_partitions_assigned(self, assigned: Any) -> None:
                detector._on_assigned(assigned)

            def on_partitions_lost(self, lost: Any) -> None:
                detector._on_lost(lost)

        backoff = Backoff(svc.retry_backoff_max_s)
        while not self._stop.is_set():
            self._last_tick = time.monotonic()
            try:
                self._producer = KafkaProducer(
                    bootstrap_servers=list(svc.bootstrap_servers),
                    client_id=f"streamrnn-{svc.group}",
                    acks="all",
                    linger_ms=5,
                    max_block_ms=10_000,
                    bootstrap_timeout_ms=10_000,
                )
                ensure_topics(self.svc)
                if svc.state_topic:
                    kafka_store = KafkaCheckpoints(
                        svc.bootstrap_servers,
                        svc.state_topic,
                        svc.group,
                        self._producer,
                        timeout_s=min(30.0, svc.shutdown_timeout_s / 2),
                    )
                    kafka_store.ensure_topic()
                    self.store = CheckpointStore(self.local, kafka_store)
                self._consumer = KafkaConsumer(
                    bootstrap_servers=list(svc.bootstrap_servers),
                    client_id=f"streamrnn-{svc.group}",
                    group_id=svc.group,
                    enable_auto_commit=False,
                    auto_offset_reset=svc.auto_offset_reset,
                    max_poll_records=svc.max_poll_records,
                    fetch_max_wait_ms=svc.fetch_max_wait_ms,
                    max_partition_fetch_bytes=svc.max_partition_fetch_bytes,
                    max_poll_interval_ms=svc.max_poll_interval_ms,
                    session_timeout_ms=svc.session_timeout_ms,
                    heartbeat_interval_ms=svc.heartbeat_interval_ms,
                    bootstrap_timeout_ms=10_000,
                    retry_backoff_ms=svc.client_retry_backoff_ms,
                )
                if svc.fast_record_reader:
                    install_record_reader(self._consumer)
                if svc.topics:
                    self._consumer.subscribe(topics=list(svc.topics), listener=Listener())
                else:
                    self._consumer.subscribe(pattern=svc.topic_pattern, listener=Listener())
                log.info(
                    "connected to %s; consuming %s as group %s",
                    ",".join(svc.bootstrap_servers),
                    list(svc.topics) or f"/{svc.topic_pattern}/",
                    svc.group,
                )
                return True
            except (KafkaError, CheckpointError, OSError) as e:  # broker away: retried
                self.metrics.broker_errors.inc()
                self._close_clients(timeout_s=1.0)
                delay = backoff.next()
                log.warning(
                    "cannot connect to Kafka at %s: %s; retrying in %.1f s",
                    ",".join(svc.bootstrap_servers),
                    e,
                    delay,
                )
                self._stop.wait(delay)
        return False

    # ------------------------------------------------------------------------------------------
    # Lifecycle

    def stop(self) -> None:
        """Ask the loop to finish its batch, flush, commit, checkpoint and leave the group."""
        self._stop.set()

    def reload_model(self) -> None:
        """Ask the loop to reload the model directory (what SIGHUP does)."""
        self._reload_requested.set()

    def run(self) -> int:
        """Serve until :meth:`stop`; returns 0 after a clean shutdown, 1 when outputs of the last
        batch could not be acknowledged (the next start processes them again) or on a crash."""
        if self._ran:
            raise RuntimeError("Detector.run() can be called once; make a new Detector")
        self._ran = True
        self._log_config()
        restore_signals = self._install_signals()
        try:
            try:
                self._http = start_http(
                    self.registry,
                    self.svc.metrics_host,
                    self.svc.metrics_port,
                    self._healthy,
                    self._ready,
                )
            except OSError as e:
                raise ConfigError(
                    f"service.metrics_port: must be free to listen on {self.svc.metrics_host} "
                    f"({e.strerror or e}), got {self.svc.metrics_port}"
                ) from None
            try:
                self.engine = start_engine(self.config, self.loaded, self.device)
            except EngineGone as e:
                log.error("cannot start the engine: %s", e)
                return 1
            except Exception as e:  # EngineCallError: the child could not build its engine
                log.error("cannot start the engine process: %s", e)
                return 1
            self._note_stats(self.engine.stats)
            if not self._connect():
                return 0
            # What exists now (modules, torch, the model copy, clients) lives as long as the
            # process: out of the collector's sight, a full collection scans only what the loop
            # made since (on this machine 100 ms -> ms a collection, several a second at full rate).
            gc.freeze()
            try:
                self._loop()
                return self._shutdown()
            except EngineGone as e:
                self._crashed = True
                log.error(
                    "%s; leaving without a final checkpoint (the next start processes the "
                    "uncommitted events again)",
                    e,
                )
                self._close_clients(timeout_s=5.0)
                return 1
            except Exception:
                self._crashed = True
                log.exception("the detector loop crashed; leaving without a final checkpoint")
                self._close_clients(timeout_s=5.0)
                return 1
        finally:
            restore_signals()
            self.metrics.set_ready(False)
            if self.engine is not None:
                self.engine.close()
            if self._http is not None:
                self._http.shutdown()

    def _log_config(self) -> None:
        log.info(
            "streamrnn detector starting: model %s (%s, %s) on %s%s; resolved config:\n%s",
            self.model_version,
            self.svc.model,
            ", ".join(self.feature_names),
            self.device,
            " in an engine process" if self.svc.engine_process else "",
            dump_config(self.config).rstrip(),
        )

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def on_stop(signum: int, _frame: Any) -> None:
            log.info(
                "received %s: finishing the batch and stopping (Ctrl+C again to force)",
                signal.Signals(signum).name,
            )
            self.stop()
            signal.signal(signal.SIGINT, signal.default_int_handler)

        def on_hup(_signum: int, _frame: Any) -> None:
            log.info("received SIGHUP: reloading the model")
            self.reload_model()

        wanted: dict[int, Any] = {signal.SIGTERM: on_stop, signal.SIGINT: on_stop}
        if hasattr(signal, "SIGHUP"):
            wanted[signal.SIGHUP] = on_hup
        previous = {s: signal.signal(s, h) for s, h in wanted.items()}

        def restore() -> None:
            for s, h in previous.items():
                signal.signal(s, h)

        return restore

    def _healthy(self) -> tuple[bool, str]:
        limit = max(HEALTH_MIN_S, self.svc.max_poll_interval_ms / 1000.0)
        idle = time.monotonic() - self._last_tick
        if idle > limit:
            return False, f"the loop has not iterated for {idle:.0f} s (limit {limit:.0f} s)"
        return True, "ok"

    def _ready(self) -> tuple[bool, str]:
        if self._stop.is_set():
            return False, "stopping"
        if self._consumer is None:
            return False, "not connected to Kafka"
        if not self._parts:
            return False, "no partitions assigned"
        if self._pending:
            return False, f"restoring the state of {len(self._pending)} partition(s)"
        return True, "ok"

    def _update_ready(self) -> None:
        self.metrics.set_ready(self._ready()[0])

    # ------------------------------------------------------------------------------------------
    # The loop

    def _loop(self) -> None:
        from kafka.errors import KafkaError

        backoff = Backoff(self.svc.retry_backoff_max_s)
        next_checkpoint = time.monotonic() + self.svc.checkpoint_interval_s
        next_lag = 0.0
        next_model_check = time.monotonic() + self.svc.model_poll_interval_s
        while not self._stop.is_set():
            self._last_tick = now = time.monotonic()
            try:
                if self._pending:
                    self._restore_pending()
                if self._reload_requested.is_set() or (
                    self.svc.model_poll_interval_s and now >= next_model_check
                ):
                    next_model_check = now + self.svc.model_poll_interval_s
                    self._maybe_reload(forced=self._reload_requested.is_set())
                # With a poll in flight, take only what the client already has.
                if self._inflight:
                    timeout_ms = 0
                elif self._unacked:
                    timeout_ms = min(ACK_POLL_MS, self.svc.poll_timeout_ms)
                else:
                    timeout_ms = self.svc.poll_timeout_ms
                records = self._poll(timeout_ms)
                n = sum(len(recs) for recs in records.values())
                if n:
                    self._submit(records)
                # A large poll (the client is behind) stays with the engine side while the client
                # parses the next one; otherwise everything is published now: at low rates that
                # costs no throughput, and waiting on the engine frees the interpreter for the
                # client's network thread.
                keep = self._depth if n >= self._pipeline_min else 0
                while len(self._inflight) > keep:
                    if not self._finish():
                        break
                # Commit what the broker has acknowledged; a poll's messages are not awaited
                # one by one.
                self._settle(wait=False)
                if self._abandoned:
                    return  # outputs never acknowledged while stopping: leave without committing
                now = time.monotonic()
                if now >= next_checkpoint:
                    next_checkpoint = now + self.svc.checkpoint_interval_s
                    self._checkpoint(list(self._parts))
                if now >= next_lag:
                    next_lag = now + LAG_INTERVAL_S
                    self._update_lag()
                backoff.reset()
            except KafkaError as e:
                self.metrics.broker_errors.inc()
                delay = backoff.next()
                log.warning("Kafka error: %r; retrying in %.1f s", e, delay)
                self._stop.wait(delay)

    def _poll(self, timeout_ms: int) -> dict[Any, list[Any]]:
        """``consumer.poll``; an unexpected error inside the client (no state was touched yet) is
        logged and retried like a broker error, up to ``MAX_CLIENT_FAILURES`` times in a row."""
        from kafka.errors import KafkaError

        try:
            records = self._consumer.poll(
                timeout_ms=timeout_ms, max_records=self.svc.max_poll_records
            )
        except KafkaError:
            raise
        except Exception as e:
            self._client_failures += 1
            if self._client_failures > MAX_CLIENT_FAILURES:
                raise
            log.exception(
                "unexpected error in the Kafka client's poll (%d in a row)", self._client_failures
            )
            raise KafkaError(f"poll failed: {e!r}") from e
        self._client_failures = 0
        return records

    @property
    def _depth(self) -> int:
        """Polls left in flight after a new one was handed over."""
        return 1 if self.svc.engine_process else 0

    @property
    def _pipeline_min(self) -> int:
        """Records a poll needs to stay in flight: a tenth of ``max_poll_records``."""
        return max(1, self.svc.max_poll_records // 10)

    def _submit(self, records: dict[Any, list[Any]]) -> None:
        """Hand one poll to the engine side (as columns, one part per partition)."""
        assert self.engine is not None
        t0 = time.perf_counter()
        # Only columns are kept, not the records: fewer objects live on to the older GC
        # generations while a poll is in flight.
        parts: list[Part] = []
        headers: dict[int, Any] = {}  # position in the poll -> the record's headers, if any
        for recs in records.values():
            if not recs:
                continue
            part, hdrs = Part.split(recs[0].topic, recs[0].partition, recs)
            if any(hdrs):
                base = sum(len(p) for p in parts)
                headers.update((base + i, h) for i, h in enumerate(hdrs) if h)
            parts.append(part)
        next_offsets = {(p.topic, p.partition): p.offsets[-1] + 1 for p in parts}
        self.engine.submit(parts)
        self._inflight.append(_InFlight(parts, headers, next_offsets, time.perf_counter() - t0))

    def _drain(self) -> bool:
        """Publish and commit every poll in flight (before the state is read or changed)."""
        while self._inflight:
            if not self._finish():
                return False
        return self._settle(wait=True) and not self._abandoned

    def _finish(self) -> bool:
        """Publish the oldest poll in flight and commit it; False when its outputs were never
        acknowledged (stopping): then nothing in flight is committed or checkpointed again."""
        assert self.engine is not None
        t0 = time.perf_counter()
        job = self._inflight.popleft()
        out = self.engine.result()
        self._note_stats(out.stats)
        messages: list[Message] = []
        reasons: Counter[str] = Counter()
        if out.rejects:
            starts = np.cumsum([0] + [len(p) for p in job.parts])  # (parts + 1,)
            for i, reason, detail in out.rejects:
                k = int(np.searchsorted(starts, i, side="right")) - 1
                src, pos = job.parts[k], i - int(starts[k])
                messages.append(
                    (
                        self.svc.dlq_topic,
                        src.keys[pos],
                        src.values[pos],
                        list(job.headers.get(i) or [])
                        + dlq_headers(reason, detail, src.topic, src.partition, src.offsets[pos]),
                    )
                )
                reasons[reason] += 1
        messages.extend((self.svc.alerts_topic, k, v, None) for k, v in out.alerts)
        if self.svc.scores_topic:
            messages.extend((self.svc.scores_topic, k, v, None) for k, v in out.scores)
        self._log_batch_notes(out)

        from kafka.errors import KafkaError

        sent: list[tuple[Message, Any]] = []
        for msg in messages:
            topic, key, value, headers = msg
            try:
                sent.append(
                    (msg, self._producer.send(topic, key=key, value=value, headers=headers))
                )
            except KafkaError:  # retried with backoff when the batch settles
                sent.append((msg, None))
        seconds = job.seconds + time.perf_counter() - t0
        self._unacked.append(_Unacked(sent, out, reasons, job.next_offsets, seconds))
        return True

    def _settle(self, *, wait: bool) -> bool:
        """Commit the scored polls whose messages are all acknowledged, oldest first; with
        ``wait`` all of them (failed sends are retried with backoff). False when outputs were
        never acknowledged (stopping): then nothing after them is committed or checkpointed."""
        while self._unacked:
            t0 = time.perf_counter()
            u = self._unacked[0]
            if not wait and not all(f is not None and f.is_done for _, f in u.sent):
                return True
            if wait and not all(f is not None and f.is_done for _, f in u.sent):
                self._flush()
            failed = [m for m, f in u.sent if f is None or not (f.is_done and f.succeeded())]
            if failed:
                self.metrics.broker_errors.inc()
                error = next((f.exception for _, f in u.sent if f is not None and f.failed()), None)
                log.warning(
                    "%d of %d message(s) not acknowledged (%r); sending them again",
                    len(failed),
                    len(u.sent),
                    error,
                )
                if not self._publish(failed):
                    self._abandon()
                    return False
            self._unacked.popleft()
            self._settled(u, time.perf_counter() - t0)
        return True

    def _flush(self) -> None:
        """Wait for what the producer holds (a failure shows in the futures)."""
        from kafka.errors import KafkaError

        try:
            self._producer.flush(timeout=self._flush_timeout(None))
        except KafkaError as e:
            log.debug("flush: %r", e)

    def _abandon(self) -> None:
        """Outputs were never acknowledged while stopping: no partition with events in hand is
        committed or checkpointed again."""
        self._abandoned = True
        held: list[dict[TP, int]] = [u.next_offsets for u in self._unacked]
        held += [j.next_offsets for j in self._inflight]
        for offsets in held:
            for tp in offsets:
                if tp in self._parts:
                    self._parts[tp].unsafe = True
        self._unacked.clear()
        self._inflight.clear()

    def _settled(self, u: _Unacked, seconds: float) -> None:
        """A poll's outputs are acknowledged: count it, move the offsets, commit."""
        out = u.out
        now = time.time()
        m = self.metrics
        m.processed(out.processed)
        for reason, n in u.reasons.items():
            m.reject(reason, n)
        for topic, n in out.anomalies.items():
            m.anomaly(topic, n)
        if out.alerts:
            m.alerts_published.inc(len(out.alerts))
        m.observe_scores(out.score)
        m.observe_event_lags(now - out.times)
        m.engine_seconds.inc(out.seconds)
        for tp, off in u.next_offsets.items():
            part = self._parts.get(tp)
            if part is not None:
                part.offset, part.dirty = off, True
        self._commit(u.next_offsets, wait=False)
        m.batch_done(u.seconds + seconds)

    def _note_stats(self, stats: Stats) -> None:
        """The engine side's counters into the metrics."""
        m = self.metrics
        if stats.imputed_total > self._imputed_seen:
            m.imputed_values.inc(stats.imputed_total - self._imputed_seen)
        if stats.evicted_total > self._evicted_seen:
            m.evicted_keys.inc(stats.evicted_total - self._evicted_seen)
        self._imputed_seen = max(self._imputed_seen, stats.imputed_total)
        self._evicted_seen = max(self._evicted_seen, stats.evicted_total)
        m.set_state(stats.resident, stats.nbytes)

    def _log_batch_notes(self, out: Outcome) -> None:
        if out.late_scored:
            self.late_total += out.late_scored
            if time.monotonic() >= self._next_late_log:  # at most one line a minute
                self._next_late_log = time.monotonic() + 60.0
                log.info(
                    "late events scored (input.late_events: score): %d so far", self.late_total
                )
        for key, old, new in out.moved:
            self.moved_keys_total += 1
            log.warning(
                "key %r moved from %s-%d to %s-%d; its state follows it "
                "(per-key order holds only within one partition)",
                key,
                *old,
                *new,
            )

    def _publish(self, messages: list[tuple[str, bytes | None, bytes | None, Any]]) -> bool:
        """Send and wait for every acknowledgement; failed sends are retried with backoff.

        Returns False only when stopping and ``shutdown_timeout_s`` ran out first."""
        from kafka.errors import KafkaError

        if not messages:
            return True
        pending = messages
        backoff = Backoff(self.svc.retry_backoff_max_s)
        deadline: float | None = None
        while True:
            futures: list[Any] = []
            error: Exception | None = None
            try:
                for topic, key, value, headers in pending:
                    futures.append(
                        self._producer.send(topic, key=key, value=value, headers=headers)
                    )
                self._producer.flush(timeout=self._flush_timeout(deadline))
            except KafkaError as e:
                error = e
            failed = [
                m
                for m, f in zip(pending, futures, strict=False)
                if not (f.is_done and f.succeeded())
            ]
            failed += pending[len(futures) :]
            if not failed:
                return True
            if error is None:
                error = next((f.exception for f in futures if f.is_done and f.failed()), None)
            self.metrics.broker_errors.inc()
            self._last_tick = time.monotonic()
            if self._stop.is_set():
                if deadline is None:
                    deadline = time.monotonic() + self.svc.shutdown_timeout_s
                if time.monotonic() >= deadline:
                    log.error(
                        "%d message(s) not acknowledged before the shutdown timeout (%r); "
                        "not committing: the next start processes them again",
                        len(failed),
                        error,
                    )
                    return False
            delay = backoff.next()
            log.warning(
                "%d of %d message(s) not acknowledged (%r); retrying in %.1f s",
                len(failed),
                len(pending),
                error,
                delay,
            )
            if self._stop.is_set():
                time.sleep(min(delay, max(0.0, (deadline or 0.0) - time.monotonic())))
            else:
                self._stop.wait(delay)
            pending = failed

    def _flush_timeout(self, deadline: float | None) -> float:
        if deadline is None:
            return max(30.0, self.svc.retry_backoff_max_s)
        return max(0.1, deadline - time.monotonic())

    def _commit(
        self, offsets: dict[TP, int], timeout_s: float = 30.0, *, wait: bool = True
    ) -> None:
        """Commit ``offsets`` of assigned partitions. With ``wait=False`` (after each batch) the
        commit is not awaited: a failed one is logged and the next commit covers it; revocation
        and shutdown commit with ``wait``."""
        from kafka import TopicPartition
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        todo = {
            (t, p): o
            for (t, p), o in offsets.items()
            if (t, p) in self._parts and self._parts[(t, p)].committed != o
        }
        if not todo:
            return
        request = {TopicPartition(*tp): OffsetAndMetadata(o, "", -1) for tp, o in todo.items()}
        try:
            if wait:
                self._consumer.commit(request, timeout_ms=int(timeout_s * 1000))
                self._committed(todo)
            else:
                self._consumer.commit_async(
                    request, callback=lambda _offsets, response: self._commit_done(todo, response)
                )
        except KafkaError as e:  # the next commit covers these offsets; state is checkpointed apart
            self._commit_done(todo, e)

    def _commit_done(self, todo: dict[TP, int], response: Any) -> None:
        if isinstance(response, BaseException):
            self.metrics.broker_errors.inc()
            log.warning("offset commit failed (%r); the next batch's commit covers it", response)
        else:
            self._committed(todo)

    def _committed(self, todo: dict[TP, int]) -> None:
        for tp, o in todo.items():
            part = self._parts.get(tp)
            if part is not None and (part.committed is None or part.committed < o):
                part.committed = o

    def _update_lag(self) -> None:
        """Lag from the fetch responses' high watermarks (free; no ListOffsets round trip)."""
        from kafka import TopicPartition

        for (t, p), part in list(self._parts.items()):
            if part.offset is None:
                continue
            try:
                hw = self._consumer.highwater(TopicPartition(t, p))
            except Exception:  # not assigned any more (a rebalance in between)
                continue
            if hw is not None:
                self.metrics.set_consumer_lag(t, p, max(0, hw - part.offset))

    # ------------------------------------------------------------------------------------------
    # Rebalances and checkpoints

    def _on_revoked(self, revoked: Iterable[Any]) -> None:
        tps = [(tp.topic, tp.partition) for tp in revoked]
        if not tps:
            return
        log.info("partitions revoked: %s", _fmt_tps(tps))
        if not self._crashed and self._drain():
            mine = [tp for tp in tps if tp in self._parts]
            self._commit(
                {
                    tp: p.offset
                    for tp in mine
                    if (p := self._parts[tp]).offset is not None and p.restored and not p.unsafe
                },
            )
            self._checkpoint(mine)
        self._forget(tps)
        self.metrics.set_assignment(list(self._parts))
        self._update_ready()

    def _on_lost(self, lost: Iterable[Any]) -> None:
        tps = [(tp.topic, tp.partition) for tp in lost]
        log.warning(
            "partitions lost (membership expired): %s; dropping their state unsaved", _fmt_tps(tps)
        )
        if not self._crashed:
            self._drain()  # published, and committed where the broker still takes it
        self._forget(tps)
        self.metrics.set_assignment(list(self._parts))
        self._update_ready()

    def _on_assigned(self, assigned: Iterable[Any]) -> None:
        new = [tp for tp in assigned if (tp.topic, tp.partition) not in self._parts]
        for tp in new:
            self._parts[(tp.topic, tp.partition)] = _Partition()
            self._pending.add((tp.topic, tp.partition))
        if new:
            # No records until the state is restored and the position sought (after this poll).
            self._consumer.pause(*new)
        log.info("partitions assigned: %s", _fmt_tps((tp.topic, tp.partition) for tp in assigned))
        self.metrics.set_assignment(list(self._parts))
        self._update_ready()

    def _forget(self, tps: list[TP]) -> None:
        """Drop what is known of ``tps``, and their keys' state."""
        gone = [tp for tp in tps if self._parts.pop(tp, None) is not None]
        self._pending.difference_update(tps)
        if gone and not self._crashed and self.engine is not None and not self.engine.in_flight:
            self._note_stats(self.engine.call("forget", gone))

    def _restore_pending(self) -> None:
        """Restore newly assigned partitions from their checkpoints and seek; then resume them."""
        from kafka import TopicPartition

        if not self._drain():
            return
        assert self.engine is not None
        tps = sorted(self._pending)
        found = self.store.load_many(tps)
        fresh: list[TP] = []
        for tp in tps:
            part = self._parts[tp]
            ktp = TopicPartition(*tp)
            ck = found.get(tp)
            offset = None
            if ck is not None:
                try:
                    extra = self.engine.call("restore", tp, ck.data)
                    offset = int(extra["offsets"][offsets_key(*tp)])
                    n_keys = len(extra.get("keys", []))
                except EngineGone:
                    raise
                except Exception as e:  # corrupt or incompatible snapshot: fall back to fresh state
                    log.error(
                        "checkpoint of %s-%d (%s) cannot be restored: %s; starting it with "
                        "fresh state from its committed offset",
                        *tp,
                        ck.origin,
                        e,
                    )
                    offset = None
                else:
                    self._consumer.seek(ktp, offset)
                    version = extra.get("model_version")
                    log.info(
                        "restored %d key(s) of %s-%d from the %s checkpoint at offset %d "
                        "(written %.0f s ago%s)",
                        n_keys,
                        *tp,
                        ck.origin,
                        offset,
                        time.time() - ck.written_at,
                        "" if version == self.model_version else f" by model {version}",
                    )
            if offset is None:
                # The committed offset, else auto_offset_reset.
                offset = self._consumer.position(ktp, timeout_ms=30_000)
                fresh.append(tp)
                log.info("no checkpoint for %s-%d: fresh state from offset %d", *tp, offset)
            # Committing the offset the state starts from would add nothing (or move back).
            part.offset, part.committed, part.restored, part.dirty = offset, offset, True, False
        if fresh:
            # An empty checkpoint at once: a crash before the first periodic one skips nothing.
            self._checkpoint(fresh, force=True)
        self._pending.difference_update(tps)
        self._consumer.resume(*[TopicPartition(*tp) for tp in tps])
        self._note_stats(self.engine.call("stats"))
        self._update_ready()

    def _checkpoint(self, tps: list[TP], *, force: bool = False) -> bool:
        """Checkpoint the partitions whose state changed (all given ones with ``force``)."""
        if not self._drain():
            return False
        assert self.engine is not None
        todo: list[tuple[TP, _Partition]] = []
        for tp in tps:
            part = self._parts.get(tp)
            if part is None or not part.restored or part.unsafe or part.offset is None:
                continue
            if part.dirty or force:
                todo.append((tp, part))
        items = []
        written = []
        if todo:
            extra = {"group": self.svc.group}
            snaps = self.engine.call(
                "snapshot",
                [
                    (tp, part.offset, {**extra, "topic": tp[0], "partition": tp[1]})
                    for tp, part in todo
                ],
            )
            version = self.model_version
            for (tp, part), (data, n_keys) in zip(todo, snaps, strict=True):
                assert part.offset is not None
                framed = encode(
                    self.svc.group, tp[0], tp[1], part.offset, data, keys=n_keys, model=version
                )
                items.append((tp[0], tp[1], framed))
                written.append(part)
        ok = True
        if items:
            try:
                self.store.save_many(items)
            except CheckpointError as e:
                ok = False
                log.error("checkpoint failed: %s", e)
            else:
                for part in written:
                    part.dirty = False
                log.debug("checkpointed %d partition(s)", len(items))
        self.metrics.checkpoint(ok)
        return ok

    # ------------------------------------------------------------------------------------------
    # Model reload

    def _model_signature(self) -> tuple[int, int] | None:
        try:
            st = (Path(self.svc.model or "") / INFO).stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _maybe_reload(self, *, forced: bool) -> None:
        self._reload_requested.clear()
        sig = self._model_signature()
        if not forced and (sig is None or sig == self._model_sig):
            return
        self._model_sig = sig
        if not self._drain():
            return
        assert self.engine is not None
        model_dir = self.svc.model or ""
        old = self.model_version
        r = self.engine.call("reload", model_dir)
        self.metrics.model_reload(r.outcome)
        if r.outcome == "error":  # a broken or half-written directory: keep serving the old model
            log.error("model reload from %s failed: %s; still serving %s", model_dir, r.detail, old)
            return
        if r.outcome != "ok":
            log.error("model reload refused: %s; still serving %s", r.detail, old)
            return
        if r.features_changed:
            log.warning(
                "model %s was trained with other features settings; the running "
                "normaliser settings stay until restart",
                r.version,
            )
        self.metrics.set_model(r.version, r.cell, r.hidden_size, str(self.device))
        log.info(
            "model reloaded: %s -> %s (state of %d key(s) kept)",
            old,
            r.version,
            self.engine.stats.resident,
        )

    # ------------------------------------------------------------------------------------------
    # Shutdown

    def _shutdown(self) -> int:
        t0 = time.monotonic()
        deadline = t0 + self.svc.shutdown_timeout_s
        log.info(
            "shutting down: flushing, committing, checkpointing %d partition(s)", len(self._parts)
        )
        self._drain()
        unsafe = sorted(tp for tp, p in self._parts.items() if p.unsafe)
        try:
            self._producer.flush(timeout=max(0.1, deadline - time.monotonic()))
        except Exception as e:  # nothing is in flight after a completed batch; log and go on
            log.warning("final flush failed: %r", e)
        self._commit(
            {
                tp: p.offset
                for tp, p in self._parts.items()
                if p.offset is not None and p.restored and not p.unsafe
            },
            timeout_s=max(0.1, deadline - time.monotonic()),
        )
        self._checkpoint(list(self._parts))
        remaining = max(0.1, deadline - time.monotonic())
        try:
            # Leaves the group; the revoke callback finds nothing dirty and only drops the keys.
            self._consumer.close(autocommit=False, timeout_ms=int(remaining * 1000))
        except Exception as e:  # leaving the group is best effort
            log.warning("closing the consumer failed: %r", e)
        self._consumer = None
        self._close_clients(timeout_s=max(0.1, deadline - time.monotonic()))
        self.metrics.set_assignment([])
        if unsafe:
            log.error(
                "stopped in %.1f s; %s not checkpointed past their last acknowledged batch",
                time.monotonic() - t0,
                _fmt_tps(unsafe),
            )
            return 1
        log.info("stopped in %.1f s", time.monotonic() - t0)
        return 0

    def _close_clients(self, *, timeout_s: float) -> None:
        consumer, self._consumer = self._consumer, None
        producer, self._producer = self._producer, None
        if consumer is not None:
            try:
                consumer.close(autocommit=False, timeout_ms=int(timeout_s * 1000))
            except Exception as e:  # best effort while failing or retrying
                log.debug("closing the consumer: %r", e)
        if producer is not None:
            try:
                producer.close(timeout=timeout_s)
            except Exception as e:  # best effort while failing or retrying
                log.debug("closing the producer: %r", e)


def _fmt_tps(tps: Iterable[TP]) -> str:
    text = ", ".join(f"{t}-{p}" for t, p in sorted(tps))
    return text or "none"
