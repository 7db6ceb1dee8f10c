"""Why a key alerted: its readings, the prediction band, the score and the flags around an alert.

``streamrnn explain KEY`` takes the key's recent events from the scores topic
(``service.scores_topic``; only the partition the key maps to is read), or, with ``--model`` and
``--data``, replays history files through the model exactly as the detector would. It picks the
alert at ``--at`` (the flagged event nearest to that time; default the latest one), prints the
``--before`` events before it and the ``--after`` events after it (value, expected value, the
band of +-2 predicted scales, score, flag), and with ``--plot PNG`` draws them.

The band needs the prediction's scale: replays have it; score messages carry it as ``scale``
when the detector publishes it, and the band is left out where they do not.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ConfigError, load_config
from .cli import add_kafka_arguments, servers_override
from .message import Alert, MessageError
from .reader import TopicError, parse_when, read_topic
from .render import rfc3339

__all__ = ["Trace", "Window", "choose_window", "format_window", "trace_from_messages"]

EPILOG = """\
examples:
  streamrnn explain meter-17 --config service.yaml
  streamrnn explain meter-17 --config service.yaml --at 2024-03-01T04:10:00Z --plot meter-17.png
  streamrnn explain meter-17 --model models/demand --data history/meter-17.csv --plot m17.png
  streamrnn explain site-a --model models/demand --data meters.csv --key-column meter --after 30
"""


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
            f"{t.key}: alert at {rfc3339(t.times[i])} ({t.origin}): {t.feature} {_num(t.values[i])}"
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
                rfc3339(t.times[j]),
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
    from ..plot import plot_trace

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


# ----------------------------------------------------------------------------------------------
# The command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("key", help="the key to explain")
    add_kafka_arguments(parser, "scores topic (service.scores_topic)")
    parser.add_argument(
        "--since", default="7d", help="read score messages from: a duration ago or ISO 8601 (7d)"
    )
    parser.add_argument("--model", help="replay instead: model directory written by `train`")
    parser.add_argument("--data", nargs="+", help="replay instead: CSV files or directories")
    parser.add_argument("--key-column", help="replay, long format: the column naming the key")
    parser.add_argument("--time-column", default="timestamp", help="replay: time column")
    parser.add_argument("--feature", help="the feature to show (default: the first)")
    parser.add_argument("--at", help="the alert nearest to this time (default: the latest)")
    parser.add_argument("--before", type=int, default=48, help="events before the alert (48)")
    parser.add_argument("--after", type=int, default=12, help="events after the alert (12)")
    parser.add_argument("--plot", metavar="PNG", help="also draw the window into this PNG")


def run(args: argparse.Namespace) -> int:
    try:
        at = parse_when(args.at, time.time()) if args.at else None
        if bool(args.model) != bool(args.data):
            raise ConfigError("--model and --data: give both to replay, or neither")
        if args.before < 0 or args.after < 0:
            raise ConfigError(f"--before/--after: must be >= 0, got {args.before}/{args.after}")
        trace = _replay_trace(args) if args.model else _topic_trace(args)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TopicError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not len(trace):
        print(f"error: no events of {args.key!r} in {trace.origin}", file=sys.stderr)
        return 1
    window = choose_window(trace, at=at, before=args.before, after=args.after)
    print(format_window(window))
    if args.plot:
        print(f"plot: {plot_window(window, Path(args.plot))}")
    return 0


def _topic_trace(args: argparse.Namespace) -> Trace:
    config = load_config(
        args.config,
        overrides={
            "service.bootstrap_servers": servers_override(args),
            "service.scores_topic": args.topic,
        },
    )
    svc = config.service
    if not svc.scores_topic:
        raise ConfigError(
            "service.scores_topic: explain reads the scores topic (or replays with --model and "
            "--data); set it or give --topic, got null"
        )
    since = parse_when(args.since, time.time())
    messages = []
    for r in read_topic(
        svc.bootstrap_servers,
        svc.scores_topic,
        since=since,
        key=args.key.encode(),
        timeout_s=args.timeout,
    ):
        try:
            messages.append(Alert.parse(r.value))
        except MessageError:
            continue
    return trace_from_messages(args.key, messages, f"topic {svc.scores_topic}", args.feature)


def _replay_trace(args: argparse.Namespace) -> Trace:
    from ..data import load_series
    from ..engine import Engine
    from ..modeldir import load_model, resolve_device
    from ..replay import replay_series, resolve_replay_config

    loaded = load_model(args.model)
    # The model's config with the scoring of --config on top: what the detector runs with.
    cfg = resolve_replay_config(
        loaded.config, argparse.Namespace(config=args.config, threshold=None, device=None)
    )
    names = list(loaded.feature_names)
    if args.feature is not None and args.feature not in names:
        raise ConfigError(f"--feature: must be one of {', '.join(names)}, got {args.feature!r}")
    series = load_series(
        args.data, key_column=args.key_column, time_column=args.time_column, value_columns=names
    )
    mine = [s for s in series if s.key == args.key]
    if not mine:
        known = ", ".join(sorted(s.key for s in series)[:10])
        raise ConfigError(
            f"key: must be a key of --data ({known}{', ...' if len(series) > 10 else ''}), got {args.key!r}"
        )
    f = names.index(args.feature) if args.feature else 0
    engine = Engine(
        loaded.model, cfg, device=resolve_device(cfg.state.device), model_version=loaded.version
    )
    (item,) = replay_series(engine, mine[:1])
    s, r = item.series, item.results
    return Trace(
        key=args.key,
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
