"""What online adaptation costs per step: the engine with ``adapt`` on and off, side by side.

    python -m bench.adapt_cost [--keys 1000] [--waves 200] [--rounds 5] [--json FILE]

Steps ``--keys`` resident keys through ``--waves`` waves of one event each with the default
model shape (LSTM 2 x 64, calendar inputs, one value), alternating the two configurations
``--rounds`` times on one thread, and prints microseconds per event for each (the median round)
and their ratio. Figures are for comparison within one run: this machine is shared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from streamrnn.config import load_config
from streamrnn.detector.engine import Engine
from streamrnn.detector.model import Forecaster


def _engine(adapt: bool) -> Engine:
    cfg = load_config(None, overrides={"adapt.enabled": adapt, "state.device": "cpu"})
    torch.manual_seed(0)
    return Engine(Forecaster(cfg.model, n_values=1, n_extra=4), cfg)


def _round(engine: Engine, keys: list[str], waves: int, t0: float) -> float:
    n = len(keys)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for w in range(waves):
        times = np.full(n, t0 + 300.0 * w)
        values = rng.standard_normal((n, 1)).astype(np.float32)
        engine.process(keys, times, values)
    return (time.perf_counter() - start) / (waves * n) * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--waves", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    keys = [f"k{i}" for i in range(args.keys)]
    engines = {"adapt on": _engine(True), "adapt off": _engine(False)}
    times: dict[str, list[float]] = {name: [] for name in engines}
    for r in range(args.rounds):
        for name, engine in engines.items():
            times[name].append(_round(engine, keys, args.waves, 1.7e9 + r * 1e6))
    med = {name: statistics.median(t) for name, t in times.items()}
    row = engines["adapt on"].store.row_nbytes
    out = {
        "keys": args.keys,
        "waves": args.waves,
        "rounds": args.rounds,
        "us_per_event": med,
        "ratio_on_over_off": med["adapt on"] / med["adapt off"],
        "row_bytes_per_key": row,
    }
    for name, t in med.items():
        print(f"{name}: {t:.2f} us/event (median of {args.rounds} rounds; all {times[name]})")
    print(f"adapt on / off: {out['ratio_on_over_off']:.3f}; state row {row} bytes per key")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
