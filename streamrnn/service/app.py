"""The Kafka detector daemon: consume, score, alert, commit, checkpoint.

:class:`Detector` composes the collaborators that own the service's state, in the order of one
poll (see ``docs/design.md``):

1. :mod:`.consume`: ``poll(max_poll_records)``; the records go to the engine side as columns.
2. :mod:`.engine_process` / :mod:`.worker`: there they are decoded (:mod:`.decode`; malformed
   records become rejects), stepped and scored (:mod:`streamrnn.detector.engine`), and every
   message to send is encoded (:mod:`.alerts`): a dead letter per reject, an alert per flagged
   event (and every event's score with ``service.scores_topic``). By default the engine side
   runs in a child process, so that it steps one poll while the Kafka client parses the next.
3. :mod:`.publish`: the messages are sent; only once the broker acknowledged every message of a
   poll (acks=all; failed sends are retried with exponential backoff) are its offsets committed,
   in poll order: nothing is lost.
4. :mod:`.partitions`: the partition table and the group's rebalance callbacks; newly assigned
   partitions are restored from their checkpoints and sought to the offsets they reflect.
5. :mod:`.checkpoint`: every ``checkpoint_interval_s``, on revocation and on shutdown, each
   assigned partition's keys are checkpointed with the offset after the last event their state
   includes; a ``kill -9`` at any moment loses no event and changes no score.

At most one poll is in flight beside the one being parsed; everything that reads or changes the
state (rebalances, checkpoints, model reloads, shutdown) first drains it, so the state it sees is
the committed offsets' state.

Which config applies: the model directory's ``model`` and ``features`` sections (the network and
the normaliser it was trained with); ``scoring``, ``state``, ``input`` and ``service`` from the
service's own config. The engine side gets only what it needs (:class:`~.worker.EngineSettings`)
and loads the model itself; this side reads the model directory's metadata only.

Operations: SIGTERM / SIGINT call :meth:`Detector.stop` (finish the batch, flush, commit,
checkpoint, leave the group, exit 0 within ``shutdown_timeout_s``; a second Ctrl+C raises
KeyboardInterrupt). SIGHUP, or a changed ``model.json``, reloads the model (:mod:`.reload`).
Kafka errors are logged, counted (``streamrnn_broker_errors_total``) and retried with exponential
backoff up to ``retry_backoff_max_s``. ``/healthz`` and ``/readyz``: :mod:`.health`.

Security: every client connects as ``service.kafka`` says (TLS, SASL; :class:`~.clients.Connection`,
built in the constructor, so an unreadable certificate or secret stops start-up). Each connection
attempt first makes one connection itself (:mod:`.preflight`): a cluster that refuses the
configuration (a wrong password, an unknown CA, a host name the certificate does not hold, TLS to a
plaintext port) raises :class:`~.preflight.ConnectionSetupError` naming the setting, which is
never retried; a broker that does not answer is retried as above. ``service.metrics_web_config``
guards the HTTP endpoint (:mod:`.webconfig`).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry

from ..alerting.sinks import AlertSinks, validate_alerts_config
from ..config import Config, ConfigError, dump_config
from ..detector.modeldir import ModelInfo, read_model_info, resolve_device
from ..signals import on_stop_signals
from . import clients
from .checkpoint import Checkpointer, CheckpointError, CheckpointStore, LocalCheckpoints
from .consume import Poller, split_poll
from .engine_process import EngineClient, EngineGone, start_engine
from .health import Health, Readiness
from .http import MetricsServer, start_http
from .metrics import Metrics
from .partitions import TP, PartitionTable, Rebalancer, fmt_tps, listener
from .preflight import BrokerUnreachable
from .publish import Publisher
from .records import install as install_record_reader
from .reload import ModelWatcher
from .state_topic import KafkaCheckpoints
from .topics import InputTopics, reset_partitions, topic_id
from .validate import validate_service_config
from .worker import EngineSettings, feature_names_for

__all__ = ["Detector", "validate_service_config"]

log = logging.getLogger(__name__)

LAG_INTERVAL_S = 5.0  # consumer lag is refreshed at most this often
SINKS_CLOSE_S = 2.0  # what the alert sinks hold gets this long after a crash
ACK_POLL_MS = 10  # longest poll while sent messages await acknowledgement (then commit)


def read_service_model(model_dir: str) -> ModelInfo:
    """The model directory's metadata, with errors that name ``service.model``."""
    try:
        return read_model_info(model_dir)
    except ConfigError as e:
        raise ConfigError(f"service.model: {e}") from None
    except (ValueError, OSError) as e:
        raise ConfigError(
            f"service.model: must be a model directory written by `streamrnn train` ({e}), "
            f"got {model_dir!r}"
        ) from None


