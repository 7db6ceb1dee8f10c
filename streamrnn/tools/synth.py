"""Synthetic keyed streams with labelled, injected anomalies.

Two stream classes, both deterministic given the seed:

- ``sensor``: temperature-like (even keys) and vibration-like (odd keys) readings: a daily cycle,
  a slow random wander and Gaussian noise.
- ``energy``: electricity demand: weekday shape with morning and evening peaks, a flatter and
  later weekend shape, a weekly rhythm, a slow wander and noise; always positive.

:func:`weather_demand` adds a third, with a covariate: electricity demand driven by outdoor
temperature (a daily cycle, multi-day weather and heat waves), through a thermal lag and a
heating (cold) and cooling (hot) response around a comfort band; two columns, ``demand`` and
``temp``.

Each key has its own scale and offset, spread over about four orders of magnitude (0.1 .. 1000),
so per-key normalisation is required. Key ``k`` draws from its own random stream
(``SeedSequence(seed).spawn``), so key ``k`` is the same whatever ``n_keys`` is.

Anomalies (``Anomaly(kind, start_index, end_index)``, ``end_index`` exclusive as in a slice):

- ``spike``: one value far from normal (4-8 daily amplitudes),
- ``level_shift``: a constant offset (1.5-3 amplitudes) over a window, then back to normal,
- ``stuck``: the value frozen at its last normal reading over a window,
- ``drift``: an offset ramping linearly from 0 to 2-4 amplitudes over a window.

:func:`apply_anomaly` writes one anomaly of a chosen size into a series; besides the four kinds
above it knows ``variance`` (added noise), ``seasonal_shape`` (the cycle blended with itself half
a period earlier) and ``missing`` (a burst of NaN readings): :data:`SUITE_KINDS`, which the quality
benchmark's generated suite (:mod:`streamrnn.tools.suite`) injects at three intensities.
:func:`seasonal_mix` gives clean sums of sines such as the two-period stream of issue 10.

>>> s = generate("sensor", 2, 2000, interval_s=300, seed=7, anomalies_per_key=4)
>>> sorted(a.kind for a in s[0].anomalies)
['drift', 'level_shift', 'spike', 'stuck']
>>> bool((s[0].values != s[0].clean).any()), s[0].values.shape
(True, (2000,))
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np

from ..times import datetime64_texts, parse_iso

__all__ = [
    "ANOMALY_KINDS",
    "SUITE_KINDS",
    "Anomaly",
    "AnomalyKind",
    "StreamKind",
    "SyntheticSeries",
    "apply_anomaly",
    "generate",
    "noisy_sine",
    "seasonal_mix",
    "weather_demand",
    "WeatherDemand",
    "write_csvs",
    "write_windows_json",
]

StreamKind = Literal["sensor", "energy"]
AnomalyKind = Literal["spike", "level_shift", "stuck", "drift"]
ANOMALY_KINDS: tuple[str, ...] = ("spike", "level_shift", "stuck", "drift")
SUITE_KINDS: tuple[str, ...] = (
    "spike",
    "level_shift",
    "variance",
    "stuck",
    "drift",
    "seasonal_shape",
    "missing",
)

_DAY_S = 86400.0
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # low-discrepancy spread of key scales


@dataclass(frozen=True)
class Anomaly:
    """One injected anomaly: ``values[start_index:end_index]`` is affected."""

    kind: str
    start_index: int
    end_index: int  # exclusive

    def __len__(self) -> int:
        return self.end_index - self.start_index


@dataclass
class SyntheticSeries:
    """One key's stream.

    ``timestamps`` are ``datetime64[ms]`` (UTC, naive); ``values`` hold the anomalies, ``clean``
    the same series without them; ``scale`` and ``offset`` are the key's units.
    """

    key: str
    timestamps: np.ndarray  # (n,) datetime64[ms]
    values: np.ndarray  # (n,) float64
    anomalies: list[Anomaly] = field(default_factory=list)
    clean: np.ndarray | None = None  # (n,) float64, values without anomalies
    kind: str = ""
    scale: float = 1.0
    offset: float = 0.0

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def epoch_seconds(self) -> np.ndarray:
        """Timestamps as float seconds since 1970-01-01 UTC, shape (n,)."""
        return self.timestamps.astype("datetime64[ms]").astype(np.int64) / 1000.0

    @property
    def labels(self) -> np.ndarray:
        """Boolean mask (n,): True inside an anomaly window."""
        mask = np.zeros(len(self), dtype=bool)
        for a in self.anomalies:
            mask[a.start_index : a.end_index] = True
        return mask


def noisy_sine(
    n: int,
    period: float,
    noise: float = 0.1,
    seed: int = 0,
    *,
    amplitude: float = 1.0,
    offset: float = 0.0,
) -> np.ndarray:
    """``offset + amplitude * sin(2 pi t / period) + noise * N(0, 1)`` for t = 0..n-1, float64.

    >>> noisy_sine(4, period=4, noise=0.0).round(6).tolist()
    [0.0, 1.0, 0.0, -1.0]
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if period <= 0:
        raise ValueError(f"period must be > 0, got {period}")
    t = np.arange(n, dtype=np.float64)
    rng = np.random.default_rng(seed)
    return offset + amplitude * np.sin(2.0 * np.pi * t / period) + noise * rng.standard_normal(n)


