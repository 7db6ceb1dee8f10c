"""From prediction error to a calibrated anomaly score in [0, 1], and the flag rule.

Three stages, all vectorised over the keys of a wave, with O(1) state per key:

1. **Surprise.** The forecaster predicted N(mu, sigma^2) for the normalised value z. The surprise
   is -log of the two-sided tail probability ``p = 2 * Phi(-|z - mu| / sigma)``, averaged over
   the features present. If the forecaster is calibrated, p is uniform and the surprise is
   exponential with mean 1 whatever the key's scale or noise; it is capped at ``max_surprise``.
2. **Smoothing.** An exponential moving average over ``short_horizon`` events.
3. **Calibration per key** (after HTM's anomaly likelihood, Ahmad et al. 2017, and the idea of
   Merlion's calibrator: map each key's scores onto a common distribution). Two views, and the
   score is the larger:
   - *sustained*: the smoothed surprise is compared with the key's own long-run exponentially
     weighted mean and variance of it (``long_horizon`` events); the tail probability is
     ``q = 1 - Phi((short - mean) / std)``;
   - *instant*: one event's surprise, rescaled by the key's long-run mean surprise ``m`` (an
     over-confident forecaster for that key has m > 1), read as an exponential tail
     ``q = exp(-s / m)``, so a single wild reading is scored at once rather than one step late.
   The score is ``-log10(q) / 10`` clipped to [0, 1]: 0.3 means a one-in-a-thousand deviation
   for that key, 0.5 one in 1e5, and six decimals keep resolution where it matters.

A key is flagged when its score is at or above ``threshold``, it has seen at least ``warmup``
events, and it has not been flagged in the last ``cooldown`` events. Flagged events do not update
the long-run statistics (nor the normaliser): anomalies must not become normal.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import ScoringConfig

# Per-key scorer state columns.
SHORT, LONG_MEAN, LONG_VAR, COUNT, RAW_MEAN = range(5)
N_SCORER = 5

_LOG2 = math.log(2.0)
_LN10 = math.log(10.0)
# Variance floor for the long-run statistics: a key whose surprise never varies is not infinitely sure.
_MIN_LONG_VAR = 0.01
# Floor on a key's mean surprise when rescaling the instant view (a calibrated forecaster has 1).
_MIN_RAW_MEAN = 0.5


def surprise(z: Tensor, mu: Tensor, sigma: Tensor, cap: float) -> Tensor:
    """Mean over present features of -log(two-sided tail probability).

    Inputs: z, mu, sigma (B, F); z is NaN where missing. Output: (B,), 0 where nothing is present.
    """
    present = ~torch.isnan(z)  # (B, F)
    u = torch.nan_to_num((z - mu) / sigma).abs()  # (B, F)
    s = -(_LOG2 + torch.special.log_ndtr(-u))  # (B, F)
    s = torch.clamp(s, 0.0, cap) * present  # (B, F)
    n = present.sum(dim=1)  # (B,)
    return s.sum(dim=1) / n.clamp_min(1)  # (B,)


def score(stats: Tensor, s: Tensor, cfg: ScoringConfig) -> tuple[Tensor, Tensor]:
    """Smooth and calibrate. Inputs: stats (B, N_SCORER), s (B,). Outputs: score (B,), short (B,)."""
    count = stats[:, COUNT]  # (B,)
    a_short = 1.0 / cfg.short_horizon
    short = torch.where(count > 0, stats[:, SHORT] + a_short * (s - stats[:, SHORT]), s)  # (B,)
    std = torch.sqrt(torch.clamp(stats[:, LONG_VAR], min=_MIN_LONG_VAR))  # (B,)
    zs = (short - stats[:, LONG_MEAN]) / std  # (B,)
    # -log10(1 - Phi(zs)) / 10 = -log_ndtr(-zs) / (10 ln 10)
    sustained = -torch.special.log_ndtr(-zs) / (10.0 * _LN10)  # (B,)
    instant = s / torch.clamp(stats[:, RAW_MEAN], min=_MIN_RAW_MEAN) / (10.0 * _LN10)  # (B,)
    sc = torch.clamp(torch.maximum(sustained, instant), 0.0, 1.0)  # (B,)
    return torch.where(count > 1, sc, torch.zeros_like(sc)), short


def update(stats: Tensor, s: Tensor, short: Tensor, learn: Tensor, cfg: ScoringConfig) -> Tensor:
    """Long-run statistics after this event; unchanged where ``learn`` is false (flagged events).

    Inputs: stats (B, N_SCORER), s and short (B,), learn (B,) bool. Output: (B, N_SCORER).
    """
    count = stats[:, COUNT]  # (B,)
    n1 = count + 1.0  # (B,)
    a = 1.0 / torch.clamp(n1, max=cfg.long_horizon)  # (B,)
    delta = short - stats[:, LONG_MEAN]  # (B,)
    mean = stats[:, LONG_MEAN] + a * delta  # (B,)
    var = (1.0 - a) * (stats[:, LONG_VAR] + a * delta * delta)  # (B,)
    raw_mean = torch.where(count > 0, stats[:, RAW_MEAN] + a * (s - stats[:, RAW_MEAN]), s)  # (B,)
    new = torch.stack([short, mean, var, n1, raw_mean], dim=1)  # (B, 5)
    # The short average always follows the data; the long-run statistics skip flagged events.
    kept = torch.stack([short, stats[:, LONG_MEAN], stats[:, LONG_VAR], count, stats[:, RAW_MEAN]], dim=1)  # (B, 5)
    return torch.where(learn.unsqueeze(1), new, kept)


def flag(sc: Tensor, steps: Tensor, last_alert: Tensor, cfg: ScoringConfig) -> Tensor:
    """Flag rule. Inputs: score (B,), steps seen before this event (B,), step of the last alert (B,)
    (negative when none). Output: (B,) bool."""
    past_warmup = steps >= cfg.warmup  # (B,)
    cooled = (last_alert < 0) | (steps - last_alert > cfg.cooldown)  # (B,)
    return (sc >= cfg.threshold) & past_warmup & cooled