class Detector:
    """The daemon: ``Detector(config).run()`` until :meth:`stop` (or SIGTERM / SIGINT).

    The constructor validates the config, reads the model directory's metadata and checks the
    state directory; it raises :class:`ConfigError` naming the key, the rule and the value.
    ``registry`` receives the metrics (a fresh one by default). ``run`` serves ``/metrics``,
    ``/healthz`` and ``/readyz`` on ``service.metrics_host:metrics_port``, starts the engine
    side (which loads the model) and returns the exit status.

    With ``service.engine_process`` (the default) ``run`` starts the engine side in a child
    process (:mod:`.engine_process`); a script that runs a Detector must then guard its entry
    point with ``if __name__ == "__main__":``, as any multiprocessing program must.
    """

    def __init__(self, config: Config, *, registry: CollectorRegistry | None = None) -> None:
        validate_service_config(config)
        validate_alerts_config(config)
        svc = config.service
        try:
            self.device = resolve_device(config.state.device)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.model_info = read_service_model(svc.model or "")
        self.feature_names = feature_names_for(
            config.input, self.model_info.feature_names, self.model_info.covariate_names
        )
        self.local = LocalCheckpoints(svc.state_dir, svc.group)
        try:
            self.local.check_writable()
        except OSError as e:
            raise ConfigError(
                f"service.state_dir: must be a writable directory ({e.strerror or e}), got {svc.state_dir!r}"
            ) from None
        # The resolved config (logged at start): the model's sections and the service's own.
        self.config = dataclasses.replace(
            self.model_info.config,
            scoring=config.scoring,
            state=config.state,
            input=config.input,
            service=config.service,
            alerts=config.alerts,
        )
        self.settings = EngineSettings.of(config, self.device)
        self.svc = svc
        # The TLS context and the secrets, read once: a bad file stops start-up naming its key.
        self.connection = clients.Connection.of(svc.bootstrap_servers, svc.kafka)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry, topics=svc.topics)
        m = self.model_info.config.model
        self.metrics.set_model(self.model_info.version, m.cell, m.hidden_size, str(self.device))
        # Alerts to Alertmanager and webhooks, off the hot path (secret files are read here).
        self.sinks = AlertSinks(config.alerts, self.metrics.sinks)
        self.health = Health(
            max_poll_interval_ms=svc.max_poll_interval_ms, stall_timeout_s=svc.stall_timeout_s
        )
        self.table = PartitionTable()
        self.topics = InputTopics(svc.topics)
        self.store = CheckpointStore(self.local)
        self.watcher = ModelWatcher(
            svc.model or "",
            svc.model_poll_interval_s,
            self.metrics,
            str(self.device),
            now=time.monotonic(),
        )
        self.engine: EngineClient | None = None  # started by run()
        # Wired by _connect once the engine side and the clients exist.
        self.publisher: Publisher | None = None
        self.checkpoints: Checkpointer | None = None
        self.rebalancer: Rebalancer | None = None
        self.poller: Poller | None = None
        self._stop = threading.Event()
        self._deadline: float | None = None  # time.monotonic() a shutdown must end by
        self._watchdog = False  # run(watchdog=True): exit 1 at once if a shutdown overruns
        self._consumer: Any = None
        self._producer: Any = None
        self._http: MetricsServer | None = None
        self._ran = False
        self._checked = False  # the first connection attempt's preflight is done
        self._crashed = False  # no checkpoint may be written any more (state may be mid-batch)
        self._assigned: set[TP] = set()  # the assignment the sinks last heard of

    @property
    def model_version(self) -> str:
        """The version of the model serving now."""
        if self.engine is not None:
            return self.engine.stats.model_version
        return self.model_info.version

    @property
    def metrics_port(self) -> int | None:
        """The port ``/metrics`` is served on (known once :meth:`run` started the endpoint)."""
        return self._http.server_port if self._http is not None else None

    # ------------------------------------------------------------------------------------------
    # Lifecycle

    def stop(self) -> None:
        """Ask the loop to finish its batch, flush, commit, checkpoint and leave the group, all
        within ``shutdown_timeout_s`` from now."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self.svc.shutdown_timeout_s
            if self.publisher is not None:
                self.publisher.deadline = self._deadline
            if self._watchdog:
                # One second of grace past the deadline for the clients' own timeouts.
                timer = threading.Timer(self.svc.shutdown_timeout_s + 1.0, self._overdue)
                timer.daemon = True
                timer.start()
        self._stop.set()

    def reload_model(self) -> None:
        """Ask the loop to reload the model directory (what SIGHUP does)."""
        self.watcher.request()

    def run(self, *, watchdog: bool = False) -> int:
        """Serve until :meth:`stop`; returns 0 after a clean shutdown, 1 when something taken was
        not settled (outputs not acknowledged, offsets not committed: the next start processes
        them again) or on a crash. With ``watchdog`` (``streamrnn run``) a shutdown that runs
        past ``shutdown_timeout_s`` ends the process at once with status 1 and a line saying
        what was not settled; a program that runs a Detector in a thread leaves it off."""
        if self._ran:
            raise RuntimeError("Detector.run() can be called once; make a new Detector")
        self._ran = True
        self._watchdog = watchdog
        self._log_config()
        restore_signals = on_stop_signals(self._on_stop_signal, SIGHUP=self._on_hup)
        try:
            self._http = self._serve_http()
            self.metrics.watch_health(
                live=lambda: self.health.liveness()[0],
                ready=lambda: self._ready()[0],
                broker_reachable=self._broker_reachable,
            )
            self._checked = self._preflight()
            self.sinks.start()
            engine = self._start_engine()
            if engine is None:
                return 1
            self.engine = engine
            self.metrics.engine_stats(engine.stats)
            if not self._connect(engine):
                return 0
            # What exists now (modules, torch, clients) lives as long as the process: out of the
            # collector's sight, a full collection scans only what the loop made since (on this
            # machine 100 ms -> ms a collection, several a second at full rate).
            gc.freeze()
            return self._serve()
        finally:
            restore_signals()
            self.metrics.set_ready(False)
            self.sinks.close(SINKS_CLOSE_S)  # after a crash; a clean shutdown closed them already
            if self.engine is not None:
                self.engine.close()
            if self._http is not None:
                self._http.shutdown()

    def _serve(self) -> int:
        """The loop, then the shutdown; a crash leaves without a final checkpoint."""
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
        except Exception:
            self._crashed = True
            log.exception("the detector loop crashed; leaving without a final checkpoint")
        self._close_clients(timeout_s=5.0)
        return 1

    def _serve_http(self) -> MetricsServer:
        try:
            return start_http(
                self.registry,
                self.svc.metrics_host,
                self.svc.metrics_port,
                self.health.liveness,
                self._ready,
                web_config=self.svc.metrics_web_config,
            )
        except OSError as e:
            raise ConfigError(
                f"service.metrics_port: must be free to listen on {self.svc.metrics_host} "
                f"({e.strerror or e}), got {self.svc.metrics_port}"
            ) from None

    def _preflight(self) -> bool:
        """One preflight before the model loads, so that a refused configuration stops start-up
        at once (ConnectionSetupError); False when no broker answered (``_connect`` retries)."""
        try:
            self.connection.check(timeout_s=clients.BOOTSTRAP_TIMEOUT_MS / 1000)
        except BrokerUnreachable:
            return False
        return True

    def _start_engine(self) -> EngineClient | None:
        """The engine side; None (logged) when it cannot start. A model directory that cannot be
        loaded raises ConfigError (``service.model``)."""
        try:
            return start_engine(self.settings, child_process=self.svc.engine_process)
        except ConfigError:
            raise
        except EngineGone as e:
            log.error("cannot start the engine: %s", e)
        except Exception as e:  # EngineCallError: the child could not build its engine
            log.error("cannot start the engine process: %s", e)
        return None

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

    def _on_stop_signal(self, name: str) -> None:
        log.info("received %s: finishing the batch and stopping (Ctrl+C again to force)", name)
        self.stop()

    def _on_hup(self, _signum: int) -> None:
        log.info("received SIGHUP: reloading the model")
        self.reload_model()

    def _ready(self) -> tuple[bool, str]:
        return Health.readiness(
            Readiness(
                stopping=self._stop.is_set(),
                connected=self._consumer is not None,
                assigned=len(self.table),
                restoring=len(self.table.pending),
                broker_reachable=self._broker_reachable(),
            )
        )

    def _broker_reachable(self) -> bool:
        consumer = self._consumer
        return consumer is not None and clients.holds_connection(consumer)

    def _assignment_changed(self) -> None:
        self.metrics.set_assignment(list(self.table.parts))
        self.metrics.set_ready(self._ready()[0])
        now = set(self.table.parts)
        released, self._assigned = self._assigned - now, now
        if released:  # the new owner carries their keys' alerts on
            self.sinks.forget(sorted(released))

    # ------------------------------------------------------------------------------------------
    # Connecting

    def _connect(self, engine: EngineClient) -> bool:
        """Preflight, producer, topics, consumer and subscription, retried while the broker is away.

        Returns False when :meth:`stop` was called first. A cluster that refuses the security
        configuration raises :class:`~.preflight.ConnectionSetupError` (not retried)."""
        from kafka.errors import KafkaError

        svc, conn = self.svc, self.connection
        backoff = clients.Backoff(svc.retry_backoff_max_s)
        while not self._stop.is_set():
            self.health.tick()
            try:
                if not self._checked:
                    conn.check(timeout_s=clients.BOOTSTRAP_TIMEOUT_MS / 1000)
                self._checked = False  # a retry checks again
                self._producer = clients.producer(svc, conn)
                clients.ensure_output_topics(svc, conn)
                self.store = self._checkpoint_store()
                self._consumer = clients.group_consumer(svc, conn)
                if svc.fast_record_reader:
                    install_record_reader(self._consumer)
                self._wire(engine)
                assert self.rebalancer is not None
                subscription = listener(self.rebalancer)
                if svc.topics:
                    self._consumer.subscribe(topics=list(svc.topics), listener=subscription)
                else:
                    self._consumer.subscribe(pattern=svc.topic_pattern, listener=subscription)
                log.info(
                    "connected to %s (%s); consuming %s as group %s",
                    ",".join(svc.bootstrap_servers),
                    svc.kafka.security_protocol,
                    list(svc.topics) or f"/{svc.topic_pattern}/",
                    svc.group,
                )
                return True
            except (KafkaError, CheckpointError, OSError, BrokerUnreachable) as e:  # away: retried
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

    def _checkpoint_store(self) -> CheckpointStore:
        """The local store, with the state topic's when ``service.state_topic`` is set."""
        svc = self.svc
        if not svc.state_topic:
            return CheckpointStore(self.local)
        kafka_store = KafkaCheckpoints(
            self.connection,
            svc.state_topic,
            svc.group,
            self._producer,
            timeout_s=min(30.0, svc.shutdown_timeout_s / 2),
        )
        kafka_store.ensure_topic()
        return CheckpointStore(self.local, kafka_store)

    def _wire(self, engine: EngineClient) -> None:
        """The collaborators, each owning its part of the state, on the connected clients."""
        publisher = Publisher(
            self.svc, engine, self.table, self.metrics, self.health, self._stop, sinks=self.sinks
        )
        publisher.producer, publisher.consumer = self._producer, self._consumer
        publisher.renew_producer, publisher.deadline = self._renew_producer, self._deadline
        checkpoints = Checkpointer(
            self.svc.group, self.store, engine, self.table, self.metrics, drain=publisher.drain
        )
        self.rebalancer = Rebalancer(
            self.table,
            self._consumer,
            engine,
            checkpoints,
            self.metrics,
            drain=publisher.drain,
            commit=publisher.commit,
            on_change=self._assignment_changed,
            crashed=lambda: self._crashed,
            auto_offset_reset=self.svc.auto_offset_reset,
        )
        self.publisher, self.checkpoints = publisher, checkpoints
        self.poller = Poller(self._consumer, self.svc.max_poll_records, self.metrics)

    def _renew_producer(self) -> Any:
        """A new producer in place of one the broker no longer knows (its idempotence state is
        gone with the broker's data); what the old one holds is sent again by the publisher."""
        old, self._producer = self._producer, None
        try:
            old.close(timeout=0)
        except Exception as e:  # the old one is beyond use anyway
            log.debug("closing the old producer: %r", e)
        self._producer = clients.producer(self.svc, self.connection)
        if self.store.kafka is not None:  # the state topic's checkpoints go through it too
            self.store.kafka.producer = self._producer
        self.metrics.producers_renewed.inc()
        return self._producer

    # ------------------------------------------------------------------------------------------
    # The loop

    def _loop(self) -> None:
        from kafka.errors import KafkaError

        backoff = clients.Backoff(self.svc.retry_backoff_max_s)
        timers = _Timers(time.monotonic() + self.svc.checkpoint_interval_s)
        while not self._stop.is_set():
            self.health.tick()
            try:
                if not self._iterate(timers):
                    return  # outputs never acknowledged while stopping: leave without committing
                backoff.reset()
            except KafkaError as e:
                self.metrics.broker_errors.inc()
                delay = backoff.next()
                log.warning("Kafka error: %r; retrying in %.1f s", e, delay)
                self._stop.wait(delay)

    def _iterate(self, timers: _Timers) -> bool:
        """One iteration: restore, reload, poll, hand over, publish, commit, checkpoint, lag.
        False when outputs were abandoned (stopping)."""
        assert self.publisher and self.rebalancer and self.poller and self.checkpoints
        assert self.engine is not None
        pub = self.publisher
        if self.table.pending:
            self.rebalancer.restore_pending()
        self.watcher.check(time.monotonic(), self.engine, pub.drain)
        # With a poll in flight, take only what the client already has.
        if pub.inflight:
            timeout_ms = 0
        elif pub.unacked:
            timeout_ms = min(ACK_POLL_MS, self.svc.poll_timeout_ms)
        else:
            timeout_ms = self.svc.poll_timeout_ms
        records = self._drop_lost(self.poller.poll(timeout_ms))
        t0 = time.perf_counter()
        poll = split_poll(records)
        n = len(poll)
        if n:
            pub.submit(poll, t0)
        # A large poll (the client is behind) stays with the engine side while the client parses
        # the next one; otherwise everything is published now: at low rates that costs no
        # throughput, and waiting on the engine frees the interpreter for the client's network
        # thread.
        keep = self._depth if n >= self._pipeline_min else 0
        while len(pub.inflight) > keep:
            if not pub.finish():
                break
        # Commit what the broker has acknowledged; a poll's messages are not awaited one by one.
        pub.settle(wait=False)
        if pub.abandoned:
            return False
        now = time.monotonic()
        if now >= timers.checkpoint:
            timers.checkpoint = now + self.svc.checkpoint_interval_s
            self.checkpoints.write(list(self.table.parts))
        if now >= timers.lag:
            timers.lag = now + LAG_INTERVAL_S
            timers.total_lag = self.poller.update_lag(self.table)
            self._check_topics()
        self.health.waiting(self._work_waiting(timers.total_lag))
        return True

    # ------------------------------------------------------------------------------------------
    # Broker data loss (service/topics.py)

    def _drop_lost(self, records: dict[Any, list[Any]]) -> dict[Any, list[Any]]:
        """The poll without the partitions whose records start below the offset their state
        includes: the broker lost their log and the consumer reset them. They start again
        (:meth:`_data_loss`) and their records are fetched again."""
        lost = []
        for tp, recs in records.items():
            part = self.table.get((tp.topic, tp.partition))
            if (
                recs
                and part is not None
                and part.offset is not None
                and recs[0].offset < part.offset
            ):
                lost.append(((tp.topic, tp.partition), recs[0].offset, part.offset))
        if not lost:
            return records
        detail = "; ".join(
            f"{t}-{p} at offset {got}, its state includes {had}" for (t, p), got, had in lost
        )
        gone = {tp for tp, _, _ in lost}
        self._data_loss(
            sorted(gone), "offsets_reset", f"records below the state's offset ({detail})"
        )
        return {tp: recs for tp, recs in records.items() if (tp.topic, tp.partition) not in gone}

    def _check_topics(self) -> None:
        """Missing input topics logged; a changed partition count or topic ID handled."""
        for tp in self.table.parts:
            self.topics.seen(tp[0], self._consumer)
        for topic, kind, detail in self.topics.check(self._consumer):
            if kind == "partition_count":
                self.metrics.data_loss.labels(kind=kind).inc()
                log.error("broker data loss or a resized topic: %s; the group rebalances", detail)
                continue
            tid = topic_id(self._consumer, topic)
            stale = [
                tp for tp, p in self.table.parts.items() if tp[0] == topic and p.topic_id != tid
            ]
            self._data_loss(stale, kind, detail)

    def _data_loss(self, tps: list[TP], kind: str, detail: str) -> None:
        """The broker lost the data of ``tps``: a new producer (the broker forgot the old one's
        id), their keys' state dropped, their offsets reset by auto_offset_reset, a fresh
        checkpoint of each at once. Counted and logged."""
        assert self.publisher is not None and self.engine is not None and self.checkpoints
        self.metrics.data_loss.labels(kind=kind).inc()
        tps = [tp for tp in tps if tp in self.table and tp not in self.table.pending]
        log.error(
            "broker data loss: %s. %s start again by auto_offset_reset=%s with their keys' "
            "state dropped; a new producer replaces the old one",
            detail,
            fmt_tps(tps),
            self.svc.auto_offset_reset,
        )
        self.publisher.producer = self._renew_producer()
        if not self.publisher.drain() or not tps:
            return
        self.metrics.engine_stats(self.engine.forget(tps))
        positions = reset_partitions(self._consumer, tps, self.svc.auto_offset_reset)
        for tp, offset in positions.items():
            self.table.restored(tp, offset, topic_id=topic_id(self._consumer, tp[0]))
        log.info(
            "%s", ", ".join(f"{t}-{p} from offset {o}" for (t, p), o in sorted(positions.items()))
        )
        self.checkpoints.write(tps, force=True)

    def _work_waiting(self, lag: int) -> str:
        """The work that waits, in words, for liveness ("" for none)."""
        assert self.publisher is not None
        pub, what = self.publisher, []
        if pub.inflight or pub.unacked:
            what.append(f"{len(pub.inflight) + len(pub.unacked)} poll(s) not settled")
        if lag:
            what.append(f"consumer lag {lag}")
        return ", ".join(what)

    @property
    def _depth(self) -> int:
        """Polls left in flight after a new one was handed over."""
        return 1 if self.svc.engine_process else 0

    @property
    def _pipeline_min(self) -> int:
        """Records a poll needs to stay in flight: a tenth of ``max_poll_records``."""
        return max(1, self.svc.max_poll_records // 10)

    # ------------------------------------------------------------------------------------------
    # Shutdown

    def _shutdown(self) -> int:
        """Flush, commit, checkpoint and leave, all by the deadline :meth:`stop` set; 0 when
        everything taken was settled, 1 after a line that says what was not."""
        assert self.publisher is not None and self.checkpoints is not None
        t0 = time.monotonic()
        if self._deadline is None:
            self.stop()
        deadline = self._deadline or t0 + self.svc.shutdown_timeout_s

        def remaining() -> float:
            return max(0.1, deadline - time.monotonic())

        log.info(
            "shutting down: flushing, committing, checkpointing %d partition(s)", len(self.table)
        )
        self.publisher.drain()
        try:
            self._producer.flush(timeout=remaining())
        except Exception as e:  # nothing is in flight after a completed batch; log and go on
            log.warning("final flush failed: %r", e)
        self.publisher.commit(self.table.committable(), timeout_s=remaining())
        self.checkpoints.write(list(self.table.parts))
        try:
            # Leaves the group; the revoke callback finds nothing dirty and only drops the keys.
            self._consumer.close(autocommit=False, timeout_ms=int(remaining() * 1000))
        except Exception as e:  # leaving the group is best effort
            log.warning("closing the consumer failed: %r", e)
        self._consumer = None
        # Out of the group: what the sinks still hold goes out within the shutdown timeout.
        self.sinks.close(remaining())
        self._close_clients(timeout_s=remaining())
        unsettled = self._unsettled()
        self.metrics.set_assignment([])
        if unsettled:
            log.error(
                "stopped in %.1f s with work not settled: %s (the next start processes it again)",
                time.monotonic() - t0,
                "; ".join(unsettled),
            )
            return 1
        log.info("stopped in %.1f s", time.monotonic() - t0)
        return 0

    def _unsettled(self) -> list[str]:
        """What the service took and did not settle, in words (empty: everything settled)."""
        out = []
        unsafe = self.table.unsafe()
        if unsafe:
            out.append(f"{fmt_tps(unsafe)} not checkpointed past their last acknowledged batch")
        pub = self.publisher
        if pub is not None and (pub.inflight or pub.unacked):
            out.append(f"{len(pub.inflight) + len(pub.unacked)} poll(s) not acknowledged")
        todo = self.table.uncommitted(self.table.committable())
        if todo:
            out.append(
                "offsets not committed: "
                + ", ".join(f"{t}-{p} at {o}" for (t, p), o in sorted(todo.items()))
            )
        return out

    def _overdue(self) -> None:
        """The watchdog: the shutdown ran past ``shutdown_timeout_s`` (a client call that did
        not keep its timeout): say what was not settled and leave at once, with status 1."""
        log.error(
            "shutdown overran shutdown_timeout_s=%g; leaving now with work not settled: %s",
            self.svc.shutdown_timeout_s,
            "; ".join(self._unsettled()) or "none known (stuck closing the clients)",
        )
        logging.shutdown()
        os._exit(1)

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


@dataclasses.dataclass
class _Timers:
    """When the loop next checkpoints and refreshes the consumer lag (``time.monotonic``)."""

    checkpoint: float
    lag: float = 0.0
    total_lag: int = 0  # messages behind, over the assigned partitions (at the last refresh)