def seasonal_mix(
    n: int,
    periods: Sequence[float],
    amplitudes: Sequence[float],
    noise: float = 0.05,
    seed: int = 0,
) -> np.ndarray:
    """``sum_j amplitudes[j] * sin(2 pi t / periods[j]) + noise * N(0, 1)`` for t = 0..n-1.

    Issue 10's clean stream is ``seasonal_mix(600, (96, 672), (1.0, 0.3), 0.05, seed)``.

    >>> seasonal_mix(4, (4,), (2.0,), noise=0.0).round(6).tolist()
    [0.0, 2.0, 0.0, -2.0]
    """
    if len(periods) != len(amplitudes):
        raise ValueError(
            f"periods and amplitudes must have the same length, got {len(periods)} and "
            f"{len(amplitudes)}"
        )
    if any(p <= 0 for p in periods):
        raise ValueError(f"periods must be > 0, got {list(periods)}")
    t = np.arange(n, dtype=np.float64)  # (n,)
    out = np.zeros(n)
    for period, amp in zip(periods, amplitudes, strict=True):
        out += amp * np.sin(2.0 * np.pi * t / period)
    return out + noise * np.random.default_rng(seed).standard_normal(n)


def apply_anomaly(
    values: np.ndarray,
    clean: np.ndarray,
    kind: str,
    start: int,
    end: int,
    magnitude: float = 0.0,
    *,
    period: int = 0,
    rng: np.random.Generator | None = None,
) -> None:
    """Write one anomaly into ``values[start:end]`` (in place); ``clean`` is the series without it.

    ``magnitude`` is in the series' units and means, per kind: ``spike`` the jump of the one
    reading at ``start``; ``level_shift`` the offset; ``drift`` the offset reached at the last
    step of a linear ramp; ``variance`` the standard deviation of added Gaussian noise (from
    ``rng``); ``seasonal_shape`` the blend ``w`` in ``(1 - w) * clean[t] + w * clean[t - period //
    2]`` (1 = the cycle moved half a ``period``, ``start >= period // 2``). ``stuck`` freezes the
    value at the reading before ``start``; ``missing`` writes NaN. Neither uses ``magnitude``.
    """
    if not 0 <= start < end <= len(values):
        raise ValueError(
            f"anomaly rows must satisfy 0 <= start < end <= {len(values)}, got {start}, {end}"
        )
    if kind == "spike":
        values[start] += magnitude
    elif kind == "level_shift":
        values[start:end] += magnitude
    elif kind == "stuck":
        values[start:end] = values[start - 1] if start > 0 else values[start]
    elif kind == "drift":
        values[start:end] += magnitude * (
            np.arange(1, end - start + 1, dtype=np.float64) / (end - start)
        )
    elif kind == "variance":
        if rng is None:
            raise ValueError("variance: needs rng")
        values[start:end] += magnitude * rng.standard_normal(end - start)
    elif kind == "seasonal_shape":
        half = period // 2
        if half < 1 or start < half:
            raise ValueError(
                f"seasonal_shape: needs period >= 2 and start >= period // 2, got {period}, {start}"
            )
        earlier = clean[start - half : end - half]
        values[start:end] += magnitude * (earlier - clean[start:end])
    elif kind == "missing":
        values[start:end] = np.nan
    else:
        raise ValueError(f"anomaly kind must be one of {SUITE_KINDS}, got {kind!r}")


