"""Why a key alerted: its readings, the prediction band, the score and the flags around an alert.

A :class:`Trace` is one key's scored events, from the scores topic (:func:`topic_trace`; only the
partition the key maps to is read) or from a replay of history files through the model exactly as
the detector would score them (:func:`replay_trace`). :func:`choose_window` picks the events
around one alert (the flagged event nearest to a time, by default the latest one);
:func:`format_window` prints them (value, expected value, the band of +-2 predicted scales,
score, flag) and :func:`plot_window` draws them. ``streamrnn explain`` (:mod:`streamrnn.cli.explain`)
is the command line.

The band needs the prediction's scale: replays have it; score messages carry it as ``scale``
when the detector publishes it, and the band is left out where they do not.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ConfigError, ServiceConfig
from ..times import iso_utc
from .message import Alert, MessageError
from .reader import read_topic

__all__ = [
    "Trace",
    "Window",
    "choose_window",
    "format_window",
    "plot_window",
    "replay_trace",
    "topic_trace",
    "trace_from_messages",
]


@dataclass
class Trace:
    """One key's scored events in time order: ``times`` (N,) epoch seconds, ``values``,
    ``expected`` and ``scale`` (N,) of one feature (NaN where unknown), ``score`` (N,), ``flag``
    (N,) bool."""

    key: str
    feature: str
    times: np.ndarray
    values: np.ndarray
    expected: np.ndarray
    scale: np.ndarray
    score: np.ndarray
    flag: np.ndarray
    threshold: float
    origin: str  # where the events came from, for the header

    def __len__(self) -> int:
        return len(self.times)


def _pick(values: dict[str, float | None], feature: str | None) -> float:
    if not values:
        return math.nan
    v = values.get(feature) if feature is not None else next(iter(values.values()))
    return math.nan if v is None else float(v)


def trace_from_messages(
    key: str, messages: list[Alert], origin: str, feature: str | None = None
) -> Trace:
    """The trace of ``key`` from score messages (each source once, in event-time order)."""
    seen: dict[tuple[str, int, int], Alert] = {}
    for m in messages:
        if m.key == key:
            seen.setdefault((m.topic, m.partition, m.offset), m)
    msgs = sorted(seen.values(), key=lambda m: (m.ts, m.offset))
    if feature is None and msgs:
        feature = next(iter(msgs[0].values))
    name = feature or "value"
    return Trace(
        key=key,
        feature=name,
        times=np.array([m.ts for m in msgs], dtype=np.float64),
        values=np.array([_pick(m.values, feature) for m in msgs]),
        expected=np.array([_pick(m.expected, feature) for m in msgs]),
        scale=np.array([_pick(m.scale or {}, feature) for m in msgs]),
        score=np.array([m.score for m in msgs]),
        flag=np.array([bool(m.flag) for m in msgs], dtype=bool),
        threshold=next((m.threshold for m in msgs if math.isfinite(m.threshold)), math.nan),
        origin=origin,
    )


@dataclass
class Window:
    """The events ``lo:hi`` of a trace around the event ``at`` (None: the trace has no flag)."""

    trace: Trace
    at: int | None
    lo: int
    hi: int


def choose_window(trace: Trace, *, at: float | None, before: int, after: int) -> Window:
    """Around the flagged event nearest to ``at`` (default: the latest flagged event); the latest
    events when the trace has no flagged event."""
    flagged = np.flatnonzero(trace.flag)
    n = len(trace)
    if len(flagged) == 0:
        return Window(trace, None, max(0, n - before - after - 1), n)
    if at is None:
        i = int(flagged[-1])
    else:
        i = int(flagged[np.argmin(np.abs(trace.times[flagged] - at))])
    return Window(trace, i, max(0, i - before), min(n, i + after + 1))


def _num(x: float) -> str:
    return "" if not math.isfinite(x) else f"{x:.4g}"


def format_window(w: Window) -> str:
    """The header (the alert in words) and one line per event."""
    t = w.trace
    lines = []
    if w.at is None:
        lines.append(f"{t.key}: no flagged event in {t.origin}; the latest {w.hi - w.lo} event(s)")
    else:
        i = w.at
        band = _band(t, i)
        lines.append(
            f"{t.key}: alert at {iso_utc(t.times[i])} ({t.origin}): {t.feature} {_num(t.values[i])}"
            f", expected {_num(t.expected[i])}{band}; score {t.score[i]:.4f}"
            f" (threshold {_num(t.threshold)})"
        )
        n_flags = int(t.flag[w.lo : w.hi].sum())
        lines.append(f"{n_flags} flagged event(s) among the {w.hi - w.lo} shown")
    rows = [["TIME (UTC)", t.feature.upper(), "EXPECTED", "BAND -2", "BAND +2", "SCORE", "FLAG"]]
    for j in range(w.lo, w.hi):
        lo, hi = t.expected[j] - 2 * t.scale[j], t.expected[j] + 2 * t.scale[j]
        mark = "ALERT" if t.flag[j] else ""
        if j == w.at:
            mark = "ALERT <"
        rows.append(
            [
                iso_utc(t.times[j]),
                _num(t.values[j]),
                _num(t.expected[j]),
                _num(lo),
                _num(hi),
                f"{t.score[j]:.4f}",
                mark,
            ]
        )
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    for r in rows:
        cells = [
            c.ljust(wd) if k in (0, 6) else c.rjust(wd)
            for k, (c, wd) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _band(t: Trace, i: int) -> str:
    if not math.isfinite(t.scale[i]):
        return ""
    lo, hi = t.expected[i] - 2 * t.scale[i], t.expected[i] + 2 * t.scale[i]
    return f" (band {_num(lo)} .. {_num(hi)})"


def plot_window(w: Window, path: Path) -> Path:
    from ..offline.plot import plot_trace

    t, sl = w.trace, slice(w.lo, w.hi)
    return plot_trace(
        path,
        title=f"{t.key} ({t.origin})",
        times=t.times[sl],
        values=t.values[sl],
        prediction=t.expected[sl],
        scale=t.scale[sl],
        score=t.score[sl],
        flag=t.flag[sl],
        threshold=t.threshold if math.isfinite(t.threshold) else 1.0,
        label=t.feature,
        mark=None if w.at is None else float(t.times[w.at]),
    )


def topic_trace(
    svc: ServiceConfig, key: str, *, since: float, timeout_s: float, feature: str | None = None
) -> Trace:
    """The trace of ``key`` from ``svc.scores_topic``, events published since ``since``."""
    if not svc.scores_topic:
        raise ConfigError(
            "service.scores_topic: explain reads the scores topic (or replays with --model and "
            "--data); set it or give --topic, got null"
        )
    messages = []
    for r in read_topic(svc, svc.scores_topic, since=since, key=key.encode(), timeout_s=timeout_s):
        try:
            messages.append(Alert.parse(r.value))
        except MessageError:
            continue
    return trace_from_messages(key, messages, f"topic {svc.scores_topic}", feature)


def replay_trace(
    key: str,
    model_dir: str,
    data: Sequence[str],
    *,
    config: str | None = None,
    key_column: str | None = None,
    time_column: str = "timestamp",
    feature: str | None = None,
) -> Trace:
    """The trace of ``key`` replayed from ``data`` through the model of ``model_dir``, with the
    scoring of the ``config`` file on top of the model's (what the detector runs with)."""
    from ..detector.engine import Engine
    from ..detector.modeldir import load_model, resolve_device
    from ..offline.data import load_series
    from ..offline.replay import replay_series, resolve_replay_config

    loaded = load_model(model_dir)
    cfg = resolve_replay_config(
        loaded.config, argparse.Namespace(config=config, false_alert_rate=None, device=None)
    )
    names = list(loaded.feature_names)
    if feature is not None and feature not in names:
        raise ConfigError(f"--feature: must be one of {', '.join(names)}, got {feature!r}")
    columns = names + list(loaded.covariate_names)  # covariates steer the replay, never shown
    series = load_series(
        data, key_column=key_column, time_column=time_column, value_columns=columns
    )
    mine = [s for s in series if s.key == key]
    if not mine:
        known = ", ".join(sorted(s.key for s in series)[:10])
        more = ", ..." if len(series) > 10 else ""
        raise ConfigError(f"key: must be a key of --data ({known}{more}), got {key!r}")
    f = names.index(feature) if feature else 0
    device = resolve_device(cfg.state.device)
    engine = Engine(loaded.model, cfg, device=device, model_version=loaded.version)
    (item,) = replay_series(engine, mine[:1])
    s, r = item.series, item.results
    return Trace(
        key=key,
        feature=names[f],
        times=s.times,
        values=s.values[:, f].astype(np.float64),
        expected=r.prediction[:, f].astype(np.float64),
        scale=r.scale[:, f].astype(np.float64),
        score=r.score.astype(np.float64),
        flag=r.flag,
        threshold=cfg.scoring.threshold,
        origin=f"replay of {s.relpath} with model {loaded.version}",
    )
