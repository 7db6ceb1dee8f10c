"""Score CSV history exactly as the live service would.

Every input file is one key (or one key per value of ``--key-column``). Rows go through the same
engine as the live service, in file order per key; keys are interleaved row by row so that each
wave steps every key once. Batch invariance makes the result independent of that interleaving
and of ``--batch-size``. For each input file, ``OUT/<its path relative to the data dir>`` gets
``timestamp``, the value columns, ``anomaly_score`` (6 decimals: the score the row could alert
with, 0 while its key cools down after an alert, as NAB's scorer should see it), ``is_anomaly``
(the detector's own decision), ``prediction``, ``scale``, ``error`` (the standardised error
relative to the key's long-run RMS error) and ``score`` (the key's score as it is).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Config, ConfigError, load_config
from ..detector.engine import Engine, Results
from ..detector.modeldir import load_model, resolve_device
from .data import Series, load_series
from .training import add_role_arguments, role_columns

log = logging.getLogger(__name__)

EPILOG = """\
examples:
  streamrnn replay --model models/demand --data history/ --out results/
  streamrnn replay --model models/demand --data meters.csv --key-column meter --out results/ --plot
  streamrnn replay --model models/demand --data weather.csv --target-columns load \\
      --covariate-columns temp_c --out results/
"""


@dataclass
class KeyResult:
    series: Series
    results: Results


def replay_series(
    engine: Engine, series: list[Series], *, batch_size: int = 65536
) -> list[KeyResult]:
    """Run the engine over every series; returns one result per series, rows in file order."""
    lengths = np.array([len(s.times) for s in series], dtype=np.int64)
    total = int(lengths.sum())
    # Interleave: event order is (row index, series index), so wave w steps row w of every key.
    sid = (
        np.concatenate([np.full(n, i, dtype=np.int64) for i, n in enumerate(lengths)])
        if total
        else np.zeros(0, np.int64)
    )
    pos = np.concatenate([np.arange(n) for n in lengths]) if total else np.zeros(0, np.int64)
    order = np.lexsort((sid, pos))  # (total,)
    sid, pos = sid[order], pos[order]
    f = engine.n_values
    score = np.empty(total, dtype=np.float32)
    out_pred = np.empty((total, f), dtype=np.float32)
    out_scale = np.empty((total, f), dtype=np.float32)
    error = np.empty(total, dtype=np.float32)
    flag = np.empty(total, dtype=bool)
    late = np.empty(total, dtype=bool)
    dropped = np.empty(total, dtype=bool)
    since = np.empty(total, dtype=np.int64)
    times_all = [s.times for s in series]
    values_all = [s.values for s in series]
    keys_all = [s.key for s in series]
    for start in range(0, total, batch_size):
        sl = slice(start, min(total, start + batch_size))
        s_ids, p_ids = sid[sl], pos[sl]
        keys = [keys_all[i] for i in s_ids.tolist()]
        times = np.fromiter(
            (times_all[i][p] for i, p in zip(s_ids.tolist(), p_ids.tolist(), strict=True)),
            dtype=np.float64,
            count=len(keys),
        )
        values = (
            np.stack(
                [values_all[i][p] for i, p in zip(s_ids.tolist(), p_ids.tolist(), strict=True)]
            )
            if keys
            else np.zeros((0, engine.n_inputs), np.float32)
        )
        r = engine.process(keys, times, values)
        score[sl], out_pred[sl], out_scale[sl], error[sl] = r.score, r.prediction, r.scale, r.error
        flag[sl], late[sl], dropped[sl], since[sl] = r.flag, r.late, r.dropped, r.since_flag
    # Back to per-series, file order.
    out: list[KeyResult] = []
    inv = np.empty(total, dtype=np.int64)
    inv[order] = np.arange(total)
    offset = 0
    for s, n in zip(series, lengths.tolist(), strict=True):
        idx = inv[offset : offset + n]
        offset += n
        res = Results(
            out_pred[idx],
            out_scale[idx],
            error[idx],
            score[idx],
            flag[idx],
            late[idx],
            dropped[idx],
            since[idx],
        )
        out.append(KeyResult(s, res))
    return out


def _fmt(x: float) -> str:
    return "" if not np.isfinite(x) else f"{x:.6f}"


def alert_scores(r: Results, cooldown: int) -> np.ndarray:
    """The score each row could raise an alert with: the score, but 0 while the key cools down
    after an alert (one alert per incident, as the service pages). Output: (N,) float32."""
    cooling = (r.since_flag >= 1) & (r.since_flag <= cooldown)
    return np.where(cooling, 0.0, r.score).astype(np.float32)


def write_results(
    out_dir: Path, items: list[KeyResult], key_column: str | None, cooldown: int
) -> list[Path]:
    """One CSV per input file (keys of a long-format file are written together, in key order).
    ``anomaly_score`` is :func:`alert_scores`; ``score`` the key's score as it is."""
    by_file: dict[str, list[KeyResult]] = defaultdict(list)
    for it in items:
        by_file[it.series.relpath].append(it)
    written = []
    for rel, group in by_file.items():
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        names = group[0].series.feature_names
        targets = names[: group[0].results.prediction.shape[1]]  # covariates are not predicted
        single = len(targets) == 1
        pred_cols = (
            ["prediction", "scale"]
            if single
            else [f"{p}_{n}" for p in ("prediction", "scale") for n in targets]
        )
        header = [
            "timestamp",
            *([key_column] if key_column else []),
            *names,
            "anomaly_score",
            "is_anomaly",
            *pred_cols,
            "error",
            "score",
        ]
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for it in group:
                s, r = it.series, it.results
                alert = alert_scores(r, cooldown)
                for i, ts in enumerate(s.timestamps):
                    vals = [_fmt(v) for v in s.values[i]]
                    preds = [_fmt(v) for v in r.prediction[i]] + [_fmt(v) for v in r.scale[i]]
                    if single:
                        preds = [preds[0], preds[1]]
                    w.writerow(
                        [
                            ts,
                            *([s.key] if key_column else []),
                            *vals,
                            f"{alert[i]:.6f}",
                            int(r.flag[i]),
                            *preds,
                            _fmt(r.error[i]),
                            f"{r.score[i]:.6f}",
                        ]
                    )
        written.append(path)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="model directory written by `streamrnn train`"
    )
    parser.add_argument(
        "--data", required=True, nargs="+", help="CSV files or directories (every CSV below)"
    )
    parser.add_argument("--out", required=True, help="output directory; mirrors the input layout")
    parser.add_argument(
        "--config", help="YAML config whose scoring/features/state keys override the model's"
    )
    parser.add_argument("--key-column", help="long format: the column that names the key")
    parser.add_argument(
        "--value-columns", help="comma-separated value columns (default: all but time/key)"
    )
    add_role_arguments(parser)
    parser.add_argument(
        "--time-column", default="timestamp", help="time column (default: timestamp)"
    )
    parser.add_argument(
        "--false-alert-rate",
        type=float,
        help="override scoring.false_alert_rate (flags per event per key, e.g. 1e-4)",
    )
    parser.add_argument("--device", help="override state.device (auto, cpu, cuda, cuda:N)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=65536,
        help="events per engine batch (results do not depend on it)",
    )
    parser.add_argument(
        "--plot",
        action="store_true",
        help="also write a PNG per file: value, prediction band, score, flags",
    )


