"""Prometheus metrics of the service, all built in one place (served by :mod:`.http`).

Every metric is registered on the ``CollectorRegistry`` handed to :class:`Metrics` (never on the
global registry), so tests and several services in one process do not collide. Labels are kept to
small, bounded sets: no label ever carries a key. Labelled children for the known label values are
created up front so that dashboards and alerts see zeros instead of missing series.

The engine side's counters arrive as running totals with each outcome
(:meth:`Metrics.engine_stats`); the counters here advance by what is new in them. The alert
sinks' metrics are defined beside the sinks (:class:`streamrnn.alerting.metrics.SinkMetrics`)
and built here with the rest, as :attr:`Metrics.sinks`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..alerting.metrics import SinkMetrics
from .topics import DATA_LOSS_KINDS
from .unsendable import FATAL_REASONS

__all__ = [
    "ANOMALY_SCORE_BUCKETS",
    "BATCH_DURATION_BUCKETS",
    "CHECKPOINT_OUTCOMES",
    "EVENT_LAG_BUCKETS",
    "EVENT_OUTCOMES",
    "RELOAD_OUTCOMES",
    "REJECT_REASONS",
    "Metrics",
    "observe_many",
]

log = logging.getLogger(__name__)

#: Why an event went to the dead-letter topic instead of the model.
REJECT_REASONS: tuple[str, ...] = (
    "not_json",
    "missing_key",
    "missing_value",
    "non_numeric_value",
    "bad_timestamp",
    "wrong_shape",
    "late_event",
    "non_finite_value",
    "event_time_out_of_window",
)
EVENT_OUTCOMES: tuple[str, ...] = ("processed", "rejected")
CHECKPOINT_OUTCOMES: tuple[str, ...] = ("ok", "error")
RELOAD_OUTCOMES: tuple[str, ...] = ("ok", "refused", "error")
#: Why a stored checkpoint was not applied (``streamrnn_checkpoints_quarantined_total``).
QUARANTINE_CAUSES: tuple[str, ...] = ("topic_id", "offsets", "committed_offset", "corrupt")

#: Seconds one poll-decode-score-publish batch takes: 1 ms .. 10 s.
BATCH_DURATION_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: Seconds from an event's own timestamp to its score: 5 ms .. 1 h, dense around 100 ms so that
#: a p99 near a 100 ms objective is read to within 25 ms.
EVENT_LAG_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
#: Calibrated scores live in [0, 1]; the buckets are dense near 1 to resolve the extreme tail.
ANOMALY_SCORE_BUCKETS: tuple[float, ...] = (
    0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 0.9999, 1.0,
)  # fmt: skip


class EngineTotals(Protocol):
    """What :meth:`Metrics.engine_stats` reads (the engine side's ``Stats``)."""

    resident: int
    nbytes: int
    imputed_total: int
    evicted_total: int


class Metrics:
    """Every metric the service exports, registered on ``registry``.

    ``reasons`` are the dead-letter reasons (label values of ``streamrnn_rejected_total``);
    ``topics`` are source topics known up front (``streamrnn_anomalies_total`` children are
    created for them; other topics get a child on their first anomaly). ``clock`` is the wall
    clock (seconds since the epoch), replaceable in tests.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        reasons: Sequence[str] = REJECT_REASONS,
        topics: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(reasons, str):
            raise TypeError("reasons must be a sequence of strings, not a string")
        self.registry = registry
        self.reasons: tuple[str, ...] = tuple(dict.fromkeys(reasons))
        self._clock = clock
        self._lock = threading.Lock()
        self._imputed_seen = self._evicted_seen = 0  # the engine side's totals counted so far
        self._started_at = clock()
        self._last_checkpoint_at: float | None = None
        self._model_labels: tuple[str, str, str, str] | None = None
        self._partitions: set[tuple[str, str]] = set()
        r = registry

        self._define_events(r)
        self._define_latency(r)
        self._define_consumer(r)
        self._define_state(r)
        self._define_scores_and_model(r)
        self.sinks = SinkMetrics(r)  # children per target: added as the sinks are built
        # Children for the known label values, so every series exists from the first scrape.
        for outcome in EVENT_OUTCOMES:
            self.events.labels(outcome=outcome)
        for reason in self.reasons:
            self.rejected.labels(reason=reason)
        for topic in dict.fromkeys(topics):
            self.anomalies.labels(topic=topic)
        for outcome in CHECKPOINT_OUTCOMES:
            self.checkpoints.labels(outcome=outcome)
        for outcome in RELOAD_OUTCOMES:
            self.model_reloads.labels(outcome=outcome)
        for kind in DATA_LOSS_KINDS:
            self.data_loss.labels(kind=kind)
        for cause in QUARANTINE_CAUSES:
            self.checkpoints_quarantined.labels(cause=cause)
        for reason in FATAL_REASONS:
            for outcome in ("dead_lettered", "dropped"):
                self.unsendable_messages.labels(reason=reason, outcome=outcome)
        self.ready.set(0)
        self.live.set(1)

    def _define_events(self, r: CollectorRegistry) -> None:
        """The events metrics."""
        self.events = Counter(
            "streamrnn_events_total",
            "Events consumed from the source topics, by outcome: processed (scored by the model) "
            "or rejected (sent to the dead-letter topic).",
            ["outcome"],
            registry=r,
        )
        self.rejected = Counter(
            "streamrnn_rejected_total",
            "Events sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.anomalies = Counter(
            "streamrnn_anomalies_total",
            "Events flagged as anomalous, by source topic.",
            ["topic"],
            registry=r,
        )
        self.imputed_values = Counter(
            "streamrnn_imputed_values_total",
            "Missing feature values replaced by the key's own prediction before the model step.",
            registry=r,
        )
        self.alerts_published = Counter(
            "streamrnn_alerts_published_total",
            "Alert messages published to the alerts topic.",
            registry=r,
        )
        self.dead_letters_cut = Counter(
            "streamrnn_dead_letters_cut_total",
            "Dead letters whose value was cut to fit the producer's max_request_size (headers "
            "streamrnn.truncated and streamrnn.original_size say so).",
            registry=r,
        )
        self.unsendable_messages = Counter(
            "streamrnn_unsendable_messages_total",
            "Messages the broker refused for good (too large, invalid), by reason and what "
            "became of them: dead_lettered (a shorter dead letter in their place) or dropped "
            "(even a dead letter without a value was refused).",
            ["reason", "outcome"],
            registry=r,
        )
        self.broker_errors = Counter(
            "streamrnn_broker_errors_total",
            "Errors talking to the Kafka broker (poll, produce, commit, metadata).",
            registry=r,
        )

    def _define_latency(self, r: CollectorRegistry) -> None:
        """The latency metrics."""
        self.batch_duration = Histogram(
            "streamrnn_batch_duration_seconds",
            "Wall-clock seconds of the Kafka side's work on one polled batch: hand it over, wait "
            "for its outcome, publish, commit.",
            buckets=BATCH_DURATION_BUCKETS,
            registry=r,
        )
        self.engine_seconds = Counter(
            "streamrnn_engine_seconds",
            "Seconds the engine side spent decoding, stepping and scoring; its rate is the engine's "
            "busy share (1 = saturated).",
            registry=r,
        )
        self.event_lag = Histogram(
            "streamrnn_event_lag_seconds",
            "Seconds from an event's own timestamp to the moment it was scored.",
            buckets=EVENT_LAG_BUCKETS,
            registry=r,
        )
        self.last_batch_timestamp = Gauge(
            "streamrnn_last_batch_timestamp_seconds",
            "Unix time at which the last batch finished.",
            registry=r,
        )

    def _define_consumer(self, r: CollectorRegistry) -> None:
        """The consumer metrics."""
        self.consumer_lag = Gauge(
            "streamrnn_consumer_lag",
            "Messages between the committed position and the end of each assigned partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "streamrnn_assigned_partitions",
            "Partitions currently assigned to this consumer by the group.",
            registry=r,
        )
        self.ready = Gauge(
            "streamrnn_ready",
            "1 when the service is ready (model loaded, broker reachable, state restored, "
            "consuming), else 0: what /readyz answers.",
            registry=r,
        )
        self.live = Gauge(
            "streamrnn_live",
            "1 while the loop iterates and makes progress whenever work waits, else 0: what "
            "/healthz answers.",
            registry=r,
        )
        self.data_loss = Counter(
            "streamrnn_broker_data_loss_total",
            "Times the broker was found to have lost data of an input topic, by kind: "
            "offsets_reset (records below the state's offset), topic_id (the topic was created "
            "again), partition_count (its partition count changed).",
            ["kind"],
            registry=r,
        )
        self.producers_renewed = Counter(
            "streamrnn_producers_renewed_total",
            "Producers replaced because the broker no longer knew their producer id.",
            registry=r,
        )
        self.broker_reachable = Gauge(
            "streamrnn_broker_reachable",
            "1 while the Kafka clients hold a connection to a broker, else 0.",
            registry=r,
        )

    def _define_state(self, r: CollectorRegistry) -> None:
        """The state metrics."""
        self.active_keys = Gauge(
            "streamrnn_active_keys",
            "Keys whose state is resident in the state store.",
            registry=r,
        )
        self.state_bytes = Gauge(
            "streamrnn_state_bytes",
            "Bytes of per-key state held by the state store (hidden states and statistics).",
            registry=r,
        )
        self.evicted_keys = Counter(
            "streamrnn_evicted_keys_total",
            "Keys evicted from the state store (least recently seen) to stay under max_keys.",
            registry=r,
        )
        self.checkpoint_age = Gauge(
            "streamrnn_checkpoint_age_seconds",
            "Seconds since the last successful checkpoint (since start-up before the first one).",
            registry=r,
        )
        self.checkpoint_age.set_function(self._checkpoint_age)
        self.checkpoints = Counter(
            "streamrnn_checkpoints_total",
            "Checkpoints of the state store, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.checkpoints_quarantined = Counter(
            "streamrnn_checkpoints_quarantined_total",
            "Checkpoints not applied because they belong to another incarnation of their "
            "partition (topic ID, offsets or the group's committed offset disagree), or are "
            "corrupt; the partition started fresh by auto_offset_reset.",
            ["cause"],
            registry=r,
        )

    def _define_scores_and_model(self, r: CollectorRegistry) -> None:
        """The scores and model metrics."""
        self.anomaly_score = Histogram(
            "streamrnn_anomaly_score",
            "Calibrated anomaly score in [0, 1] of every scored event.",
            buckets=ANOMALY_SCORE_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "streamrnn_model_info",
            "The model being served: always 1, the labels carry version, cell type, hidden size "
            "and device.",
            ["version", "cell", "hidden", "device"],
            registry=r,
        )
        self.model_reloads = Counter(
            "streamrnn_model_reloads_total",
            "Model reload attempts, by outcome: ok, refused (incompatible with the state), error.",
            ["outcome"],
            registry=r,
        )

    # ------------------------------------------------------------------------------------------
    # Convenience updates; the attributes above stay public for anything else.

    def processed(self, n: int = 1) -> None:
        """``n`` events were scored by the model."""
        if n:
            self.events.labels(outcome="processed").inc(n)

    def reject(self, reason: str, n: int = 1) -> None:
        """``n`` events went to the dead-letter topic for ``reason`` (one of ``self.reasons``)."""
        if reason not in self.reasons:
            raise ValueError(f"unknown reject reason {reason!r}; known: {', '.join(self.reasons)}")
        if n:
            self.events.labels(outcome="rejected").inc(n)
            self.rejected.labels(reason=reason).inc(n)

    def anomaly(self, topic: str, n: int = 1) -> None:
        """``n`` events from source ``topic`` were flagged."""
        self.anomalies.labels(topic=topic).inc(n)

    def batch_done(self, seconds: float, at: float | None = None) -> None:
        """A batch took ``seconds`` and finished at ``at`` (default: now)."""
        self.batch_duration.observe(seconds)
        self.last_batch_timestamp.set(self._clock() if at is None else at)

    def observe_scores(self, scores: ArrayLike) -> int:
        """Add a batch of anomaly scores to the score histogram; non-finite ones are skipped."""
        return observe_many(self.anomaly_score, scores)

    def observe_event_lags(self, seconds: ArrayLike) -> int:
        """Add a batch of event lags (negative ones, from clocks ahead of ours, count as 0)."""
        return observe_many(self.event_lag, seconds, floor=0.0)

    def set_consumer_lag(self, topic: str, partition: int | str, lag: float) -> None:
        with self._lock:
            self._partitions.add((topic, str(partition)))
        self.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)

    def set_assignment(self, partitions: Sequence[tuple[str, int | str]]) -> None:
        """The group assigned these ``(topic, partition)`` pairs; lag series of others go away."""
        wanted = {(t, str(p)) for t, p in partitions}
        with self._lock:
            gone = self._partitions - wanted
            self._partitions = set(wanted)
        for topic, partition in gone:
            with contextlib.suppress(KeyError):
                self.consumer_lag.remove(topic, partition)
        for topic, partition in wanted:
            self.consumer_lag.labels(topic=topic, partition=partition)
        self.assigned_partitions.set(len(wanted))

    def set_state(self, active_keys: int, state_bytes: int) -> None:
        self.active_keys.set(active_keys)
        self.state_bytes.set(state_bytes)

    def engine_stats(self, stats: EngineTotals) -> None:
        """The engine side's running totals: the counters advance by what is new in them."""
        resident, nbytes = stats.resident, stats.nbytes
        imputed_total, evicted_total = stats.imputed_total, stats.evicted_total
        if imputed_total > self._imputed_seen:
            self.imputed_values.inc(imputed_total - self._imputed_seen)
        if evicted_total > self._evicted_seen:
            self.evicted_keys.inc(evicted_total - self._evicted_seen)
        self._imputed_seen = max(self._imputed_seen, imputed_total)
        self._evicted_seen = max(self._evicted_seen, evicted_total)
        self.set_state(resident, nbytes)

    def checkpoint(self, ok: bool, at: float | None = None) -> None:
        """A checkpoint finished; a successful one resets ``streamrnn_checkpoint_age_seconds``."""
        self.checkpoints.labels(outcome="ok" if ok else "error").inc()
        if ok:
            with self._lock:
                self._last_checkpoint_at = self._clock() if at is None else at

    def model_reload(self, outcome: str) -> None:
        if outcome not in RELOAD_OUTCOMES:
            raise ValueError(f"unknown reload outcome {outcome!r}; known: {RELOAD_OUTCOMES}")
        self.model_reloads.labels(outcome=outcome).inc()

    def set_model(self, version: str, cell: str, hidden: int | str, device: str) -> None:
        """Publish the model being served; the previous model's label set is removed."""
        labels = (str(version), str(cell), str(hidden), str(device))
        with self._lock:
            previous, self._model_labels = self._model_labels, labels
        if previous is not None and previous != labels:
            with contextlib.suppress(KeyError):
                self.model_info.remove(*previous)
        self.model_info.labels(*labels).set(1)

    def set_ready(self, ready: bool) -> None:
        self.ready.set(1 if ready else 0)

    def watch_health(
        self,
        live: Callable[[], bool],
        ready: Callable[[], bool],
        broker_reachable: Callable[[], bool],
    ) -> None:
        """``streamrnn_live``, ``streamrnn_ready`` and ``streamrnn_broker_reachable`` from now on
        read at each scrape (so a stuck loop still shows as not live)."""
        self.live.set_function(lambda: 1.0 if live() else 0.0)
        self.ready.set_function(lambda: 1.0 if ready() else 0.0)
        self.broker_reachable.set_function(lambda: 1.0 if broker_reachable() else 0.0)

    def unsendable(self, reason: str, *, dead_lettered: bool) -> None:
        """A message the broker refused for good: replaced by a dead letter, or dropped."""
        outcome = "dead_lettered" if dead_lettered else "dropped"
        self.unsendable_messages.labels(reason=reason, outcome=outcome).inc()

    def _checkpoint_age(self) -> float:
        with self._lock:
            since = self._last_checkpoint_at
        if since is None:
            since = self._started_at
        return max(0.0, self._clock() - since)


def observe_many(histogram: Histogram, values: ArrayLike, *, floor: float | None = None) -> int:
    """Observe a whole array in one pass (one increment per bucket, not per value).

    Equivalent to ``histogram.observe(v)`` for every finite ``v`` (clipped below at ``floor``);
    returns how many were observed. Uses the client's bucket counters directly and falls back to
    one ``observe`` per value if this prometheus_client version lays them out differently.
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[np.isfinite(arr)]
    if floor is not None:
        arr = np.maximum(arr, floor)
    if arr.size == 0:
        return 0
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(buckets) != len(bounds):
        for v in arr.tolist():
            histogram.observe(v)
        return int(arr.size)
    # Buckets are stored non-cumulatively: a value lands in the first bound >= it (le semantics);
    # the last bound is +Inf, so every finite value lands somewhere.
    index = np.searchsorted(np.asarray(bounds, dtype=np.float64), arr, side="left")
    counts = np.bincount(index, minlength=len(bounds))
    total.inc(float(arr.sum()))
    for i in np.flatnonzero(counts).tolist():
        buckets[i].inc(int(counts[i]))
    return int(arr.size)
