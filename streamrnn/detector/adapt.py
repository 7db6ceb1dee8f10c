"""Online adaptation per key: a daily profile and a corrector of the shared model's forecast.

The forecaster is shared by every key of a stream class; each key owns two small learners that
follow its own stream while it runs, batched across the keys of a wave:

- **Profile.** ``bins`` time-of-day bins per feature hold the key's usual value at that time of
  day, in its own units (so that it does not depend on how the normaliser saw the key when the
  bin was learned; it is normalised when used): the first reading of a bin, then ``P[b] += rate * (z - P[b])`` with
  ``rate = max(0.05, bins / (n + bins))``, about a cumulative mean per bin at first and an
  exponential one (about 20 visits) after. A bin never visited is NaN: the corrector then uses the
  model's forecast in its place, and the level view says nothing (a young profile judged the
  first day's readings against 0 and taught the level view a spread it kept for days).
- **Corrector.** The forecast is ``zhat = w . phi`` with ``phi = [1, mu, z_prev, P[b]]``: the
  model's forecast ``mu``, the key's previous input and its profile value, weights starting at
  ``w = [0, 1, 0, 0]`` (the model's forecast as it is). After each event the weights take one
  normalised least-mean-squares step, ``w += rate * r * phi / (eps + |phi|^2)``, on the error
  ``r = z - zhat`` clipped to ``error_clip`` times the key's RMS error, so one wild reading moves
  them little. A level that moves slowly is followed through the bias and ``z_prev`` weights.

Neither learns from flagged, missing or outlier readings: anomalies must not become normal. State
per key and feature: 7 numbers for the corrector and ``bins`` for the profile (216 bytes per
feature at 48 bins, float32). Everything is in the key's state rows, so a snapshot carries it and
a restart scores exactly as an uninterrupted run.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import AdaptConfig

# Rows of the per-key, per-feature corrector state.
W0, W1, W2, W3, Z_PREV, RES2, COUNT = range(7)
N_ADAPT = 7
ADAPT_INIT = (0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
N_PHI = 4
# The profile's rate never falls below this: about 20 visits of memory per bin.
PROFILE_MIN_RATE = 0.05
# Events of memory of the RMS error the corrector's errors are clipped against.
RES_HORIZON = 500.0
_EPS = 1e-3
_DAY = 86400.0


def profile_bin(t: Tensor, bins: int) -> Tensor:
    """Time-of-day bin of each event. Inputs: t (B,) float64 epoch seconds (UTC). Output: (B,) int64."""
    b = torch.floor(torch.remainder(t, _DAY) * (max(bins, 1) / _DAY)).long()  # (B,)
    return b.clamp_(0, max(bins, 1) - 1)


def profile_value(profile: Tensor, b: Tensor) -> Tensor:
    """The profile at each key's bin. Inputs: profile (B, bins, F); b (B,). Output: (B, F)."""
    idx = b.view(-1, 1, 1).expand(-1, 1, profile.shape[2])  # (B, 1, F)
    return profile.gather(1, idx).squeeze(1)


def regressors(state: Tensor, mu: Tensor, pv: Tensor) -> Tensor:
    """``phi`` for the corrector. Inputs: state (B, N_ADAPT, F), mu, pv (B, F). Output: (B, F, 4)."""
    return torch.stack([torch.ones_like(mu), mu, state[:, Z_PREV], pv], dim=2)


def forecast(state: Tensor, phi: Tensor, cfg: AdaptConfig) -> Tensor:
    """The key's forecast ``zhat`` (B, F) from its weights; the model's ``mu`` when adaptation is off."""
    if not cfg.enabled:
        return phi[:, :, 1]
    w = state[:, W0 : W3 + 1].transpose(1, 2)  # (B, F, 4)
    return (w * phi).sum(dim=2)


def update(
    state: Tensor,
    phi: Tensor,
    z: Tensor,
    zhat: Tensor,
    z_in: Tensor,
    learn: Tensor,
    cfg: AdaptConfig,
    *,
    out: Tensor,
) -> Tensor:
    """The corrector after this event, written into ``out`` (B, N_ADAPT, F).

    Inputs: state (B, N_ADAPT, F); phi (B, F, 4); z (B, F) the reading, NaN where missing; zhat
    (B, F); z_in (B, F) what the model was given (the forecast where z was not learned); learn
    (B, F) bool, where z may teach. ``z_prev`` always follows ``z_in``.
    """
    r = torch.nan_to_num(z - zhat)  # (B, F)
    res2 = state[:, RES2]  # (B, F)
    lim = cfg.error_clip * torch.sqrt(res2)  # (B, F)
    rc = torch.maximum(torch.minimum(r, lim), -lim)  # (B, F)
    n1 = state[:, COUNT] + 1.0  # (B, F)
    a = 1.0 / torch.clamp(n1, max=RES_HORIZON)  # (B, F)
    torch.where(learn, res2 + a * (rc * rc - res2), res2, out=out[:, RES2])
    torch.where(learn, n1, state[:, COUNT], out=out[:, COUNT])
    w = state[:, W0 : W3 + 1]  # (B, 4, F)
    if cfg.enabled:
        phi_t = phi.transpose(1, 2)  # (B, 4, F)
        gain = (cfg.rate * rc / (_EPS + (phi * phi).sum(dim=2))).unsqueeze(1)  # (B, 1, F)
        torch.where(learn.unsqueeze(1), w + gain * phi_t, w, out=out[:, W0 : W3 + 1])
    else:
        out[:, W0 : W3 + 1] = w
    out[:, Z_PREV] = z_in
    return out


def update_profile(
    profile: Tensor, b: Tensor, z: Tensor, count: Tensor, learn: Tensor, *, out: Tensor
) -> Tensor:
    """The profile after this event, written into ``out`` (B, bins, F).

    Inputs: profile (B, bins, F); b (B,); z (B, F) raw readings; count (B, F) readings the key has taught so far;
    learn (B, F) bool.
    """
    bins = profile.shape[1]
    out.copy_(profile)
    idx = b.view(-1, 1, 1).expand(-1, 1, profile.shape[2])  # (B, 1, F)
    old = profile.gather(1, idx).squeeze(1)  # (B, F), NaN where the bin was never visited
    rate = torch.clamp(bins / (count + bins), min=PROFILE_MIN_RATE)  # (B, F)
    step = torch.where(torch.isnan(old), z, old + rate * (z - old))  # (B, F)
    new = torch.where(learn, step, old)  # (B, F)
    return out.scatter_(1, idx, new.unsqueeze(1))


def bytes_per_feature(bins: int) -> int:
    """State bytes per key and feature that adaptation adds (float32)."""
    return 4 * (N_ADAPT + max(bins, 1))
