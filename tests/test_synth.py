"""Synthetic streams: determinism, the anomalies they inject, and the files they write."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from streamrnn.tools.synth import (
    ANOMALY_KINDS,
    Anomaly,
    SyntheticSeries,
    generate,
    noisy_sine,
    write_csvs,
    write_windows_json,
)

KINDS = ("sensor", "energy")


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_series(kind: str) -> None:
    a = generate(kind, 3, 3000, seed=11, anomalies_per_key=4)
    b = generate(kind, 3, 3000, seed=11, anomalies_per_key=4)
    for x, y in zip(a, b, strict=True):
        assert x.key == y.key
        np.testing.assert_array_equal(x.timestamps, y.timestamps)
        np.testing.assert_array_equal(x.values, y.values)
        assert x.anomalies == y.anomalies
    c = generate(kind, 3, 3000, seed=12, anomalies_per_key=4)
    assert not np.array_equal(a[0].values, c[0].values)


def test_key_does_not_depend_on_number_of_keys() -> None:
    few = generate("sensor", 2, 1000, seed=5)
    many = generate("sensor", 5, 1000, seed=5)
    np.testing.assert_array_equal(few[1].values, many[1].values)


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_timestamps(kind: str) -> None:
    (s,) = generate(kind, 1, 500, start="2024-03-01 12:00:00", interval_s=60, seed=0)
    assert s.values.shape == s.timestamps.shape == (500,)
    assert s.values.dtype == np.float64 and np.isfinite(s.values).all()
    assert s.timestamps.dtype == np.dtype("datetime64[ms]")
    assert s.timestamps[0] == np.datetime64("2024-03-01T12:00:00")
    assert (np.diff(s.timestamps) == np.timedelta64(60, "s")).all()
    expected = datetime(2024, 3, 1, 12, tzinfo=timezone.utc).timestamp()
    assert s.epoch_seconds[0] == expected


def test_aware_start_is_converted_to_utc() -> None:
    (s,) = generate("sensor", 1, 10, start="2024-03-01T14:00:00+02:00", seed=0)
    assert s.timestamps[0] == np.datetime64("2024-03-01T12:00:00")


@pytest.mark.parametrize("kind", KINDS)
def test_keys_differ_by_orders_of_magnitude(kind: str) -> None:
    series = generate(kind, 4, 2000, seed=3, anomalies=())
    spreads = np.array([np.std(s.values) for s in series])
    assert spreads.max() / spreads.min() > 100
    assert len({s.key for s in series}) == 4


def test_energy_is_positive_with_weekly_shape() -> None:
    # 5-minute readings over 8 weeks, every kind of anomaly.
    series = generate("energy", 4, 8 * 7 * 288, interval_s=300, seed=2, anomalies_per_key=12)
    for s in series:
        assert (s.values > 0).all()
        days = s.clean[: 56 * 288].reshape(56, 288)  # 2024-01-01 is a Monday
        weekday, weekend = days[np.arange(56) % 7 < 5], days[np.arange(56) % 7 >= 5]
        # Weekday and weekend days have different daily shapes.
        diff = np.abs(weekday.mean(0) - weekend.mean(0)).max()
        assert diff > 0.1 * s.scale


def _all_kinds(kind: str) -> list[SyntheticSeries]:
    series = generate(kind, 3, 6000, seed=21, anomalies_per_key=8, clean_prefix=1000)
    for s in series:
        assert sorted({a.kind for a in s.anomalies}) == sorted(ANOMALY_KINDS)
    return series


@pytest.mark.parametrize("kind", KINDS)
def test_anomalies_only_change_their_windows(kind: str) -> None:
    for s in _all_kinds(kind):
        assert s.clean is not None
        changed = s.values != s.clean
        assert not (changed & ~s.labels).any(), "values outside windows are untouched"
        assert not s.labels[:1000].any(), "clean prefix stays clean"
        spans = sorted((a.start_index, a.end_index) for a in s.anomalies)
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert end < start, "windows never overlap or touch"


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_changes_the_series(kind: str) -> None:
    for s in _all_kinds(kind):
        assert s.clean is not None
        for a in s.anomalies:
            window = slice(a.start_index, a.end_index)
            delta = s.values[window] - s.clean[window]
            if a.kind == "spike":
                assert len(a) == 1
                assert abs(delta[0]) > 1.0 * s.scale
            elif a.kind == "level_shift":
                assert len(a) >= 8
                np.testing.assert_allclose(delta, delta[0], rtol=1e-9, atol=1e-9 * s.scale)
                assert abs(delta[0]) > 1.0 * s.scale
            elif a.kind == "stuck":
                assert len(a) >= 8
                assert (s.values[window] == s.values[a.start_index - 1]).all()
                assert np.std(s.clean[window]) > 0
            elif a.kind == "drift":
                assert len(a) >= 8
                steps = np.diff(delta)
                assert (np.sign(steps) == np.sign(delta[-1])).all(), "monotone ramp"
                np.testing.assert_allclose(steps, steps[0], rtol=1e-6)
                assert abs(delta[-1]) > 1.0 * s.scale
                assert abs(delta[0]) < abs(delta[-1]) / 4
            else:  # pragma: no cover
                pytest.fail(f"unexpected kind {a.kind}")


def test_anomaly_count_options() -> None:
    (s,) = generate("sensor", 1, 10_000, seed=0, anomaly_rate=0.001)
    assert len(s.anomalies) == 10
    (s,) = generate("sensor", 1, 10_000, seed=0, anomalies=("spike",), anomalies_per_key=3)
    assert [a.kind for a in s.anomalies] == ["spike"] * 3
    (s,) = generate("sensor", 1, 10_000, seed=0, anomalies=())
    assert s.anomalies == [] and np.array_equal(s.values, s.clean)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "water"}, "kind"),
        ({"anomalies": ("spike", "dropout")}, "anomalies"),
        ({"anomalies_per_key": 100}, "16 steps"),
        ({"clean_prefix": 2000}, "clean_prefix"),
        ({"interval_s": 0}, "interval_s"),
        ({"start": "yesterday"}, "start"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, match: str) -> None:
    args = {"kind": "sensor", "n_keys": 1, "n_steps": 1000, **kwargs}
    with pytest.raises(ValueError, match=match):
        generate(**args)


def test_noisy_sine() -> None:
    a = noisy_sine(1000, period=50, noise=0.1, seed=4)
    np.testing.assert_array_equal(a, noisy_sine(1000, period=50, noise=0.1, seed=4))
    clean = np.sin(2 * np.pi * np.arange(1000) / 50)
    assert 0.08 < np.std(a - clean) < 0.12
    flat = noisy_sine(100, period=25, noise=0.0, amplitude=2.0, offset=3.0)
    np.testing.assert_allclose(flat, 3.0 + 2.0 * np.sin(2 * np.pi * np.arange(100) / 25))


def test_csv_round_trip(tmp_path: Path) -> None:
    series = generate("energy", 3, 400, start="2024-01-06 23:00:00", interval_s=900, seed=8)
    paths = write_csvs(series, tmp_path / "data")
    assert [p.name for p in paths] == [f"{s.key}.csv" for s in series]
    for s, p in zip(series, paths, strict=True):
        with p.open(newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["timestamp", "value"]
        assert rows[1][0] == "2024-01-06 23:00:00"
        times = np.array([np.datetime64(r[0].replace(" ", "T"), "ms") for r in rows[1:]])
        values = np.array([float(r[1]) for r in rows[1:]])
        np.testing.assert_array_equal(times, s.timestamps)
        np.testing.assert_array_equal(values, s.values)  # exact: shortest round-trip floats


def test_windows_json_round_trip(tmp_path: Path) -> None:
    series = generate("sensor", 2, 3000, interval_s=300, seed=9, anomalies_per_key=4)
    path = write_windows_json(series, tmp_path / "labels" / "windows.json", prefix="synthetic")
    labels = json.loads(path.read_text())
    assert sorted(labels) == [f"synthetic/{s.key}.csv" for s in series]
    for s in series:
        windows = labels[f"synthetic/{s.key}.csv"]
        assert len(windows) == len(s.anomalies)
        for (lo, hi), a in zip(
            windows, sorted(s.anomalies, key=lambda a: a.start_index), strict=True
        ):
            assert lo.endswith(".000000")  # NAB's timestamp format
            first = datetime.strptime(lo, "%Y-%m-%d %H:%M:%S.%f")
            last = datetime.strptime(hi, "%Y-%m-%d %H:%M:%S.%f")
            assert np.datetime64(first, "ms") == s.timestamps[a.start_index]
            assert np.datetime64(last, "ms") == s.timestamps[a.end_index - 1]


def test_windows_json_padding_merges_and_clips(tmp_path: Path) -> None:
    ts = np.datetime64("2024-01-01T00:00:00", "ms") + np.arange(100) * np.timedelta64(60, "s")
    s = SyntheticSeries(
        key="k/1",
        timestamps=ts,
        values=np.zeros(100),
        anomalies=[Anomaly("spike", 2, 3), Anomaly("stuck", 10, 20), Anomaly("spike", 22, 23)],
    )
    labels = json.loads(write_windows_json([s], tmp_path / "w.json", pad_steps=3).read_text())
    assert labels == {
        "k_1.csv": [
            ["2024-01-01 00:00:00.000000", "2024-01-01 00:05:00.000000"],
            ["2024-01-01 00:07:00.000000", "2024-01-01 00:25:00.000000"],
        ]
    }