def _to_datetime64(start: datetime | str | np.datetime64) -> np.datetime64:
    """UTC, naive, millisecond resolution; naive input is taken as UTC."""
    if isinstance(start, np.datetime64):
        return start.astype("datetime64[ms]")
    if isinstance(start, str):
        try:
            start = parse_iso(start)
        except ValueError:
            raise ValueError(
                f"start must be an ISO date-time such as '2024-01-01 00:00:00', got {start!r}"
            ) from None
    if start.tzinfo is not None:
        start = start.astimezone(timezone.utc).replace(tzinfo=None)
    return np.datetime64(start, "ms")


def _smooth_walk(rng: np.random.Generator, n: int, corr_steps: float) -> np.ndarray:
    """AR(1) noise with unit stationary std and correlation time ``corr_steps``."""
    corr = max(corr_steps, 1.0)
    phi = math.exp(-1.0 / corr)
    eps = rng.standard_normal(n) * math.sqrt(1.0 - phi * phi)  # (n,)
    out = np.empty(n)
    x = float(rng.standard_normal())
    # x_i = phi^i * (x_0 + sum_{k<=i} eps_k phi^-k), evaluated in blocks short enough that
    # phi^-k stays below e^30 (no overflow, float64 precision kept).
    block = max(int(30.0 * corr), 1)
    for lo in range(0, n, block):
        k = np.arange(1, min(block, n - lo) + 1, dtype=np.float64)  # (b,)
        up = np.exp(k / corr)  # phi^-k
        seg = (x + np.cumsum(eps[lo : lo + k.shape[0]] * up)) / up  # (b,)
        out[lo : lo + seg.shape[0]] = seg
        x = float(seg[-1])
    return out


def _sensor(
    rng: np.random.Generator, idx: int, secs: np.ndarray, steps_per_day: float
) -> tuple[np.ndarray, str]:
    n = secs.shape[0]
    phase = rng.uniform(0.0, 2.0 * np.pi)
    day = 2.0 * np.pi * (secs % _DAY_S) / _DAY_S
    wander = _smooth_walk(rng, n, corr_steps=2.0 * steps_per_day)
    if idx % 2 == 0:  # temperature: smooth daily cycle, small noise
        base = np.sin(day + phase) + 0.25 * np.sin(2.0 * day + 2.0 * phase)
        return base + 0.4 * wander + 0.08 * rng.standard_normal(n), "temperature"
    # vibration: duty cycle (machine busy in the day), heavier-tailed noise
    base = 0.5 * np.tanh(3.0 * np.sin(day + phase))
    noise = 0.12 * rng.standard_t(df=5, size=n)
    return base + 0.3 * wander + noise, "vibration"


