"""The streaming engine: a batch of events in, per-event predictions, scores and flags out.

A batch is split into waves so that each key appears at most once per wave and a key's events go
in arrival order, one step each. Each wave is one gather, one batched recurrent step and one scatter
on the device. Every statistic a key owns lives in the state store, so the result for an event
depends only on the events of its key before it: the same stream gives the same scores however it
is cut into batches.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from . import scoring
from .config import Config
from .features import N_CALENDAR, calendar_features, normalize, update_normalizer
from .model import Forecaster
from .state import FieldSpec, StateStore

log = logging.getLogger(__name__)


@dataclass
class Results:
    """Per event, in the order of the batch. Predictions and scales are in the key's own units."""

    prediction: np.ndarray  # (N, F) what the model expected for this event; NaN for a key's first
    scale: np.ndarray  # (N, F) predicted standard deviation
    error: np.ndarray  # (N,) standardised error relative to the key's recent errors (1 = usual)
    score: np.ndarray  # (N,) calibrated anomaly score in [0, 1]; 0 while the key is in warm-up
    flag: np.ndarray  # (N,) bool, the detector's decision
    late: np.ndarray  # (N,) bool, older than its key's previous event
    dropped: np.ndarray  # (N,) bool, late and dropped by the late-event policy (state untouched)

    def __len__(self) -> int:
        return len(self.score)


