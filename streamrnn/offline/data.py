"""CSV input for training and replay.

Two layouts are read:

* **File per key** (default): every CSV file is one series; its key is the file's path relative
  to the data root it came from, ``/`` separated, without ``.csv`` (``realTraffic/speed_6005``).
* **Long format** (``key_column`` given): one file holds many keys; every distinct key of a file
  becomes one series with that file's rows for it, in file order.

A path is a CSV file (its relative path is its file name) or a directory (every ``*.csv`` below
it, recursively, sorted by relative path).

Timestamps are ISO 8601 (``2015-07-10 14:24:00``, ``2015-07-10T14:24:00Z``, ``...+02:00``;
naive ones are taken as UTC) or epoch numbers: seconds, or milliseconds when the number is
above ``1e11``. A cell that reads as a number is always an epoch number. The original text of
every timestamp is kept so replay output can repeat it.

Values are float32 with NaN for empty, missing, non-numeric or infinite cells; non-empty cells
that could not be read are counted and reported with a warning, never dropped silently.
Every error names the file, and where it applies the line and the offending value.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..times import MS_THRESHOLD, parse_timestamp

logger = logging.getLogger(__name__)


@dataclass
class Series:
    """One key's rows from one file.

    ``times`` (N,) float64 epoch seconds UTC; ``values`` (N, F) float32, NaN where missing;
    ``timestamps`` the N original timestamp texts; ``relpath`` the source file relative to its
    data root, ``/`` separated.
    """

    key: str
    relpath: str
    timestamps: list[str]
    times: np.ndarray
    values: np.ndarray
    feature_names: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.timestamps)
        if self.times.shape != (n,):
            raise ValueError(
                f"series {self.key!r}: times must have shape ({n},), got {self.times.shape}"
            )
        if self.values.ndim != 2 or self.values.shape != (n, len(self.feature_names)):
            raise ValueError(
                f"series {self.key!r}: values must have shape ({n}, {len(self.feature_names)}), "
                f"got {self.values.shape}"
            )

    def __len__(self) -> int:
        return len(self.timestamps)


def _parse_times(cells: Sequence[str], lines: Sequence[int], where: str) -> np.ndarray:
    """Epoch seconds for a column of timestamp texts. Output: (N,) float64."""
    try:
        out = np.array(cells, dtype=np.float64)  # (N,) fast path: all epoch numbers
    except ValueError:
        out = np.empty(len(cells), dtype=np.float64)  # (N,)
        for i, cell in enumerate(cells):
            try:
                out[i] = parse_timestamp(cell)
            except (ValueError, OverflowError) as e:
                raise ValueError(
                    f"{where}, line {lines[i]}: unparseable timestamp {cell!r} "
                    f"(expected ISO 8601 or epoch seconds/milliseconds)"
                ) from e
        return out
    bad = ~np.isfinite(out)  # (N,)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{where}, line {lines[i]}: unparseable timestamp {cells[i]!r} (not finite)"
        )
    ms = np.abs(out) > MS_THRESHOLD  # (N,)
    out[ms] /= 1000.0
    return out


def _parse_values(cells: Sequence[str]) -> tuple[np.ndarray, list[int]]:
    """Floats for a column, NaN where unreadable. Output: (N,) float32 and the rows of non-empty
    cells that were not finite numbers."""
    try:
        raw = np.array(cells, dtype=np.float64)  # (N,) fast path: every cell a number
        bad: list[int] = []
    except ValueError:
        raw = np.empty(len(cells), dtype=np.float64)  # (N,)
        bad = []
        for i, cell in enumerate(cells):
            try:
                raw[i] = float(cell)
            except ValueError:
                raw[i] = np.nan
                if cell.strip():
                    bad.append(i)
    with np.errstate(over="ignore"):
        out = raw.astype(np.float32)  # (N,)
    inf = np.isinf(out)  # (N,)
    if inf.any():
        out[inf] = np.nan
        bad = sorted(set(bad) | {int(i) for i in np.flatnonzero(inf)})
    return out, bad


def _csv_files(paths: Iterable[str | Path]) -> list[tuple[Path, str]]:
    """(file, relpath) for every CSV file named or found below a named directory."""
    files: list[tuple[Path, str]] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(
                ((f, f.relative_to(path).as_posix()) for f in path.rglob("*.csv") if f.is_file()),
                key=lambda x: x[1],
            )
            if not found:
                raise ValueError(f"{path}: directory contains no *.csv files")
            files.extend(found)
        elif path.is_file():
            files.append((path, path.name))
        else:
            raise ValueError(f"{path}: no such file or directory")
    return files


def _read_rows(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, data rows and their line numbers; blank lines are skipped."""
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise ValueError(f"{path}: empty file (no header row)") from None
            n = len(header)
            for row in reader:
                if not row:
                    continue
                if len(row) != n:
                    raise ValueError(
                        f"{path}, line {reader.line_num}: expected {n} fields as in the header, "
                        f"got {len(row)}: {row!r}"
                    )
                rows.append(row)
                lines.append(reader.line_num)
    except csv.Error as e:
        raise ValueError(f"{path}: malformed CSV: {e}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text: {e}") from e
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise ValueError(f"{path}: duplicate column names {dupes}")
    if not rows:
        raise ValueError(f"{path}: no data rows below the header")
    return header, rows, lines


