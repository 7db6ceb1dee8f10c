"""From the views' evidence to one calibrated anomaly score in [0, 1], and the flag rule.

Each view (views.py) gives, per event, the evidence ``c_v = -log10 p_v`` of its statistic against
the key's own calibrated tail (calibrate.py). Two ways of combining them, each a tail probability
under nominal data, and the stronger of the two after paying for the choice:

- **The strongest view**, Bonferroni-corrected: ``max_v c_v - log10 V``.
- **Their sum**, Fisher's method with Brown's correction for dependent evidence: ``2 sum ln(1/p_v)``
  over all views but ``gap`` is referred to a scaled chi-square with the same mean and with the
  variance that a correlation of ``dependence`` between views gives. A key whose readings are a
  little off in several ways at once is caught by this, though no view alone is sure.

``c = max(strongest, sum) - log10 2`` is the key's combined evidence for this event, and its
**score** is ``c / (c + 4)``: 0.5 at a tail probability of 1e-4, 0.67 at 1e-8; it never
saturates, so scores rank across keys and six decimals still order the strongest events.

A key is **flagged** when ``c >= -log10(false_alert_rate)`` (the score then crosses
``ScoringConfig.threshold``, 0.5 at the default 1e-4), it has seen at least ``warmup`` events,
and it has not been flagged in the last ``cooldown`` events. On clean data, a key whose tails are
learned is flagged at about ``false_alert_rate`` per event (docs/quality.md measures how close).
A key scores 0 while in warm-up.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..config import SCORE_HALF, ScoringConfig
from . import views

_LN10 = math.log(10.0)


def _brown(k: int, rho: float) -> tuple[float, float]:
    """Scale and degrees of freedom of the chi-square that Fisher's sum of ``k`` views with
    correlation ``rho`` follows approximately (Brown 1975; Kost and McDermott 2002's fit)."""
    cov = 3.263 * rho + 0.710 * rho**2 + 0.027 * rho**3  # covariance of two -2 ln p terms
    mean, var = 2.0 * k, 4.0 * k + k * (k - 1) * cov
    return var / (2 * mean), 2 * mean * mean / var


def combine(c: Tensor, cfg: ScoringConfig) -> Tensor:
    """Combined evidence. Input: c (B, V) per-view evidence. Output: (B,) >= 0."""
    v = c.shape[1]
    strongest = c.amax(dim=1) - math.log10(v)  # (B,)
    summed = torch.cat([c[:, : views.GAP], c[:, views.GAP + 1 :]], dim=1)  # (B, V - 1)
    scale, df = _brown(summed.shape[1], cfg.dependence)
    x = (2 * _LN10) * summed.double().sum(dim=1) / scale  # (B,) chi-square(df) under nominal
    p = torch.special.gammaincc(torch.full_like(x, df / 2), x / 2).clamp_min(1e-300)  # (B,)
    fisher = (-torch.log10(p)).to(c.dtype)  # (B,)
    return (torch.maximum(strongest, fisher) - math.log10(2.0)).clamp_min(0.0)


def score(evidence: Tensor) -> Tensor:
    """Score in [0, 1) from combined evidence (B,)."""
    return evidence / (evidence + SCORE_HALF)


def flag(evidence: Tensor, steps: Tensor, last_alert: Tensor, cfg: ScoringConfig) -> Tensor:
    """Flag rule. Inputs: combined evidence (B,), steps seen before this event (B,), step of the
    last alert (B,) (negative when none). Output: (B,) bool."""
    past_warmup = steps >= cfg.warmup  # (B,)
    cooled = (last_alert < 0) | (steps - last_alert > cfg.cooldown)  # (B,)
    return (evidence >= cfg.evidence_threshold) & past_warmup & cooled