def wave_order(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order events into waves: each row at most once per wave, arrival order kept per row.

    Input: rows (N,) int64. Outputs: order (N,) indices grouped by wave, bounds (W + 1,) offsets.

    >>> order, bounds = wave_order(np.array([5, 7, 5, 5, 7]))
    >>> [order[bounds[i]:bounds[i + 1]].tolist() for i in range(len(bounds) - 1)]
    [[0, 1], [2, 4], [3]]
    """
    n = len(rows)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64)
    by_row = np.argsort(rows, kind="stable")  # (N,)
    sorted_rows = rows[by_row]  # (N,)
    starts = np.ones(n, dtype=bool)
    starts[1:] = sorted_rows[1:] != sorted_rows[:-1]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0))  # (N,)
    rank = np.empty(n, dtype=np.int64)
    rank[by_row] = np.arange(n) - group_start  # occurrence index of each event within its key
    order = np.argsort(rank, kind="stable")  # (N,) by wave, then arrival
    counts = np.bincount(rank)  # (W,)
    bounds = np.concatenate([[0], np.cumsum(counts)])  # (W + 1,)
    return order, bounds


def state_fields(model: Forecaster) -> dict[str, FieldSpec]:
    f = model.n_values
    return {
        "hidden": FieldSpec((model.num_layers, model.slots, model.hidden_size), torch.float32),
        "norm": FieldSpec((3, f), torch.float32),  # count, mean, var per feature
        "pred": FieldSpec((2, f), torch.float32, init=(0.0, 1.0)),  # pending prediction: mean, scale (normalised)
        "scorer": FieldSpec((scoring.N_SCORER,), torch.float32),
        "track": FieldSpec((scoring.N_TRACK, f), torch.float32, init=scoring.TRACK_INIT),  # error mean, low, high
        "steps": FieldSpec((), torch.int64),
        "last_alert": FieldSpec((), torch.int64, init=-1.0),
        "last_ts": FieldSpec((), torch.float64, init=float("-inf")),
    }


class Engine:
    """Steps every key's events through one shared forecaster, with per-key state on the device."""

    def __init__(
        self,
        model: Forecaster,
        config: Config,
        *,
        device: torch.device | str = "cpu",
        model_version: str = "",
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.model_version = model_version
        self.calendar = model.input_size - model.n_values == N_CALENDAR
        if not self.calendar and model.input_size != model.n_values:
            raise ValueError(
                f"model input size must be n_values or n_values + {N_CALENDAR}, got {model.input_size}"
            )
        self.n_values = model.n_values
        self.store = StateStore(
            state_fields(model),
            max_keys=config.state.max_keys,
            initial_capacity=config.state.initial_capacity,
            device=self.device,
        )
        self.drop_late = config.input.late_events == "drop"
        self._imputed = torch.zeros((), dtype=torch.int64, device=self.device)

    @property
    def imputed_total(self) -> int:
        """Missing values replaced by the key's own prediction so far."""
        return int(self._imputed.item())

    def swap_model(self, model: Forecaster, version: str) -> None:
        """Replace the forecaster with a compatible one (same state layout); raises ValueError if not."""
        old, new = state_fields(self.model), state_fields(model)
        if old != new or model.input_size != self.model.input_size:
            raise ValueError(
                f"model {version}: state layout {new['hidden'].shape} with {model.n_values} values and "
                f"input size {model.input_size} is incompatible with the live state "
                f"{old['hidden'].shape} with {self.model.n_values} values and input size {self.model.input_size}"
            )
        self.model = model.to(self.device).eval()
        self.model_version = version

    def process(self, keys: Sequence[str], times: np.ndarray, values: np.ndarray) -> Results:
        """Score a batch of events in arrival order.

        Inputs: keys (N,) strings; times (N,) float64 epoch seconds; values (N, F) float, NaN where
        missing. Output: :class:`Results`.
        """
        n = len(keys)
        times = np.asarray(times, dtype=np.float64)
        values = np.asarray(values, dtype=np.float32)
        if values.ndim == 1:
            values = values[:, None]
        if times.shape != (n,) or values.shape != (n, self.n_values):
            raise ValueError(
                f"times must have shape ({n},) and values ({n}, {self.n_values}), "
                f"got {times.shape} and {values.shape}"
            )
        if n and len(set(keys)) > self.store.max_keys:
            half = n // 2
            a = self.process(keys[:half], times[:half], values[:half])
            b = self.process(keys[half:], times[half:], values[half:])
            return Results(*(np.concatenate([x, y]) for x, y in zip(vars(a).values(), vars(b).values(), strict=True)))
        rows = self.store.rows(keys)  # (N,)
        order, bounds = wave_order(rows)
        dev = self.device
        rows_d = torch.as_tensor(rows, device=dev)  # (N,)
        times_d = torch.as_tensor(times, device=dev)  # (N,)
        vals_d = torch.as_tensor(values, device=dev)  # (N, F)
        cal_d = torch.as_tensor(calendar_features(times), device=dev) if self.calendar else None  # (N, 4)
        order_d = torch.as_tensor(order, device=dev)  # (N,)
        out = {
            "prediction": torch.empty(n, self.n_values, device=dev),
            "scale": torch.empty(n, self.n_values, device=dev),
            "error": torch.empty(n, device=dev),
            "score": torch.empty(n, device=dev),
            "flag": torch.empty(n, dtype=torch.bool, device=dev),
            "late": torch.empty(n, dtype=torch.bool, device=dev),
            "dropped": torch.empty(n, dtype=torch.bool, device=dev),
        }
        with torch.no_grad():
            for w in range(len(bounds) - 1):
                idx = order_d[bounds[w] : bounds[w + 1]]  # (n_w,)
                self._wave(idx, rows_d[idx], times_d[idx], vals_d[idx], cal_d[idx] if cal_d is not None else None, out)
        host = {k: v.cpu().numpy() for k, v in out.items()}
        return Results(**host)

    def _wave(
        self,
        idx: Tensor,
        r: Tensor,
        t: Tensor,
        x: Tensor,
        cal: Tensor | None,
        out: dict[str, Tensor],
    ) -> None:
        cfg = self.config
        st = self.store.tensors
        hidden = st["hidden"][r]  # (n, L, S, H)
        norm = st["norm"][r]  # (n, 3, F)
        pred = st["pred"][r]  # (n, 2, F)
        sc_state = st["scorer"][r]  # (n, 4)
        track = st["track"][r]  # (n, 3, F)
        steps = st["steps"][r]  # (n,)
        last_alert = st["last_alert"][r]  # (n,)
        last_ts = st["last_ts"][r]  # (n,)

        late = t < last_ts  # (n,)
        active = ~late if self.drop_late else torch.ones_like(late)  # (n,)
        z, mean, std = normalize(norm, x, cfg.features.clip)  # (n, F) each
        mu, sigma = pred[:, 0], pred[:, 1]  # (n, F) each
        has_pred = steps > 0  # (n,)
        e, u = scoring.relative_error(z, mu, sigma, track)  # (n,), (n, F)
        e = e * has_pred  # (n,)
        score, short = scoring.score(sc_state, e, cfg.scoring)  # (n,) each
        beyond = scoring.out_of_range(x, track, cfg.scoring.range_margin)  # (n,)
        score = torch.where(beyond, torch.clamp(score, min=cfg.scoring.range_score), score)  # (n,)
        score = torch.where(steps >= cfg.scoring.warmup, score, torch.zeros_like(score))  # (n,)
        flag = scoring.flag(score, steps, last_alert, cfg.scoring) & active  # (n,)
        learn = active & ~flag  # (n,)
        new_sc = scoring.update(sc_state, short, learn & has_pred, cfg.scoring)  # (n, 4)
        new_track = scoring.update_track(track, x, u, learn & has_pred, learn, cfg.scoring.error_horizon)  # (n, 3, F)
        new_norm = update_normalizer(norm, x, cfg.features.normalizer_horizon, learn)  # (n, 3, F)

        missing = torch.isnan(z)  # (n, F)
        self._imputed += (missing & active.unsqueeze(1)).sum()
        # A flagged event reaches the hidden state as the key's own prediction, like a missing value:
        # one wild reading must not throw the next predictions off (nor become normal).
        z_in = torch.where(missing | flag.unsqueeze(1), mu, z)  # (n, F)
        inp = torch.cat([z_in, cal], dim=1) if cal is not None else z_in  # (n, I)
        mu1, sigma1, hidden1 = self.model.step(inp, hidden)  # (n, F), (n, F), (n, L, S, H)

        if self.drop_late:
            a = active  # (n,)
            hidden1 = torch.where(a.view(-1, 1, 1, 1), hidden1, hidden)
            pred1 = torch.where(a.view(-1, 1, 1), torch.stack([mu1, sigma1], dim=1), pred)
            new_norm = torch.where(a.view(-1, 1, 1), new_norm, norm)
            new_sc = torch.where(a.view(-1, 1), new_sc, sc_state)
            new_track = torch.where(a.view(-1, 1, 1), new_track, track)
            steps1 = steps + a.long()
        else:
            pred1 = torch.stack([mu1, sigma1], dim=1)  # (n, 2, F)
            steps1 = steps + 1
        st["hidden"][r] = hidden1
        st["pred"][r] = pred1
        st["norm"][r] = new_norm
        st["scorer"][r] = new_sc
        st["track"][r] = new_track
        st["steps"][r] = steps1
        st["last_alert"][r] = torch.where(flag, steps, last_alert)
        st["last_ts"][r] = torch.where(active, torch.maximum(last_ts, t), last_ts)

        nan = torch.full_like(mu, float("nan"))
        out["prediction"][idx] = torch.where(has_pred.unsqueeze(1), mean + std * mu, nan)
        out["scale"][idx] = torch.where(has_pred.unsqueeze(1), std * sigma, nan)
        out["error"][idx] = e
        out["score"][idx] = score
        out["flag"][idx] = flag
        out["late"][idx] = late
        out["dropped"][idx] = ~active

    def snapshot(self, keys: Sequence[str] | None = None, extra: dict | None = None) -> bytes:
        meta = {"model_version": self.model_version, "imputed_total": self.imputed_total}
        return self.store.snapshot(keys, extra={**meta, **(extra or {})})

    def restore(self, data: bytes) -> dict:
        return self.store.restore(data)
