"""Views of surprise: eight statistics per event, each looking at a key's stream another way.

Each view gives a statistic ``s >= 0`` scaled so that on nominal data its tail is roughly a unit
exponential (calibrate.py then learns each key's own tail). With ``z`` the normalised reading,
``zhat`` the key's adapted forecast, ``sigma`` the model's predicted scale and ``P`` the key's
profile value for this time of day (adapt.py):

========== ==================================================================== ================
view       statistic                                                            catches
========== ==================================================================== ================
instant    ``g^2 / 2``, ``g = (z - zhat) / sigma`` over its long-run RMS         spikes, breaks
level      ``d^2 / 2``, ``d = z - P`` over its long-run RMS                      a value unusual
                                                                                 for the time of
                                                                                 day (the range
                                                                                 check, seasonal)
shift      ``(m5 - m60)^2 / 2`` over its long-run mean square (``mN``: average   level shifts
           of ``z`` over about N events)
drift      ``(m60 - m600)^2 / 2`` likewise                                      slow drifts
variance   ``10 (v - 1 - ln v)``, ``v`` the average of ``min(g^2, 9)`` over      variance changes
           about 20 events (the likelihood ratio of a variance change)
sustained  ``max(0, (a - mean) / std)^2 / 2``, ``a`` the average over about 10   a run of modest
           events of the instant view's evidence (at most 4), before this       surprises (HTM's
           reading, against its long-run mean and variance                     likelihood)
stuck      ``20 KL(q || p)`` where ``q > p``: ``q`` the recent share of readings  stuck sensors
           equal to the previous one, ``p`` the key's long-run share
gap        the same for readings with a missing value                           bursts of gaps
========== ==================================================================== ================

The first five are per feature (the key's statistic is the largest over its present features);
the last three per key. Features are the model's targets only; covariates are never viewed. With
covariates, the engine turns off the views of the reading's own level (level, shift, drift):
the covariates move the level in ways the key's past does not foresee (demand in a heat wave),
and the forecast-error views judge what the covariates do not explain. The views' records learn from every event that is stepped, flagged ones
included (winsorised where one reading could dominate): a record of the stream as it is.
"""

from __future__ import annotations

import torch
from torch import Tensor

INSTANT, LEVEL, SHIFT, DRIFT, VARIANCE, SUSTAINED, STUCK, GAP = range(8)
N_VIEWS = 8
NAMES = ("instant", "level", "shift", "drift", "variance", "sustained", "stuck", "gap")

# The largest excess over the tail start each view's calibration learns (calibrate.py).
EXCESS_CAPS = (20.0, 20.0, 20.0, 20.0, 20.0, 20.0, 4.0, 4.0)
# Views whose tails learn only from events that do not look anomalous (calibrate.py).
GUARDED = (False, False, False, False, False, False, True, True)

# The views a model with covariates uses (1) or turns off (0): not the reading's own level.
WITH_COVARIATES = tuple(0.0 if v in (LEVEL, SHIFT, DRIFT) else 1.0 for v in range(N_VIEWS))

# Per-key, per-feature record rows.
Q, D, M5, M60, M600, KS, KD, V20, X_PREV, COUNT, D_COUNT = range(11)
N_TRACK = 11
TRACK_INIT = (1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, float("nan"), 0.0, 0.0)
# Per-key record columns.
SUST, SUST_MEAN, SUST_VAR, STUCK_Q, STUCK_P, GAP_Q, GAP_P, SEEN = range(8)
N_KEYREC = 8
KEYREC_INIT = (0.0, 0.0, 1.0, 0.0, 0.02, 0.0, 0.02, 0.0)

