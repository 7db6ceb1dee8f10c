"""Offline evaluation of anomaly-detector output: NAB scoring and event-level metrics.

Inputs
------
* A results directory ``DIR/<category>/<file>.csv`` (any depth). Each CSV has the columns
  ``timestamp,value,anomaly_score`` and optionally ``is_anomaly`` (0/1); other columns are
  ignored. A result file is matched to a label key by its path relative to ``DIR`` written
  with ``/`` separators, e.g. ``realTraffic/speed_6005.csv``.
* A windows file in NAB's ``combined_windows.json`` layout:
  ``{"<category>/<file>.csv": [["<start>", "<end>"], ...]}``; both ends are inclusive.

Timestamps are parsed as ``YYYY-MM-DD HH:MM:SS[.ffffff]`` or ISO 8601 with ``T``. Timestamps
that carry a UTC offset (``Z``, ``+02:00``) are converted to naive UTC; label timestamps are
taken as naive as written.

Only files that have both a label key and a result file are scored. Label keys without a
result file are reported with a warning; result files without a label key are ignored with a
warning.

NAB scoring (Numenta Anomaly Benchmark), as implemented here
-------------------------------------------------------------
* **Probationary period**: the first ``min(floor(0.15 * N), 750)`` rows of a file. Rows there
  are ignored by the scorer: a detection there is neither a TP nor an FP.
* **Window rows**: a window covers the rows whose timestamp lies in ``[start, end]``; with
  rows ``a..b`` (inclusive) its length is ``L = b - a + 1``. Overlapping windows are not
  expected (NAB's never overlap); if they do, a row belongs to the earlier window.
* **Detection**: a row is a detection when ``anomaly_score >= threshold``. NaN scores never
  detect.
* **Scaled sigmoid**: ``sig(y) = 2 / (1 + exp(5 * y)) - 1`` for ``y <= 3`` and exactly ``-1``
  for ``y > 3`` (as NAB does).
* **True positive**: only the earliest detection inside a window counts. A detection at row
  ``i`` of window ``a..b`` has the relative position ``y = -(b - i + 1) / L``, i.e. ``-1`` at the
  left edge and ``-1/L`` (about 0) at the right edge, and earns
  ``A_TP * sig(y) / sig(-1)``. Dividing by ``sig(-1)`` (about 0.9866) is what makes a
  detection at the left edge earn exactly ``A_TP``; this variant (position measured to
  ``b + 1``, weight divided by ``sig(-1)``) is the one that reproduces the official reference
  scores. A window without a detection costs ``-A_FN``.
* **False positive**: every detection outside all windows costs ``A_FP * sig(y)`` (a negative
  number), where ``y = (i - b_prev) / (L_prev - 1)`` is the distance after the end ``b_prev``
  of the preceding window in units of that window's length minus one (NAB's convention; a
  one-row window uses 1). A detection right after a window therefore costs almost nothing and
  one far behind it costs ``-A_FP``. With no preceding window the cost is the full ``-A_FP``.
* **Threshold**: one threshold for the whole corpus per profile, chosen to maximise the corpus
  score over all distinct score values (plus "never detect"); ties go to the highest
  threshold. The sweep sorts all rows once and accumulates per-threshold score changes with
  numpy, so it is O(N log N) in the number of rows. Scores are compared exactly as read
  (no rounding): the reference files carry ~12 decimals, and rounding them to 6 merges
  windowedGaussian's near-1 scores and changes its score by up to 26 points.
* **Normalisation**: ``100 * (S - S_null) / (S_perfect - S_null)``. ``S_null = -A_FN * W``
  (the null detector never fires) and ``S_perfect`` is the score of a detector that fires only
  at the left edge of every window; both are computed from the *scorable* windows ``W`` - the
  windows that have at least one row after the probationary period (for NAB's labels that is
  every window). For a window that starts inside the probationary period the perfect detector
  fires at its first scorable row. ``S_perfect`` is computed, not assumed: with the TP weight
  normalised by ``sig(-1)`` it equals ``A_TP * W``.
* **Rows out of time order** (a row earlier than the row before it; NAB's own data has
  such files): the file is scored in file order, as NAB's scorer (``nab/sweeper.py``) does,
  with a warning naming the file and the first such row. NAB walks the rows: a window is
  entered at the first row after the previous window's entry whose timestamp *equals* its
  start, and left after the first row from there whose timestamp equals its end (or when the
  next window is entered first); a row's weight follows from its row index
  (``right = `` the first row with the end's timestamp, ``L = right - `` the first row with
  the start's timestamp ``+ 1``), never from its own timestamp. So a row placed inside a
  window's rows counts as in the window whatever its timestamp, and a window that is never
  entered in file order is not scored. This needs window limits that are timestamps of rows
  of the file (NAB's labels always are); otherwise the file is refused with that message.
  For files in time order with such limits the walk gives exactly the windows above.
* **Counts** reported per profile: ``tp`` = windows detected, ``fn`` = windows missed,
  ``fp`` = detection rows outside every window (after the probationary period).

Profiles ``(A_TP, A_FN, A_FP)``: standard (1, 1, 0.11), reward_low_FP_rate (1, 1, 0.22),
reward_low_FN_rate (1, 2, 0.11).

Event-level metrics
-------------------
Computed only from files that have an ``is_anomaly`` column. A maximal run of consecutive
flagged rows after the probationary period is one predicted event (a run that starts inside
the probationary period is cut at its end). An event is a TP when it overlaps the rows of any
window. ``precision = TP events / predicted events``, ``recall = scorable windows overlapped by
at least one event / scorable windows``, ``F1`` their harmonic mean; a ratio with a zero
denominator is reported as 0.0. ``fp`` = predicted events that overlap no window, ``fn`` =
windows overlapped by no event.

Command line: ``streamrnn eval --results DIR --labels WINDOWS.json [--json OUT]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PROFILES",
    "EventMetrics",
    "Profile",
    "ProfileScore",
    "Report",
    "ResultFile",
    "Window",
    "add_arguments",
    "evaluate_dir",
    "event_metrics",
    "format_table",
    "load_result",
    "load_windows",
    "main",
    "probationary_length",
    "run",
    "scaled_sigmoid",
    "score_corpus",
]

logger = logging.getLogger(__name__)

Window = tuple[np.datetime64, np.datetime64]
"""An anomaly window: inclusive start and end timestamps."""

_TS_UNIT = "datetime64[us]"
_PROBATION_FRACTION = 0.15
_PROBATION_MAX_ROWS = 750


@dataclass(frozen=True)
class Profile:
    """NAB cost profile: weights of a true positive, a false negative and a false positive."""

    a_tp: float
    a_fn: float
    a_fp: float


PROFILES: dict[str, Profile] = {
    "standard": Profile(a_tp=1.0, a_fn=1.0, a_fp=0.11),
    "reward_low_FP_rate": Profile(a_tp=1.0, a_fn=1.0, a_fp=0.22),
    "reward_low_FN_rate": Profile(a_tp=1.0, a_fn=2.0, a_fp=0.11),
}


@dataclass
class ResultFile:
    """One detector output file.

    Attributes:
        timestamps: row timestamps, ``datetime64[us]``, in file order (not necessarily sorted).
        scores: anomaly scores (float64); NaN for a missing score.
        flags: the ``is_anomaly`` column as booleans, or ``None`` when the file has none.
        path: where the file was read from, if it was read from disk.
        out_of_order: (computed) indices of the rows whose timestamp is earlier than the
            previous row's.
    """

    timestamps: np.ndarray
    scores: np.ndarray
    flags: np.ndarray | None = None
    path: Path | None = None
    out_of_order: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.timestamps = np.asarray(self.timestamps).astype(_TS_UNIT)
        self.scores = np.asarray(self.scores, dtype=np.float64)
        if self.timestamps.ndim != 1 or self.scores.shape != self.timestamps.shape:
            raise ValueError("timestamps and scores must be 1-D arrays of the same length")
        if self.flags is not None:
            self.flags = np.asarray(self.flags).astype(bool)
            if self.flags.shape != self.timestamps.shape:
                raise ValueError("flags must have the same length as timestamps")
        # Rows earlier than the row before them; scored in file order (see the module docstring).
        self.out_of_order = np.flatnonzero(self.timestamps[1:] < self.timestamps[:-1]) + 1

    def __len__(self) -> int:
        return int(self.scores.shape[0])


@dataclass(frozen=True)
class ProfileScore:
    """NAB result of one profile over a corpus.

    Attributes:
        normalised: ``100 * (raw - null) / (perfect - null)``; NaN when there is no window.
        raw: corpus score ``S`` at the chosen threshold.
        threshold: the corpus threshold (a row detects when ``score >= threshold``).
        tp: windows detected.
        fp: detection rows outside every window.
        fn: windows missed.
        null: ``S_null``, the score of a detector that never fires.
        perfect: ``S_perfect``, the score of a detector firing at every window's left edge.
    """

    normalised: float
    raw: float
    threshold: float
    tp: int
    fp: int
    fn: int
    null: float
    perfect: float


@dataclass(frozen=True)
class EventMetrics:
    """Event-level precision / recall from the ``is_anomaly`` flags.

    Attributes:
        precision: TP events / predicted events (0.0 when there is no event).
        recall: windows overlapped by an event / windows (0.0 when there is no window).
        f1: harmonic mean of precision and recall (0.0 when both are 0).
        tp: predicted events that overlap a window.
        fp: predicted events that overlap no window.
        fn: windows that no event overlaps.
        predicted_events: all predicted events.
        windows: scorable windows of the files with flags.
        files: files that have an ``is_anomaly`` column.
    """

    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int
    predicted_events: int
    windows: int
    files: int

    def to_json(self) -> dict[str, float | int]:
        """The metrics as the ``"event"`` entry of :meth:`Report.to_json`."""
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "predicted_events": self.predicted_events,
        }


@dataclass
class Report:
    """Everything :func:`evaluate_dir` measured.

    Attributes:
        nab: per-profile NAB scores.
        event: event-level metrics, or ``None`` when no file has an ``is_anomaly`` column.
        files: number of result files scored (matched to a label key).
        windows: scorable windows in the scored files.
        missing_results: label keys without a result file.
        ignored_results: result files (relative paths) without a label key.
    """

    nab: dict[str, ProfileScore]
    event: EventMetrics | None
    files: int
    windows: int = 0
    missing_results: list[str] = field(default_factory=list)
    ignored_results: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable summary (NaN is written as ``null``)."""
        return {
            "nab": {name: _json_float(s.normalised) for name, s in self.nab.items()},
            "event": self.event.to_json() if self.event is not None else None,
            "files": self.files,
            "thresholds": {name: _json_float(s.threshold) for name, s in self.nab.items()},
        }


