"""Recent and active alerts from the alerts topic: selection, grouping by key, and text.

An alert is selected by its event time (``since`` <= ts < ``until``) and its key (exact names or
shell patterns such as ``meter-*``). Re-published alerts (after a restart the detector publishes
the alerts of events it processes again) are the same alert: they are deduplicated by their
``source``.

A key is *active* when its latest alert is less than ``alerts.resolve_timeout_s`` old (event
time against now): the timeout rule, which needs only the alerts topic. The detector's sinks may
have resolved it sooner, after ``resolve_after_events`` unflagged events; Alertmanager shows that.

>>> from streamrnn.alerting.message import Alert
>>> def alert(key, ts, off):
...     return Alert(key, ts, "", {"value": 1.0}, {"value": 0.0}, 0.9, 0.8, "v1", "t", 0, off)
>>> got = select([alert("m1", 100, 1), alert("m2", 200, 2), alert("m1", 300, 3), alert("m1", 300, 3)],
...              keys=["m1"], since=150)
>>> [(a.key, a.ts) for a in got]
[('m1', 300)]
>>> [(s.key, s.count, s.active) for s in summarize(got + [alert("m2", 200, 2)], now=400, active_s=150)]
[('m1', 1, True), ('m2', 1, False)]
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..config import ServiceConfig
from ..times import iso_utc
from .message import Alert, MessageError, format_values
from .reader import read_topic

__all__ = ["KeySummary", "format_alerts", "format_summary", "read_alerts", "select", "summarize"]


def read_alerts(
    svc: ServiceConfig, *, since: float | None, timeout_s: float
) -> tuple[list[Alert], int]:
    """The alerts of ``svc.alerts_topic`` published since ``since``, and how many of its
    messages are not alerts."""
    alerts, bad = [], 0
    for r in read_topic(svc, svc.alerts_topic, since=since, timeout_s=timeout_s):
        try:
            alerts.append(Alert.parse(r.value))
        except MessageError:
            bad += 1
    return alerts, bad


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(key == p or fnmatch.fnmatchcase(key, p) for p in patterns)


def select(
    alerts: Iterable[Alert],
    *,
    keys: Sequence[str] = (),
    since: float | None = None,
    until: float | None = None,
) -> list[Alert]:
    """The alerts of ``keys`` (all when empty) with ``since <= ts < until``, each source once,
    in event-time order."""
    seen: set[tuple[str, int, int]] = set()
    out = []
    for a in alerts:
        if keys and not _matches(a.key, keys):
            continue
        if (since is not None and a.ts < since) or (until is not None and a.ts >= until):
            continue
        ident = (a.topic, a.partition, a.offset)
        if ident in seen:
            continue
        seen.add(ident)
        out.append(a)
    out.sort(key=lambda a: (a.ts, a.key))
    return out


@dataclass(frozen=True)
class KeySummary:
    """One key's alerts in the selection."""

    key: str
    count: int
    first: Alert
    last: Alert
    max_score: float
    active: bool  # the latest alert is less than active_s old


def summarize(alerts: Sequence[Alert], *, now: float, active_s: float) -> list[KeySummary]:
    """One summary per key, the most recent latest alert first."""
    by_key: dict[str, list[Alert]] = {}
    for a in sorted(alerts, key=lambda a: a.ts):
        by_key.setdefault(a.key, []).append(a)
    out = [
        KeySummary(
            key=k,
            count=len(v),
            first=v[0],
            last=v[-1],
            max_score=max(a.score for a in v),
            active=now - v[-1].ts < active_s,
        )
        for k, v in by_key.items()
    ]
    out.sort(key=lambda s: (-s.last.ts, s.key))
    return out


def _table(rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_alerts(alerts: Sequence[Alert]) -> str:
    """A table: time, key, value, expected, score, source."""
    rows = [["TIME (UTC)", "KEY", "VALUE", "EXPECTED", "SCORE", "SOURCE"]]
    for a in alerts:
        rows.append(
            [
                iso_utc(a.ts),
                a.key,
                format_values(a.values),
                format_values(a.expected),
                f"{a.score:.4f}",
                a.source,
            ]
        )
    return _table(rows, right={4})


def format_summary(summaries: Sequence[KeySummary]) -> str:
    """A table: key, alerts, first, last, max score, active."""
    rows = [["KEY", "ALERTS", "FIRST (UTC)", "LAST (UTC)", "MAX SCORE", "ACTIVE"]]
    for s in summaries:
        rows.append(
            [
                s.key,
                str(s.count),
                iso_utc(s.first.ts),
                iso_utc(s.last.ts),
                f"{s.max_score:.4f}",
                "yes" if s.active else "no",
            ]
        )
    return _table(rows, right={1, 4})
