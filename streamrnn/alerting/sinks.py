"""The detector's alert sinks: alerts handed over per poll, delivered off the hot path.

What the service does (the whole interface)::

    sinks = AlertSinks(config.alerts, metrics.sinks)  # ConfigError for unreadable secret files
    sinks.start()
    ...                                              # per poll, once its messages are acknowledged:
    sinks.submit(outcome.alerts_json, outcome.recovered)
    sinks.forget(revoked_partitions)                 # on revocation
    sinks.close(timeout_s)                           # on shutdown, within the shutdown timeout

:meth:`AlertSinks.submit` takes the poll's alert messages exactly as published to the alerts topic
(JSON bytes) and its :class:`~.incidents.Recovery` list: the keys that completed
``alerts.resolve_after_events`` unflagged events in a row in that poll. It appends them to an
intake and returns: one lock and one append a poll, nothing per event, never a wait. The engine
side finds the recoveries without a loop over events: its per-key state holds the events since
the key's last flag, so the recoveries are the events where that count equals
``resolve_after_events`` (one comparison over the poll's array; docs/alerts.md).

A dispatcher thread parses the alerts, runs them and the recoveries through the
:class:`~.incidents.IncidentTracker` in source order, resolves incidents past
``resolve_timeout_s``, re-offers the active ones to each Alertmanager every
``resend_interval_s``, and offers every notice to every target (:class:`~.delivery.Target`, one
thread each), which deliver, collapse, retry and count. Nothing here can stop or slow the
detector: a sink that is down costs queue space, then counted drops, never Kafka progress.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..config import (
    AlertmanagerSinkConfig,
    AlertsConfig,
    Config,
    ConfigError,
    WebhookSinkConfig,
)
from .alertmanager import AlertmanagerSink
from .delivery import Sink, Target
from .incidents import IncidentTracker, Notice, Recovery
from .message import Alert, MessageError
from .metrics import SinkMetrics
from .transport import Transport, read_secret
from .webhook import WebhookSink

__all__ = ["AlertSinks", "validate_alerts_config"]

log = logging.getLogger(__name__)

INTAKE_MAX = 100_000  # alerts waiting for the dispatcher; beyond, a poll's alerts are dropped
LOG_EVERY_S = 60.0  # at most one log line a minute for repeated drops at the intake
ROUND_WAIT_S = 0.05  # the dispatcher's pause while a re-send round waits for queue room


@dataclass
class _Item:
    """One entry of the intake, in the order the service handed them over."""

    alerts: list[bytes] = field(default_factory=list)
    recovered: list[Recovery] = field(default_factory=list)
    forget: list[tuple[str, int]] = field(default_factory=list)


class AlertSinks:
    """Every configured sink target, the incident tracker and the dispatcher thread."""

    def __init__(
        self,
        config: AlertsConfig,
        metrics: SinkMetrics,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._clock = clock
        self._now = monotonic
        self.tracker = IncidentTracker(config, clock=clock, monotonic=monotonic)
        pairs = _build_targets(config)
        self.metrics = metrics
        self.targets = [
            Target(
                sink,
                transport,
                config.delivery,
                config.group_interval_s,
                self.metrics.target(sink.name, transport.display),
                clock=clock,
                monotonic=monotonic,
            )
            for sink, transport in pairs
        ]
        for t in self.targets:
            self.metrics.watch_queue(t.sink.name, t.transport.display, t.queue.__len__)
        self._resend_s = config.sinks.alertmanager.resend_interval_s
        self._next_resend = monotonic() + self._resend_s
        self._intake: deque[_Item] = deque()
        self._intake_alerts = 0
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._seen_overflow = 0
        self._seen_resolved = dict(self.tracker.resolved_total)
        self._next_intake_log = 0.0
        # Re-send rounds in progress: per Alertmanager target, the keys still to re-send.
        self._rounds: dict[int, deque[str]] = {}

    @property
    def enabled(self) -> bool:
        """Whether any sink is configured (else every call is a no-op)."""
        return bool(self.targets)

    def start(self) -> None:
        if not self.targets or self._thread is not None:
            return
        for t in self.targets:
            t.start()
        self._thread = threading.Thread(
            target=self._run, name="streamrnn-alert-dispatch", daemon=True
        )
        self._thread.start()
        log.info(
            "alert sinks: %s",
            ", ".join(f"{t.sink.name} {t.transport.display}" for t in self.targets),
        )

    def submit(self, alerts: Sequence[bytes], recovered: Sequence[Recovery] = ()) -> None:
        """One poll's alert messages (as published) and recoveries; returns at once."""
        if not self.targets or not (alerts or recovered):
            return
        with self._cond:
            if self._intake_alerts + len(alerts) > INTAKE_MAX:
                self._drop_all("queue_full", len(alerts))
                if self._now() >= self._next_intake_log:
                    self._next_intake_log = self._now() + LOG_EVERY_S
                    log.warning("alert sinks: the dispatcher is behind; dropping alerts (counted)")
                alerts = ()
            self._intake.append(_Item(list(alerts), list(recovered)))
            self._intake_alerts += len(alerts)
            self._cond.notify()

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """This detector no longer owns ``partitions``: drop their keys' incidents unresolved."""
        if not self.targets:
            return
        with self._cond:
            self._intake.append(_Item(forget=list(partitions)))
            self._cond.notify()

    def resend_now(self) -> None:
        """Start a re-send round of every active alert to Alertmanager now."""
        with self._cond:
            self._next_resend = self._now()
            self._cond.notify()

    def close(self, timeout_s: float) -> None:
        """Dispatch what was submitted, deliver what is queued within ``timeout_s``, drop the rest
        (counted), stop every thread."""
        if self._thread is None:
            return
        deadline = self._now() + timeout_s
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(max(0.0, deadline - self._now()))
        for t in self.targets:
            t.close(deadline)
        stuck = [t.name for t in self.targets if not t.join(deadline + 1.0)]
        if stuck:
            log.warning("alert sinks: %s still sending at the shutdown timeout", ", ".join(stuck))
        self._thread = None

    # ------------------------------------------------------------------------------------------
    # The dispatcher thread

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._intake and not self._closing:
                    self._cond.wait(self._wait_s())
                items = list(self._intake)
                self._intake.clear()
                self._intake_alerts = 0
                closing = self._closing
            try:
                for item in items:
                    self._apply(item)
                self._offer(self.tracker.expire())
                if not closing and self._now() >= self._next_resend:
                    self._next_resend = self._now() + self._resend_s
                    self._start_rounds()
                self._resend()
                self._count()
            except Exception:  # a bug must be seen, not stop the alerts that follow
                log.exception("alert sinks: dispatching failed")
            if closing:
                return

    def _wait_s(self) -> float:
        if any(self._rounds.values()):
            return ROUND_WAIT_S
        wake = self._next_resend
        expiry = self.tracker.next_expiry()
        if expiry is not None:
            wake = min(wake, expiry)
        return max(0.01, min(wake - self._now(), 5.0))

    def _apply(self, item: _Item) -> None:
        if item.forget:
            n = self.tracker.forget(item.forget)
            if n:
                log.info("alert sinks: %d active alert(s) of revoked partitions left", n)
        events: list[tuple[str, int, int, Alert | Recovery]] = []
        for raw in item.alerts:
            try:
                a = Alert.parse(raw)
            except MessageError as e:
                self._drop_all("malformed", 1)
                log.error("alert sinks: cannot read an alert message (%s): %r", e, raw[:200])
                continue
            events.append((a.topic, a.partition, a.offset, a))
        events.extend((r.topic, r.partition, r.offset, r) for r in item.recovered)
        events.sort(key=lambda e: e[:3])
        for *_, ev in events:
            if isinstance(ev, Alert):
                self._offer(self.tracker.flagged(ev))
            else:
                self._offer(self.tracker.recovered(ev))

    def _offer(self, notices: Iterable[Notice]) -> None:
        send_resolved = self.config.sinks.webhook.send_resolved
        for n in notices:
            for t in self.targets:
                if n.status == "resolved" and t.sink.name == "webhook" and not send_resolved:
                    continue
                t.offer(n)

    def _start_rounds(self) -> None:
        """Every Alertmanager target re-sends every active alert (a round still running goes on)."""
        keys = self.tracker.keys()
        for i, t in enumerate(self.targets):
            if t.sink.name == "alertmanager" and not self._rounds.get(i):
                self._rounds[i] = deque(keys)

    def _resend(self) -> None:
        """Offer the rounds' next keys, as many as each queue has room for: a round larger than
        the queue goes on as the queue drains, never dropping (and its keys' current state is
        sent, not a stale copy)."""
        for i, keys in self._rounds.items():
            t = self.targets[i]
            room = t.room
            while keys and room > 0:
                n = self.tracker.notice_of(keys.popleft())
                if n is not None and t.offer(n, resend=True) == "queued":
                    room -= 1

    def _count(self) -> None:
        m, tr = self.metrics, self.tracker
        m.active.set(len(tr))
        if tr.overflow_total > self._seen_overflow:
            self._drop_all("overflow", tr.overflow_total - self._seen_overflow)
            self._seen_overflow = tr.overflow_total
        for reason, n in tr.resolved_total.items():
            if n > self._seen_resolved[reason]:
                m.resolved.labels(reason=reason).inc(n - self._seen_resolved[reason])
                self._seen_resolved[reason] = n

    def _drop_all(self, reason: str, n: int) -> None:
        for t in self.targets:
            t.metrics.dropped(reason, n)


