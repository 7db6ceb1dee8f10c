"""Synthetic streams to produce: :mod:`.synth` series as messages, endless or looped.

:func:`synthetic_series` generates ``sensor``, ``energy`` or ``mixed`` keys with injected
anomalies (spikes, level shifts, stuck values, drifts) after a clean prefix;
:class:`SyntheticStream` yields their readings as messages in time order, every ``interval_s``
seconds of event time. An endless stream cycles a week of readings with time moving on, each
cycle made seamless so the wrap is no anomaly. :func:`write_labels` writes the injected anomaly
windows (NAB-style, for ``streamrnn eval``).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..times import iso_utc, parse_timestamp
from . import synth
from .produce import DEFAULT_INTERVAL_S, DEFAULT_START, Message, json_number, malformed_messages

__all__ = [
    "MAX_BLOCK",
    "MIN_BLOCK",
    "STEPS_PER_ANOMALY",
    "WEEK_S",
    "parse_start",
    "InjectedAnomaly",
    "SyntheticStream",
    "synthetic_series",
    "write_labels",
]

WEEK_S = 7 * 86400.0
MIN_BLOCK, MAX_BLOCK = 64, 20160  # steps of one cycle of an endless synthetic stream
STEPS_PER_ANOMALY = 500  # default spacing of injected anomalies, in steps


@dataclass(frozen=True)
class InjectedAnomaly:
    """One anomaly as sent: steps count from the stream's first step across cycles."""

    key: str
    kind: str
    start_step: int
    end_step: int  # exclusive
    start_ts: float  # epoch seconds of the first affected reading
    end_ts: float  # epoch seconds of the last affected reading

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "start": iso_utc(self.start_ts),
            "end": iso_utc(self.end_ts),
            "start_step": self.start_step,
            "end_step": self.end_step,
        }


def _make_seamless(s: synth.SyntheticSeries, n: int, k: int, positive: bool) -> None:
    """Cut ``s`` (generated with ``n + k`` steps) to ``n`` and tilt it so that cycling it is
    seamless: the level the series would have had at step ``n`` becomes that of step 0."""
    assert s.clean is not None
    d = float(np.mean(s.clean[n : n + k] - s.clean[:k]))  # same time of day/week when aligned
    ramp = d * np.arange(n, dtype=np.float64) / n  # (n,)
    values = s.values[:n] - ramp
    clean = s.clean[:n] - ramp
    if positive:
        floor = 0.02 * s.scale
        values, clean = np.maximum(values, floor), np.maximum(clean, floor)
    s.values, s.clean, s.timestamps = values, clean, s.timestamps[:n]
    s.anomalies = [
        synth.Anomaly(a.kind, a.start_index, min(a.end_index, n))
        for a in s.anomalies
        if a.start_index < n
    ]