def load_series(
    paths: str | Path | Iterable[str | Path],
    *,
    key_column: str | None = None,
    time_column: str = "timestamp",
    value_columns: Sequence[str] | None = None,
) -> list[Series]:
    """Read CSV files and directories into series (see the module docstring for the layouts).

    ``value_columns`` None means every column other than the time and key columns; every file
    must then have the same set of them (columns are aligned by name to the first file's order).
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if value_columns is not None:
        value_columns = _checked_value_columns(value_columns, time_column, key_column)
    files = _csv_files(paths)
    if not files:
        raise ValueError("no input files given")

    out: list[Series] = []
    features: tuple[str, ...] | None = value_columns
    first_file: str | None = None
    seen_keys: dict[str, Path] = {}
    for path, relpath in files:
        header, rows, lines = _read_rows(path)
        here = _features_of(path, header, time_column, key_column)
        if features is None:
            if not here:
                raise ValueError(f"{path}: no value columns besides {time_column!r}")
            features, first_file = here, str(path)
        elif value_columns is not None:
            missing = [c for c in features if c not in header]
            if missing:
                raise ValueError(f"{path}: value column(s) {missing} not found (columns: {header})")
        elif set(here) != set(features):
            raise ValueError(
                f"inconsistent feature columns: {first_file} has {list(features)} but {path} has "
                f"{list(here)}; training needs the same feature set in every file "
                f"(choose the columns with value_columns)"
            )
        columns = list(zip(*rows, strict=True))  # one tuple of texts per header column
        col = {name: columns[i] for i, name in enumerate(header)}
        stamps: tuple[str, ...] = col[time_column]
        times = _parse_times(stamps, lines, str(path))  # (N,)
        values = _values_of(path, col, features, lines, len(rows))  # (N, F)
        if key_column is None:
            key = relpath[: -len(".csv")] if relpath.endswith(".csv") else relpath
            _claim(seen_keys, key, path)
            out.append(Series(key, relpath, list(stamps), times, values, features))
            _warn_order(times, path, key)
        else:
            out += _split_by_key(
                path,
                relpath,
                key_column,
                col[key_column],
                lines,
                stamps,
                times,
                values,
                features,
                seen_keys,
            )
    logger.info(
        "loaded %d series, %d rows from %d file(s)", len(out), sum(len(s) for s in out), len(files)
    )
    return out


def _checked_value_columns(
    value_columns: Sequence[str], time_column: str, key_column: str | None
) -> tuple[str, ...]:
    value_columns = tuple(value_columns)
    if not value_columns:
        raise ValueError("value_columns: must name at least one column, got []")
    if len(set(value_columns)) != len(value_columns):
        raise ValueError(f"value_columns: must not repeat a column, got {list(value_columns)}")
    for special in (time_column, key_column):
        if special is not None and special in value_columns:
            raise ValueError(f"value_columns: must not include the time/key column {special!r}")
    return value_columns


def _features_of(
    path: Path, header: list[str], time_column: str, key_column: str | None
) -> tuple[str, ...]:
    """The file's columns but the time and key columns (which must be there)."""
    if time_column not in header:
        raise ValueError(f"{path}: time column {time_column!r} not found (columns: {header})")
    if key_column is not None and key_column not in header:
        raise ValueError(f"{path}: key column {key_column!r} not found (columns: {header})")
    return tuple(h for h in header if h not in (time_column, key_column))