def resolve_replay_config(model_config: Config, args: argparse.Namespace) -> Config:
    """The model's config, with the user's file and flags on top for what replay may change."""
    base = model_config.to_dict()
    if args.config:
        from ..config import read_yaml

        user = read_yaml(args.config)
        for section in ("scoring", "adapt", "features", "state", "input"):
            if section in user:
                base[section] = {**base.get(section, {}), **(user[section] or {})}
    return load_config(
        base,
        overrides={"scoring.false_alert_rate": args.false_alert_rate, "state.device": args.device},
    )


def replay_columns(
    args: argparse.Namespace, targets: tuple[str, ...], covariates: tuple[str, ...]
) -> list[str]:
    """The CSV columns to read, the model's targets then its covariates: ``--value-columns``,
    else ``--target-columns`` / ``--covariate-columns`` (each defaulting to the model's names);
    raises ValueError naming the flag when the count does not match the model."""
    if args.value_columns:
        return [c.strip() for c in args.value_columns.split(",")]
    got_t, got_c = role_columns(args)
    for flag, got, want, what in (
        ("--target-columns", got_t, targets, "targets"),
        ("--covariate-columns", got_c, covariates, "covariates"),
    ):
        if got is not None and len(got) != len(want):
            trained = ", ".join(want) or "none"
            raise ValueError(f"{flag}: the model takes {len(want)} {what} ({trained}), got {got}")
    return [*(got_t or targets), *(got_c or covariates)]


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    try:
        loaded = load_model(args.model)
        cfg = resolve_replay_config(loaded.config, args)
        device = resolve_device(cfg.state.device)
        value_columns = replay_columns(args, loaded.feature_names, loaded.covariate_names)
        series = load_series(
            args.data,
            key_column=args.key_column,
            time_column=args.time_column,
            value_columns=value_columns,
        )
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not series:
        print(f"error: --data: no CSV files found in {args.data}", file=sys.stderr)
        return 2
    engine = Engine(loaded.model, cfg, device=device, model_version=loaded.version)
    items = replay_series(engine, series, batch_size=args.batch_size)
    out_dir = Path(args.out)
    written = write_results(out_dir, items, args.key_column, cfg.scoring.cooldown)
    n_events = sum(len(it.series.times) for it in items)
    n_flags = sum(int(it.results.flag.sum()) for it in items)
    if args.plot:
        from .plot import plot_file

        for it in items:
            plot_file(
                it.series,
                it.results,
                out_dir
                / (
                    it.series.relpath[: -len(".csv")]
                    + (f".{it.series.key.replace('/', '_')}" if args.key_column else "")
                    + ".png"
                ),
                threshold=cfg.scoring.threshold,
            )
    dt = time.perf_counter() - t0
    print(
        f"replayed {n_events} events of {len(items)} keys from {len(written)} files with model {loaded.version} "
        f"on {device}: {n_flags} flagged, {engine.imputed_total} missing values imputed; "
        f"{dt:.1f} s; results in {out_dir}"
    )
    return 0
