"""Prometheus metrics of the alert sinks, all built in one place on an injected registry.

The service's :class:`streamrnn.service.metrics.Metrics` builds one :class:`SinkMetrics` with
every other metric; :class:`~.sinks.AlertSinks` adds the children of each target at start-up.
Labels: ``sink`` (``alertmanager`` or ``webhook``) and ``target`` (the URL as
:func:`~.transport.display_url` shows it: no credentials, no query), both known from the config,
so every child is created up front; ``reason`` of a drop is one of :data:`DROP_REASONS`. No label
ever carries a key.

A target fails when its most recent request failed:
``streamrnn_sink_last_failure_timestamp_seconds > streamrnn_sink_last_success_timestamp_seconds``
(both 0 before the first request; an Alertmanager target is also probed while idle).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["DROP_REASONS", "REQUEST_BUCKETS", "DELIVERY_BUCKETS", "SinkMetrics", "TargetMetrics"]

#: Why a notification was given up: the target's queue was full (``queue_full``), it waited longer
#: than ``alerts.delivery.max_age_s`` (``expired``), the target refused it (``rejected``: a 4xx that
#: retrying cannot change), it was still queued when the shutdown timeout ran out (``shutdown``),
#: ``alerts.max_active`` incidents were active (``overflow``), or the alert message could not be
#: read (``malformed``).
DROP_REASONS: tuple[str, ...] = (
    "queue_full",
    "expired",
    "rejected",
    "shutdown",
    "overflow",
    "malformed",
)
#: Seconds of one HTTP request: 1 ms .. 30 s.
REQUEST_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
#: Seconds from a notification's queueing to its delivery (group-interval waits and retries
#: included): 10 ms .. 1 h.
DELIVERY_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
)  # fmt: skip


class TargetMetrics:
    """The children of one ``(sink, target)``: what a target's worker updates."""

    def __init__(self, m: SinkMetrics, sink: str, target: str) -> None:
        labels = {"sink": sink, "target": target}
        self.sent = m.sent.labels(**labels)
        self.failures = m.failures.labels(**labels)
        self.collapsed = m.collapsed.labels(**labels)
        self.request_seconds = m.request_seconds.labels(**labels)
        self.delivery_seconds = m.delivery_seconds.labels(**labels)
        self.last_success = m.last_success.labels(**labels)
        self.last_failure = m.last_failure.labels(**labels)
        self.queue_depth = m.queue_depth.labels(**labels)
        self._dropped = {r: m.dropped.labels(reason=r, **labels) for r in DROP_REASONS}

    def dropped(self, reason: str, n: int = 1) -> None:
        if n:
            self._dropped[reason].inc(n)


class SinkMetrics:
    """Every sink metric, registered on ``registry``; :meth:`target` adds a target's children
    (before its first notification, so its series exist from the first scrape)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        lt = ["sink", "target"]
        self.sent = Counter(
            "streamrnn_sink_sent",
            "Notifications (firing or resolved) a sink's target acknowledged.",
            lt,
            registry=r,
        )
        self.failures = Counter(
            "streamrnn_sink_failures",
            "Requests to a sink's target that failed (no answer, timeout, or an error status); "
            "each retry counts.",
            lt,
            registry=r,
        )
        self.dropped = Counter(
            "streamrnn_sink_dropped",
            "Notifications given up for a target, by reason (queue_full, expired, rejected, "
            "shutdown, overflow, malformed). The alerts topic still has every alert.",
            [*lt, "reason"],
            registry=r,
        )
        self.collapsed = Counter(
            "streamrnn_sink_collapsed",
            "Notifications merged into one already queued for the same key (group interval).",
            lt,
            registry=r,
        )
        self.queue_depth = Gauge(
            "streamrnn_sink_queue_depth",
            "Notifications queued for a target (delivery pending, waiting or retrying).",
            lt,
            registry=r,
        )
        self.request_seconds = Histogram(
            "streamrnn_sink_request_duration_seconds",
            "Seconds of one request to a sink's target, failed ones included.",
            lt,
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "streamrnn_sink_delivery_latency_seconds",
            "Seconds from a notification's queueing to its acknowledgement by the target "
            "(group-interval waits and retries included).",
            lt,
            buckets=DELIVERY_BUCKETS,
            registry=r,
        )
        self.last_success = Gauge(
            "streamrnn_sink_last_success_timestamp_seconds",
            "Unix time of the target's last successful request or probe (0: none yet).",
            lt,
            registry=r,
        )
        self.last_failure = Gauge(
            "streamrnn_sink_last_failure_timestamp_seconds",
            "Unix time of the target's last failed request or probe (0: none yet).",
            lt,
            registry=r,
        )
        self.active = Gauge(
            "streamrnn_sink_active_alerts",
            "Alerts (incidents) active: flagged and not yet resolved.",
            registry=r,
        )
        self.resolved = Counter(
            "streamrnn_sink_resolved",
            "Alerts resolved, by what resolved them: events (resolve_after_events unflagged "
            "events), timeout (resolve_timeout_s), superseded (a new label set for the key).",
            ["reason"],
            registry=r,
        )
        for reason in ("events", "timeout", "superseded"):
            self.resolved.labels(reason=reason)
        self.targets: dict[tuple[str, str], TargetMetrics] = {}

    def target(self, sink: str, target: str) -> TargetMetrics:
        """The children of ``(sink, target)``, created on the first call."""
        if (sink, target) not in self.targets:
            self.targets[(sink, target)] = TargetMetrics(self, sink, target)
        return self.targets[(sink, target)]

    def watch_queue(self, sink: str, target: str, depth: Callable[[], float]) -> None:
        """Read the queue depth of ``(sink, target)`` from ``depth`` at each scrape."""
        self.targets[(sink, target)].queue_depth.set_function(depth)
