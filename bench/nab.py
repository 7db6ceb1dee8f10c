"""Detection quality on the NAB development subset, with no model trained on the rows it scores.

Protocols:
- ``loco`` (default), leave one category out: for each NAB category, train a model on the files
  of the other categories, then replay the category's files with it. The scored files are never
  seen in training; each file's own probationary rows and what the detector learns online while
  streaming (normaliser and calibration) are the only things it learns from them.
- ``synthetic``: train once on generated sensor and energy streams (streamrnn.tools.synth, no NAB data),
  then replay every NAB file.

Results are scored with NAB's rules (streamrnn.offline.evaluate) and printed; ``--json`` saves them.

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

import torch

from streamrnn.config import load_config
from streamrnn.detector.engine import Engine
from streamrnn.detector.modeldir import load_model, save_model
from streamrnn.offline.data import Series, load_series, summarize_series
from streamrnn.offline.evaluate import evaluate_dir, format_table
from streamrnn.offline.replay import replay_series, write_results
from streamrnn.offline.training import train
from streamrnn.tools import synth

ROOT = Path(__file__).resolve().parents[1]


def nab_dir() -> Path | None:
    env = os.environ.get("STREAMRNN_NAB_DIR")
    p = Path(env) if env else ROOT.parent / "shared" / "data" / "nab-dev"
    return (
        p if (p / "data").is_dir() and (p / "labels" / "combined_windows.json").is_file() else None
    )


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
        for g in gen:
            times = g.timestamps.astype("datetime64[ms]").astype("float64") / 1000.0  # (n,) epoch s
            values = g.values.reshape(-1, 1).astype("float32")  # (n, 1)
            out.append(
                Series(
                    f"{kind}/{g.key}",
                    f"{kind}/{g.key}.csv",
                    [""] * len(times),
                    times,
                    values,
                    ("value",),
                )
            )
    return out


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
        print(
            "NAB data not found: set STREAMRNN_NAB_DIR to a NAB checkout (git clone https://github.com/numenta/NAB); skipping."
        )
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, overrides={"training.max_seconds": args.max_seconds})
    out = Path(args.out)
    categories = sorted(p.name for p in (data / "data").iterdir() if p.is_dir())
    t0 = time.perf_counter()
    folds: list[tuple[str, list[Series], list[Series]]] = []
    if args.protocol == "loco":
        for c in categories:
            train_s = [s for o in categories if o != c for s in load_series([data / "data" / o])]
            test_s = load_series([data / "data" / c])
            for s in test_s:
                s.relpath = f"{c}/{s.relpath}"
            folds.append((c, train_s, test_s))
    else:
        folds.append(
            ("synthetic", synthetic_series(cfg.training.seed), load_series([data / "data"]))
        )
    for i, (name, train_s, test_s) in enumerate(folds):
        t1 = time.perf_counter()
        model_dir = Path(args.models) / args.protocol / name
        if args.retrain or not (model_dir / "model.json").is_file():
            result = train(train_s, cfg, device="cpu", progress=False)
            save_model(
                model_dir,
                result.model,
                cfg,
                feature_names=("value",),
                metrics=result.metrics,
                data_summary=summarize_series(train_s),
            )
        loaded = load_model(model_dir)
        # The model's architecture comes from its directory; scoring and features from --config.
        engine = Engine(loaded.model, cfg, model_version=loaded.version)
        items = replay_series(engine, test_s)
        write_results(out, items, None)
        print(
            f"fold {i + 1}/{len(folds)} ({name}): model {loaded.version} from {len(train_s)} series, replayed {len(test_s)}; {time.perf_counter() - t1:.0f} s",
            flush=True,
        )
    report = evaluate_dir(out, data / "labels" / "combined_windows.json")
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
