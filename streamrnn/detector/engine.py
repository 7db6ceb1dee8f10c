"""The streaming engine: a batch of events in, per-event predictions, scores and flags out.

A batch is split into waves so that each key appears at most once per wave and a key's events go
in arrival order, one step each. Every statistic a key owns lives in the state store, so the result
for an event depends only on the events of its key before it: the same stream gives the same scores
however it is cut into batches.

Per batch: keys to rows and the wave order on the host, then the batch (rows, times, values,
calendar inputs) goes to the device in one copy: on the CPU gathered into wave order by the host;
on a GPU written as it came into a page-locked buffer, copied without blocking, with the wave order
beside it, and gathered on the device. Per wave: one gather of the keys' packed
state rows per bank (:class:`~streamrnn.state.StateStore`), the scoring and one batched recurrent
step writing straight into a fresh row buffer, one scatter back. Results stay on the device in wave
order until one copy back, put in arrival order by the host (CPU) or by the device before a
non-blocking copy into a page-locked buffer (GPU): the batch's one wait for the device. No
per-event Python on the way, and no host synchronisation inside a wave.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..config import Config
from . import adapt, calibrate, scoring, views
from .features import (
    N_CALENDAR,
    calendar_features,
    covariate_inputs,
    normalize,
    outliers,
    update_normalizer,
)
from .host import Staging, intra_op_threads, tune_malloc
from .model import Forecaster
from .state import FieldSpec, StateStore
from .waves import wave_order

log = logging.getLogger(__name__)

# Columns of the per-event result buffer; prediction (F) and scale (F) follow.
_ERROR, _SCORE, _FLAG, _LATE, _DROPPED, _SINCE = range(6)
_OUT_COLS = 6
# On CPU a batch smaller than this runs on one intra-op thread: its ops are too small to gain from
# more, and OpenMP's spinning helper threads steal the cores the Kafka client and broker need.
_PARALLEL_MIN_EVENTS = 8192
# On CPU a wide wave is stepped in slices of this many keys (its rows are independent): the
# temporaries stay in cache and below the sizes the allocator maps and unmaps page by page.
CPU_WAVE_SLICE = 4096


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
    # (N,) int64 the key's events since its last flagged one, after this event (0: this one was
    # flagged; -1: never flagged): how the alert sinks learn that a key recovered.
    since_flag: np.ndarray

    def __len__(self) -> int:
        return len(self.score)


def state_fields(model: Forecaster, config: Config) -> dict[str, FieldSpec]:
    """The per-key state: the recurrent state, the normaliser, the pending prediction, the
    adaptation (adapt.py), the views' records (views.py), their calibration (calibrate.py); for
    a model with covariates, their normaliser and last readings (absent without, so such a
    model's state is laid out as before covariates existed)."""
    f = model.n_values
    bins = max(config.adapt.profile_bins, 1)
    c = model.n_covariates
    covariates = {  # count, mean, var; the last sane raw reading; the last event's target input
        "cnorm": FieldSpec((3, c), torch.float32),
        "clast": FieldSpec((c,), torch.float32, init=math.nan),
        "zprev": FieldSpec((f,), torch.float32),
    }
    return {
        "hidden": FieldSpec((model.num_layers, model.slots, model.hidden_size), torch.float32),
        "norm": FieldSpec((3, f), torch.float32),  # count, mean, var per feature
        "pred": FieldSpec(
            (2, f), torch.float32, init=(0.0, 1.0)
        ),  # pending prediction: mean, scale (normalised)
        "adapt": FieldSpec((adapt.N_ADAPT, f), torch.float32, init=adapt.ADAPT_INIT),
        "profile": FieldSpec((bins, f), torch.float32, init=math.nan),
        "track": FieldSpec((views.N_TRACK, f), torch.float32, init=views.TRACK_INIT),
        "keyrec": FieldSpec((views.N_KEYREC,), torch.float32, init=views.KEYREC_INIT),
        "calib": FieldSpec(
            (calibrate.N_CALIB, views.N_VIEWS), torch.float32, init=calibrate.CALIB_INIT
        ),
        "steps": FieldSpec((), torch.int64),
        "last_alert": FieldSpec((), torch.int64, init=-1.0),
        "last_ts": FieldSpec((), torch.float64, init=float("-inf")),
        **(covariates if c else {}),
    }


# What a snapshot must hold to be restored; fields it lacks (from an older version) start fresh.
REQUIRED_FIELDS = frozenset({"hidden", "norm", "pred", "steps", "last_alert", "last_ts"})


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
        if self.device.type == "cpu":
            tune_malloc()
        self.model = model.to(self.device).eval()
        self.model_version = model_version
        own = model.n_values + model.n_covariates
        self.calendar = model.input_size - own == N_CALENDAR
        if not self.calendar and model.input_size != own:
            raise ValueError(
                f"model input size must be n_values + n_covariates ({own}) or that + "
                f"{N_CALENDAR}, got {model.input_size}"
            )
        self.n_values = model.n_values
        self.n_covariates = model.n_covariates
        self.n_inputs = own  # the columns of ``values``: targets, then covariates
        self.store = StateStore(
            state_fields(model, config),
            max_keys=config.state.max_keys,
            initial_capacity=config.state.initial_capacity,
            device=self.device,
        )
        self.drop_late = config.input.late_events == "drop"
        self._imputed = torch.zeros((), dtype=torch.int64, device=self.device)
        self._outliers = torch.zeros((), dtype=torch.int64, device=self.device)
        self._caps = torch.tensor(views.EXCESS_CAPS, device=self.device)
        self._guarded = torch.tensor(views.GUARDED, device=self.device)
        self._nan = torch.tensor(float("nan"), device=self.device)
        self._cov_views = torch.tensor(views.WITH_COVARIATES, device=self.device)
        self._layout = {
            name: (*self.store.field_slice(name), spec.dtype, spec.shape)
            for name, spec in self.store.specs.items()
        }
        # Page-locked host buffers for the batch's two copies, on a CUDA device only.
        self._staging = Staging(self.device) if self.device.type == "cuda" else None

    @property
    def imputed_total(self) -> int:
        """Missing values replaced by the key's own prediction (a target) or its last reading
        (a covariate) so far."""
        return int(self._imputed.item())

    @property
    def outliers_total(self) -> int:
        """Readings too far from their key's record to learn from (imputed, but scored) so far."""
        return int(self._outliers.item())

    def swap_model(self, model: Forecaster, version: str) -> None:
        """Replace the forecaster with a compatible one (same state layout); raises ValueError if not."""
        old, new = state_fields(self.model, self.config), state_fields(model, self.config)
        if old != new or model.input_size != self.model.input_size:
            raise ValueError(
                f"model {version}: state layout {new['hidden'].shape} with {model.n_values} values, "
                f"{model.n_covariates} covariates and input size {model.input_size} is incompatible "
                f"with the live state {old['hidden'].shape} with {self.model.n_values} values, "
                f"{self.model.n_covariates} covariates and input size {self.model.input_size}"
            )
        self.model = model.to(self.device).eval()
        self.model_version = version

    def process(self, keys: Sequence[str], times: np.ndarray, values: np.ndarray) -> Results:
        """Score a batch of events in arrival order.

        Inputs: keys (N,) strings; times (N,) float64 epoch seconds; values (N, F + C) float, the
        F targets then the C covariates (none for a model without), NaN where missing.
        Output: :class:`Results`, which covers the targets only.
        """
        n = len(keys)
        times = np.asarray(times, dtype=np.float64)
        values = np.asarray(values, dtype=np.float32)
        if values.ndim == 1:
            values = values[:, None]
        if times.shape != (n,) or values.shape != (n, self.n_inputs):
            raise ValueError(
                f"times must have shape ({n},) and values ({n}, {self.n_inputs}), "
                f"got {times.shape} and {values.shape}"
            )
        if n > self.store.max_keys and len(set(keys)) > self.store.max_keys:
            half = n // 2
            a = self.process(keys[:half], times[:half], values[:half])
            b = self.process(keys[half:], times[half:], values[half:])
            return Results(
                *(
                    np.concatenate([x, y])
                    for x, y in zip(vars(a).values(), vars(b).values(), strict=True)
                )
            )
        f = self.n_values
        rows = self.store.rows(keys)  # (N,)
        order, bounds = wave_order(rows)
        rows_d, times_d, inputs, order_d = self._to_device(rows, order, times, values)
        out = torch.empty(n, _OUT_COLS + 2 * f, device=self.device)  # (N, 6 + 2F), wave order
        bnd = bounds.tolist()
        with torch.no_grad(), intra_op_threads(self._threads_for(n)):
            for lo, hi in self._slices(bnd):
                self._wave(rows_d[lo:hi], times_d[lo:hi], inputs[lo:hi], out[lo:hi])
        host = self._to_host(out, order, order_d)  # (6 + 2F, N), arrival order
        return Results(
            prediction=host[_OUT_COLS : _OUT_COLS + f].T.copy(),
            scale=host[_OUT_COLS + f :].T.copy(),
            error=host[_ERROR].copy() if self._staging else host[_ERROR],
            score=host[_SCORE].copy() if self._staging else host[_SCORE],
            flag=host[_FLAG] != 0,
            late=host[_LATE] != 0,
            dropped=host[_DROPPED] != 0,
            since_flag=host[_SINCE].astype(np.int64),
        )

    def _to_device(
        self, rows: np.ndarray, order: np.ndarray, times: np.ndarray, values: np.ndarray
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """The batch on the device in wave order, in one copy: rows (N,) int64, times (N,)
        float64, inputs (N, F + C [+ 4]) float32 (targets, covariates, then calendar features),
        and on a CUDA device the wave order itself (N,) (else None)."""
        f = self.n_inputs
        n = len(rows)
        width = 2 + f + (N_CALENDAR if self.calendar else 0)
        if self._staging is None:
            # On the CPU the host gathers into wave order; the "copy" is a view.
            packed = np.empty((n, width), dtype=np.float64)  # (N, C)
            packed[:, 0] = rows[order]
            packed[:, 1] = times[order]
            packed[:, 2 : 2 + f] = values[order]
            if self.calendar:
                packed[:, 2 + f :] = calendar_features(times[order])
            batch = torch.as_tensor(packed)  # (N, C)
            order_d = None
        else:
            # On a GPU the host writes the batch as it came into page-locked memory (no gather
            # on the host), the copy does not block, and the device puts it in wave order.
            staged = self._staging.inbound(n, width + 1)  # (N, C + 1) float64, pinned
            packed = staged.numpy()
            packed[:, 0] = rows
            packed[:, 1] = times
            packed[:, 2 : 2 + f] = values
            if self.calendar:
                packed[:, 2 + f : width] = calendar_features(times)
            packed[:, width] = order
            arrival = staged.to(self.device, non_blocking=True)  # (N, C + 1)
            self._staging.sent()
            order_d = arrival[:, width].long()  # (N,)
            batch = arrival.index_select(0, order_d)  # (N, C + 1), wave order
        return batch[:, 0].long(), batch[:, 1], batch[:, 2:width].float(), order_d

    def _to_host(self, out: Tensor, order: np.ndarray, order_d: Tensor | None) -> np.ndarray:
        """The results ``out`` (N, 6 + 2F) of the waves, in wave order, as a host array
        (6 + 2F, N) in arrival order. On a GPU: put back in arrival order and transposed on the
        device, one non-blocking copy into page-locked memory, and the batch's one wait."""
        n, cols = out.shape
        if self._staging is None or order_d is None:
            host = np.empty((cols, n), dtype=np.float32)  # (6 + 2F, N)
            host[:, order] = out.numpy().T  # back to arrival order, one row per column
            return host
        arrival = torch.empty_like(out).index_copy_(0, order_d, out)  # (N, 6 + 2F)
        return self._staging.outbound(arrival.T.contiguous())  # (6 + 2F, N)

    def step_wave(
        self, rows: Tensor, times: Tensor, values: Tensor, calendar: Tensor | None = None
    ) -> Tensor:
        """One wave on the device, without the host: the state rows ``rows`` (W,) (distinct, resident)
        take one step with ``times`` (W,) float64, ``values`` (W, F + C) and ``calendar`` (W, 4) when
        the model takes calendar inputs. Returns the wave's results (W, 6 + 2F) on the device:
        error, score, flag, late, dropped, events since the last flag, then prediction (F) and
        scale (F).
        For benchmarks and custom drivers; :meth:`process` is the way in for keyed events.
        """
        n = rows.shape[0]
        if self.calendar and calendar is not None:
            values = torch.cat([values, calendar], dim=1)
        out = torch.empty(n, _OUT_COLS + 2 * self.n_values, device=self.device)
        with torch.no_grad(), intra_op_threads(self._threads_for(n)):
            for lo, hi in self._slices([0, n]):
                self._wave(rows[lo:hi], times[lo:hi], values[lo:hi], out[lo:hi])
        return out

    def _slices(self, bounds: list[int]) -> Iterator[tuple[int, int]]:
        """The waves between ``bounds``; on CPU a wave wider than ``CPU_WAVE_SLICE`` in slices."""
        step = CPU_WAVE_SLICE if self.device.type == "cpu" else 0
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            if not step or hi - lo <= step:
                yield lo, hi
                continue
            for a in range(lo, hi, step):
                yield a, min(hi, a + step)

    def _threads_for(self, n: int) -> int:
        """Intra-op threads for a batch of ``n`` events: one below ``_PARALLEL_MIN_EVENTS`` on CPU."""
        if self.device.type != "cpu" or n >= _PARALLEL_MIN_EVENTS:
            return 0  # leave torch's setting alone
        return 1

    def _wave(self, r: Tensor, t: Tensor, inputs: Tensor, out: Tensor) -> None:
        """One wave: every row of ``r`` (n,) at most once. ``t`` (n,) float64 event times;
        ``inputs`` (n, F + C [+ 4]) raw targets, raw covariates, then calendar features; ``out``
        (n, 6 + 2F) receives the results (columns as in :meth:`step_wave`)."""
        # The hot path, deliberately one function (about 130 lines): its stages (forecast, views,
        # calibration, flag, learning, step) share two dozen per-wave tensors that would otherwise
        # cross function boundaries as arguments each wave. Each stage is a module of its own
        # (adapt, views, calibrate, scoring, features, model); this only wires them.
        cfg = self.config
        sc, ad = cfg.scoring, cfg.adapt
        f = self.n_values
        fc = self.n_inputs
        n = r.shape[0]
        banks = self.store.banks
        rows = [bank.index_select(0, r) for bank in banks]  # one gather per bank: (n, width) each
        # The rows after this event, every column written below, scattered back at once.
        new_rows = [torch.empty_like(x) for x in rows]
        old, new = self._fields_of(rows, n), self._fields_of(new_rows, n)
        hidden, norm, pred = old["hidden"], old["norm"], old["pred"]
        steps, last_alert, last_ts = old["steps"], old["last_alert"], old["last_ts"]
        x = inputs[:, :f]  # (n, F) the targets: everything below scores these alone
        cal = inputs[:, fc:] if self.calendar else None  # (n, 4)

        late = t < last_ts  # (n,)
        active = ~late if self.drop_late else torch.ones_like(late)  # (n,) stepped events
        wild = outliers(norm, x, cfg.features.outlier_factor, cfg.features.max_magnitude)  # (n, F)
        z, mean, std = normalize(norm, x, cfg.features.clip)  # (n, F) each; an outlier at +-clip
        if fc > f:
            # Covariates: this event's covariates and the last target input forecast it (design.md).
            parts = [old["zprev"], self._covariates(old, new, inputs[:, f:fc], active)]
            pred = new["pred"]  # (n, 2, F) this event's forecast, fresh
            inp = torch.cat(parts + ([cal] if cal is not None else []), dim=1)  # (n, I)
            self.model.step(
                inp, hidden, out=new["hidden"], mean_out=pred[:, 0], scale_out=pred[:, 1]
            )
        mu, sigma = pred[:, 0], pred[:, 1]  # (n, F) each
        has_pred = steps > 0  # (n,)

        # The key's own forecast: the shared model's, corrected by what the key has learned.
        b = adapt.profile_bin(t, ad.profile_bins)  # (n,)
        pv = (
            (adapt.profile_value(old["profile"], b) - mean) / std
            if ad.profile_bins
            else torch.zeros_like(mu)
        )  # (n, F) normalised, NaN where the bin was never visited
        phi = adapt.regressors(old["adapt"], mu, torch.where(torch.isnan(pv), mu, pv))  # (n, F, 4)
        zhat = adapt.forecast(old["adapt"], phi, ad)  # (n, F)

        # The views, their evidence against the key's tails, one combined score.
        z_seen = torch.where(has_pred.unsqueeze(1), z, torch.nan)  # (n, F): nothing to judge yet
        record = active & (steps >= cfg.features.normalizer_warmup)  # (n,) the records learn
        s_feat, g, same, missing = views.per_feature(
            old["track"],
            z_seen,
            zhat,
            sigma,
            pv,
            x,
            sc.error_horizon,
            record,
            sc.evidence_threshold * math.log(10.0),
            out=new["track"],
        )  # (n, 5), (n, F), (n,), (n,)
        calib = old["calib"]  # (n, 3, V)
        c_instant = calibrate.evidence(calib[:, :, : views.INSTANT + 1], s_feat[:, :1])[
            :, 0
        ]  # (n,)
        s_key = views.per_key(
            old["keyrec"], c_instant, same, missing, sc.error_horizon, record, out=new["keyrec"]
        )  # (n, 3)
        s = torch.cat([s_feat, s_key], dim=1)  # (n, V)
        if fc > f:
            s = s * self._cov_views  # (n, V) the covariates explain the reading's level (views.py)
        c = calibrate.evidence(calib, s)  # (n, V)
        evidence = scoring.combine(c, sc) * (steps >= sc.warmup)  # (n,)
        score = scoring.score(evidence)  # (n,)
        flag = scoring.flag(evidence, steps, last_alert, sc) & active  # (n,)
        # An event that looks anomalous teaches the binomial views' tails nothing (views.GUARDED).
        quiet = (evidence < sc.evidence_threshold).unsqueeze(1) | ~self._guarded  # (n, V)
        calibrate.update(
            calib,
            s,
            self._caps,
            old["keyrec"][:, views.SEEN],
            record.unsqueeze(1) & quiet,
            sc.calibration_prior,
            sc.calibration_horizon,
            out=new["calib"],
        )

        # What the key learns from: present, sane readings of unflagged, stepped events.
        learn = active & ~flag  # (n,)
        missing_f = torch.isnan(x)  # (n, F)
        sane = ~missing_f & ~wild  # (n, F)
        teach = sane & learn.unsqueeze(1)  # (n, F)
        update_normalizer(
            norm,
            torch.where(wild, torch.nan, x),
            cfg.features.normalizer_horizon,
            learn,
            out=new["norm"],
        )
        # A flagged, missing or outlier reading reaches the hidden state as the key's own forecast:
        # one wild reading must not throw the next predictions off (nor become normal).
        z_in = torch.where(sane & ~flag.unsqueeze(1), z, zhat)  # (n, F)
        adapt.update(
            old["adapt"], phi, z, zhat, z_in, teach & has_pred.unsqueeze(1), ad, out=new["adapt"]
        )
        if ad.profile_bins:
            # Only readings normalised by a warm normaliser shape the profile.
            adapt.update_profile(
                old["profile"],
                b,
                x,
                old["adapt"][:, adapt.COUNT],
                teach & record.unsqueeze(1),
                out=new["profile"],
            )
        else:
            new["profile"].zero_()
        self._imputed += (~sane & active.unsqueeze(1)).sum()
        self._outliers += (wild & active.unsqueeze(1)).sum()
        if fc > f:
            new["zprev"].copy_(z_in)  # the next event's step takes it
        else:
            # Without covariates this event's input gives the next event's forecast.
            inp = torch.cat([z_in, cal], dim=1) if cal is not None else z_in  # (n, I)
            new_pred = new["pred"]  # (n, 2, F)
            self.model.step(
                inp, hidden, out=new["hidden"], mean_out=new_pred[:, 0], scale_out=new_pred[:, 1]
            )

        torch.add(steps, 1, out=new["steps"])
        torch.where(flag, steps, last_alert, out=new["last_alert"])
        torch.maximum(last_ts, t, out=new["last_ts"])
        if self.drop_late:
            # A dropped event leaves its key's state as it was (the step count included).
            for old_b, new_b in zip(rows, new_rows, strict=True):
                torch.where(active.unsqueeze(1), new_b, old_b, out=new_b)
        for bank, new_b in zip(banks, new_rows, strict=True):
            bank.index_copy_(0, r, new_b)

        rms = torch.sqrt(old["track"][:, views.Q])  # (n, F) the key's RMS standardised error
        e = g.sum(dim=1) / (~missing_f).sum(dim=1).clamp_min(1)  # (n,)
        hp = has_pred.unsqueeze(1)  # (n, 1)
        torch.where(hp, mean + std * zhat, self._nan, out=out[:, _OUT_COLS : _OUT_COLS + f])
        torch.where(hp, std * sigma * rms, self._nan, out=out[:, _OUT_COLS + f :])
        out[:, _ERROR] = e * has_pred
        out[:, _SCORE] = score
        out[:, _FLAG] = flag
        out[:, _LATE] = late
        out[:, _DROPPED] = ~active
        # Events since the last flag as the state holds it now (a dropped event left it as it was).
        kept_steps, kept_alert = new["steps"], new["last_alert"]
        out[:, _SINCE] = torch.where(kept_alert >= 0, kept_steps - 1 - kept_alert, -1)

    def _covariates(
        self, old: dict[str, Tensor], new: dict[str, Tensor], cov: Tensor, active: Tensor
    ) -> Tensor:
        """The covariates' model input (n, C) by :func:`covariate_inputs`, counted."""
        z, imputed, wild = covariate_inputs(
            old["cnorm"], old["clast"], cov, active, self.config.features,
            out=(new["cnorm"], new["clast"]),
        )  # fmt: skip
        self._imputed += imputed
        self._outliers += wild
        return z

    def _fields_of(self, rows: list[Tensor], n: int) -> dict[str, Tensor]:
        """Views of each state field in gathered rows (one (n, width) tensor per bank)."""
        out = {}
        for name, (b, lo, hi, dtype, shape) in self._layout.items():
            cols = rows[b][:, lo:hi]
            if cols.dtype != dtype:
                cols = cols.view(dtype)
            out[name] = cols.view(n, *shape) if shape != (hi - lo,) else cols
        return out

    def snapshot(self, keys: Sequence[str] | None = None, extra: dict | None = None) -> bytes:
        meta = {"model_version": self.model_version, "imputed_total": self.imputed_total}
        return self.store.snapshot(keys, extra={**meta, **(extra or {})})

    def restore(self, data: bytes) -> dict:
        return self.store.restore(data, required=REQUIRED_FIELDS)
