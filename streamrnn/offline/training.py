"""Training the forecaster by truncated backpropagation through time, and the ``train`` command.

Inputs are built exactly as streaming builds them: the online normaliser of
:mod:`streamrnn.features` runs over each series, missing values are imputed, calendar features
are appended, and the target of step ``t`` is the normalised value of step ``t + 1``.

Covariates (``input.covariates``: value columns that steer the forecast but are not predicted)
change the alignment: the input of step ``t`` is the targets of step ``t - 1`` (0 at the
first), the covariates and calendar features of step ``t``, and its target is the targets of
step ``t``. So the covariates of the step being predicted are used: right for covariates known
by the time of the reading (measured with it, or known ahead: a schedule, a weather forecast
published with it), and what the engine does live.

TBPTT with carried state
------------------------
Each series' training part (its head; the tail ``val_fraction`` is held out) is cut into
*lanes*, contiguous segments of about ``LANE_WINDOWS * window`` steps. The cuts move every
epoch (a random start shift), so no step is always at a lane edge. A batch of up to
``batch_size`` lanes runs through :meth:`Forecaster.sequence` with the recurrent state carried
from chunk to chunk and detached between them. Updates follow TBPTT(k1, k2) (Williams & Peng,
1990) with ``k1 = stride`` and ``k2 = window``: every ``stride`` new steps the loss on those
steps is backpropagated through the last ``window`` steps, starting from the detached state saved
``window`` steps earlier. With ``stride == window`` this is plain chunked TBPTT; with
``stride < window`` every loss term sees at least ``window - stride`` steps of gradient history,
at ``window / stride`` times the compute. The first ``window // 2`` steps of a lane that starts
inside a series are left out of the loss (its state starts at zero, not warmed); a lane that
starts at the series' first row is not masked, because streaming starts every key from zero too.

Validation runs the model (eval mode, no gradients) over each whole series, so the state is
warmed by the training part, and measures the Gaussian NLL on the held-out tail only. Early
stopping watches that NLL (the training NLL when ``val_fraction`` is 0) and keeps the best
weights.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..config import Config, ConfigError, load_config
from ..detector.features import N_CALENDAR, calendar_features, normalize_series
from ..detector.model import Forecaster, gaussian_nll
from ..detector.modeldir import resolve_device, save_model
from .data import Series, count_missing, load_series, summarize_series

logger = logging.getLogger(__name__)

LANE_WINDOWS = 8  # lane length in windows
EVAL_CHUNK = 4096  # time steps per sequence() call in validation (bounds memory on long series)
NORMALIZE_GROUP = 256  # series normalised together (padded to the longest)


@dataclass
class Prepared:
    """One series as model inputs, with its train/validation split.

    Rows ``[0, split - 1)`` train (their targets lie in the head); the targets of rows
    ``[split - 1, T - 1)`` are the validation tail ``z[split:]``.
    """

    key: str
    inputs: np.ndarray  # (T, F + E)
    targets: np.ndarray  # (T, F)
    mask: np.ndarray  # (T, F) bool
    split: int

    @property
    def n_train(self) -> int:
        return max(self.split - 1, 0)


@dataclass
class TrainResult:
    """A trained model (CPU, eval mode, best weights) and what it took."""

    model: Forecaster
    config: Config
    feature_names: tuple[str, ...]  # the targets
    metrics: dict[str, Any]
    data_summary: dict[str, Any]
    covariate_names: tuple[str, ...] = ()


def value_roles(names: Sequence[str], config: Config) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The targets and covariates among a series' value columns ``names``, by
    ``input.targets`` (empty: every column that is not a covariate) and ``input.covariates``;
    raises ValueError naming a column the data lacks."""
    inp = config.input
    covariates = tuple(inp.covariates)
    targets = tuple(inp.targets) or tuple(n for n in names if n not in covariates)
    for key, want in (("targets", targets), ("covariates", covariates)):
        lacking = [n for n in want if n not in names]
        if lacking:
            raise ValueError(
                f"input.{key}: column {lacking[0]!r} is not in the data (its value columns: "
                f"{', '.join(names)})"
            )
    if not targets:
        raise ValueError(
            f"input.targets: no column left to predict, got covariates {list(covariates)}"
        )
    return targets, covariates


