"""Which alerts are active: from flagged events to firing and resolved notices, key by key.

An *incident* is what Alertmanager calls an alert: one key's anomaly from its first flagged
event until it resolves. Its identity is its label set (:func:`label_set`): ``alertname``,
``key``, ``topic``, ``model``, ``severity`` and the labels of ``alerts.labels`` taken from the
event's fields.

* A flagged event of a key without an active incident starts one (``firing``); a flagged event
  of a key with one updates it (``firing`` again, with the new event as the latest and one more
  flagged event). When its label set differs (a reloaded model, a changed field), the old
  incident resolves (``superseded``) and a new one starts.
* It resolves (``resolved``, with ``ends_at``) when the detector reports that the key has had
  ``alerts.resolve_after_events`` unflagged events in a row (a :class:`Recovery`, ``events``),
  or when ``alerts.resolve_timeout_s`` passed on the wall clock since its last flagged event
  (``timeout``: a key that went quiet).
* At most ``alerts.max_active`` incidents are active; a flagged event that would start one more
  is refused and counted (:attr:`IncidentTracker.overflow_total`).
* :meth:`IncidentTracker.forget` drops the incidents of partitions this detector no longer owns,
  without resolving them: the new owner carries on, and Alertmanager expires what nobody re-sends.

Times: ``starts_at`` is the first flagged event's time and ``ends_at`` the time of the event that
completed the recovery (the wall clock for a timeout), both clamped to the wall clock so that a
resolved alert is never dated in the future.

The tracker is not thread-safe: the dispatcher thread of :class:`~.sinks.AlertSinks` owns it.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from ..config import AlertsConfig
from .message import Alert

__all__ = ["Incident", "IncidentTracker", "Notice", "Recovery", "fingerprint", "label_set"]

Status = Literal["firing", "resolved"]
ResolvedBy = Literal["events", "timeout", "superseded"]
RESOLVED_BY: tuple[str, ...] = ("events", "timeout", "superseded")


@dataclass(frozen=True)
class Recovery:
    """A key completed ``resolve_after_events`` unflagged events in a row: the event that did."""

    key: str
    topic: str
    partition: int
    offset: int
    ts: float  # its event time, epoch seconds


def _label_value(v: object) -> str | None:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (str, int, float)):
        text = str(v)
        return text or None
    return None  # null, absent, objects and lists make no label


def fingerprint(labels: Mapping[str, str]) -> str:
    """A stable id of a label set (16 hex digits): one alert's identity across notices.

    >>> fingerprint({"key": "m1", "alertname": "A"}) == fingerprint({"alertname": "A", "key": "m1"})
    True
    """
    text = "\x00".join(f"{k}\x01{v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def label_set(alert: Alert, config: AlertsConfig) -> dict[str, str]:
    """The labels of ``alert``'s incident: its identity in Alertmanager.

    >>> from streamrnn.config import AlertsConfig
    >>> a = Alert("m1", 0.0, "", {"value": 1.0}, {"value": 0.0}, 0.9, 0.8, "v1", "readings", 0, 7,
    ...           fields={"site": "north", "floor": 3, "note": None})
    >>> label_set(a, AlertsConfig(labels={"site": "site", "floor": "floor", "note": "note"}))
    {'alertname': 'StreamrnnAnomaly', 'key': 'm1', 'topic': 'readings', 'model': 'v1', \
'severity': 'warning', 'site': 'north', 'floor': '3'}
    """
    labels = {
        "alertname": config.alertname,
        "key": alert.key,
        "topic": alert.topic,
        "model": alert.model,
        "severity": config.severity,
    }
    for name, fld in config.labels.items():
        value = _label_value(alert.fields.get(fld))
        if value is not None:
            labels[name] = value
    return labels


@dataclass(frozen=True)
class Notice:
    """A snapshot of an incident for the sinks: what to tell a person now."""

    key: str
    status: Status
    labels: Mapping[str, str]
    first: Alert  # the first flagged event
    last: Alert  # the latest flagged event
    flagged: int  # flagged events so far
    starts_at: float  # epoch seconds
    ends_at: float | None = None  # set when resolved
    resolved_by: ResolvedBy | None = None
    incident: int = 0  # serial number of the incident in this tracker
    fingerprint: str = ""  # of the labels: the alert's identity, also the queue's key


@dataclass
class Incident:
    """An active incident (mutable; the tracker's own)."""

    serial: int
    labels: dict[str, str]
    first: Alert
    last: Alert
    starts_at: float
    flagged: int = 1
    last_flag_at: float = 0.0  # monotonic seconds of the latest flagged event's arrival
    partition: tuple[str, int] = field(default=("", 0))
    fingerprint: str = ""

    def notice(
        self,
        status: Status = "firing",
        ends_at: float | None = None,
        resolved_by: ResolvedBy | None = None,
    ) -> Notice:
        return Notice(
            key=self.last.key,
            status=status,
            labels=dict(self.labels),
            first=self.first,
            last=self.last,
            flagged=self.flagged,
            starts_at=self.starts_at,
            ends_at=ends_at,
            resolved_by=resolved_by,
            incident=self.serial,
            fingerprint=self.fingerprint,
        )


class IncidentTracker:
    """Active incidents by key, in the order of their latest flagged event (oldest first)."""

    def __init__(
        self,
        config: AlertsConfig,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._clock = clock
        self._monotonic = monotonic
        self._active: OrderedDict[str, Incident] = OrderedDict()
        self._serial = 0
        self.overflow_total = 0  # flagged events refused: max_active incidents were active
        self.resolved_total: dict[str, int] = dict.fromkeys(RESOLVED_BY, 0)

    def __len__(self) -> int:
        return len(self._active)

    def __contains__(self, key: object) -> bool:
        return key in self._active

    def flagged(self, alert: Alert) -> list[Notice]:
        """A flagged event: the notices it causes (none when refused for ``max_active``)."""
        labels = label_set(alert, self.config)
        now = self._monotonic()
        out: list[Notice] = []
        inc = self._active.get(alert.key)
        if inc is not None and inc.labels != labels:
            out.append(self._resolve(alert.key, self._wall_clamp(alert.ts), "superseded"))
            inc = None
        if inc is None:
            if len(self._active) >= self.config.max_active:
                self.overflow_total += 1
                return out
            self._serial += 1
            inc = Incident(
                serial=self._serial,
                labels=labels,
                first=alert,
                last=alert,
                starts_at=self._wall_clamp(alert.ts),
                last_flag_at=now,
                partition=(alert.topic, alert.partition),
                fingerprint=fingerprint(labels),
            )
            self._active[alert.key] = inc
        else:
            inc.last = alert
            inc.flagged += 1
            inc.last_flag_at = now
            inc.partition = (alert.topic, alert.partition)
            self._active.move_to_end(alert.key)
        out.append(inc.notice())
        return out

    def recovered(self, rec: Recovery) -> list[Notice]:
        """The key completed its unflagged run: its incident resolves (if it has one and the
        run came after its latest flagged event)."""
        inc = self._active.get(rec.key)
        if inc is None:
            return []
        last = inc.last
        if (rec.topic, rec.partition) == (last.topic, last.partition) and rec.offset < last.offset:
            return []  # a run that ended before the latest flagged event: stale
        return [self._resolve(rec.key, self._wall_clamp(rec.ts), "events")]

    def expire(self) -> list[Notice]:
        """Resolve the incidents whose latest flagged event is ``resolve_timeout_s`` old."""
        limit = self._monotonic() - self.config.resolve_timeout_s
        out = []
        while self._active:
            key, inc = next(iter(self._active.items()))
            if inc.last_flag_at > limit:
                break
            out.append(self._resolve(key, self._clock(), "timeout"))
        return out

    def next_expiry(self) -> float | None:
        """Monotonic time at which :meth:`expire` resolves the next incident (None: none active)."""
        if not self._active:
            return None
        inc = next(iter(self._active.values()))
        return inc.last_flag_at + self.config.resolve_timeout_s

    def forget(self, partitions: Iterable[tuple[str, int]]) -> int:
        """Drop the incidents of keys last seen on ``partitions`` (no notice); how many."""
        gone = set(partitions)
        keys = [k for k, inc in self._active.items() if inc.partition in gone]
        for k in keys:
            del self._active[k]
        return len(keys)

    def active(self) -> list[Notice]:
        """A firing notice of every active incident."""
        return [inc.notice() for inc in self._active.values()]

    def keys(self) -> list[str]:
        """The keys with an active incident, the least recently flagged first."""
        return list(self._active)

    def notice_of(self, key: str) -> Notice | None:
        """A firing notice of ``key``'s active incident (None: it has none)."""
        inc = self._active.get(key)
        return None if inc is None else inc.notice()

    def _resolve(self, key: str, ends_at: float, by: ResolvedBy) -> Notice:
        inc = self._active.pop(key)
        self.resolved_total[by] += 1
        return inc.notice("resolved", max(ends_at, inc.starts_at), by)

    def _wall_clamp(self, ts: float) -> float:
        return min(ts, self._clock())
