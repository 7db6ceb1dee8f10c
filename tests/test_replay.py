"""train → replay → eval through the command line, on generated data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from streamrnn.cli import main
from streamrnn.tools.synth import noisy_sine

CONFIG = """\
model: {hidden_size: 24, num_layers: 1, dropout: 0.0}
training: {epochs: 12, window: 48, stride: 24, batch_size: 16, learning_rate: 0.01, patience: 4}
scoring: {warmup: 100}
"""
SPIKE = 700


def write_csv(path: Path, values: np.ndarray, start: float = 1_700_000_000.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "value"])
        for i, v in enumerate(values):
            ts = np.datetime64(int(start + 600 * i), "s").astype(str).replace("T", " ")
            w.writerow([ts, f"{v:.5f}"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("replay")
    cfg = root / "config.yaml"
    cfg.write_text(CONFIG)
    for k in range(3):
        write_csv(
            root / "history" / f"s{k}.csv",
            noisy_sine(1500, 48, 0.05, seed=k, amplitude=3, offset=10 * (k + 1)),
        )
    model = root / "model"
    assert (
        main(
            [
                "train",
                "--data",
                str(root / "history"),
                "--out",
                str(model),
                "--config",
                str(cfg),
                "--no-progress",
            ]
        )
        == 0
    )
    return root, model


def read(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_replay_scores_injected_spike_highest(trained: tuple[Path, Path]) -> None:
    root, model = trained
    values = noisy_sine(1000, 48, 0.05, seed=11, amplitude=3, offset=20)
    values[SPIKE] += 2.0  # well inside the sine's range, but far off its shape
    write_csv(root / "live" / "plant" / "a.csv", values)
    out = root / "results"
    assert (
        main(
            [
                "replay",
                "--model",
                str(model),
                "--data",
                str(root / "live"),
                "--out",
                str(out),
                "--plot",
            ]
        )
        == 0
    )
    rows = read(out / "plant" / "a.csv")
    assert list(rows[0]) == [
        "timestamp",
        "value",
        "anomaly_score",
        "is_anomaly",
        "prediction",
        "scale",
        "error",
        "score",
    ]
    score = np.array([float(r["anomaly_score"]) for r in rows])
    flag = np.array([int(r["is_anomaly"]) for r in rows])
    assert int(np.argmax(score)) == SPIKE
    assert flag[SPIKE] == 1
    # the clean part stays below the threshold: no flag anywhere but at the spike
    assert np.nonzero(flag)[0].tolist() == [SPIKE]
    assert all(len(r["anomaly_score"].split(".")[1]) == 6 for r in rows)
    assert (out / "plant" / "a.png").stat().st_size > 10_000


def test_replay_does_not_depend_on_batch_size(trained: tuple[Path, Path]) -> None:
    root, model = trained
    a, b = root / "bs-a", root / "bs-b"
    data = root / "history"
    assert (
        main(
            [
                "replay",
                "--model",
                str(model),
                "--data",
                str(data),
                "--out",
                str(a),
                "--batch-size",
                "7",
            ]
        )
        == 0
    )
    assert main(["replay", "--model", str(model), "--data", str(data), "--out", str(b)]) == 0
    for f in ("s0.csv", "s1.csv", "s2.csv"):
        sa = np.array([float(r["anomaly_score"]) for r in read(a / f)])
        sb = np.array([float(r["anomaly_score"]) for r in read(b / f)])
        np.testing.assert_allclose(sa, sb, atol=2e-6)


def test_long_format_with_key_column(trained: tuple[Path, Path]) -> None:
    root, model = trained
    path = root / "long" / "meters.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "meter", "value"])
        for i in range(300):
            for m in ("m1", "m2"):
                w.writerow([1_700_000_000 + 600 * i, m, f"{10 + np.sin(i / 7.6):.4f}"])
    out = root / "long-out"
    assert (
        main(
            [
                "replay",
                "--model",
                str(model),
                "--data",
                str(path.parent),
                "--key-column",
                "meter",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = read(out / "meters.csv")
    assert len(rows) == 600 and {r["meter"] for r in rows} == {"m1", "m2"}


def test_eval_of_replay_results(trained: tuple[Path, Path], tmp_path: Path) -> None:
    root, model = trained
    values = noisy_sine(1000, 48, 0.05, seed=12, amplitude=3, offset=20)
    values[SPIKE] += 2.0
    write_csv(root / "labelled" / "a.csv", values)
    out = root / "labelled-out"
    assert (
        main(["replay", "--model", str(model), "--data", str(root / "labelled"), "--out", str(out)])
        == 0
    )
    ts = read(out / "a.csv")
    labels = tmp_path / "windows.json"
    labels.write_text(
        json.dumps({"a.csv": [[ts[SPIKE - 20]["timestamp"], ts[SPIKE + 20]["timestamp"]]]})
    )
    report = tmp_path / "report.json"
    assert (
        main(["eval", "--results", str(out), "--labels", str(labels), "--json", str(report)]) == 0
    )
    got = json.loads(report.read_text())
    assert got["event"]["tp"] == 1 and got["event"]["fp"] == 0
    assert got["nab"]["standard"] > 50


def test_replay_errors_are_clear(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, model = trained
    assert (
        main(
            [
                "replay",
                "--model",
                str(root / "nope"),
                "--data",
                str(root / "history"),
                "--out",
                str(root / "x"),
            ]
        )
        == 2
    )
    assert "nope" in capsys.readouterr().err
    assert (
        main(
            [
                "replay",
                "--model",
                str(model),
                "--data",
                str(root / "history"),
                "--out",
                str(root / "x"),
                "--false-alert-rate",
                "2",
            ]
        )
        == 2
    )
    assert "scoring.false_alert_rate: must be in (0, 1), got 2" in capsys.readouterr().err
