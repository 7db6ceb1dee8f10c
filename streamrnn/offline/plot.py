"""PNG plots of scored readings: value with the prediction band, the score, and the flags.

:func:`plot_trace` draws any key's arrays (replay results, a window of the scores topic for
``streamrnn explain``); :func:`plot_file` draws one replayed series. Needs matplotlib
(``pip install 'streamrnn[plot]'``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..detector.engine import Results
from .data import Series


def plot_trace(
    path: Path,
    *,
    title: str,
    times: np.ndarray,
    values: np.ndarray,
    prediction: np.ndarray,
    scale: np.ndarray,
    score: np.ndarray,
    flag: np.ndarray,
    threshold: float,
    label: str = "value",
    mark: float | None = None,
) -> Path:
    """Two panels over ``times`` (N,) epoch seconds: ``values`` (N,) with ``prediction`` (N,)
    and its +-2 ``scale`` band (N,; NaN where unknown: no band there) and the ``flag`` (N,) bool
    points; below, ``score`` (N,) against ``threshold``. ``mark`` (epoch seconds) draws a vertical
    line, e.g. at the alert being explained."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("--plot needs matplotlib: pip install 'streamrnn[plot]'") from e
    t = np.asarray(times, dtype=np.float64).astype("datetime64[s]")
    v, mu, sd = (np.asarray(x, dtype=np.float64) for x in (values, prediction, scale))
    fig, (ax1, ax2) = plt.subplots(
        2, 1, figsize=(14, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax1.plot(t, v, lw=0.8, color="black", label=label)
    ax1.plot(t, mu, lw=0.8, color="tab:blue", label="prediction")
    if np.isfinite(sd).any():
        ax1.fill_between(
            t, mu - 2 * sd, mu + 2 * sd, color="tab:blue", alpha=0.2, lw=0, label="±2 scale"
        )
    flagged = np.nonzero(np.asarray(flag, dtype=bool))[0]
    ax1.scatter(t[flagged], v[flagged], color="red", s=30, zorder=3, label="flagged")
    ax1.set_title(title)
    ax1.legend(loc="upper left", fontsize=8)
    ax2.plot(t, score, lw=0.8, color="tab:orange", label="anomaly score")
    ax2.axhline(threshold, color="red", lw=0.8, ls="--", label=f"threshold {threshold:g}")
    ax2.set_ylim(0, 1.02)
    ax2.legend(loc="upper left", fontsize=8)
    if mark is not None:
        for ax in (ax1, ax2):
            ax.axvline(np.float64(mark).astype("datetime64[s]"), color="red", lw=0.6, alpha=0.5)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_file(
    series: Series, results: Results, path: Path, *, threshold: float, feature: int = 0
) -> Path:
    return plot_trace(
        path,
        title=series.key,
        times=series.times,
        values=series.values[:, feature],
        prediction=results.prediction[:, feature],
        scale=results.scale[:, feature],
        score=results.score,
        flag=results.flag,
        threshold=threshold,
        label=series.feature_names[feature],
    )
