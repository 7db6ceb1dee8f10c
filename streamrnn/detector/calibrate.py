"""Per-key tail calibration of each view: peaks over a threshold, a generalised Pareto tail.

Every view produces a statistic ``s >= 0`` scaled so that on nominal data it has roughly a unit
exponential tail (``P(s > x) ~ exp(-x)``). That is only roughly true for any one key, so each key
learns its own tail, as SPOT does (Siffer et al., KDD 2017): the rate ``E`` at which ``s`` exceeds
``TAIL_START`` and the first two moments of the excess ``y = s - TAIL_START`` give a generalised
Pareto fit by the method of moments::

    xi    = (1 - m^2 / v) / 2,  clipped to [0, XI_MAX]
    sigma = m (1 - xi)
    P(s > x) = E (1 + xi (x - t) / sigma) ^ (-1 / xi)          (E exp(-(x - t) / sigma) at xi = 0)

The statistics are exponential averages, cumulative at first (``1 / (n + prior)``), with
``prior`` events of the nominal tail (``E = e^-1``, unit exponential excess) as their start: a
new key is judged by the nominal tail and moves to its own as it shows it. Two guards keep an
anomaly from teaching the tail that would hide it: an event whose combined evidence already
reaches the flag level teaches nothing (the engine's ``quiet``), and excesses are winsorised
when learned, at a cap per view (views.EXCESS_CAPS): 20 for the views whose nominal tails are
genuinely heavier than exponential for some keys (the sustained average most), 4 for the
binomial views, which are 0 on nominal data nearly always and whose statistic climbs steadily
through a stuck run (with a cap of 8 or more it taught its own tail within 30 events and most
stuck sensors went unflagged; docs/quality.md). The
evidence of a reading is ``-log10 P(s > x)``, 0 at or below the threshold.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Rows (each one column per view): exceedance rate, mean excess and mean squared excess (both times the rate).
RATE, EX1, EX2 = range(3)
N_CALIB = 3
TAIL_START = 1.0
_E0 = math.exp(-TAIL_START)
CALIB_INIT = (_E0, _E0 * 1.0, _E0 * 2.0)  # a unit exponential excess

XI_MAX = 0.25
_LN10 = math.log(10.0)


def evidence(calib: Tensor, s: Tensor) -> Tensor:
    """-log10 of each statistic's tail probability for its key.

    Inputs: calib (B, 3, V); s (B, V) statistics. Output: (B, V) >= 0.
    """
    e = calib[:, RATE].clamp_min(1e-12)  # (B, V)
    m = calib[:, EX1] / e  # (B, V)
    var = (calib[:, EX2] / e - m * m).clamp_min(1e-6)  # (B, V)
    xi = (0.5 * (1.0 - m * m / var)).clamp(0.0, XI_MAX)  # (B, V)
    sigma = (m * (1.0 - xi)).clamp_min(1e-3)  # (B, V)
    y = (s - TAIL_START).clamp_min(0.0)  # (B, V)
    ratio = y / sigma  # (B, V)
    safe_xi = xi.clamp_min(1e-4)
    log_tail = torch.where(
        xi > 1e-4, torch.log1p(safe_xi * ratio) / safe_xi, ratio
    )  # (B, V) -ln of the conditional tail
    c = (log_tail - torch.log(e)) / _LN10  # (B, V)
    return torch.where(s > TAIL_START, c.clamp_min(0.0), 0.0)


def update(
    calib: Tensor,
    s: Tensor,
    cap: Tensor,
    count: Tensor,
    learn: Tensor,
    prior: float,
    horizon: float,
    *,
    out: Tensor,
) -> Tensor:
    """Tail statistics after this event, written into ``out`` (B, 3, V).

    Inputs: calib (B, 3, V); s (B, V); cap (V,) the largest excess each view learns; count (B,)
    events learned so far; learn (B, V) bool.
    """
    a = (1.0 / torch.clamp(count + 1.0 + prior, max=horizon)).view(-1, 1, 1)  # (B, 1, 1)
    over = (s > TAIL_START).to(s.dtype)  # (B, V)
    y = torch.minimum((s - TAIL_START).clamp_min(0.0), cap) * over  # (B, V)
    obs = torch.stack([over, y, y * y], dim=1)  # (B, 3, V)
    new = calib + a * (obs - calib)  # (B, 3, V)
    return torch.where(learn.unsqueeze(1), new, calib, out=out)