def synthetic_series(
    kind: str,
    keys: int,
    steps: int,
    *,
    interval_s: float = DEFAULT_INTERVAL_S,
    start: float | str = DEFAULT_START,
    anomalies: Sequence[str] = synth.ANOMALY_KINDS,
    anomalies_per_key: int | None = None,
    clean_prefix: int | None = None,
    seed: int = 0,
    seamless: bool = False,
) -> list[synth.SyntheticSeries]:
    """``keys`` synthetic series of ``steps`` readings sharing their timestamps.

    ``kind`` is ``sensor``, ``energy`` or ``mixed`` (energy keys first, then sensor keys; the two
    kinds use seeds ``seed`` and ``seed + 1``). ``clean_prefix`` defaults to ``min(300, steps //
    4)`` steps without anomalies; ``anomalies_per_key`` to one per 500 steps after it (at least
    one when ``anomalies`` names any kind). ``seamless`` prepares the series to be cycled.
    """
    if kind not in ("sensor", "energy", "mixed"):
        raise ValueError(f"kind must be sensor, energy or mixed, got {kind!r}")
    if keys < 1 or steps < 1:
        raise ValueError(f"keys and steps must be >= 1, got {keys} and {steps}")
    prefix = min(300, steps // 4) if clean_prefix is None else clean_prefix
    if not 0 <= prefix < steps:
        raise ValueError(f"clean prefix must be in [0, steps={steps}), got {prefix}")
    eligible = steps - prefix
    if anomalies_per_key is None:
        count = max(1, eligible // STEPS_PER_ANOMALY) if anomalies else 0
    else:
        count = anomalies_per_key if anomalies else 0
    count = min(count, eligible // 16)
    start_ts = parse_start(start) if isinstance(start, str) else float(start)
    start_dt = datetime.fromtimestamp(start_ts, tz=timezone.utc)
    # One cycle later the stream continues at step 0: generate a few steps more to see where the
    # series would have gone and tilt it back (see _make_seamless).
    extra = max(1, min(12, steps // 8)) if seamless else 0
    if kind == "mixed":
        parts = [("energy", (keys + 1) // 2, seed), ("sensor", keys // 2, seed + 1)]
    else:
        parts = [(kind, keys, seed)]
    out: list[synth.SyntheticSeries] = []
    for k, n_keys, part_seed in parts:
        if n_keys == 0:
            continue
        gen = synth.generate(
            k,  # type: ignore[arg-type]
            n_keys,
            steps + extra,
            start=start_dt,
            interval_s=interval_s,
            anomalies=tuple(anomalies),
            anomalies_per_key=count,
            clean_prefix=prefix,
            seed=part_seed,
        )
        if seamless:
            for s in gen:
                _make_seamless(s, steps, extra, positive=(k == "energy"))
        out.extend(gen)
    return out


class SyntheticStream:
    """Messages of synthetic series that share their timestamps, step by step.

    Step ``g`` sends every key's reading at ``start + g * interval_s``; with ``cycle`` the series
    repeat (step ``g`` reads row ``g % n``) and time moves on, forever. ``malformed_every`` > 0
    slips one malformed message (see :func:`malformed_messages`) in after every that many
    readings. :attr:`steps_started`, :meth:`injected` and :meth:`step_of` tell what was sent.
    """

    def __init__(
        self,
        series: Sequence[synth.SyntheticSeries],
        *,
        interval_s: float,
        cycle: bool = False,
        malformed_every: int = 0,
    ) -> None:
        if not series:
            raise ValueError("series: need at least one")
        lengths = {len(s) for s in series}
        if len(lengths) != 1:
            raise ValueError(f"series must have the same length, got {sorted(lengths)}")
        self.series = list(series)
        self.n = lengths.pop()
        self.interval_s = float(interval_s)
        self.start_ts = float(series[0].epoch_seconds[0])
        self.cycle = cycle
        self.malformed_every = max(0, int(malformed_every))
        self.steps_started = 0
        self.readings_sent = 0
        self.malformed_sent = 0
        self._bad = malformed_messages()

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.series]

    def ts_of(self, step: int) -> float:
        """Epoch seconds of global step ``step``."""
        return self.start_ts + step * self.interval_s

    def step_of(self, ts: float) -> int:
        """The global step of an event time (nearest)."""
        return int(round((ts - self.start_ts) / self.interval_s))

    def __iter__(self) -> Iterator[Message]:
        keys = [s.key for s in self.series]
        key_bytes = [k.encode("utf-8") for k in keys]
        values = np.stack([s.values for s in self.series], axis=1)  # (n, K)
        steps: Iterable[int] = itertools.count() if self.cycle else range(self.n)
        for g in steps:
            self.steps_started = g + 1
            stamp = iso_utc(self.ts_of(g))
            row = values[g % self.n].tolist()  # (K,)
            for kb, key, v in zip(key_bytes, keys, row, strict=True):
                yield kb, orjson.dumps({"key": key, "ts": stamp, "value": json_number(v)})
                self.readings_sent += 1
                if self.malformed_every and self.readings_sent % self.malformed_every == 0:
                    yield self._bad[self.malformed_sent % len(self._bad)]
                    self.malformed_sent += 1

    def injected(self, upto_step: int | None = None) -> list[InjectedAnomaly]:
        """Anomalies whose first step is below ``upto_step`` (default: the steps started)."""
        limit = self.steps_started if upto_step is None else upto_step
        out: list[InjectedAnomaly] = []
        for cycle in range(0, max(0, math.ceil(limit / self.n))):
            base = cycle * self.n
            for s in self.series:
                for a in s.anomalies:
                    start = base + a.start_index
                    if start >= limit:
                        continue
                    end = base + a.end_index
                    out.append(
                        InjectedAnomaly(
                            s.key, a.kind, start, end, self.ts_of(start), self.ts_of(end - 1)
                        )
                    )
        out.sort(key=lambda a: (a.start_step, a.key))
        return out


def write_labels(
    path: str | Path,
    anomalies: Sequence[InjectedAnomaly],
    *,
    topic: str,
    interval_s: float,
) -> Path:
    """Write the injected anomalies as JSON: a list of them, and NAB-style windows by key.

    ``{"topic", "interval_s", "anomalies": [{key, kind, start, end, start_step, end_step}],
    "windows": {key: [[start, end], ...]}}`` with ISO 8601 UTC times (``end`` = the last affected
    reading).
    """
    windows: dict[str, list[list[str]]] = {}
    for a in anomalies:
        windows.setdefault(a.key, []).append([iso_utc(a.start_ts), iso_utc(a.end_ts)])
    doc = {
        "topic": topic,
        "interval_s": interval_s,
        "anomalies": [a.to_json() for a in anomalies],
        "windows": windows,
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(doc, indent=1) + "\n")
    return target


def parse_start(text: str) -> float:
    """``--start`` as epoch seconds: ISO 8601 (naive = UTC), epoch seconds, or ``now``."""
    if text.strip().lower() == "now":
        return float(math.floor(time.time()))

    try:
        return parse_timestamp(text)
    except ValueError:
        raise ValueError(
            f"--start: must be an ISO 8601 time such as 2024-01-01T00:00:00Z, epoch seconds or "
            f"'now', got {text!r}"
        ) from None
