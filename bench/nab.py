"""Detection quality on the NAB development subset, with no model trained on the rows it scores.

Protocols:
- ``loco`` (default), leave one category out: for each NAB category, train a model on the files
  of the other categories, then replay the category's files with it. The scored files are never
  seen in training; each file's own probationary rows and what the detector learns online while
  streaming (normaliser and calibration) are the only things it learns from them.
- ``synthetic``: train once on generated sensor and energy streams (streamrnn.tools.synth, no NAB data),
  then replay every NAB file.

Results are scored with NAB's rules (streamrnn.offline.evaluate) and printed; ``--json`` saves them.

Models are cached in ``--models`` and trained again when missing, with ``--retrain``, or when
the config's ``model`` or ``training`` settings differ from the cached model's.

Data: ../shared/data/nab-dev on the project's machines, or set STREAMRNN_NAB_DIR to a folder laid
out like NAB's repository (``data/<category>/<file>.csv`` and ``labels/combined_windows.json``:
``git clone https://github.com/numenta/NAB``). Without it the benchmark says so and exits 0.

    python -m bench.nab [--protocol loco|synthetic] [--config FILE] [--out DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from streamrnn.config import Config, load_config
from streamrnn.detector.engine import Engine
from streamrnn.detector.modeldir import LoadedModel, load_model, save_model
from streamrnn.offline.data import Series, load_series, summarize_series
from streamrnn.offline.evaluate import Report, evaluate_dir, format_table
from streamrnn.offline.replay import replay_series, write_results
from streamrnn.offline.training import train
from streamrnn.tools import synth

ROOT = Path(__file__).resolve().parents[1]
NAB_MISSING = (
    "NAB data not found: set STREAMRNN_NAB_DIR to a NAB checkout "
    "(git clone https://github.com/numenta/NAB); skipping."
)


def nab_dir() -> Path | None:
    env = os.environ.get("STREAMRNN_NAB_DIR")
    p = Path(env) if env else ROOT.parent / "shared" / "data" / "nab-dev"
    return (
        p if (p / "data").is_dir() and (p / "labels" / "combined_windows.json").is_file() else None
    )


def as_series(key: str, timestamps: np.ndarray, values: np.ndarray) -> Series:
    """A generated stream as a one-feature :class:`Series` (``timestamps`` datetime64)."""
    times = timestamps.astype("datetime64[ms]").astype("float64") / 1000.0  # (n,) epoch s
    vals = values.reshape(-1, 1).astype("float32")  # (n, 1)
    return Series(key, f"{key}.csv", [""] * len(times), times, vals, ("value",))


def synthetic_series(seed: int = 0) -> list[Series]:
    out = []
    for kind in ("sensor", "energy"):
        gen = synth.generate(
            kind,
            n_keys=12,
            n_steps=3000,
            start="2024-01-01",
            interval_s=300.0,
            anomalies=(),
            seed=seed,
        )
        out += [as_series(f"{kind}/{g.key}", g.timestamps, g.values) for g in gen]
    return out


def nab_folds(protocol: str, data: Path, seed: int) -> list[tuple[str, list[Series], list[Series]]]:
    """(name, training series, scored series) per model the protocol trains."""
    categories = sorted(p.name for p in (data / "data").iterdir() if p.is_dir())
    if protocol == "synthetic":
        return [("synthetic", synthetic_series(seed), load_series([data / "data"]))]
    folds = []
    for c in categories:
        train_s = [s for o in categories if o != c for s in load_series([data / "data" / o])]
        test_s = load_series([data / "data" / c])
        for s in test_s:
            s.relpath = f"{c}/{s.relpath}"
        folds.append((c, train_s, test_s))
    return folds


def fold_model(
    model_dir: Path, train_s: list[Series], cfg: Config, *, retrain: bool
) -> LoadedModel:
    """The model cached in ``model_dir``, trained on ``train_s`` first when it is missing, when
    ``retrain`` is set, or when its ``model`` or ``training`` settings differ from ``cfg``'s
    (the training time budget aside)."""
    if not retrain and (model_dir / "model.json").is_file():
        cached = load_model(model_dir)
        mine, theirs = cfg.to_dict(), cached.config.to_dict()
        for d in (mine, theirs):
            d["training"].pop("max_seconds", None)
        if all(mine[k] == theirs[k] for k in ("model", "training")):
            return cached
    result = train(train_s, cfg, device="cpu", progress=False)
    save_model(
        model_dir,
        result.model,
        cfg,
        feature_names=("value",),
        metrics=result.metrics,
        data_summary=summarize_series(train_s),
    )
    return load_model(model_dir)


def run_protocol(
    protocol: str,
    data: Path,
    cfg: Config,
    *,
    out: Path,
    models: Path,
    retrain: bool = False,
) -> Report:
    """Train (or reuse) the protocol's models, replay the scored files into ``out`` and score them."""
    for i, (name, train_s, test_s) in enumerate(nab_folds(protocol, data, cfg.training.seed)):
        t1 = time.perf_counter()
        loaded = fold_model(models / protocol / name, train_s, cfg, retrain=retrain)
        # The model's architecture comes from its directory; scoring and features from cfg.
        engine = Engine(loaded.model, cfg, model_version=loaded.version)
        write_results(out, replay_series(engine, test_s), None, cfg.scoring.cooldown)
        print(
            f"{protocol} fold {i + 1} ({name}): model {loaded.version} from {len(train_s)} series, replayed {len(test_s)}; {time.perf_counter() - t1:.0f} s",
            flush=True,
        )
    return evaluate_dir(out, data / "labels" / "combined_windows.json")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", choices=["loco", "synthetic"], default="loco")
    ap.add_argument("--config", help="YAML config (default: config/default.yaml's defaults)")
    ap.add_argument("--out", default="runs/nab", help="where replay results go (default runs/nab)")
    ap.add_argument("--json", help="write the evaluation JSON here")
    ap.add_argument("--max-seconds", type=float, default=120.0, help="training budget per model")
    ap.add_argument(
        "--models",
        default="runs/nab-models",
        help="trained fold models are cached here; delete to retrain",
    )
    ap.add_argument("--retrain", action="store_true", help="train even when a cached model exists")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args(argv)
    data = nab_dir()
    if data is None:
        print(NAB_MISSING)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, overrides={"training.max_seconds": args.max_seconds})
    t0 = time.perf_counter()
    report = run_protocol(
        args.protocol, data, cfg, out=Path(args.out), models=Path(args.models), retrain=args.retrain
    )
    print(format_table(report))
    print(f"protocol {args.protocol}; total {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps({"protocol": args.protocol, **report.to_json()}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
