"""From prediction error to a calibrated anomaly score in [0, 1], and the flag rule.

All stages are vectorised over the keys of a wave and keep O(1) state per key and feature:

1. **Error.** The forecaster predicted N(mu, sigma^2) for the normalised value z. The standardised
   error ``u = |z - mu| / sigma`` is divided by the key's own recent mean of it (an exponential
   average over ``error_horizon`` events): ``e = u / mean(u)``, averaged over the features present.
   ``e`` near 1 is business as usual for that key, whatever its scale, noise or how well the shared
   model fits it; a reading the model did not see coming stands out against the key's own record.
2. **Calibration per key** (after HTM's anomaly likelihood, Ahmad et al. 2017, and Merlion's
   calibrator: map each key's scores onto one distribution). An exponential average of ``e`` over
   ``short_horizon`` events (1 = none) is compared with the key's long-run exponentially weighted
   mean and variance of it (``long_horizon`` events): ``q = 1 - Phi((short - mean) / std)``, and
   ``L = -log10(q)``.
3. **Range.** A value beyond everything the key has seen, by more than ``range_margin`` times the
   range seen, is scored at least ``range_score``: a forecaster can follow a level it has never
   met, but operators want to hear about it.

The score is ``L / (L + 5)``: 0.5 for a one-in-1e5 deviation, 0.67 for 1e-10, never saturating, so
six decimals still rank the strongest events. A key scores 0 while in warm-up.

A key is flagged when its score is at or above ``threshold``, it has seen at least ``warmup``
events, and it has not been flagged in the last ``cooldown`` events. Flagged events do not update
the error mean, the long-run statistics, the range, nor the normaliser: anomalies must not become
normal.

Defaults were chosen on the NAB development subset (docs/quality.md says how, and how far that
choice may flatter the figures).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..config import ScoringConfig

# Per-key scorer state columns.
SHORT, LONG_MEAN, LONG_VAR, COUNT = range(4)
N_SCORER = 4
# Per-key, per-feature columns: recent mean standardised error, lowest and highest value seen.
ERR_MEAN, LOW, HIGH = range(3)
N_TRACK = 3
TRACK_INIT = (0.0, math.inf, -math.inf)

_LN10 = math.log(10.0)
# Variance floor for the long-run statistics: a key whose error never varies is not infinitely sure.
_MIN_LONG_VAR = 1e-4
# Floor on the recent mean error, in standard deviations: a perfect fit must not make noise infinite.
_MIN_ERR_MEAN = 1e-3
# L at which the score is 0.5.
_HALF = 5.0


def relative_error(z: Tensor, mu: Tensor, sigma: Tensor, track: Tensor) -> tuple[Tensor, Tensor]:
    """Error of each key relative to its own recent errors.

    Inputs: z, mu, sigma (B, F), z NaN where missing; track (B, 3, F).
    Outputs: e (B,) mean over present features (0 where none); u (B, F) standardised error.
    """
    present = ~torch.isnan(z)  # (B, F)
    u = torch.nan_to_num((z - mu).abs() / sigma)  # (B, F)
    m = track[:, ERR_MEAN]  # (B, F)
    rel = torch.where(m > 0, u / torch.clamp(m, min=_MIN_ERR_MEAN), 1.0) * present  # (B, F)
    if rel.shape[1] == 1:  # one feature: the mean over the present ones is that value (0 if absent)
        return rel[:, 0], u
    n = present.sum(dim=1)  # (B,)
    return rel.sum(dim=1) / n.clamp_min(1), u


def out_of_range(x: Tensor, track: Tensor, margin: float) -> Tensor:
    """Keys with a present value beyond their seen range by more than ``margin`` times it.

    Inputs: x (B, F) raw values; track (B, 3, F). Output: (B,) bool.
    """
    lo, hi = track[:, LOW], track[:, HIGH]  # (B, F)
    span = hi - lo  # (B, F); -inf before the first value, 0 after one
    ok = span > 0  # (B, F)
    beyond = (x > hi + margin * span) | (x < lo - margin * span)  # (B, F); NaN compares false
    return (beyond & ok).any(dim=1)


def update_track(
    track: Tensor,
    x: Tensor,
    u: Tensor,
    learn_error: Tensor,
    learn_range: Tensor,
    horizon: float,
    *,
    out: Tensor | None = None,
) -> Tensor:
    """Error mean (where ``learn_error``) and range (where ``learn_range``) after this event.

    Inputs: track (B, 3, F), x (B, F) raw values, u (B, F), learn_error and learn_range (B,) bool.
    Output: (B, 3, F), written into ``out`` when given. Missing values change nothing.
    """
    present = ~torch.isnan(x)  # (B, F)
    m = track[:, ERR_MEAN]  # (B, F)
    new_m = torch.where(m > 0, m + (u - m) / horizon, torch.clamp(u, min=_MIN_ERR_MEAN))  # (B, F)
    m = torch.where(present & learn_error.unsqueeze(1), new_m, m)  # (B, F)
    seen = present & learn_range.unsqueeze(1)  # (B, F)
    lo = torch.where(seen, torch.minimum(track[:, LOW], x), track[:, LOW])  # (B, F)
    hi = torch.where(seen, torch.maximum(track[:, HIGH], x), track[:, HIGH])  # (B, F)
    return torch.stack([m, lo, hi], dim=1, out=out)  # (B, 3, F)


def score(stats: Tensor, e: Tensor, cfg: ScoringConfig) -> tuple[Tensor, Tensor]:
    """Calibrate. Inputs: stats (B, N_SCORER), e (B,). Outputs: score (B,), short (B,)."""
    count = stats[:, COUNT]  # (B,)
    short = torch.where(
        count > 0, stats[:, SHORT] + (e - stats[:, SHORT]) / cfg.short_horizon, e
    )  # (B,)
    std = torch.sqrt(torch.clamp(stats[:, LONG_VAR], min=_MIN_LONG_VAR))  # (B,)
    zs = (short - stats[:, LONG_MEAN]) / std  # (B,)
    lg = torch.clamp(-torch.special.log_ndtr(-zs) / _LN10, min=0.0)  # (B,) -log10 of the tail
    sc = lg / (lg + _HALF)  # (B,)
    return torch.where(count > 1, sc, 0.0), short


def update(
    stats: Tensor, short: Tensor, learn: Tensor, cfg: ScoringConfig, *, out: Tensor | None = None
) -> Tensor:
    """Long-run statistics after this event; unchanged where ``learn`` is false (flagged events).

    Inputs: stats (B, N_SCORER), short (B,), learn (B,) bool. Output: (B, N_SCORER), written into
    ``out`` when given.
    """
    count = stats[:, COUNT]  # (B,)
    n1 = count + 1.0  # (B,)
    a = 1.0 / torch.clamp(n1, max=cfg.long_horizon)  # (B,)
    delta = short - stats[:, LONG_MEAN]  # (B,)
    mean = stats[:, LONG_MEAN] + a * delta  # (B,)
    var = (1.0 - a) * (stats[:, LONG_VAR] + a * delta * delta)  # (B,)
    new = torch.stack([short, mean, var, n1], dim=1)  # (B, 4)
    # The short average always follows the data; the long-run statistics skip flagged events.
    kept = torch.stack([short, stats[:, LONG_MEAN], stats[:, LONG_VAR], count], dim=1)  # (B, 4)
    if out is not None:
        return torch.where(learn.unsqueeze(1), new, kept, out=out)
    return torch.where(learn.unsqueeze(1), new, kept)


def flag(sc: Tensor, steps: Tensor, last_alert: Tensor, cfg: ScoringConfig) -> Tensor:
    """Flag rule. Inputs: score (B,), steps seen before this event (B,), step of the last alert (B,)
    (negative when none). Output: (B,) bool."""
    past_warmup = steps >= cfg.warmup  # (B,)
    cooled = (last_alert < 0) | (steps - last_alert > cfg.cooldown)  # (B,)
    return (sc >= cfg.threshold) & past_warmup & cooled