def validate_alerts_config(config: Config) -> None:
    """The rules of ``alerts`` that involve other sections; ConfigError naming key, rule, value.

    With a sink configured, ``resolve_after_events`` must exceed ``scoring.cooldown``: a key is
    flagged at most once per cooldown, so a shorter run would resolve a sustained anomaly between
    two of its flags and page again (a flap)."""
    a = config.alerts
    if not (a.sinks.alertmanager.urls or a.sinks.webhook.urls):
        return
    if a.resolve_after_events <= config.scoring.cooldown:
        raise ConfigError(
            "alerts.resolve_after_events: must be greater than scoring.cooldown "
            f"({config.scoring.cooldown}) so that a sustained anomaly stays one alert, "
            f"got {a.resolve_after_events}"
        )


def _build_targets(config: AlertsConfig) -> list[tuple[Sink, Transport]]:
    """``(sink, transport)`` for every configured URL; ConfigError for unreadable files."""
    am, wh = config.sinks.alertmanager, config.sinks.webhook
    out: list[tuple[Sink, Transport]] = []
    if am.urls:
        out += _transports("alertmanager", AlertmanagerSink(config), am.urls, am, config)
    if wh.urls:
        key = "alerts.sinks.webhook.secret_file"
        secret = read_secret(wh.secret_file, key) if wh.secret_file else None
        out += _transports("webhook", WebhookSink(config, secret), wh.urls, wh, config)
    return out


def _transports(
    name: str,
    sink: Sink,
    urls: Sequence[str],
    cfg: AlertmanagerSinkConfig | WebhookSinkConfig,
    config: AlertsConfig,
) -> list[tuple[Sink, Transport]]:
    key = f"alerts.sinks.{name}"
    token_file, ca_file = cfg.bearer_token_file, cfg.ca_file
    token = read_secret(token_file, f"{key}.bearer_token_file") if token_file else None
    if ca_file is not None and not Path(ca_file).is_file():
        raise ConfigError(f"{key}.ca_file: must be a readable file, got {ca_file!r}")
    out: list[tuple[Sink, Transport]] = []
    seen: set[str] = set()
    for url in urls:
        t = Transport(url, timeout_s=config.delivery.timeout_s, bearer_token=token, ca_file=ca_file)
        if t.display in seen:
            raise ConfigError(f"{key}.urls: must not repeat a URL, got {t.display!r} twice")
        seen.add(t.display)
        out.append((sink, t))
    return out
