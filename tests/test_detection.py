"""Detection: online adaptation, the false-alert budget and each anomaly type, on generated data.

The shipped demo model (trained on generated sensor and energy streams) is the forecaster; the
streams here are made by the tests themselves.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamrnn.config import Config, load_config, set_dotted
from streamrnn.detector.engine import Engine, Results
from streamrnn.detector.modeldir import load_model
from streamrnn.tools import demo_model

T0 = 1.7e9
STEP = 300.0  # seconds between readings


@pytest.fixture(scope="module")
def loaded():  # type: ignore[no-untyped-def]
    return load_model(demo_model.path())


def config(loaded, **overrides: object) -> Config:  # type: ignore[no-untyped-def]
    raw = loaded.config.to_dict()
    for k, v in overrides.items():
        set_dotted(raw, k.replace("__", "."), v)
    return load_config(raw)


def daily(n: int, rng: np.random.Generator, noise: float = 0.1) -> np.ndarray:
    """A daily cycle (288 readings a day) with Gaussian noise: (n,) float64."""
    i = np.arange(n)
    return 10.0 + np.sin(2 * np.pi * i / 288) + noise * rng.standard_normal(n)


def run(engine: Engine, values: np.ndarray, batch: int = 1000) -> Results:
    """Stream ``values`` (K, T) as K keys interleaved in time order through ``engine``."""
    k, t = values.shape
    keys = [f"k{j}" for _ in range(t) for j in range(k)]
    times = np.repeat(T0 + STEP * np.arange(t), k)
    flat = values.T.reshape(-1, 1).astype(np.float32)
    parts = [
        engine.process(keys[s : s + batch], times[s : s + batch], flat[s : s + batch])
        for s in range(0, len(keys), batch)
    ]
    cols = zip(*(vars(p).values() for p in parts), strict=True)
    return Results(*(np.concatenate(c) for c in cols))


def per_key(a: np.ndarray, k: int) -> np.ndarray:
    return a.reshape(-1, k).T  # (K, T)


def test_adaptation_lowers_the_error_on_a_key_whose_level_moves_slowly(loaded) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    n = 3000
    # The level climbs 10 daily amplitudes over the stream (a thirtieth of the noise per reading):
    # slower than any anomaly, faster than the per-key normaliser's memory.
    values = (daily(n, rng) + np.linspace(0.0, 10.0, n))[None, :]
    errors = {}
    for on in (True, False):
        r = run(Engine(loaded.model, config(loaded, adapt__enabled=on)), values)
        pred = r.prediction[:, 0]
        errors[on] = float(np.nanmean(np.abs(values[0, 300:] - pred[300:])))
    assert errors[True] < 0.9 * errors[False], errors


def test_a_flagged_event_teaches_the_key_nothing(loaded) -> None:  # type: ignore[no-untyped-def]
    """A flagged reading changes the normaliser, the profile, the corrector and the recurrent state
    exactly as a missing reading does: not at all, but for the forecast it stands in for."""
    rng = np.random.default_rng(4)
    history = daily(600, rng)[None, :]
    a, b = (Engine(loaded.model, config(loaded)) for _ in range(2))
    run(a, history)
    run(b, history)
    t = T0 + STEP * 600
    spike = a.process(["k0"], np.array([t]), np.array([[60.0]], dtype=np.float32))
    gap = b.process(["k0"], np.array([t]), np.array([[np.nan]], dtype=np.float32))
    assert spike.flag[0] and not gap.flag[0]
    for name in ("norm", "adapt", "profile", "hidden", "pred"):
        np.testing.assert_array_equal(
            a.store.tensors[name][0].numpy(), b.store.tensors[name][0].numpy(), err_msg=name
        )


def test_the_realised_false_alert_rate_is_within_2x_of_the_configured_one(loaded) -> None:  # type: ignore[no-untyped-def]
    """Pooled over 40 clean keys, at a rate high enough to count in seconds (no cool-down, which
    would cap the rate at 1 / cooldown)."""
    rng = np.random.default_rng(5)
    k, n, warm = 40, 2500, 150
    values = np.stack([daily(n, rng, noise=0.05 + 0.1 * (j % 4)) * (1 + j) for j in range(k)])
    rate = 1e-2
    cfg = config(loaded, scoring__false_alert_rate=rate, scoring__cooldown=0)
    flags = per_key(run(Engine(loaded.model, cfg), values).flag, k)[:, warm:]
    realised = flags.mean()
    assert rate / 2 <= realised <= 2 * rate, realised


def _flagged_within(flag: np.ndarray, start: int, delay: int) -> bool:
    return bool(flag[start : start + delay].any())


@pytest.mark.parametrize(
    ("kind", "delay"),
    [
        ("spike", 1),
        ("level_shift", 10),
        ("variance", 150),
        ("stuck", 20),
        ("drift", 300),
        ("missing", 20),
    ],
)
def test_each_anomaly_type_is_flagged_at_strong_intensity(loaded, kind: str, delay: int) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(6)
    k, n, at = 8, 1600, 1000
    values = np.stack([daily(n, rng) for _ in range(k)])  # noise 0.1, daily amplitude 1
    if kind == "spike":
        values[:, at] += 3.0
    elif kind == "level_shift":
        values[:, at:] += 1.5
    elif kind == "variance":
        values[:, at:] += 0.4 * rng.standard_normal((k, n - at))
    elif kind == "stuck":
        values[:, at:] = values[:, at - 1 : at]
    elif kind == "drift":
        values[:, at:] += np.minimum(np.arange(n - at) / 200.0, 1.0) * 3.0  # 3 amplitudes in 200
    elif kind == "missing":
        values[:, at : at + 40] = np.nan
    flag = per_key(run(Engine(loaded.model, config(loaded)), values).flag, k)
    # 6,400 clean events before the anomaly: 0.64 flags expected at the default 1e-4.
    assert flag[:, 200:at].sum() <= 2, np.argwhere(flag[:, 200:at])
    caught = [_flagged_within(f, at, delay) for f in flag]
    assert all(caught), caught


def test_missing_values_among_a_keys_first_readings_are_imputed_and_counted(loaded) -> None:  # type: ignore[no-untyped-def]
    engine = Engine(loaded.model, config(loaded))
    values = np.array([[np.nan], [np.nan], [10.0], [10.5]], dtype=np.float32)
    r = engine.process(["k"] * 4, T0 + STEP * np.arange(4), values)
    assert engine.imputed_total == 2
    assert torch.isfinite(engine.store.tensors["hidden"]).all() and np.isfinite(r.score).all()