MS_FLOOR = 1e-4  # long-run mean squares never fall below this (normalised units)
SQ_MAX = 25.0
LOUD_RATE = 0.1  # the mean squares' rate for a reading that looks anomalous  # squared errors are winsorised at 5 RMS when learned
VAR_SQ_MAX = 9.0  # and at 3 RMS in the variance view
SUST_BOUND = 4.0  # evidence one reading adds to the sustained average at most
RECENT = 20.0  # events of the recent shares (stuck, gap) and of the variance view
RARE_PRIOR = 50.0  # events of prior (2%) behind the long-run shares
RARE_HORIZON = 2000.0


def _ew(old: Tensor, x: Tensor, h: float | Tensor) -> Tensor:
    return old + (x - old) / h


def _kl(q: Tensor, p: Tensor) -> Tensor:
    """Binomial KL divergence, where q > p (0 elsewhere)."""
    q = q.clamp(1e-6, 1 - 1e-6)
    p = p.clamp(1e-6, 1 - 1e-6)
    kl = q * torch.log(q / p) + (1 - q) * torch.log((1 - q) / (1 - p))
    return torch.where(q > p, kl, 0.0)


def per_feature(
    track: Tensor,
    z: Tensor,
    zhat: Tensor,
    sigma: Tensor,
    pv: Tensor,
    x: Tensor,
    horizon: float,
    learn: Tensor,
    loud: float,
    *,
    out: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The per-feature views of one event and the records after it (written into ``out``).

    Inputs: track (B, N_TRACK, F); z, zhat, sigma, pv (B, F), z NaN where missing; x (B, F) raw;
    horizon: events of the long-run RMS records; learn (B,) bool, whether the records learn;
    loud: a statistic above which the reading looks anomalous, and the mean squares learn from it
    at a tenth of their rate (a drift otherwise grew its own record geometrically, 2.5% an
    event through the winsorisation, and was never flagged).
    Outputs: s (B, 5) the statistics instant, level, shift, drift, variance (largest over the
    present features); g (B, F) the standardised error; same (B,) bool, every present reading
    equals the previous one; missing (B,) bool, a value is missing.
    """
    present = ~torch.isnan(z)  # (B, F)
    zz = torch.nan_to_num(z)  # (B, F)
    n1 = track[:, COUNT] + 1.0  # (B, F)
    a = 1.0 / torch.clamp(n1 + 1.0, max=horizon)  # (B, F): the initial 1 counts as one reading
    u = (zz - zhat) / sigma  # (B, F)
    u2 = u * u
    g2 = u2 / track[:, Q]  # (B, F)
    visited = ~torch.isnan(pv)  # (B, F): the profile knows this time of day
    d = torch.nan_to_num(zz - pv)  # (B, F)
    d2 = d * d
    # Shift and drift look at the reading less its time of day, where the profile knows it.
    base = torch.where(visited, d, zz)  # (B, F)
    m5 = torch.where(n1 > 1, _ew(track[:, M5], base, 5.0), base)  # (B, F)
    m60 = torch.where(n1 > 1, _ew(track[:, M60], base, torch.clamp(n1, max=60.0)), base)
    m600 = torch.where(n1 > 1, _ew(track[:, M600], base, torch.clamp(n1, max=600.0)), base)
    sh2 = (m5 - m60) ** 2  # (B, F)
    dr2 = (m60 - m600) ** 2  # (B, F)
    v = _ew(track[:, V20], torch.clamp(g2, max=VAR_SQ_MAX), torch.clamp(n1, max=RECENT))  # (B, F)
    stats = torch.stack(
        [
            0.5 * g2,
            0.5 * d2 / track[:, D],
            0.5 * sh2 / track[:, KS],
            0.5 * dr2 / track[:, KD],
            (RECENT / 2) * (v - 1.0 - torch.log(v.clamp_min(1e-6))),
        ],
        dim=1,
    )  # (B, 5, F)
    warm = (n1 > 2).unsqueeze(1)  # (B, 1, F): two readings before any record means anything
    stats = torch.where(present.unsqueeze(1) & warm, stats, 0.0)
    stats[:, LEVEL] = stats[:, LEVEL] * visited
    s = stats.amax(dim=2)  # (B, 5)

    slow = torch.where(stats.amax(dim=1) > loud, LOUD_RATE, 1.0)  # (B, F)

    def mean_square(i: int, sq: Tensor, a: Tensor = a) -> Tensor:
        old = track[:, i]
        return (old + slow * a * (torch.clamp(sq, max=SQ_MAX * old) - old)).clamp_min(MS_FLOOR)

    dn1 = track[:, D_COUNT] + 1.0  # (B, F) the level record counts only visited times of day
    a_d = 1.0 / torch.clamp(dn1 + 1.0, max=horizon)

    lp = present & learn.unsqueeze(1)  # (B, F)
    rows = (
        (Q, mean_square(Q, u2)),
        (D, torch.where(visited, mean_square(D, d2, a_d), track[:, D])),
        (D_COUNT, torch.where(visited, dn1, track[:, D_COUNT])),
        (M5, m5),
        (M60, m60),
        (M600, m600),
        (KS, mean_square(KS, sh2)),
        (KD, mean_square(KD, dr2)),
        (V20, v),
        (COUNT, n1),
    )
    for i, new in rows:
        torch.where(lp, new, track[:, i], out=out[:, i])
    torch.where(lp, x, track[:, X_PREV], out=out[:, X_PREV])
    equal = (x == track[:, X_PREV]) | ~present  # (B, F); NaN compares unequal
    same = equal.all(dim=1) & present.any(dim=1)  # (B,)
    g = torch.sqrt(g2) * present  # (B, F)
    return s, g, same, ~present.all(dim=1)


def per_key(
    rec: Tensor,
    c_instant: Tensor,
    same: Tensor,
    missing: Tensor,
    horizon: float,
    learn: Tensor,
    *,
    out: Tensor,
) -> Tensor:
    """The per-key views (sustained, stuck, gap) of one event, and the records after it.

    Inputs: rec (B, N_KEYREC); c_instant (B,) the instant view's evidence; same, missing (B,) bool;
    horizon: events of the long-run records; learn (B,) bool. Output: s (B, 3); the records are
    written into ``out`` (B, N_KEYREC).
    """
    seen = rec[:, SEEN] + 1.0  # (B,)
    a = 1.0 / torch.clamp(seen, max=horizon)  # (B,)
    sust = rec[:, SUST]  # (B,) before this reading
    mean, var = rec[:, SUST_MEAN], rec[:, SUST_VAR]
    zs = (sust - mean) / torch.sqrt(var.clamp_min(1e-4))  # (B,)
    s_sust = 0.5 * torch.clamp(zs, min=0.0) ** 2
    fs, fm = same.to(sust.dtype), missing.to(sust.dtype)
    r = 1.0 / torch.clamp(seen, max=RECENT)
    sq = rec[:, STUCK_Q] + r * (fs - rec[:, STUCK_Q])
    gq = rec[:, GAP_Q] + r * (fm - rec[:, GAP_Q])
    ar = 1.0 / torch.clamp(seen + RARE_PRIOR, max=RARE_HORIZON)
    s = torch.stack(
        [
            s_sust,
            RECENT * _kl(sq, rec[:, STUCK_P]),
            RECENT * _kl(gq, rec[:, GAP_P]),
        ],
        dim=1,
    )  # (B, 3)
    s = torch.where((seen > RECENT).unsqueeze(1), s, 0.0)
    delta = sust - mean
    new = torch.stack(
        [
            sust + (torch.clamp(c_instant, max=SUST_BOUND) - sust) / 10.0,
            mean + a * delta,
            (1.0 - a) * (var + a * delta * delta),
            sq,
            rec[:, STUCK_P] + ar * (fs - rec[:, STUCK_P]),
            gq,
            rec[:, GAP_P] + ar * (fm - rec[:, GAP_P]),
            seen,
        ],
        dim=1,
    )  # (B, N_KEYREC)
    torch.where(learn.unsqueeze(1), new, rec, out=out)
    return s
