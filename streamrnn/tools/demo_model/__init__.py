"""A small forecaster shipped inside the package, so ``streamrnn demo`` needs no training step.

The directory holds a model directory as :func:`streamrnn.detector.modeldir.save_model` writes it
(``weights.pt``, ``config.yaml``, ``model.json``, ``normalization.json``): an LSTM with 2 layers
of 32 units and calendar inputs, trained on anomaly-free synthetic sensor and energy-demand
streams (:mod:`streamrnn.tools.synth`, 5-minute readings). It is rebuilt, reproducibly, by::

    python -m streamrnn.demo_model.build

Use it wherever a model directory is expected::

    streamrnn run --model "$(python -c 'import streamrnn.demo_model as d; print(d.path())')" ...
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["path"]


def path() -> Path:
    """The directory of the shipped demo model (loadable with :func:`streamrnn.detector.modeldir.load_model`)."""
    return Path(__file__).resolve().parent
