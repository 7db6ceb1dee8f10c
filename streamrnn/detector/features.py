"""Model inputs: per-key online normalisation and calendar features.

The same functions serve training and streaming, so the model is trained on exactly the inputs
it will see live.

Normaliser, per key and feature, with ``n`` the number of values seen so far::

    z_t   = clip((x_t - mean) / std, -clip, clip)       with the statistics *before* x_t
    a     = 1 / min(n + 1, horizon)                      cumulative at first, exponential after
    mean += a * (x_t - mean)
    var   = (1 - a) * (var + a * (x_t - mean_old)^2)

``std`` has a floor relative to ``|mean|`` so that flat lines give large but finite z-scores.
A missing value (NaN) leaves the statistics alone and gives a NaN z-score.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..config import FeatureConfig

N_CALENDAR = 4  # sin/cos of hour of day, sin/cos of day of week

# std floor: this fraction of |mean|, and an absolute floor for series around zero.
STD_REL_FLOOR = 1e-3
STD_ABS_FLOOR = 1e-6

_DAY = 86400.0
_WEEK = 7 * _DAY
_EPOCH_WEEKDAY_OFFSET = 3 * _DAY  # 1970-01-01 was a Thursday; shift so Monday 00:00 is phase 0


def calendar_features(times: np.ndarray) -> np.ndarray:
    """Hour of day and day of week as sin/cos, from epoch seconds (UTC).

    Inputs: times (N,) float64 epoch seconds. Output: (N, 4) float32.

    >>> calendar_features(np.array([0.0])).astype(float).round(3).tolist()  # Thursday 00:00 UTC
    [[0.0, 1.0, 0.434, -0.901]]
    """
    t = np.asarray(times, dtype=np.float64)
    day = np.mod(t, _DAY) / _DAY * (2 * math.pi)  # (N,)
    week = np.mod(t + _EPOCH_WEEKDAY_OFFSET, _WEEK) / _WEEK * (2 * math.pi)  # (N,)
    out = np.stack([np.sin(day), np.cos(day), np.sin(week), np.cos(week)], axis=1)  # (N, 4)
    return out.astype(np.float32)


def normalizer_std(mean: Tensor, var: Tensor) -> Tensor:
    """Standard deviation with its floor. Inputs: mean, var (B, F). Output: (B, F)."""
    floor = torch.clamp(mean.abs() * STD_REL_FLOOR, min=STD_ABS_FLOOR)  # (B, F)
    return torch.sqrt(torch.maximum(var, floor * floor))  # (B, F)


def normalize(stats: Tensor, x: Tensor, clip: float) -> tuple[Tensor, Tensor, Tensor]:
    """Normalise one event per key with the statistics before it.

    Inputs: stats (B, 3, F) rows of (count, mean, var); x (B, F) raw values, NaN when missing.
    Outputs: z (B, F) (NaN where x is missing, 0 for a key's first two values), mean (B, F), std (B, F).
    """
    count, mean, var = stats.unbind(1)  # each (B, F)
    std = normalizer_std(mean, var)  # (B, F)
    z = torch.where(count > 1, (x - mean) / std, 0.0)  # (B, F)
    z = torch.clamp(z, -clip, clip)  # NaN stays NaN
    return z, mean, std


# Readings a key must have seen before a reading far from them can be called an outlier.
OUTLIER_MIN_COUNT = 8


def outliers(stats: Tensor, x: Tensor, factor: float, max_magnitude: float) -> Tensor:
    """Readings no normaliser should learn from: beyond ``max_magnitude``, or ``factor`` standard
    deviations from the key's mean once it has seen ``OUTLIER_MIN_COUNT`` readings.

    Inputs: stats (B, 3, F); x (B, F), NaN where missing. Output: (B, F) bool (False where missing).

    >>> s = torch.tensor([[[50.0], [1.0], [4.0]]])  # 50 readings, mean 1, variance 4
    >>> outliers(s, torch.tensor([[3e38]]), 1e4, 1e15).tolist(), outliers(s, torch.tensor([[9.0]]), 1e4, 1e15).tolist()
    ([[True]], [[False]])
    """
    count, mean, var = stats.unbind(1)  # each (B, F)
    far = (x - mean).abs() > factor * normalizer_std(mean, var)  # (B, F); NaN compares false
    return (x.abs() > max_magnitude) | (far & (count >= OUTLIER_MIN_COUNT))


def update_normalizer(
    stats: Tensor, x: Tensor, horizon: int, learn: Tensor, *, out: Tensor | None = None
) -> Tensor:
    """Statistics after seeing x where ``learn`` (B,) is true and x is present.

    Inputs: stats (B, 3, F); x (B, F); learn (B,) bool. Output: stats (B, 3, F), written into
    ``out`` when given.
    """
    count, mean, var = stats.unbind(1)  # each (B, F)
    present = ~torch.isnan(x) & learn.unsqueeze(1)  # (B, F)
    n1 = count + 1.0  # (B, F)
    a = 1.0 / torch.clamp(n1, max=float(horizon))  # (B, F)
    delta = torch.nan_to_num(x - mean)  # (B, F)
    new_mean = mean + a * delta  # (B, F)
    new_var = (1.0 - a) * (var + a * delta * delta)  # (B, F)
    return torch.stack(
        [
            torch.where(present, n1, count),
            torch.where(present, new_mean, mean),
            torch.where(present, new_var, var),
        ],
        dim=1,
        out=out,
    )  # (B, 3, F)


def covariate_inputs(
    stats: Tensor,
    last: Tensor,
    cov: Tensor,
    learn: Tensor,
    features: FeatureConfig,
    *,
    out: tuple[Tensor, Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    """Covariates as model inputs: normalised per key like a target, never scored.

    A missing or outlier reading is replaced by the key's last sane one (z = 0, the key's mean,
    before there is one). Inputs: stats (B, 3, C); last (B, C) the last sane raw readings (NaN
    before one); cov (B, C) raw, NaN where missing; learn (B,) bool, the events whose covariates
    update the state. Writes the new stats and last readings into ``out``. Outputs: z (B, C);
    the number of imputed readings and of outliers among them (scalar int64 tensors).
    """
    wild = outliers(stats, cov, features.outlier_factor, features.max_magnitude)  # (B, C)
    sane = ~torch.isnan(cov) & ~wild  # (B, C)
    z, _, _ = normalize(stats, torch.where(sane, cov, last), features.clip)  # (B, C)
    clean = torch.where(sane, cov, torch.nan)  # (B, C)
    update_normalizer(stats, clean, features.normalizer_horizon, learn, out=out[0])
    act = learn.unsqueeze(1)  # (B, 1)
    torch.where(sane & act, cov, last, out=out[1])
    return torch.nan_to_num(z, nan=0.0), (~sane & act).sum(), (wild & act).sum()


def normalize_series(values: np.ndarray, horizon: int, clip: float) -> np.ndarray:
    """Run the online normaliser over whole series, as streaming would see them.

    Inputs: values (B, T, F) float32, NaN where missing. Output: z (B, T, F) float32.
    """
    v = torch.as_tensor(values, dtype=torch.float32)  # (B, T, F)
    b, t, f = v.shape
    stats = torch.zeros(b, 3, f)  # (B, 3, F)
    learn = torch.ones(b, dtype=torch.bool)  # (B,)
    out = torch.empty_like(v)  # (B, T, F)
    for i in range(t):
        z, _, _ = normalize(stats, v[:, i], clip)  # (B, F)
        out[:, i] = z
        stats = update_normalizer(stats, v[:, i], horizon, learn)
    return out.numpy()
