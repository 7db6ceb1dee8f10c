"""CSV input: layouts, relative paths, timestamps, missing values and error messages."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from streamrnn.offline.data import (
    Series,
    count_missing,
    load_series,
    summarize_series,
)
from streamrnn.times import parse_timestamp


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_file_per_key_directory_recursion_and_relpaths(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _write(root / "b.csv", "timestamp,value\n2020-01-01 00:00:00,1\n2020-01-01 00:10:00,2\n")
    _write(root / "sub" / "a.csv", "timestamp,value\n2020-01-01 00:00:00,3\n")
    _write(root / "sub" / "notes.txt", "not a csv")
    series = load_series(root)
    assert [s.key for s in series] == ["b", "sub/a"]
    assert [s.relpath for s in series] == ["b.csv", "sub/a.csv"]
    assert series[0].feature_names == ("value",)
    assert series[0].values.dtype == np.float32 and series[0].values.shape == (2, 1)
    assert series[0].times.dtype == np.float64
    np.testing.assert_array_equal(series[0].values[:, 0], [1.0, 2.0])
    assert series[0].timestamps == ["2020-01-01 00:00:00", "2020-01-01 00:10:00"]


def test_file_given_directly_uses_its_name(tmp_path: Path) -> None:
    f = _write(tmp_path / "deep" / "dir" / "x.csv", "timestamp,value\n0,1\n")
    (s,) = load_series([f])
    assert s.relpath == "x.csv" and s.key == "x"


def test_long_format_with_key_column(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "d" / "long.csv",
        "timestamp,sensor,temp,hum\n100,a,1,10\n100,b,2,20\n160,a,3,30\n220,a,5,50\n160,b,4,40\n",
    )
    series = load_series(tmp_path / "d", key_column="sensor")
    assert [s.key for s in series] == ["a", "b"]
    a, b = series
    assert a.relpath == b.relpath == "long.csv"
    assert a.feature_names == ("temp", "hum")
    np.testing.assert_array_equal(a.values, [[1, 10], [3, 30], [5, 50]])
    np.testing.assert_array_equal(b.times, [100.0, 160.0])
    assert a.timestamps == ["100", "160", "220"]
    only = load_series(f, key_column="sensor", value_columns=["hum"])[0]
    assert only.feature_names == ("hum",)


def test_timestamp_formats_agree(tmp_path: Path) -> None:
    want = 1436538240.0  # 2015-07-10 14:24:00 UTC
    texts = [
        "2015-07-10 14:24:00",
        "2015-07-10T14:24:00Z",
        "2015-07-10T16:24:00+02:00",
        "1436538240",
        "1436538240000",
        "1436538240.0",
    ]
    for t in texts:
        assert parse_timestamp(t) == pytest.approx(want), t
    body = "".join(f'"{t}",1\n' for t in texts)
    (s,) = load_series(_write(tmp_path / "t.csv", "timestamp,value\n" + body))
    np.testing.assert_allclose(s.times, want)
    assert s.timestamps == texts
    (e,) = load_series(
        _write(tmp_path / "ms.csv", "timestamp,value\n1436538240000,1\n1436538300000,2\n")
    )
    np.testing.assert_array_equal(e.times, [want, want + 60])


def test_missing_values_become_nan_and_are_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = "timestamp,a,b\n0,1,\n60,oops,2\n120,nan,3\n180,4,inf\n"
    with caplog.at_level(logging.WARNING, logger="streamrnn.offline.data"):
        (s,) = load_series(_write(tmp_path / "m.csv", text))
    assert np.isnan(s.values[0, 1]) and np.isnan(s.values[1, 0]) and np.isnan(s.values[2, 0])
    assert np.isnan(s.values[3, 1])
    assert count_missing(s) == 4
    assert count_missing([s, s]) == 8
    assert "oops" in caplog.text and "line 3" in caplog.text  # non-numeric text is reported
    summary = summarize_series([s])
    assert summary["rows"] == 4 and summary["missing"] == 4
    assert summary["feature_mean"]["a"] == pytest.approx(2.5)


def test_columns_are_aligned_by_name_across_files(tmp_path: Path) -> None:
    _write(tmp_path / "a.csv", "timestamp,x,y\n0,1,2\n")
    _write(tmp_path / "b.csv", "y,timestamp,x\n20,0,10\n")
    a, b = load_series(tmp_path)
    assert a.feature_names == b.feature_names == ("x", "y")
    np.testing.assert_array_equal(b.values, [[10, 20]])


def test_error_unparseable_timestamp_names_file_line_value(tmp_path: Path) -> None:
    f = _write(tmp_path / "bad.csv", "timestamp,value\n2020-01-01 00:00:00,1\nyesterday,2\n")
    with pytest.raises(ValueError, match=r"bad\.csv, line 3: unparseable timestamp 'yesterday'"):
        load_series(f)


def test_error_missing_time_column(tmp_path: Path) -> None:
    f = _write(tmp_path / "nt.csv", "time,value\n0,1\n")
    with pytest.raises(ValueError, match=r"nt\.csv: time column 'timestamp' not found"):
        load_series(f)
    (s,) = load_series(f, time_column="time")
    assert s.feature_names == ("value",)


def test_error_no_rows(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"empty\.csv: no data rows"):
        load_series(_write(tmp_path / "empty.csv", "timestamp,value\n\n"))
    with pytest.raises(ValueError, match=r"nothing\.csv: empty file"):
        load_series(_write(tmp_path / "nothing.csv", ""))


def test_error_inconsistent_features(tmp_path: Path) -> None:
    _write(tmp_path / "a.csv", "timestamp,x\n0,1\n")
    _write(tmp_path / "b.csv", "timestamp,y\n0,1\n")
    with pytest.raises(ValueError, match=r"inconsistent feature columns: .*a\.csv.*b\.csv"):
        load_series(tmp_path)
    with pytest.raises(ValueError, match=r"b\.csv: value column\(s\) \['x'\] not found"):
        load_series(tmp_path, value_columns=["x"])


def test_error_ragged_row_and_missing_path(tmp_path: Path) -> None:
    f = _write(tmp_path / "r.csv", "timestamp,value\n0,1\n60,2,3\n")
    with pytest.raises(ValueError, match=r"r\.csv, line 3: expected 2 fields"):
        load_series(f)
    with pytest.raises(ValueError, match="no such file or directory"):
        load_series(tmp_path / "absent.csv")
    with pytest.raises(ValueError, match="empty key"):
        load_series(_write(tmp_path / "k.csv", "timestamp,key,v\n0,,1\n"), key_column="key")


def test_series_checks_shapes() -> None:
    with pytest.raises(ValueError, match="values must have shape"):
        Series("k", "k.csv", ["0"], np.zeros(1), np.zeros((1, 2), np.float32), ("v",))
