"""PNG plots of replay results: value with the prediction band, the score, and the flags.

Needs matplotlib (``pip install 'streamrnn[plot]'``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..detector.engine import Results
from .data import Series


def plot_file(
    series: Series, results: Results, path: Path, *, threshold: float, feature: int = 0
) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("--plot needs matplotlib: pip install 'streamrnn[plot]'") from e
    t = series.times.astype("datetime64[s]")
    v = series.values[:, feature]
    mu = results.prediction[:, feature]
    sd = results.scale[:, feature]
    fig, (ax1, ax2) = plt.subplots(
        2, 1, figsize=(14, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax1.plot(t, v, lw=0.8, color="black", label=series.feature_names[feature])
    ax1.plot(t, mu, lw=0.8, color="tab:blue", label="prediction")
    ax1.fill_between(
        t, mu - 2 * sd, mu + 2 * sd, color="tab:blue", alpha=0.2, lw=0, label="±2 scale"
    )
    flagged = np.nonzero(results.flag)[0]
    ax1.scatter(t[flagged], v[flagged], color="red", s=30, zorder=3, label="flagged")
    ax1.set_title(f"{series.key}")
    ax1.legend(loc="upper left", fontsize=8)
    ax2.plot(t, results.score, lw=0.8, color="tab:orange", label="anomaly score")
    ax2.axhline(threshold, color="red", lw=0.8, ls="--", label=f"threshold {threshold:g}")
    ax2.set_ylim(0, 1.02)
    ax2.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
