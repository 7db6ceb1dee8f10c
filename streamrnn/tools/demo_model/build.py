"""Rebuild the shipped demo model: ``python -m streamrnn.demo_model.build [--out DIR]``.

Trains a small LSTM (2 layers x 32 units, calendar inputs) on anomaly-free synthetic streams,
12 sensor keys and 12 energy-demand keys of 3000 five-minute readings each (about ten days), and
writes the model directory into this package (or ``--out``). Everything is seeded, so a rebuild
on the same torch version and hardware gives the same weights; it takes well under a minute on a
laptop CPU. The streams use other seeds than ``streamrnn demo`` and ``streamrnn produce``
generate by default, so the demo scores readings the model has not seen.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ...config import Config, load_config
from ...detector.modeldir import save_model
from ...offline.data import Series
from ...offline.training import train
from .. import synth
from . import path

logger = logging.getLogger(__name__)

#: The demo model's configuration: small enough to ship (< 100 KB), quick to train and to run.
CONFIG: dict[str, Any] = {
    "model": {"cell": "lstm", "hidden_size": 32, "num_layers": 2, "dropout": 0.0},
    "features": {"normalizer_warmup": 32},
    "training": {
        "epochs": 20,
        "learning_rate": 0.005,
        "batch_size": 32,
        "window": 64,
        "stride": 64,
        "patience": 4,
        "val_fraction": 0.2,
        "seed": 7,
        "max_seconds": 120.0,
    },
}
KEYS_PER_KIND = 12
STEPS = 3000
INTERVAL_S = 300.0
DATA_SEED = 20240101


def training_series(seed: int = DATA_SEED) -> list[Series]:
    """The training data: anomaly-free sensor and energy streams as single-feature series."""
    out: list[Series] = []
    for n, kind in enumerate(("sensor", "energy")):
        streams = synth.generate(
            kind,  # type: ignore[arg-type]
            KEYS_PER_KIND,
            STEPS,
            start="2024-01-01 00:00:00",
            interval_s=INTERVAL_S,
            anomalies=(),
            seed=seed + n,
            key_prefix=f"train_{kind}",
        )
        for s in streams:
            times = s.epoch_seconds  # (n,) float64
            out.append(
                Series(
                    key=s.key,
                    relpath=f"{kind}/{s.key}.csv",
                    timestamps=[""] * len(times),
                    times=times,
                    values=s.values.astype(np.float32)[:, None],  # (n, 1)
                    feature_names=("value",),
                )
            )
    return out


def config() -> Config:
    """The validated demo model config."""
    cfg: Config = load_config(CONFIG)
    return cfg


def build(out: Path | None = None, *, progress: bool = False) -> str:
    """Train the demo model and write it to ``out`` (default: the package's directory).

    Returns the model's version id."""
    target = out if out is not None else path()
    t0 = time.perf_counter()
    series = training_series()
    result = train(series, config(), device="cpu", progress=progress)
    version = save_model(
        target,
        result.model,
        result.config,
        feature_names=result.feature_names,
        metrics=result.metrics,
        data_summary=result.data_summary,
    )
    logger.info(
        "demo model %s written to %s in %.1f s (best val NLL %s after %s epoch(s))",
        version,
        target,
        time.perf_counter() - t0,
        result.metrics.get("best_val_loss"),
        result.metrics.get("epochs_run"),
    )
    return version


def main(argv: list[str] | None = None) -> int:
    """Command line of ``python -m streamrnn.demo_model.build``."""
    parser = argparse.ArgumentParser(
        prog="python -m streamrnn.demo_model.build",
        description=(__doc__ or "").strip().split("\n\n")[0],
    )
    parser.add_argument(
        "--out", type=Path, default=None, help=f"model directory to write (default: {path()})"
    )
    parser.add_argument("--progress", action="store_true", help="show per-epoch progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    version = build(args.out, progress=args.progress)
    print(f"demo model {version}: {args.out or path()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