def _json_float(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


# --------------------------------------------------------------------------------------------
# Loading


def _parse_one_timestamp(text: str) -> np.datetime64:
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is not None:
        dt = dt.astimezone(timezone.utc).replace(tzinfo=None)
    return np.datetime64(dt, "us")


def _parse_timestamps(texts: Sequence[str]) -> np.ndarray:
    """Parse timestamp strings into a ``datetime64[us]`` array."""
    if len(texts) == 0:
        return np.empty(0, dtype=_TS_UNIT)
    try:
        with warnings.catch_warnings():
            # numpy only warns about a UTC offset; parse those strings one by one instead.
            warnings.simplefilter("error")
            return np.array([t.strip() for t in texts], dtype=_TS_UNIT)
    except (ValueError, Warning):
        pass
    out = np.empty(len(texts), dtype=_TS_UNIT)
    for i, text in enumerate(texts):
        try:
            out[i] = _parse_one_timestamp(text)
        except ValueError as exc:
            raise ValueError(f"bad timestamp {text!r}") from exc
    return out


def load_windows(path: str | Path) -> dict[str, list[Window]]:
    """Read a NAB windows file (``combined_windows.json`` layout).

    Args:
        path: JSON file mapping ``"<category>/<file>.csv"`` to a list of ``[start, end]``.

    Returns:
        The windows per key (keys use ``/`` separators), each an inclusive
        ``(start, end)`` pair of ``datetime64[us]``, in file order.

    Raises:
        ValueError: the file is not in the expected layout.
    """
    with open(path, encoding="utf-8") as fh:
        raw = json.load(fh)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object mapping file names to windows")
    out: dict[str, list[Window]] = {}
    for key, wins in raw.items():
        if not isinstance(wins, list):
            raise ValueError(f"{path}: windows of {key!r} must be a list")
        parsed: list[Window] = []
        for w in wins:
            if not (isinstance(w, (list, tuple)) and len(w) == 2):
                raise ValueError(f"{path}: window {w!r} of {key!r} is not a [start, end] pair")
            start, end = _parse_timestamps([str(w[0]), str(w[1])])
            if end < start:
                raise ValueError(f"{path}: window {w!r} of {key!r} ends before it starts")
            parsed.append((start, end))
        out[str(key).replace("\\", "/")] = parsed
    return out


def _parse_score(text: str) -> float:
    text = text.strip()
    return float(text) if text else math.nan


def _parse_flag(text: str) -> bool:
    text = text.strip().lower()
    if text in ("", "0", "false", "no"):
        return False
    if text in ("true", "yes"):
        return True
    return float(text) != 0.0


def load_result(path: str | Path) -> ResultFile:
    """Read one detector output CSV.

    Args:
        path: CSV with the columns ``timestamp`` and ``anomaly_score`` and optionally
            ``is_anomaly``; other columns are ignored.

    Returns:
        The parsed file; ``flags`` is ``None`` when there is no ``is_anomaly`` column.

    Raises:
        ValueError: a required column is missing or a value does not parse.
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file")
        cols = {name.strip(): i for i, name in enumerate(header)}
        for required in ("timestamp", "anomaly_score"):
            if required not in cols:
                raise ValueError(f"{path}: missing column {required!r} (header: {header})")
        i_ts, i_score = cols["timestamp"], cols["anomaly_score"]
        i_flag = cols.get("is_anomaly")
        ts_text: list[str] = []
        scores: list[float] = []
        flags: list[bool] = []
        lines: list[int] = []
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                lines.append(lineno)
                ts_text.append(row[i_ts])
                scores.append(_parse_score(row[i_score]))
                if i_flag is not None:
                    flags.append(_parse_flag(row[i_flag]) if i_flag < len(row) else False)
            except (IndexError, ValueError) as exc:
                raise ValueError(f"{path}:{lineno}: cannot parse row {row!r}: {exc}") from exc
    try:
        timestamps = _parse_timestamps(ts_text)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    result = ResultFile(
        timestamps=timestamps,
        scores=np.asarray(scores, dtype=np.float64),
        flags=np.asarray(flags, dtype=bool) if i_flag is not None else None,
        path=path,
    )
    if len(result.out_of_order):
        i = int(result.out_of_order[0])
        logger.warning(
            "%s: %d row(s) out of time order, the first at row %d (line %d: %s, after %s); "
            "scored in file order, as NAB's scorer does",
            path,
            len(result.out_of_order),
            i,
            lines[i],
            ts_text[i].strip(),
            ts_text[i - 1].strip(),
        )
    return result


# --------------------------------------------------------------------------------------------
# NAB scoring


def probationary_length(n_rows: int) -> int:
    """NAB's probationary period: ``min(floor(0.15 * n_rows), 750)`` rows."""
    return int(min(math.floor(_PROBATION_FRACTION * n_rows), _PROBATION_MAX_ROWS))


def scaled_sigmoid(y: np.ndarray | float) -> np.ndarray:
    """NAB's scaled sigmoid ``2 / (1 + exp(5 y)) - 1``, exactly ``-1`` for ``y > 3``."""
    y = np.asarray(y, dtype=np.float64)
    with np.errstate(over="ignore"):
        val = 2.0 / (1.0 + np.exp(5.0 * y)) - 1.0
    return np.where(y > 3.0, -1.0, val)


_MAX_TP = float(scaled_sigmoid(-1.0))


@dataclass
class _FileRows:
    """Profile-independent per-row scoring data of one file (probationary rows dropped)."""

    scores: np.ndarray  # scores of the scorable rows
    window: np.ndarray  # local window id (index into ``spans``) per row, -1 outside windows
    unit: np.ndarray  # unit TP weight (in a window) or unit FP cost (outside), per row
    spans: list[_Span]  # the scorable windows, rows counted from the file's first
    probation: int  # probationary rows


@dataclass(frozen=True)
class _Span:
    """One window's rows as NAB's scorer walks a file.

    Rows ``first..last`` (inclusive) are in the window. A row ``i`` there has the relative
    position ``-(right - i + 1) / width``. ``exited`` says whether the walk left the window at
    its end row ``last``; only then is it the preceding window of the rows after it.
    """

    first: int
    last: int
    right: int
    width: int
    exited: bool = True


def _window_spans(timestamps: np.ndarray, windows: Iterable[Window], key: str) -> list[_Span]:
    """The windows of a file in time order, sorted by start; windows without rows dropped."""
    spans: list[_Span] = []
    for start, end in windows:
        limits = np.array([start, end], dtype=_TS_UNIT)
        a = int(np.searchsorted(timestamps, limits[0], side="left"))
        b = int(np.searchsorted(timestamps, limits[1], side="right")) - 1
        if b < a:
            logger.warning("%s: window [%s, %s] covers no row; skipped", key, start, end)
            continue
        spans.append(_Span(a, b, b, b - a + 1))
    spans.sort(key=lambda sp: (sp.first, sp.last))
    for s0, s1 in zip(spans, spans[1:], strict=False):
        if s1.first <= s0.last:
            logger.warning(
                "%s: windows at rows %d-%d and %d.. overlap", key, s0.first, s0.last, s1.first
            )
    return spans


def _row_order_spans(timestamps: np.ndarray, windows: Iterable[Window], key: str) -> list[_Span]:
    """The windows of a file with rows out of time order, walked in file order as NAB does.

    Windows are taken in order of their start. The walk enters window k at the first row after
    the row that entered window k - 1 whose timestamp equals k's start (a window that is never
    entered blocks the ones after it), and leaves it after the first row from there whose
    timestamp equals its end, unless window k + 1 is entered first. ``right`` is the first row
    of the file with the end's timestamp and ``width = right - (first row with the start's
    timestamp) + 1``, as NAB's ``timestamps.index`` gives them.

    Raises:
        ValueError: a window limit is not the timestamp of a row (NAB's labels always are), or
            a window's end row is the row just before its start row (NAB divides by zero).
    """
    stamps = timestamps.astype(np.int64)  # (N,) microseconds
    n = len(stamps)

    def rows_at(t: np.datetime64, which: str) -> np.ndarray:
        rows = np.flatnonzero(stamps == np.array(t, dtype=_TS_UNIT).astype(np.int64))
        if not len(rows):
            raise ValueError(
                f"{key}: window {which} {t} is not the timestamp of a row; a file with rows out "
                "of time order is scored in file order, as NAB's scorer does, which needs window "
                "limits that are timestamps of the file"
            )
        return rows

    entered: list[tuple[int, int, int, int | None]] = []  # (entry, right, width, end row)
    entry = -1
    for start, end in sorted(windows, key=lambda w: w[0]):
        starts, ends = rows_at(start, "start"), rows_at(end, "end")
        later = starts[starts > entry]
        if not len(later):
            logger.warning(
                "%s: window [%s, %s] is never entered in file order; it and the windows after "
                "it are not scored",
                key,
                start,
                end,
            )
            break
        entry = int(later[0])
        right, width = int(ends[0]), int(ends[0]) - int(starts[0]) + 1
        if width == 0:
            raise ValueError(f"{key}: window [{start}, {end}] ends on the row before its start")
        exits = ends[ends >= entry]
        entered.append((entry, right, width, int(exits[0]) if len(exits) else None))
    spans: list[_Span] = []
    for k, (first, right, width, exit_row) in enumerate(entered):
        following = entered[k + 1][0] if k + 1 < len(entered) else n
        if exit_row is not None and exit_row < following:
            spans.append(_Span(first, exit_row, right, width, True))
        else:
            spans.append(_Span(first, following - 1, right, width, False))
    return spans


def _spans_of(result: ResultFile, windows: Iterable[Window], key: str) -> list[_Span]:
    if len(result.out_of_order):
        return _row_order_spans(result.timestamps, windows, key)
    return _window_spans(result.timestamps, windows, key)


def _prepare_file(result: ResultFile, windows: Iterable[Window], key: str) -> _FileRows:
    n = len(result)
    p = probationary_length(n)
    all_spans = _spans_of(result, windows, key)
    win = np.full(n, -1, dtype=np.int64)
    unit = np.zeros(n, dtype=np.float64)
    rows = np.arange(n)
    # Rows inside windows: TP weight, normalised so the left edge earns exactly 1.
    for k, sp in enumerate(all_spans):
        free = win[sp.first : sp.last + 1] == -1  # with overlaps, a row stays in the earlier one
        idx = rows[sp.first : sp.last + 1][free]
        win[idx] = k
        unit[idx] = scaled_sigmoid(-(sp.right - idx + 1) / sp.width) / _MAX_TP
    # Rows outside windows: FP cost relative to the end of the preceding (exited) window.
    outside = np.flatnonzero(win == -1)
    left = [sp for sp in all_spans if sp.exited]
    cost = np.full(len(outside), -1.0)
    if left:
        ends = np.array([sp.last for sp in left], dtype=np.int64)
        widths = np.array([sp.width for sp in left], dtype=np.int64)
        prev = np.searchsorted(ends, outside, side="left") - 1  # last window ending before row
        has_prev = prev >= 0
        pi = prev[has_prev]
        denom = np.where(widths[pi] == 1, 1, widths[pi] - 1).astype(np.float64)
        cost[has_prev] = scaled_sigmoid(np.abs(outside[has_prev] - ends[pi]) / denom)
    unit[outside] = cost
    # Drop the probationary rows and the windows that lie entirely inside them.
    win_s, unit_s, scores_s = win[p:], unit[p:], result.scores[p:]
    kept = np.unique(win_s[win_s >= 0])
    remap = np.full(len(all_spans) + 1, -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    dropped = len(all_spans) - len(kept)
    if dropped:
        logger.info("%s: %d window(s) lie in the probationary period; not scored", key, dropped)
    return _FileRows(
        scores=scores_s,
        window=remap[win_s],  # -1 maps to remap[-1] == -1
        unit=unit_s,
        spans=[all_spans[k] for k in kept],
        probation=p,
    )


def _prepare_corpus(
    results: Mapping[str, ResultFile], windows: Mapping[str, Sequence[Window]]
) -> dict[str, _FileRows]:
    prepared: dict[str, _FileRows] = {}
    for key in sorted(results):
        if key not in windows:
            logger.warning("%s: no label key; ignored", key)
            continue
        prepared[key] = _prepare_file(results[key], windows[key], key)
    return prepared


def score_corpus(
    results: Mapping[str, ResultFile],
    windows: Mapping[str, Sequence[Window]],
    profiles: Mapping[str, Profile] = PROFILES,
) -> dict[str, ProfileScore]:
    """NAB-score a corpus of detector outputs, optimising one threshold per profile.

    Args:
        results: detector output per label key (``"<category>/<file>.csv"``). Keys without
            windows are ignored with a warning.
        windows: anomaly windows per label key (see :func:`load_windows`).
        profiles: cost profiles to score, by name.

    Returns:
        A :class:`ProfileScore` per profile name.
    """
    prepared = _prepare_corpus(results, windows)
    # Concatenate the scorable rows of all files, with corpus-wide window ids.
    scores_l, win_l, unit_l, first_unit_l = [], [], [], []
    offset = 0
    for fr in prepared.values():
        scores_l.append(fr.scores)
        win_l.append(np.where(fr.window >= 0, fr.window + offset, -1))
        unit_l.append(fr.unit)
        # Perfect detector: fires at each window's first scorable row (max unit weight).
        for k in range(len(fr.spans)):
            first_unit_l.append(float(fr.unit[fr.window == k].max()))
        offset += len(fr.spans)
    n_windows = offset
    if scores_l:
        scores = np.concatenate(scores_l)
        win = np.concatenate(win_l)
        unit = np.concatenate(unit_l)
    else:
        scores = np.empty(0)
        win = np.empty(0, dtype=np.int64)
        unit = np.empty(0)
    perfect_units = np.asarray(first_unit_l, dtype=np.float64)
    valid = ~np.isnan(scores)
    if not valid.all():
        logger.warning("%d row(s) have no anomaly score; they never detect", int((~valid).sum()))
    sweep = _Sweep(scores[valid], win[valid], unit[valid], n_windows)

    out: dict[str, ProfileScore] = {}
    for name, prof in profiles.items():
        threshold = sweep.best_threshold(prof)
        raw, tp, fp, fn = _score_at(scores, win, unit, n_windows, prof, threshold)
        null = -prof.a_fn * n_windows
        perfect = prof.a_tp * float(perfect_units.sum())
        normalised = 100.0 * (raw - null) / (perfect - null) if perfect != null else math.nan
        out[name] = ProfileScore(
            normalised=normalised,
            raw=raw,
            threshold=threshold,
            tp=tp,
            fp=fp,
            fn=fn,
            null=null,
            perfect=perfect,
        )
        logger.debug("profile %s: %s", name, out[name])
    return out


class _Sweep:
    """Corpus score at every distinct threshold, from one sort of all scorable rows.

    Rows are sorted by score, highest first. Lowering the threshold past a row adds its FP
    cost (outside windows) or raises its window's best TP weight (inside a window, from
    ``-A_FN`` at first). Those changes are computed per row once; a cumulative sum read at the
    last row of every distinct score gives the corpus score at that threshold.
    """

    def __init__(self, scores: np.ndarray, win: np.ndarray, unit: np.ndarray, n_windows: int):
        order = np.argsort(-scores, kind="stable")
        self.scores = scores[order]
        self.n_windows = n_windows
        win_sorted = win[order]
        self.unit = unit[order]
        self.outside = win_sorted < 0
        # Per window, in descending score order: increments of the running max TP weight.
        pos = np.flatnonzero(~self.outside)
        pos = pos[np.argsort(win_sorted[pos], kind="stable")]  # grouped by window
        wid = win_sorted[pos]
        self.win_pos = pos
        self.win_inc = np.zeros(len(pos))
        self.win_first = np.zeros(len(pos), dtype=bool)
        if len(pos):
            starts = np.flatnonzero(np.r_[True, wid[1:] != wid[:-1]])
            ends = np.r_[starts[1:], len(pos)]
            u = self.unit[pos]
            for s, e in zip(starts, ends, strict=True):
                running = np.maximum.accumulate(u[s:e])
                self.win_inc[s] = running[0]
                self.win_inc[s + 1 : e] = np.diff(running)
            self.win_first[starts] = True
        # Last row of each distinct score value.
        self.group_end = np.flatnonzero(np.r_[self.scores[1:] != self.scores[:-1], True])

    def best_threshold(self, prof: Profile) -> float:
        """The threshold with the highest corpus score (the highest one on ties)."""
        if len(self.scores) == 0:
            return math.inf
        delta = np.where(self.outside, prof.a_fp * self.unit, 0.0)
        delta[self.win_pos] = prof.a_tp * self.win_inc + np.where(self.win_first, prof.a_fn, 0.0)
        base = -prof.a_fn * self.n_windows
        totals = np.r_[base, base + np.cumsum(delta)[self.group_end]]
        best = int(np.argmax(totals))
        if best == 0:  # never detecting is best: a threshold above every score
            return float(np.nextafter(self.scores[0], math.inf))
        return float(self.scores[self.group_end[best - 1]])


def _score_at(
    scores: np.ndarray,
    win: np.ndarray,
    unit: np.ndarray,
    n_windows: int,
    prof: Profile,
    threshold: float,
) -> tuple[float, int, int, int]:
    """Corpus score and counts (tp, fp, fn) at a given threshold, computed directly."""
    with np.errstate(invalid="ignore"):
        det = scores >= threshold
    fp_rows = det & (win < 0)
    best = np.full(n_windows, -np.inf)
    in_win = det & (win >= 0)
    np.maximum.at(best, win[in_win], unit[in_win])
    hit = np.isfinite(best)
    raw = (
        prof.a_fp * float(unit[fp_rows].sum())
        + prof.a_tp * float(best[hit].sum())
        - prof.a_fn * float((~hit).sum())
    )
    return raw, int(hit.sum()), int(fp_rows.sum()), int((~hit).sum())


# --------------------------------------------------------------------------------------------
# Event-level metrics


def _runs(flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end rows (inclusive) of the maximal runs of True."""
    padded = np.r_[False, flags, False].astype(np.int8)
    d = np.diff(padded)
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1) - 1


def event_metrics(
    results: Mapping[str, ResultFile], windows: Mapping[str, Sequence[Window]]
) -> EventMetrics | None:
    """Event-level precision, recall and F1 from the ``is_anomaly`` flags.

    Args:
        results: detector output per label key; only files with flags count.
        windows: anomaly windows per label key. Keys of ``results`` without windows are
            ignored.

    Returns:
        The metrics, or ``None`` when no labelled file has an ``is_anomaly`` column.
    """
    tp = predicted = n_windows = detected = files = 0
    for key in sorted(results):
        res = results[key]
        if res.flags is None or key not in windows:
            continue
        files += 1
        p = probationary_length(len(res))
        spans = [(sp.first, sp.last) for sp in _spans_of(res, windows[key], key) if sp.last >= p]
        flags = res.flags.copy()
        flags[:p] = False
        starts, ends = _runs(flags)
        predicted += len(starts)
        n_windows += len(spans)
        if not spans or not len(starts):
            continue
        wa = np.array([a for a, _ in spans])
        wb = np.array([b for _, b in spans])
        overlap = (wa[None, :] <= ends[:, None]) & (wb[None, :] >= starts[:, None])
        tp += int(overlap.any(axis=1).sum())
        detected += int(overlap.any(axis=0).sum())
    if files == 0:
        return None
    precision = tp / predicted if predicted else 0.0
    recall = detected / n_windows if n_windows else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return EventMetrics(
        precision=precision,
        recall=recall,
        f1=f1,
        tp=tp,
        fp=predicted - tp,
        fn=n_windows - detected,
        predicted_events=predicted,
        windows=n_windows,
        files=files,
    )


# --------------------------------------------------------------------------------------------
# Directory evaluation and reporting


def evaluate_dir(results_dir: str | Path, labels_path: str | Path) -> Report:
    """Score every result CSV under ``results_dir`` that has a label key in ``labels_path``.

    Args:
        results_dir: directory of detector outputs, ``<category>/<file>.csv`` at any depth.
        labels_path: NAB windows JSON.

    Returns:
        The NAB scores of all profiles and, when files carry ``is_anomaly``, event metrics.

    Raises:
        FileNotFoundError: the directory or the labels file does not exist.
        ValueError: the labels or a matched result file cannot be parsed.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results directory not found: {results_dir}")
    if not Path(labels_path).is_file():
        raise FileNotFoundError(f"labels file not found: {labels_path}")
    windows = load_windows(labels_path)
    results: dict[str, ResultFile] = {}
    ignored: list[str] = []
    for path in sorted(results_dir.rglob("*.csv")):
        if not path.is_file():
            continue
        key = path.relative_to(results_dir).as_posix()
        if key not in windows:
            logger.warning("result file %s has no label key; ignored", key)
            ignored.append(key)
            continue
        results[key] = load_result(path)
    missing = sorted(k for k in windows if k not in results)
    for key in missing:
        logger.warning("label key %s has no result file under %s", key, results_dir)
    logger.info("matched %d result file(s) to %d label key(s)", len(results), len(windows))
    nab = score_corpus(results, windows)
    n_windows = next(iter(nab.values())).tp + next(iter(nab.values())).fn if nab else 0
    return Report(
        nab=nab,
        event=event_metrics(results, windows),
        files=len(results),
        windows=n_windows,
        missing_results=missing,
        ignored_results=ignored,
    )


def format_table(report: Report) -> str:
    """A human-readable text table of a :class:`Report`."""
    lines = [
        f"NAB score: {report.files} file(s), {report.windows} window(s)"
        + (
            f", {len(report.missing_results)} label key(s) without results"
            if report.missing_results
            else ""
        ),
        "",
        f"{'profile':<20} {'score':>8} {'raw':>9} {'threshold':>11} {'TP':>5} {'FP':>6} {'FN':>5}",
        "-" * 70,
    ]
    for name, s in report.nab.items():
        score = f"{s.normalised:8.2f}" if math.isfinite(s.normalised) else f"{'n/a':>8}"
        thr = f"{s.threshold:11.6f}" if math.isfinite(s.threshold) else f"{'-':>11}"
        lines.append(f"{name:<20} {score} {s.raw:9.3f} {thr} {s.tp:5d} {s.fp:6d} {s.fn:5d}")
    lines.append("")
    ev = report.event
    if ev is None:
        lines.append("Event-level: no result file has an is_anomaly column")
    else:
        lines += [
            f"Event-level ({ev.files} file(s) with is_anomaly, {ev.windows} window(s)):",
            f"  precision {ev.precision:.3f}   recall {ev.recall:.3f}   F1 {ev.f1:.3f}",
            f"  predicted events {ev.predicted_events}   TP {ev.tp}   FP {ev.fp}   FN {ev.fn}",
        ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``eval`` options to ``parser``."""
    parser.description = (
        "Score anomaly-detector output with the Numenta Anomaly Benchmark rules (standard, "
        "reward_low_FP_rate and reward_low_FN_rate profiles, one optimised threshold per "
        "profile) and, for files with an is_anomaly column, event-level precision/recall/F1."
    )
    parser.epilog = (
        "Result files are matched to label keys by their path relative to --results, e.g. "
        "DIR/realTraffic/speed_6005.csv <-> 'realTraffic/speed_6005.csv'. "
        "A file with rows out of time order is scored in file order, as NAB's scorer does, "
        "with a warning naming the file and the row. "
        "Exit status: 0 ok, 1 no result file matched a label key, 2 missing or unreadable input."
    )
    parser.add_argument(
        "--results",
        required=True,
        type=Path,
        metavar="DIR",
        help="directory of detector outputs <category>/<file>.csv with columns "
        "timestamp,value,anomaly_score[,is_anomaly]",
    )
    parser.add_argument(
        "--labels",
        required=True,
        type=Path,
        metavar="WINDOWS.json",
        help="NAB anomaly windows, e.g. NAB's labels/combined_windows.json",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="OUT",
        help="also write the summary as JSON to OUT; with '-' the JSON goes to standard "
        "output and the table to standard error",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``streamrnn eval`` with parsed arguments; returns the exit status."""
    if not Path(args.results).is_dir():
        print(
            f"streamrnn eval: error: results directory not found: {args.results}", file=sys.stderr
        )
        return 2
    if not Path(args.labels).is_file():
        print(f"streamrnn eval: error: labels file not found: {args.labels}", file=sys.stderr)
        return 2
    try:
        report = evaluate_dir(args.results, args.labels)
    except (OSError, ValueError) as exc:
        print(f"streamrnn eval: error: {exc}", file=sys.stderr)
        return 2
    if report.files == 0:
        print(
            f"streamrnn eval: error: no result file under {args.results} matches a label key "
            f"in {args.labels}",
            file=sys.stderr,
        )
        return 1
    json_to_stdout = args.json is not None and str(args.json) == "-"
    # With --json -, stdout carries only the JSON and the table goes to stderr.
    print(format_table(report), file=sys.stderr if json_to_stdout else sys.stdout)
    if args.json is not None:
        text = json.dumps(report.to_json(), indent=2)
        if json_to_stdout:
            print(text)
        else:
            try:
                Path(args.json).write_text(text + "\n", encoding="utf-8")
            except OSError as exc:
                print(f"streamrnn eval: error: cannot write {args.json}: {exc}", file=sys.stderr)
                return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``streamrnn eval`` (also ``python -m streamrnn.offline.evaluate``)."""
    parser = argparse.ArgumentParser(prog="streamrnn eval")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