def _build_many(
    series: Sequence[Series], config: Config
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """build_inputs for several series, normalising them together (padded with NaN, which the
    normaliser ignores) so the per-step loop runs once per group rather than once per series."""
    out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    fc = config.features
    for g in range(0, len(series), NORMALIZE_GROUP):
        group = series[g : g + NORMALIZE_GROUP]
        names = group[0].feature_names
        targets, covariates = value_roles(names, config)
        cols = [names.index(c) for c in targets + covariates]
        n_feat, n_out = len(cols), len(targets)
        tmax = max(len(s) for s in group)
        vals = np.full((len(group), tmax, n_feat), np.nan, dtype=np.float32)  # (B, Tmax, F + C)
        for i, s in enumerate(group):
            vals[i, : len(s)] = s.values[:, cols]  # (T, F + C)
        z_all = normalize_series(vals, horizon=fc.normalizer_horizon, clip=fc.clip)  # (B, Tmax, F)
        for i, s in enumerate(group):
            n = len(s)
            z = z_all[i, :n]  # (T, F)
            present = ~np.isnan(z)  # (T, F)
            last = np.where(present, np.arange(n)[:, None], 0)  # (T, F) row of the latest value
            last = np.maximum.accumulate(last, axis=0)  # (T, F)
            filled = z[last, np.arange(n_feat)[None, :]]  # (T, F) forward fill
            filled = np.nan_to_num(filled, nan=0.0)  # (T, F + C) 0 before the first value
            extra = [calendar_features(s.times)] if config.model.calendar else []  # (T, 4)
            y = np.zeros((n, n_out), dtype=np.float32)  # (T, F)
            mask = np.zeros((n, n_out), dtype=bool)  # (T, F)
            if covariates:
                # Step t: the targets of t - 1, the covariates of t; its target is z[t].
                prev = np.zeros((n, n_out), dtype=np.float32)  # (T, F)
                prev[1:] = filled[:-1, :n_out]
                inputs = np.concatenate([prev, filled[:, n_out:], *extra], axis=1)  # (T, I)
                y[:] = np.nan_to_num(z[:, :n_out], nan=0.0)  # (T, F)
                mask[:] = present[:, :n_out]
                warm = np.arange(n) >= fc.normalizer_warmup  # (T,)
            else:
                inputs = np.concatenate([filled, *extra], axis=1)  # (T, F [+ 4])
                y[:-1] = np.nan_to_num(z[1:], nan=0.0)  # (T-1, F) target[t] = z[t+1]
                mask[:-1] = present[1:]  # (T-1, F)
                warm = np.arange(n) + 1 >= fc.normalizer_warmup  # (T,)
            mask &= warm[:, None]  # (T, F)
            out.append((inputs.astype(np.float32), y, mask))
    return out


def build_inputs(series: Series, config: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model inputs (T, F + extra), targets (T, F) and target mask (T, F) bool for one series.

    Inputs are the normalised values (missing ones forward filled, 0 before the first) followed
    by the calendar features when ``config.model.calendar``; ``targets[t] = z[t + 1]`` (0 where
    missing); ``mask[t]`` is true where that target is present and ``t + 1`` is past the
    normaliser's warm-up. The last row has no target.
    """
    if len(series) == 0:
        raise ValueError(f"series {series.key!r}: must have at least one row")
    return _build_many([series], config)[0]


def _prepare(series: Sequence[Series], config: Config) -> list[Prepared]:
    vf = config.training.val_fraction
    out: list[Prepared] = []
    for s, (x, y, m) in zip(series, _build_many(series, config), strict=True):
        n = len(s)
        split = max(n - int(round(n * vf)), 1)
        out.append(Prepared(s.key, x, y, m, split))
    return out


def _lanes(
    prepared: Sequence[Prepared], lane_len: int, rng: np.random.Generator
) -> list[tuple[int, int, int]]:
    """(series index, start, end) of every lane for one epoch, cut at a random shift."""
    lanes: list[tuple[int, int, int]] = []
    half = lane_len // 2
    for i, p in enumerate(prepared):
        n = p.n_train
        if n <= 0:
            continue
        shift = int(rng.integers(0, lane_len))
        cuts = [c for c in range(shift, n, lane_len) if half <= c <= n - half]
        bounds = [0, *cuts, n]
        lanes += [(i, a, b) for a, b in zip(bounds, bounds[1:], strict=False)]
    return lanes


def _batch(
    prepared: Sequence[Prepared], lanes: Sequence[tuple[int, int, int]], warm: int
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Padded inputs (B, T, I), targets (B, T, F), mask (B, T, F) and the real step count."""
    tb = max(b - a for _, a, b in lanes)
    p0 = prepared[lanes[0][0]]
    x = np.zeros((len(lanes), tb, p0.inputs.shape[1]), dtype=np.float32)  # (B, T, I)
    y = np.zeros((len(lanes), tb, p0.targets.shape[1]), dtype=np.float32)  # (B, T, F)
    m = np.zeros((len(lanes), tb, p0.targets.shape[1]), dtype=bool)  # (B, T, F)
    for j, (i, a, b) in enumerate(lanes):
        p = prepared[i]
        x[j, : b - a] = p.inputs[a:b]  # (T_lane, I)
        y[j, : b - a] = p.targets[a:b]  # (T_lane, F)
        m[j, : b - a] = p.mask[a:b]  # (T_lane, F)
        if a > 0:
            m[j, :warm] = False  # state starts at zero inside the series: not warmed
    steps = sum(b - a for _, a, b in lanes)
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(m), steps


class _Validator:
    """Holds the padded validation tensors and measures the NLL on the held-out tails."""

    def __init__(self, prepared: Sequence[Prepared], batch_size: int, device: torch.device) -> None:
        self.groups: list[tuple[Tensor, Tensor, Tensor]] = []
        self.count = 0
        chosen = [p for p in prepared if p.split < len(p.inputs) and p.mask[p.split - 1 :].any()]
        for g in range(0, len(chosen), batch_size):
            group = chosen[g : g + batch_size]
            b, tmax = len(group), max(len(p.inputs) for p in group)
            n_in, n_out = group[0].inputs.shape[1], group[0].targets.shape[1]
            x = np.zeros((b, tmax, n_in), dtype=np.float32)  # (B, T, I)
            y = np.zeros((b, tmax, n_out), dtype=np.float32)  # (B, T, F)
            m = np.zeros((b, tmax, n_out), dtype=bool)  # (B, T, F)
            for j, p in enumerate(group):
                n = len(p.inputs)
                x[j, :n] = p.inputs  # (T, I)
                y[j, :n] = p.targets  # (T, F)
                m[j, p.split - 1 : n] = p.mask[p.split - 1 :]  # (T_val, F) the held-out tail
            self.count += int(m.sum())
            self.groups.append(
                (
                    torch.from_numpy(x).to(device),
                    torch.from_numpy(y).to(device),
                    torch.from_numpy(m).to(device),
                )
            )

    @torch.no_grad()
    def __call__(self, model: Forecaster) -> float | None:
        if self.count == 0:
            return None
        was_training = model.training
        model.eval()
        total = 0.0
        for x, y, m in self.groups:
            state: Tensor | None = None
            for a in range(0, x.shape[1], EVAL_CHUNK):
                mean, scale, state = model.sequence(x[:, a : a + EVAL_CHUNK], state)  # (B, C, F) x2
                mc = m[:, a : a + EVAL_CHUNK]  # (B, C, F)
                yc = y[:, a : a + EVAL_CHUNK]  # (B, C, F)
                n = int(mc.sum())
                if n:
                    total += float(gaussian_nll(mean, scale, yc, mc)) * n  # () mean NLL x count
        model.train(was_training)
        return total / self.count


class _EpochBar:
    """One epoch's progress bar (stderr) with the running train NLL and the last val NLL."""

    def __init__(self, desc: str, total: int, last_val: float | None, *, enabled: bool) -> None:
        self.bar = tqdm(
            total=total,
            desc=desc,
            unit="upd",
            file=sys.stderr,
            disable=not enabled,
            leave=True,
            dynamic_ncols=True,
        )
        self.last_val = last_val
        self.total, self.count = 0.0, 0  # NLL sum and target count of finished batches

    def update(self, batch_total: float, batch_count: int) -> None:
        """Called after every update step with the current batch's NLL sum and count so far."""
        self.bar.update(1)
        count = self.count + batch_count
        if count and self.bar.n % 8 == 0:
            running = (self.total + batch_total) / count
            self.bar.set_postfix(train=f"{running:.4f}", val=_fmt(self.last_val), refresh=False)

    def end_batch(self, batch_total: float, batch_count: int) -> None:
        self.total += batch_total
        self.count += batch_count

    @property
    def epoch_loss(self) -> float | None:
        return self.total / self.count if self.count else None

    def close(self, train_loss: float | None, val_loss: float | None) -> None:
        self.bar.set_postfix(train=_fmt(train_loss), val=_fmt(val_loss), refresh=False)
        self.bar.close()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _train_batch(
    model: Forecaster,
    opt: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    m: Tensor,
    window: int,
    stride: int,
    grad_clip: float,
    on_update: Callable[[float, int], None],
) -> tuple[float, int, int]:
    """TBPTT(stride, window) over one padded batch. Returns (NLL sum, target count, updates)."""
    b, tb, _ = x.shape
    k1 = min(stride, window)
    zero = x.new_zeros(b, model.num_layers, model.slots, model.hidden_size)  # (B, L, S, H)
    saved: dict[int, Tensor] = {0: zero}  # detached state at each update boundary
    params = [p for p in model.parameters() if p.requires_grad]
    total, count, updates = 0.0, 0, 0
    prev = 0
    for p in [*range(k1, tb, k1), tb]:
        mp = m[:, prev:p]  # (B, k1, F)
        n = int(mp.sum())
        if n == 0:
            with torch.no_grad():
                _, _, st = model.sequence(x[:, prev:p], saved[prev])  # st (B, L, S, H)
            saved[p] = st  # (B, L, S, H)
        else:
            start = min(q for q in saved if q >= p - window)
            points = sorted(q for q in saved if start <= q <= prev)
            st = saved[start]  # (B, L, S, H)
            for a, e in zip(points, [*points[1:], p], strict=True):
                mean, scale, st = model.sequence(x[:, a:e], st)  # (B, e-a, F) x2; (B, L, S, H)
                saved[e] = st.detach()  # (B, L, S, H)
            loss = gaussian_nll(mean, scale, y[:, prev:p], mp)  # () on the newest steps only
            if torch.isfinite(loss):
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
                opt.step()
                total += float(loss.detach()) * n
                count += n
                updates += 1
            else:
                logger.warning("non-finite training loss %s: update skipped", float(loss))
        for q in [q for q in saved if q < p - window]:
            del saved[q]  # no later update starts this far back
        prev = p
        on_update(total, count)
    return total, count, updates


def train(
    series: Sequence[Series],
    config: Config,
    *,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> TrainResult:
    """Train a forecaster on the series (see the module docstring). The result's model is on the
    CPU in eval mode with the weights of the best epoch."""
    if not series:
        raise ValueError("series: need at least one series to train on")
    names = series[0].feature_names
    targets, covariates = value_roles(names, config)
    for s in series:
        if s.feature_names != names:
            raise ValueError(
                f"series {s.key!r} ({s.relpath}) has features {list(s.feature_names)}, "
                f"but {series[0].key!r} has {list(names)}; training needs the same feature set"
            )
    tc = config.training
    dev = resolve_device(device)
    t0 = time.perf_counter()
    _seed_everything(tc.seed)
    rng = np.random.default_rng(tc.seed)

    prepared = _prepare(series, config)
    n_targets = sum(int(p.mask[: p.n_train].sum()) for p in prepared)
    if n_targets == 0:
        raise ValueError(
            "no training targets: every series is too short for the normaliser warm-up "
            f"({config.features.normalizer_warmup} rows) plus the validation tail"
        )
    model = Forecaster(
        config.model,
        n_values=len(targets),
        n_extra=N_CALENDAR if config.model.calendar else 0,
        n_covariates=len(covariates),
    )
    model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay)
    validate = _Validator(prepared, tc.batch_size, dev)
    initial_val = validate(model)
    monitor = "val" if validate.count else "train"
    lane_len = LANE_WINDOWS * tc.window
    warm = tc.window // 2
    k1 = min(tc.stride, tc.window)
    rows = sum(len(s) for s in series)
    logger.info(
        "training %s on %d series, %d rows (%d missing values) on %s; %d validation targets",
        config.model.cell,
        len(series),
        rows,
        count_missing(series),
        dev,
        validate.count,
    )

    train_losses: list[float | None] = []
    val_losses: list[float | None] = []
    best: tuple[float, int, dict[str, Tensor]] | None = None
    stale, updates, steps, train_seconds = 0, 0, 0, 0.0
    stopped = "epochs"
    for epoch in range(1, tc.epochs + 1):
        e0 = time.perf_counter()
        model.train()
        lanes = _lanes(prepared, lane_len, rng)
        order = rng.permutation(len(lanes))
        batches = [
            [lanes[k] for k in order[g : g + tc.batch_size]]
            for g in range(0, len(lanes), tc.batch_size)
        ]
        total_updates = sum(math.ceil(max(b - a for _, a, b in bl) / k1) for bl in batches)
        last_val = val_losses[-1] if val_losses else initial_val
        bar = _EpochBar(f"epoch {epoch}/{tc.epochs}", total_updates, last_val, enabled=progress)
        for bl in batches:
            x, y, m, n_steps = _batch(prepared, bl, warm)  # (B, T, I), (B, T, F), (B, T, F)
            x, y, m = x.to(dev), y.to(dev), m.to(dev)  # (B, T, I), (B, T, F), (B, T, F)
            tot, cnt, upd = _train_batch(
                model, opt, x, y, m, tc.window, tc.stride, tc.grad_clip, bar.update
            )
            bar.end_batch(tot, cnt)
            updates += upd
            steps += n_steps
        train_seconds += time.perf_counter() - e0
        train_loss = bar.epoch_loss
        val_loss = validate(model)
        train_losses.append(train_loss)
        val_losses.append(val_loss)
        bar.close(train_loss, val_loss)
        logger.info(
            "epoch %d/%d: train NLL %s, val NLL %s",
            epoch,
            tc.epochs,
            _fmt(train_loss),
            _fmt(val_loss),
        )

        score = val_loss if monitor == "val" else train_loss
        if score is not None and math.isfinite(score) and (best is None or score < best[0]):
            state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            best = (score, epoch, state)
            stale = 0
        else:
            stale += 1
        if stale >= tc.patience:
            stopped = "early_stopping"
            break
        if tc.max_seconds and time.perf_counter() - t0 >= tc.max_seconds:
            stopped = "max_seconds"
            logger.info(
                "stopping after epoch %d: max_seconds (%.0f s) reached", epoch, tc.max_seconds
            )
            break

    model.to("cpu")
    if best is not None:
        model.load_state_dict(best[2])
    model.eval()
    seconds = time.perf_counter() - t0
    metrics: dict[str, Any] = {
        "train_loss": train_losses,
        "val_loss": val_losses,
        "initial_val_loss": initial_val,
        "monitor": monitor,
        "best_epoch": best[1] if best else None,
        "best_loss": best[0] if best else None,
        "best_val_loss": val_losses[best[1] - 1] if best else None,
        "epochs_run": len(train_losses),
        "stopped": stopped,
        "seconds": round(seconds, 3),
        "rows": rows,
        "series": len(series),
        "train_targets": n_targets,
        "val_targets": validate.count,
        "updates": updates,
        "steps_per_second": round(steps / train_seconds, 1) if train_seconds > 0 else None,
        "device": str(dev),
    }
    return TrainResult(
        model, config, targets, metrics, summarize_series(series), covariate_names=covariates
    )


_STOPPED = {
    "epochs": "all epochs run",
    "early_stopping": "early stopping",
    "max_seconds": "time budget",
}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


# --------------------------------------------------------------------------------------- CLI

DESCRIPTION = """\
Train a forecaster on CSV files and write a model directory.

Each CSV file is one key (its path relative to the data directory, without .csv), or, with
--key-column, one file holds many keys in long format. Every file needs a time column
('timestamp': ISO 8601 or epoch seconds/milliseconds) and the same value columns.
The tail of each series (training.val_fraction) is held out for validation and early stopping.
"""

EPILOG = """\
examples:
  streamrnn train --data data/nab --out models/nab
  streamrnn train --data a.csv b.csv --out models/ab --epochs 10 --cell gru --hidden-size 32
  streamrnn train --data long.csv --key-column sensor --value-columns temp,humidity \\
      --out models/sensors --config config/default.yaml --device cuda
  streamrnn train --data demand.csv --target-columns demand --covariate-columns temp \\
      --out models/demand

The model directory holds weights.pt, config.yaml (the resolved config, flags applied),
model.json (version id, features, metrics) and normalization.json.
Flags override the config file's keys; a value that breaks a rule stops with exit status 2.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``train`` command's arguments (and its help texts) to ``parser``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = parser.description or DESCRIPTION
    parser.epilog = parser.epilog or EPILOG
    parser.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="PATH",
        help="CSV files or directories (searched recursively for *.csv)",
    )
    parser.add_argument(
        "--out", required=True, metavar="MODEL_DIR", help="model directory to write"
    )
    parser.add_argument(
        "--config", metavar="FILE", help="YAML config file (default: built-in defaults)"
    )
    parser.add_argument("--epochs", type=int, metavar="N", help="training.epochs: maximum epochs")
    parser.add_argument("--cell", metavar="{lstm,gru}", help="model.cell: recurrent cell type")
    parser.add_argument(
        "--hidden-size", type=int, metavar="N", help="model.hidden_size: units per layer"
    )
    parser.add_argument("--layers", type=int, metavar="N", help="model.num_layers: stacked layers")
    parser.add_argument("--dropout", type=float, metavar="P", help="model.dropout: between layers")
    parser.add_argument("--lr", type=float, metavar="X", help="training.learning_rate (Adam)")
    parser.add_argument("--seed", type=int, metavar="N", help="training.seed")
    parser.add_argument(
        "--key-column",
        metavar="NAME",
        help="long format: column holding the key (default: one key per file)",
    )
    parser.add_argument(
        "--time-column",
        default="timestamp",
        metavar="NAME",
        help="column holding the timestamp (default: %(default)s)",
    )
    parser.add_argument(
        "--value-columns",
        metavar="A,B",
        help="comma-separated value columns (default: input.features from the "
        "config, else every column but the time and key columns)",
    )
    add_role_arguments(parser)
    parser.add_argument(
        "--device",
        default="auto",
        metavar="D",
        help="auto, cpu, cuda or cuda:N (default: %(default)s)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_role_arguments(parser: argparse.ArgumentParser) -> None:
    """``--target-columns`` and ``--covariate-columns`` (train, replay, produce --csv)."""
    parser.add_argument(
        "--target-columns",
        metavar="A,B",
        help="input.targets: the value columns predicted and scored (default: every value "
        "column that is not a covariate)",
    )
    parser.add_argument(
        "--covariate-columns",
        metavar="C,D",
        help="input.covariates: value columns that steer the forecast but are never scored "
        "(temperature for demand); the model uses those of the step it predicts, so they must "
        "be known by then (measured with the reading, or known ahead: a schedule, a forecast)",
    )


def role_columns(args: argparse.Namespace) -> tuple[list[str] | None, list[str] | None]:
    """The parsed ``--target-columns`` and ``--covariate-columns`` (None where not given)."""
    return (
        _columns(args.target_columns, "--target-columns"),
        _columns(args.covariate_columns, "--covariate-columns"),
    )


def _overrides(args: argparse.Namespace) -> Mapping[str, Any]:
    targets, covariates = role_columns(args)
    return {
        "input.targets": targets,
        "input.covariates": covariates,
        "training.epochs": args.epochs,
        "model.cell": args.cell,
        "model.hidden_size": args.hidden_size,
        "model.num_layers": args.layers,
        "model.dropout": args.dropout,
        "training.learning_rate": args.lr,
        "training.seed": args.seed,
    }


def _columns(text: str | None, flag: str = "--value-columns") -> list[str] | None:
    if text is None:
        return None
    cols = [c.strip() for c in text.split(",")]
    if not all(cols):
        raise ValueError(f"{flag}: must be comma-separated column names, got {text!r}")
    return cols


def run(args: argparse.Namespace) -> int:
    """``streamrnn train``: returns the exit status (0 ok, 2 bad config/input, 1 I/O failure)."""
    try:
        config = load_config(args.config, overrides=_overrides(args))
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out: must be a directory, got the file {str(out)!r}")
        resolve_device(args.device)
        value_columns = _columns(args.value_columns) or (list(config.input.features) or None)
        if value_columns is None and config.input.targets:
            value_columns = [*config.input.targets, *config.input.covariates]
        series = load_series(
            args.data,
            key_column=args.key_column,
            time_column=args.time_column,
            value_columns=value_columns,
        )
        result = train(series, config, device=args.device, progress=not args.no_progress)
        version = save_model(
            out,
            result.model,
            config,
            feature_names=result.feature_names,
            covariate_names=result.covariate_names,
            metrics=result.metrics,
            data_summary=result.data_summary,
        )
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    m = result.metrics
    loss_name = "validation" if m["monitor"] == "val" else "training"
    print(
        f"trained model {version}: {config.model.cell}, {config.model.num_layers} x "
        f"{config.model.hidden_size}, features {', '.join(result.feature_names)}"
        + (f", covariates {', '.join(result.covariate_names)}" if result.covariate_names else "")
        + f"; best epoch "
        f"{m['best_epoch']} of {m['epochs_run']} ({_STOPPED[m['stopped']]}), {loss_name} NLL "
        f"{_fmt(m['best_loss'])} (untrained {_fmt(m['initial_val_loss'])}); {m['rows']} rows from "
        f"{m['series']} series in {m['seconds']:.1f} s on {m['device']}; wrote {out}"
    )
    return 0