def _energy(
    rng: np.random.Generator, secs: np.ndarray, steps_per_day: float
) -> tuple[np.ndarray, str]:
    n = secs.shape[0]
    hour = (secs % _DAY_S) / 3600.0
    weekday = ((np.floor(secs / _DAY_S).astype(np.int64) + 3) % 7).astype(np.int64)  # Mon = 0
    weekend = weekday >= 5

    def bump(center: float, width: float) -> np.ndarray:
        d = (hour - center + 12.0) % 24.0 - 12.0  # circular distance in hours
        return np.exp(-0.5 * (d / width) ** 2)

    morning, evening = rng.uniform(7.0, 9.0), rng.uniform(18.0, 20.0)
    weekday_shape = 0.9 * bump(morning, 1.5) + 1.2 * bump(evening, 2.0) + 0.5 * bump(13.0, 3.0)
    weekend_shape = 0.6 * bump(morning + 2.0, 2.5) + 1.0 * bump(evening, 2.5)
    shape = np.where(weekend, weekend_shape, weekday_shape)
    weekly = 0.15 * np.cos(2.0 * np.pi * (weekday + hour / 24.0) / 7.0)
    wander = 0.25 * _smooth_walk(rng, n, corr_steps=3.0 * steps_per_day)
    noise = 0.05 * rng.standard_normal(n)
    # base load ~3 so the series stays positive (spikes downwards are bounded in _inject)
    return 3.0 + shape + weekly + wander + noise, "energy"


def _durations(kind: str, rng: np.random.Generator, steps_per_day: float, room: int) -> int:
    if kind == "spike":
        return 1
    lo, hi = {"level_shift": (0.25, 1.0), "stuck": (0.1, 0.5), "drift": (0.5, 1.5)}[kind]
    length = int(round(rng.uniform(lo, hi) * steps_per_day))
    return int(min(max(length, 8), room))


def _inject(
    values: np.ndarray,
    clean: np.ndarray,
    kind: str,
    start: int,
    end: int,
    rng: np.random.Generator,
    scale: float,
    positive: bool,
) -> None:
    sign = 1.0 if rng.random() < 0.5 else -1.0
    mag = 0.0
    if kind == "spike":
        mag = rng.uniform(4.0, 8.0) * scale
        if positive and sign < 0:
            mag = min(mag, 0.8 * clean[start])
    elif kind in ("level_shift", "drift"):
        lo, hi = (1.5, 3.0) if kind == "level_shift" else (2.0, 4.0)
        mag = rng.uniform(lo, hi) * scale
        if positive and sign < 0:
            mag = min(mag, 0.6 * float(clean[start:end].min()))
    apply_anomaly(values, clean, kind, start, end, sign * mag)


