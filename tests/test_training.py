"""Training (inputs, TBPTT, early stopping), the model directory and the ``train`` command."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from streamrnn.config import Config, load_config
from streamrnn.detector.features import N_CALENDAR, normalize_series
from streamrnn.detector.modeldir import load_model, resolve_device, save_model
from streamrnn.offline.data import Series, load_series
from streamrnn.offline.training import (
    TrainResult,
    _lanes,
    _prepare,
    add_arguments,
    build_inputs,
    run,
    train,
)

SMALL = {
    "model": {"hidden_size": 16, "num_layers": 1, "dropout": 0.0},
    "features": {"normalizer_warmup": 16},
    "training": {
        "epochs": 6,
        "window": 32,
        "stride": 16,
        "batch_size": 8,
        "learning_rate": 0.01,
        "patience": 6,
        "seed": 3,
    },
}


def _sine(key: str, n: int, phase: float, seed: int) -> Series:
    rng = np.random.default_rng(seed)
    i = np.arange(n)
    values = 10 + 3 * np.sin(2 * np.pi * i / 48 + phase) + rng.normal(0, 0.2, n)  # (N,)
    times = 1_436_000_000.0 + 600.0 * i  # (N,)
    return Series(
        key=key,
        relpath=f"{key}.csv",
        timestamps=[str(int(t)) for t in times],
        times=times,
        values=values.astype(np.float32)[:, None],  # (N, 1)
        feature_names=("value",),
    )


def _data() -> list[Series]:
    return [_sine(f"s{k}", 600, phase=k, seed=k) for k in range(3)]


def _config(**training: object) -> Config:
    raw = json.loads(json.dumps(SMALL))
    raw["training"].update(training)
    return load_config(raw)


def _write_csv(path: Path, s: Series) -> None:
    lines = ["timestamp,value"] + [
        f"{t},{v:.5f}" for t, v in zip(s.timestamps, s.values[:, 0], strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def trained() -> TrainResult:
    return train(_data(), _config(), device="cpu", progress=False)


def test_build_inputs_matches_the_streaming_normaliser() -> None:
    s = _sine("k", 80, 0.0, 0)
    s.values[10, 0] = np.nan
    s.values[0, 0] = np.nan
    cfg = _config()
    x, y, m = build_inputs(s, cfg)
    z = normalize_series(s.values[None], cfg.features.normalizer_horizon, cfg.features.clip)[
        0
    ]  # (T, 1)
    assert x.shape == (80, 1 + N_CALENDAR) and y.shape == (80, 1) and m.shape == (80, 1)
    assert x[0, 0] == 0.0  # nothing seen yet
    assert x[10, 0] == z[9, 0]  # forward fill
    np.testing.assert_array_equal(x[11:, 0], z[11:, 0])
    np.testing.assert_array_equal(y[20:-1, 0], z[21:, 0])  # target[t] = z[t + 1]
    assert not m[-1].any()  # the last row has no target
    assert not m[9, 0]  # its target is missing
    warm = cfg.features.normalizer_warmup
    assert not m[: warm - 1].any() and m[warm - 1 : -1].all()
    x2, _, _ = build_inputs(
        s, load_config({**SMALL, "model": {**SMALL["model"], "calendar": False}})
    )
    assert x2.shape == (80, 1)


def test_lanes_cover_the_training_part() -> None:
    prepared = _prepare(_data(), _config())
    rng = np.random.default_rng(0)
    for _ in range(5):
        lanes = _lanes(prepared, 128, rng)
        for i, p in enumerate(prepared):
            mine = [(a, b) for j, a, b in lanes if j == i]
            assert mine[0][0] == 0 and mine[-1][1] == p.n_train
            assert all(b1 == a2 for (_, b1), (a2, _) in zip(mine, mine[1:], strict=False))
            assert all(64 <= b - a < 192 for a, b in mine)


def test_training_lowers_the_validation_loss(trained: TrainResult) -> None:
    m = trained.metrics
    assert len(m["train_loss"]) == m["epochs_run"] == len(m["val_loss"])
    assert m["monitor"] == "val"
    assert m["best_val_loss"] == min(m["val_loss"])
    assert m["best_val_loss"] < m["initial_val_loss"] - 0.5
    assert m["best_val_loss"] < m["val_loss"][0]
    assert m["rows"] == 1800 and m["updates"] > 0 and m["steps_per_second"] > 0
    assert not trained.model.training
    assert next(trained.model.parameters()).device.type == "cpu"


def test_model_directory_round_trip(trained: TrainResult, tmp_path: Path) -> None:
    out = tmp_path / "model"
    version = save_model(
        out,
        trained.model,
        trained.config,
        feature_names=trained.feature_names,
        metrics=trained.metrics,
        data_summary=trained.data_summary,
    )
    assert version.startswith("lstm-")
    state = torch.load(out / "weights.pt", weights_only=True)
    assert set(state) == set(trained.model.state_dict())
    info = json.loads((out / "model.json").read_text())
    assert info["version"] == version and info["feature_names"] == ["value"]
    assert info["n_extra"] == N_CALENDAR and info["hidden_size"] == 16
    assert info["metrics"]["best_epoch"] == trained.metrics["best_epoch"]
    norm = json.loads((out / "normalization.json").read_text())
    assert norm["method"] == "online" and norm["warmup"] == 16
    assert math.isclose(norm["training_data"]["value"]["mean"], 10.0, abs_tol=0.2)

    loaded = load_model(out)
    assert loaded.version == version and loaded.feature_names == ("value",)
    assert loaded.config == trained.config and not loaded.model.training
    x = torch.randn(2, 50, 1 + N_CALENDAR)  # (B, T, I)
    with torch.no_grad():
        a = trained.model.sequence(x)
        b = loaded.model.sequence(x)
    for ta, tb in zip(a, b, strict=True):
        torch.testing.assert_close(ta, tb, atol=0, rtol=0)
    # the same weights and config give the same version
    assert (
        save_model(
            tmp_path / "again",
            loaded.model,
            loaded.config,
            feature_names=loaded.feature_names,
            metrics={},
            data_summary={},
        )
        == version
    )


def test_load_model_errors_name_the_directory_and_file(
    trained: TrainResult, tmp_path: Path
) -> None:
    out = tmp_path / "m"
    save_model(
        out, trained.model, trained.config, feature_names=("value",), metrics={}, data_summary={}
    )
    (out / "weights.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"weights\.pt: corrupt"):
        load_model(out)
    (out / "model.json").unlink()
    with pytest.raises(ValueError, match=r"'.*m': missing model\.json"):
        load_model(out)
    with pytest.raises(ValueError, match="not found"):
        load_model(tmp_path / "absent")


def test_training_is_deterministic_with_a_fixed_seed() -> None:
    data = [_sine("a", 400, 0.0, 0), _sine("b", 400, 1.0, 1)]
    cfg = load_config(
        {**SMALL, "model": {"hidden_size": 16, "num_layers": 2, "dropout": 0.2}},
        overrides={"training.epochs": 2},
    )
    r1 = train(data, cfg, device="cpu", progress=False)
    r2 = train(data, cfg, device="cpu", progress=False)
    for (k, v1), v2 in zip(
        r1.model.state_dict().items(), r2.model.state_dict().values(), strict=True
    ):
        assert torch.equal(v1, v2), k
    assert r1.metrics["val_loss"] == r2.metrics["val_loss"]


def test_gru_and_no_validation_split() -> None:
    cfg = load_config(
        SMALL, overrides={"model.cell": "gru", "training.epochs": 2, "training.val_fraction": 0.0}
    )
    r = train(_data()[:1], cfg, device="cpu", progress=False)
    assert r.metrics["monitor"] == "train"
    assert r.metrics["val_loss"] == [None, None] and r.metrics["initial_val_loss"] is None
    assert r.metrics["best_epoch"] in (1, 2)


def test_train_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one series"):
        train([], _config(), device="cpu", progress=False)
    with pytest.raises(ValueError, match="no training targets"):
        train([_sine("tiny", 10, 0.0, 0)], _config(), device="cpu", progress=False)
    other = _sine("o", 100, 0.0, 0)
    other.feature_names = ("other",)
    with pytest.raises(ValueError, match="same feature set"):
        train([_sine("k", 100, 0.0, 0), other], _config(), device="cpu", progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_resolve_device_without_cuda() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"state\.device: cuda requested but no CUDA device"):
        resolve_device("cuda")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="streamrnn train")
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_writes_the_model_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for s in _data()[:2]:
        _write_csv(data / s.relpath, s)
    cfg = tmp_path / "small.yaml"
    cfg.write_text(json.dumps(SMALL))  # JSON is YAML
    out = tmp_path / "model"
    argv = ["--data", str(data), "--out", str(out), "--config", str(cfg), "--epochs", "2"]
    rc = run(_parse([*argv, "--hidden-size", "8", "--no-progress", "--device", "cpu"]))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    for name in ("weights.pt", "config.yaml", "model.json", "normalization.json"):
        assert (out / name).is_file(), name
    loaded = load_model(out)
    assert loaded.config.model.hidden_size == 8 and loaded.config.training.epochs == 2
    assert loaded.version in captured.out and str(out) in captured.out
    assert len(load_series(data)) == 2


def test_cli_config_error_from_a_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = run(_parse(["--data", str(tmp_path), "--out", str(tmp_path / "m"), "--layers", "0"]))
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: model.num_layers:") and "got 0" in err
    rc = run(
        _parse(["--data", str(tmp_path / "none"), "--out", str(tmp_path / "m"), "--no-progress"])
    )
    assert rc == 2 and "no such file or directory" in capsys.readouterr().err


def test_cli_help_has_examples() -> None:
    parser = argparse.ArgumentParser(prog="streamrnn train")
    add_arguments(parser)
    text = parser.format_help()
    assert "examples:" in text and "--key-column" in text and "--value-columns" in text