def _values_of(
    path: Path,
    col: dict[str, tuple[str, ...]],
    features: Sequence[str],
    lines: Sequence[int],
    n: int,
) -> np.ndarray:
    """The value columns as (N, F) float32, non-numeric cells missing (logged)."""
    values = np.empty((n, len(features)), dtype=np.float32)  # (N, F)
    for j, name in enumerate(features):
        values[:, j], bad = _parse_values(col[name])
        if bad:
            logger.warning(
                "%s: %d non-numeric cell(s) in column %r read as missing (first: line %d, %r)",
                path,
                len(bad),
                name,
                lines[bad[0]],
                col[name][bad[0]],
            )
    return values


def _split_by_key(
    path: Path,
    relpath: str,
    key_column: str,
    keys: Sequence[str],
    lines: Sequence[int],
    stamps: Sequence[str],
    times: np.ndarray,
    values: np.ndarray,
    features: tuple[str, ...],
    seen_keys: dict[str, Path],
) -> list[Series]:
    """A long-format file's series, one per key in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        if not k.strip():
            raise ValueError(f"{path}, line {lines[i]}: empty key in column {key_column!r}: {k!r}")
        groups.setdefault(k, []).append(i)
    out = []
    for k, idx in groups.items():
        if k in seen_keys:
            logger.info("key %r appears in %s and %s: one series per file", k, seen_keys[k], path)
        seen_keys.setdefault(k, path)
        sel = np.asarray(idx, dtype=np.int64)  # (n_k,)
        series = Series(k, relpath, [stamps[i] for i in idx], times[sel], values[sel], features)
        _warn_order(series.times, path, k)
        out.append(series)
    return out


def _claim(seen: dict[str, Path], key: str, path: Path) -> None:
    if key in seen:
        raise ValueError(
            f"duplicate key {key!r}: {seen[key]} and {path} have the same relative path"
        )
    seen[key] = path


def _warn_order(times: np.ndarray, path: Path, key: str) -> None:
    back = int(np.count_nonzero(np.diff(times) < 0))  # rows earlier than their predecessor
    if back:
        logger.warning(
            "%s: key %r has %d row(s) out of time order (kept in file order)", path, key, back
        )


def count_missing(series: Series | Iterable[Series]) -> int:
    """Number of missing (NaN) value cells in one series or in several."""
    if isinstance(series, Series):
        series = [series]
    return int(sum(np.count_nonzero(np.isnan(s.values)) for s in series))


def summarize_series(series: Sequence[Series]) -> dict[str, object]:
    """Counts and per-feature mean/std of the raw values (NaN-aware), for the model directory."""
    if not series:
        raise ValueError("series: must not be empty")
    names = series[0].feature_names
    allv = np.concatenate([s.values for s in series], axis=0).astype(np.float64)  # (N, F)
    present = ~np.isnan(allv)  # (N, F)
    n = present.sum(axis=0)  # (F,)
    total = np.where(present, allv, 0.0).sum(axis=0)  # (F,)
    mean = np.divide(total, n, out=np.full(len(names), np.nan), where=n > 0)  # (F,)
    sq = np.where(present, (allv - mean) ** 2, 0.0).sum(axis=0)  # (F,)
    std = np.sqrt(np.divide(sq, n, out=np.full(len(names), np.nan), where=n > 0))  # (F,)

    def clean(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    return {
        "series": len(series),
        "files": len({s.relpath for s in series}),
        "rows": int(allv.shape[0]),
        "missing": count_missing(series),
        "feature_mean": {k: clean(m) for k, m in zip(names, mean, strict=True)},
        "feature_std": {k: clean(v) for k, v in zip(names, std, strict=True)},
    }