def generate(
    kind: StreamKind,
    n_keys: int,
    n_steps: int,
    *,
    start: datetime | str = "2024-01-01 00:00:00",
    interval_s: float = 300.0,
    anomalies: Sequence[str] = ANOMALY_KINDS,
    anomalies_per_key: int | None = None,
    anomaly_rate: float = 0.001,
    clean_prefix: int = 0,
    seed: int = 0,
    key_prefix: str | None = None,
) -> list[SyntheticSeries]:
    """``n_keys`` series of ``n_steps`` readings every ``interval_s`` seconds from ``start`` (UTC).

    Args:
        kind: ``"sensor"`` or ``"energy"``.
        anomalies: kinds to inject, cycled per key in a random order (so every kind appears once
            a key has at least ``len(anomalies)`` anomalies); empty for clean series.
        anomalies_per_key: exact number per key; when None, ``round(anomaly_rate * eligible)``
            where ``eligible = n_steps - clean_prefix``.
        clean_prefix: the first ``clean_prefix`` steps stay anomaly-free (warm-up / training).
        seed: everything is a function of the arguments; same arguments, same arrays.
        key_prefix: keys are ``f"{key_prefix}_{i:03d}"`` (default: ``kind``).

    Anomalies are spread evenly: the eligible range is cut into equal slots and each anomaly lies
    inside its own slot, so windows never overlap and there is normal data between them. Raises
    ``ValueError`` when the slots would be too short (under 16 steps).
    """
    if kind not in ("sensor", "energy"):
        raise ValueError(f"kind must be 'sensor' or 'energy', got {kind!r}")
    if n_keys < 1:
        raise ValueError(f"n_keys must be >= 1, got {n_keys}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if not interval_s > 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s}")
    if not 0 <= clean_prefix <= n_steps:
        raise ValueError(f"clean_prefix must be in [0, n_steps={n_steps}], got {clean_prefix}")
    unknown = [a for a in anomalies if a not in ANOMALY_KINDS]
    if unknown:
        raise ValueError(f"anomalies must be among {ANOMALY_KINDS}, got {list(anomalies)!r}")
    if anomalies_per_key is not None and anomalies_per_key < 0:
        raise ValueError(f"anomalies_per_key must be >= 0, got {anomalies_per_key}")
    if anomaly_rate < 0:
        raise ValueError(f"anomaly_rate must be >= 0, got {anomaly_rate}")

    eligible = n_steps - clean_prefix
    if not anomalies:
        count = 0
    elif anomalies_per_key is not None:
        count = anomalies_per_key
    else:
        count = int(round(anomaly_rate * eligible))
    slot = eligible // count if count else eligible
    if count and slot < 16:
        raise ValueError(
            f"anomalies_per_key: {count} anomalies need >= 16 steps each after clean_prefix "
            f"({eligible} steps available), got {slot} per anomaly"
        )

    t0 = _to_datetime64(start)
    step_ms = np.int64(round(interval_s * 1000.0))
    if step_ms < 1:
        raise ValueError(f"interval_s must be >= 0.001, got {interval_s}")
    timestamps = t0 + (np.arange(n_steps, dtype=np.int64) * step_ms).astype("timedelta64[ms]")
    secs = timestamps.astype(np.int64) / 1000.0  # (n,) epoch seconds
    steps_per_day = _DAY_S / interval_s
    prefix = key_prefix if key_prefix is not None else kind

    out: list[SyntheticSeries] = []
    for idx, ss in enumerate(np.random.SeedSequence(seed).spawn(n_keys)):
        rng = np.random.default_rng(ss)
        # Scales spread over 0.1 .. 1000 whatever n_keys is, with a little jitter.
        exponent = -1.0 + 4.0 * ((idx * _GOLDEN) % 1.0) + rng.uniform(-0.1, 0.1)
        scale = float(10.0**exponent)
        if kind == "sensor":
            shape, sub = _sensor(rng, idx, secs, steps_per_day)
            offset = float(scale * rng.uniform(-5.0, 20.0))
        else:
            shape, sub = _energy(rng, secs, steps_per_day)
            offset = 0.0
        clean = offset + scale * shape  # (n,)
        values = clean.copy()
        found: list[Anomaly] = []
        order = list(anomalies)
        rng.shuffle(order)
        for j in range(count):
            a_kind = order[j % len(order)]
            lo = clean_prefix + j * slot
            margin = max(slot // 8, 1)
            room = slot - 2 * margin
            length = _durations(a_kind, rng, steps_per_day, room)
            first = lo + margin + int(rng.integers(0, room - length + 1))
            _inject(values, clean, a_kind, first, first + length, rng, scale, kind == "energy")
            found.append(Anomaly(a_kind, first, first + length))
        out.append(
            SyntheticSeries(
                key=f"{prefix}_{idx:03d}",
                timestamps=timestamps.copy(),
                values=values,
                anomalies=found,
                clean=clean,
                kind=sub,
                scale=scale,
                offset=offset,
            )
        )
    return out


# -- demand driven by a temperature covariate ---------------------------------------------------


@dataclass
class WeatherDemand:
    """One key's demand and the temperature that drives it, hourly or as asked.

    ``demand`` = base load and daily shape (``_energy``'s) + ``heating * max(0, heat_below -
    felt)`` + ``cooling * max(0, felt - cool_above)``, where ``felt`` is the temperature through
    a first-order lag of ``lag_s`` seconds (buildings warm up slowly). ``heatwaves`` are the
    index windows ``(start, end)`` where the temperature was raised; ``driven`` is the demand
    they added (the heat waves' effect), so ``demand - driven`` is the same key's demand had the
    weather stayed as it was.
    """

    key: str
    timestamps: np.ndarray  # (n,) datetime64[ms]
    demand: np.ndarray  # (n,) float64
    temp: np.ndarray  # (n,) float64 degrees Celsius
    driven: np.ndarray  # (n,) float64 demand added by the heat waves
    heatwaves: list[tuple[int, int]]
    heatwave_c: float = 12.0  # the heat waves' peak, degrees

    def __len__(self) -> int:
        return int(self.demand.shape[0])

    @property
    def epoch_seconds(self) -> np.ndarray:
        return self.timestamps.astype("datetime64[ms]").astype(np.int64) / 1000.0

    def without_heatwaves(self) -> np.ndarray:
        """The temperature had the heat waves not come (n,)."""
        out = self.temp.copy()
        for lo, hi in self.heatwaves:
            out[lo:hi] -= _heatwave(hi - lo, self.heatwave_c)
        return out


def _heatwave(length: int, peak: float) -> np.ndarray:
    """A heat wave's added degrees over ``length`` steps: half a sine up to ``peak``."""
    return peak * np.sin(np.linspace(0.0, np.pi, length))  # (length,)


def _felt(temp: np.ndarray, lag_steps: float) -> np.ndarray:
    """First-order lag of ``temp`` (n,) with time constant ``lag_steps``."""
    a = 1.0 - math.exp(-1.0 / max(lag_steps, 1e-9))
    out = np.empty_like(temp)
    level = float(temp[0])
    for i, x in enumerate(temp.tolist()):
        level += a * (x - level)
        out[i] = level
    return out


def _response(felt: np.ndarray, heating: float, cooling: float) -> np.ndarray:
    return heating * np.maximum(0.0, 15.0 - felt) + cooling * np.maximum(0.0, felt - 21.0)


def weather_demand(
    n_keys: int,
    n_steps: int,
    *,
    start: datetime | str = "2024-05-01 00:00:00",
    interval_s: float = 3600.0,
    lag_s: float = 4 * 3600.0,
    heatwaves_per_key: int = 2,
    heatwave_c: float = 12.0,
    heatwave_days: tuple[float, float] = (1.5, 3.0),
    seed: int = 0,
) -> list[WeatherDemand]:
    """``n_keys`` demand series with their temperature, ``n_steps`` readings ``interval_s`` apart.

    Each key has its own climate (mean 12-22 C, daily swing 3-7 C, weather wandering over days),
    lag, heating and cooling sensitivity and demand scale (1 .. 1000). ``heatwaves_per_key``
    heat waves of ``heatwave_c`` degrees at their peak, ``heatwave_days`` long, are spread over the
    second half of each series; the demand follows them through the lag, as the cooling
    response says. Deterministic given the arguments.

    >>> s = weather_demand(1, 24 * 30, seed=3)[0]
    >>> len(s), len(s.heatwaves), bool((s.demand > 0).all())
    (720, 2, True)
    """
    t0 = _to_datetime64(start)
    step = np.timedelta64(int(round(interval_s * 1000)), "ms")
    timestamps = t0 + step * np.arange(n_steps)
    secs = timestamps.astype("datetime64[ms]").astype(np.int64) / 1000.0
    steps_per_day = _DAY_S / interval_s
    out: list[WeatherDemand] = []
    for idx, ss in enumerate(np.random.SeedSequence(seed).spawn(n_keys)):
        rng = np.random.default_rng(ss)
        day = 2.0 * np.pi * ((secs % _DAY_S) / _DAY_S - 0.625)  # warmest at 15:00
        temp = (
            rng.uniform(12.0, 22.0)
            + rng.uniform(3.0, 7.0) * np.cos(day)
            + 5.0 * _smooth_walk(rng, n_steps, corr_steps=3.0 * steps_per_day)
            + 0.3 * rng.standard_normal(n_steps)
        )
        waves: list[tuple[int, int]] = []
        half = n_steps // 2
        slot = max((n_steps - half) // max(heatwaves_per_key, 1), 1)
        for j in range(heatwaves_per_key):
            length = min(int(rng.uniform(*heatwave_days) * steps_per_day), slot - 1)
            if length < 2:
                break
            lo = half + j * slot + int(rng.integers(0, slot - length))
            temp[lo : lo + length] += _heatwave(length, heatwave_c)
            waves.append((lo, lo + length))
        base_temp = temp.copy()
        for lo, hi in waves:
            base_temp[lo:hi] -= _heatwave(hi - lo, heatwave_c)
        lag = lag_s / interval_s * rng.uniform(0.75, 1.25)
        heating, cooling = rng.uniform(0.04, 0.08), rng.uniform(0.08, 0.16)
        shape, _ = _energy(rng, secs, steps_per_day)
        response = _response(_felt(temp, lag), heating, cooling)  # (n,)
        calm = _response(_felt(base_temp, lag), heating, cooling)  # (n,)
        scale = 10.0 ** (3.0 * ((idx * _GOLDEN) % 1.0))
        out.append(
            WeatherDemand(
                key=f"demand_{idx:03d}",
                timestamps=timestamps.copy(),
                demand=scale * (shape + response),
                temp=temp,
                driven=scale * (response - calm),
                heatwaves=waves,
                heatwave_c=heatwave_c,
            )
        )
    return out


# -- files ------------------------------------------------------------------------------------


def _safe_name(key: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._")
    if not name:
        raise ValueError(f"key must contain a letter or digit, got {key!r}")
    return name


def write_csvs(series: Sequence[SyntheticSeries], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``<out_dir>/<key>.csv`` with a ``timestamp,value`` header per series.

    Timestamps are ``YYYY-MM-DD HH:MM:SS`` (with ``.fff`` only if some are sub-second); values
    use Python's shortest round-trip float text, so reading back gives identical floats.
    """
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    names = [_safe_name(s.key) for s in series]
    if len(set(names)) != len(names):
        raise ValueError(f"keys must map to distinct file names, got {names}")
    paths = []
    for s, name in zip(series, names, strict=True):
        path = root / f"{name}.csv"
        times = datetime64_texts(s.timestamps)
        lines = [f"{t},{float(v)!r}" for t, v in zip(times, s.values.tolist(), strict=True)]
        path.write_text("timestamp,value\n" + "\n".join(lines) + ("\n" if lines else ""))
        paths.append(path)
    return paths


def write_windows_json(
    series: Sequence[SyntheticSeries],
    path: str | os.PathLike[str],
    *,
    prefix: str = "",
    pad_steps: int = 0,
) -> Path:
    """Write NAB-style anomaly windows: ``{"<prefix>/<key>.csv": [[start_ts, end_ts], ...]}``.

    Timestamps use NAB's ``YYYY-MM-DD HH:MM:SS.ffffff``; each window spans the anomaly's first to
    last affected step, widened by ``pad_steps`` on both sides (clipped to the series; windows
    that then overlap are merged). ``prefix`` is the CSV directory relative to the data root
    (NAB's ``realTraffic`` for instance); empty when the CSV files are at the root.
    """
    if pad_steps < 0:
        raise ValueError(f"pad_steps must be >= 0, got {pad_steps}")
    out: dict[str, list[list[str]]] = {}
    for s in series:
        spans: list[list[int]] = []
        for a in sorted(s.anomalies, key=lambda a: a.start_index):
            lo = max(a.start_index - pad_steps, 0)
            hi = min(a.end_index - 1 + pad_steps, len(s) - 1)
            if spans and lo <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], hi)
            else:
                spans.append([lo, hi])
        text = np.datetime_as_string(s.timestamps.astype("datetime64[us]"), unit="us")
        name = f"{_safe_name(s.key)}.csv"
        rel = f"{prefix.strip('/')}/{name}" if prefix.strip("/") else name
        out[rel] = [[text[lo].replace("T", " "), text[hi].replace("T", " ")] for lo, hi in spans]
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(out, indent=1) + "\n")
    return target
