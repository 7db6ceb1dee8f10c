"""Tests of streamrnn.offline.evaluate: NAB scoring, event metrics, loading and the CLI.

Hand-computed cases use one file of N = 100 rows, one row per minute, so the probationary
period is min(floor(0.15 * 100), 750) = 15 rows, and one window over rows 40..49 (L = 10).
Useful identity: the scaled sigmoid 2 / (1 + exp(5y)) - 1 equals tanh(-5y / 2), so
sig(-1) = tanh(2.5) = 0.986614298.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest

from streamrnn.offline import evaluate as ev

T0 = np.datetime64("2020-01-01T00:00:00", "us")
MINUTE = np.timedelta64(60_000_000, "us")
N = 100
MAX_TP = math.tanh(2.5)  # sig(-1)


def ts(i: int) -> np.datetime64:
    return T0 + i * MINUTE


def make_result(n: int = N, hits: dict[int, float] | None = None, flags=None) -> ev.ResultFile:
    scores = np.zeros(n)
    for i, s in (hits or {}).items():
        scores[i] = s
    return ev.ResultFile(
        timestamps=T0 + np.arange(n) * MINUTE,
        scores=scores,
        flags=None if flags is None else np.asarray(flags, dtype=bool),
    )


def window(a: int, b: int) -> tuple[np.datetime64, np.datetime64]:
    return (ts(a), ts(b))


ONE_WINDOW = {"cat/f.csv": [window(40, 49)]}


def score_one(hits: dict[int, float], profiles=ev.PROFILES) -> dict[str, ev.ProfileScore]:
    return ev.score_corpus({"cat/f.csv": make_result(hits=hits)}, ONE_WINDOW, profiles)


# ------------------------------------------------------------------------------- basics


def test_probationary_length() -> None:
    assert ev.probationary_length(100) == 15
    assert ev.probationary_length(99) == 14  # floor(14.85)
    assert ev.probationary_length(4032) == 604
    assert ev.probationary_length(100_000) == 750


def test_scaled_sigmoid_values() -> None:
    assert float(ev.scaled_sigmoid(-1.0)) == pytest.approx(0.98661429815)
    assert float(ev.scaled_sigmoid(0.0)) == 0.0
    assert float(ev.scaled_sigmoid(1.0)) == pytest.approx(-0.98661429815)
    assert float(ev.scaled_sigmoid(3.0)) == pytest.approx(-math.tanh(7.5))
    assert float(ev.scaled_sigmoid(3.01)) == -1.0  # NAB's cut-off: exactly -1 beyond 3


# ------------------------------------------------------------------ hand-computed NAB cases


def test_detection_at_left_edge_is_perfect() -> None:
    # Row 40: y = -(49 - 40 + 1) / 10 = -1, weight sig(-1) / sig(-1) = 1.
    # Threshold 1 gives S = 1; threshold 0 also fires on 75 rows outside the window (worse);
    # null S = -1, perfect S = 1 -> 100 * (1 + 1) / (1 + 1) = 100.
    s = score_one({40: 1.0})["standard"]
    assert s.raw == pytest.approx(1.0)
    assert s.threshold == 1.0
    assert (s.tp, s.fp, s.fn) == (1, 0, 0)
    assert s.null == -1.0
    assert s.perfect == pytest.approx(1.0)
    assert s.normalised == pytest.approx(100.0)


def test_detection_at_right_edge_earns_little() -> None:
    # Row 49: y = -(49 - 49 + 1) / 10 = -0.1, weight tanh(0.25) / tanh(2.5)
    #   = 0.244918662 / 0.986614298 = 0.248241...; normalised = 100 * (0.2482 + 1) / 2 = 62.41.
    expected = math.tanh(0.25) / MAX_TP
    s = score_one({49: 1.0})["standard"]
    assert s.raw == pytest.approx(expected)
    assert expected == pytest.approx(0.248241, abs=1e-6)
    assert s.normalised == pytest.approx(100 * (expected + 1) / 2)
    assert s.normalised == pytest.approx(62.41, abs=0.01)


def test_only_earliest_detection_in_window_counts() -> None:
    # Rows 45 and 41 both fire; only row 41 counts: y = -(49 - 41 + 1) / 10 = -0.9,
    # weight tanh(2.25) / tanh(2.5). Later rows in the same window add nothing, no FP.
    s = score_one({41: 1.0, 45: 1.0, 48: 1.0})["standard"]
    assert s.raw == pytest.approx(math.tanh(2.25) / MAX_TP)
    assert (s.tp, s.fp, s.fn) == (1, 0, 0)


def test_false_positive_before_any_window_costs_full_weight() -> None:
    # Row 20 (outside, no preceding window): -A_FP; row 40: +1.
    # standard: S = 1 - 0.11 = 0.89 -> 100 * 1.89 / 2 = 94.5
    # reward_low_FP_rate: S = 1 - 0.22 = 0.78 -> 89.0
    out = score_one({20: 1.0, 40: 1.0})
    assert out["standard"].raw == pytest.approx(0.89)
    assert out["standard"].fp == 1
    assert out["standard"].normalised == pytest.approx(94.5)
    assert out["reward_low_FP_rate"].raw == pytest.approx(0.78)
    assert out["reward_low_FP_rate"].normalised == pytest.approx(89.0)


def test_false_positive_after_window_is_scaled() -> None:
    # Window ends at row 49, L - 1 = 9.
    # Row 58: y = (58 - 49) / 9 = 1, cost 0.11 * sig(1) = -0.11 * tanh(2.5) = -0.108528.
    # Row 50: y = 1 / 9, cost -0.11 * tanh(5 / 18) = -0.029800 (right after: cheap).
    # Row 77: y = 28 / 9 > 3, cost exactly -0.11.
    s = score_one({40: 1.0, 58: 1.0})["standard"]
    assert s.raw == pytest.approx(1 - 0.11 * math.tanh(2.5))
    assert s.raw == pytest.approx(0.891472, abs=1e-6)
    s = score_one({40: 1.0, 50: 1.0})["standard"]
    assert s.raw == pytest.approx(1 - 0.11 * math.tanh(5 / 18))
    s = score_one({40: 1.0, 77: 1.0})["standard"]
    assert s.raw == pytest.approx(1 - 0.11)


def test_no_detection_is_a_false_negative() -> None:
    # All scores 0: firing everywhere (threshold 0) costs far more than -1, so the optimiser
    # never fires: S = -A_FN = null -> normalised 0. reward_low_FN_rate: S = -2.
    out = score_one({})
    s = out["standard"]
    assert s.raw == -1.0
    assert (s.tp, s.fp, s.fn) == (0, 0, 1)
    assert s.threshold > 0.0  # above every score
    assert s.normalised == 0.0
    assert out["reward_low_FN_rate"].raw == -2.0
    assert out["reward_low_FN_rate"].normalised == 0.0


def test_probationary_rows_are_ignored() -> None:
    # Rows 0..14 are probationary: the detection at row 5 is neither FP nor TP. S = 1.
    s = score_one({5: 1.0, 40: 1.0})["standard"]
    assert s.raw == pytest.approx(1.0)
    assert s.fp == 0
    # A window partly inside the probationary period (rows 10..24, L = 15): a detection at
    # row 12 is ignored; the first scorable row 15 would earn
    # tanh(5 / 2 * (24 - 15 + 1) / 15) / tanh(2.5) = tanh(5 / 3) / tanh(2.5).
    wins = {"cat/f.csv": [window(10, 24)]}
    s = ev.score_corpus({"cat/f.csv": make_result(hits={12: 1.0})}, wins)["standard"]
    assert (s.tp, s.fn) == (0, 1)
    assert s.raw == -1.0
    s = ev.score_corpus({"cat/f.csv": make_result(hits={15: 1.0})}, wins)["standard"]
    assert s.raw == pytest.approx(math.tanh(5 / 3) / MAX_TP)
    assert s.perfect == pytest.approx(math.tanh(5 / 3) / MAX_TP)  # best achievable
    assert s.normalised == pytest.approx(100.0)
    # A window entirely inside the probationary period is not scored at all.
    wins = {"cat/f.csv": [window(2, 8)]}
    s = ev.score_corpus({"cat/f.csv": make_result(hits={5: 1.0})}, wins)["standard"]
    assert (s.tp, s.fp, s.fn, s.null, s.perfect) == (0, 0, 0, 0.0, 0.0)
    assert math.isnan(s.normalised)


def test_threshold_optimisation_picks_best_threshold_per_profile() -> None:
    # Row 45 score 0.9: TP at y = -0.5 -> tanh(1.25) / tanh(2.5) = 0.859795
    # Row 20 score 0.8: FP before any window -> -A_FP
    # Row 42 score 0.7: TP at y = -0.8 -> tanh(2.0) / tanh(2.5) = 0.977107
    # standard (A_FP 0.11):  thr 0.9 -> 0.8598; thr 0.8 -> 0.7498; thr 0.7 -> 0.8671 (best)
    # reward_low_FP_rate (0.22): thr 0.9 -> 0.8598 (best); thr 0.7 -> 0.7571
    out = score_one({45: 0.9, 20: 0.8, 42: 0.7})
    w45 = math.tanh(1.25) / MAX_TP
    w42 = math.tanh(2.0) / MAX_TP
    assert out["standard"].threshold == 0.7
    assert out["standard"].raw == pytest.approx(w42 - 0.11)
    assert out["standard"].raw == pytest.approx(0.867107, abs=1e-6)
    assert out["reward_low_FP_rate"].threshold == 0.9
    assert out["reward_low_FP_rate"].raw == pytest.approx(w45)
    assert out["reward_low_FP_rate"].fp == 0


def test_null_and_perfect_detectors_normalise_to_0_and_100() -> None:
    wins = {"a/x.csv": [window(30, 39), window(60, 79)], "b/y.csv": [window(50, 54)]}
    null = {"a/x.csv": make_result(), "b/y.csv": make_result()}
    perfect = {
        "a/x.csv": make_result(hits={30: 0.8, 60: 0.8}),
        "b/y.csv": make_result(hits={50: 0.8}),
    }
    for name, prof in ev.PROFILES.items():
        s0 = ev.score_corpus(null, wins)[name]
        assert s0.raw == pytest.approx(-3 * prof.a_fn)
        assert s0.normalised == pytest.approx(0.0)
        s1 = ev.score_corpus(perfect, wins)[name]
        assert s1.raw == pytest.approx(3 * prof.a_tp)
        assert s1.perfect == pytest.approx(3 * prof.a_tp)
        assert s1.normalised == pytest.approx(100.0)
        assert s1.threshold == 0.8


def test_results_without_label_key_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    results = {"cat/f.csv": make_result(hits={40: 1.0}), "other/g.csv": make_result(hits={1: 1.0})}
    with caplog.at_level(logging.WARNING, logger="streamrnn.offline.evaluate"):
        s = ev.score_corpus(results, ONE_WINDOW)["standard"]
    assert s.normalised == pytest.approx(100.0)
    assert "other/g.csv" in caplog.text


# -------------------------------------------------------------- sweep against brute force


def _naive_score(files, windows, prof: ev.Profile, thr: float) -> float:
    """Direct, loop-based NAB score at one threshold (independent of the module's sweep)."""
    total = 0.0
    for key, res in files.items():
        n = len(res)
        p = min(math.floor(0.15 * n), 750)
        spans = []
        for start, end in windows[key]:
            rows = [i for i in range(n) if start <= res.timestamps[i] <= end]
            spans.append((rows[0], rows[-1]))
        detected = [i for i in range(p, n) if res.scores[i] >= thr]
        for a, b in spans:
            if b < p:
                continue
            inside = [i for i in detected if a <= i <= b]
            if inside:
                y = -(b - inside[0] + 1) / (b - a + 1)
                total += prof.a_tp * (2 / (1 + math.exp(5 * y)) - 1) / MAX_TP
            else:
                total -= prof.a_fn
        for i in detected:
            if any(a <= i <= b for a, b in spans):
                continue
            before = [(a, b) for a, b in spans if b < i]
            if not before:
                total -= prof.a_fp
                continue
            a, b = before[-1]
            y = (i - b) / max(b - a, 1)
            total += prof.a_fp * (-1.0 if y > 3 else 2 / (1 + math.exp(5 * y)) - 1)
    return total


def test_sweep_matches_brute_force_on_random_corpus() -> None:
    rng = random.Random(7)
    files, windows = {}, {}
    for f in range(4):
        n = rng.randint(60, 140)
        scores = np.round(np.array([rng.random() ** 3 for _ in range(n)]), 2)
        starts = sorted(rng.sample(range(5, n - 12), 2))
        if starts[1] - starts[0] < 12:
            starts = starts[:1]
        wins = [window(s, s + rng.randint(0, 9)) for s in starts]
        key = f"c/f{f}.csv"
        files[key] = ev.ResultFile(timestamps=T0 + np.arange(n) * MINUTE, scores=scores)
        windows[key] = wins
    out = ev.score_corpus(files, windows)
    candidates = sorted({float(s) for r in files.values() for s in r.scores}) + [2.0]
    for name, prof in ev.PROFILES.items():
        brute = max(_naive_score(files, windows, prof, t) for t in candidates)
        assert out[name].raw == pytest.approx(brute, abs=1e-9)
        assert _naive_score(files, windows, prof, out[name].threshold) == pytest.approx(
            out[name].raw, abs=1e-9
        )


# ------------------------------------------------------------------------- event metrics


def test_event_metrics_tiny_case() -> None:
    # Windows rows 40..49 and 70..79; probation 15 rows.
    # Flagged runs: 10..17 (cut to 15..17, FP), 41..42 (TP, window 1), 45..52 (TP, window 1),
    # 55..56 (FP). Window 2 is never overlapped.
    # -> 4 predicted events, TP 2, FP 2; precision 2/4; recall 1/2 windows; F1 0.5; FN 1.
    flags = np.zeros(N, dtype=bool)
    for a, b in [(10, 17), (41, 42), (45, 52), (55, 56)]:
        flags[a : b + 1] = True
    results = {
        "cat/f.csv": make_result(flags=flags),
        "cat/noflags.csv": make_result(),  # no is_anomaly column: not counted
    }
    wins = {"cat/f.csv": [window(40, 49), window(70, 79)], "cat/noflags.csv": [window(40, 49)]}
    m = ev.event_metrics(results, wins)
    assert m is not None
    assert (m.predicted_events, m.tp, m.fp, m.fn, m.windows, m.files) == (4, 2, 2, 1, 2, 1)
    assert m.precision == pytest.approx(0.5)
    assert m.recall == pytest.approx(0.5)
    assert m.f1 == pytest.approx(0.5)


def test_event_metrics_probation_only_flags_and_none() -> None:
    flags = np.zeros(N, dtype=bool)
    flags[:15] = True  # all inside the probationary period: no event
    m = ev.event_metrics({"cat/f.csv": make_result(flags=flags)}, ONE_WINDOW)
    assert m is not None
    assert (m.predicted_events, m.tp, m.fn) == (0, 0, 1)
    assert (m.precision, m.recall, m.f1) == (0.0, 0.0, 0.0)
    assert ev.event_metrics({"cat/f.csv": make_result()}, ONE_WINDOW) is None


# ----------------------------------------------------------------- loading, dir, report, CLI


def _write_result(path: Path, rows: list[tuple[str, float, float, int | None]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with_flag = rows and rows[0][3] is not None
    lines = ["timestamp,value,anomaly_score,extra" + (",is_anomaly" if with_flag else "")]
    for t, v, s, f in rows:
        lines.append(f"{t},{v},{s:.6f},x" + (f",{f}" if with_flag else ""))
    path.write_text("\n".join(lines) + "\n")


def _fmt(i: int, sep: str = " ") -> str:
    return str(ts(i).astype("datetime64[s]")).replace("T", sep)


def _corpus(tmp_path: Path) -> tuple[Path, Path]:
    """One flagged file with a perfect detection, one unflagged file, one unlabelled file."""
    res = tmp_path / "results"
    rows = [
        (_fmt(i, "T" if i % 2 else " "), 1.0, 1.0 if i == 40 else 0.0, int(i in (40, 41)))
        for i in range(N)
    ]
    _write_result(res / "cat" / "a.csv", rows)
    _write_result(res / "cat" / "b.csv", [(_fmt(i), 1.0, 0.0, None) for i in range(N)])
    _write_result(res / "deep" / "er" / "stray.csv", [(_fmt(i), 1.0, 0.5, None) for i in range(N)])
    labels = tmp_path / "windows.json"
    labels.write_text(
        json.dumps(
            {
                "cat/a.csv": [[_fmt(40) + ".000000", _fmt(49) + ".000000"]],
                "cat/b.csv": [],
                "cat/missing.csv": [],
            }
        )
    )
    return res, labels


def test_load_result_and_windows(tmp_path: Path) -> None:
    res, labels = _corpus(tmp_path)
    r = ev.load_result(res / "cat" / "a.csv")
    assert len(r) == N
    assert r.timestamps[1] == ts(1)  # ISO 8601 'T' row
    assert r.timestamps[2] == ts(2)  # space-separated row
    assert r.scores[40] == 1.0
    assert r.flags is not None and r.flags.sum() == 2
    assert ev.load_result(res / "cat" / "b.csv").flags is None
    w = ev.load_windows(labels)
    assert w["cat/a.csv"] == [(ts(40), ts(49))]
    assert w["cat/b.csv"] == []


def test_load_result_utc_offset_and_errors(tmp_path: Path) -> None:
    p = tmp_path / "z.csv"
    p.write_text(
        "timestamp,anomaly_score\n2020-01-01T02:00:00+02:00,0.1\n2020-01-01T00:01:00Z,0.2\n"
    )
    r = ev.load_result(p)
    assert list(r.timestamps) == [ts(0), ts(1)]
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,value\n2020-01-01 00:00:00,1\n")
    with pytest.raises(ValueError, match="anomaly_score"):
        ev.load_result(bad)


# ------------------------------------------------------------- rows out of time order
#
# NAB's scorer walks a file's rows in file order: a window is entered at the row whose
# timestamp equals its start and left after the row whose timestamp equals its end; a row's
# weight depends on its row index, never on its own timestamp. Here row 44 carries ts(10)
# (inside the window by row, in the probationary period by time) and row 60 carries ts(45)
# (inside the window by time, after it by row).


def _unordered_stamps() -> list[np.datetime64]:
    stamps = [ts(i) for i in range(N)]
    stamps[44], stamps[60] = ts(10), ts(45)
    return stamps


def test_out_of_order_rows_are_scored_by_row_position() -> None:
    res = ev.ResultFile(timestamps=np.array(_unordered_stamps()), scores=np.zeros(N))
    res.scores[44], res.scores[60] = 0.9, 1.0
    assert list(res.out_of_order) == [44, 60]
    s = ev.score_corpus({"cat/f.csv": res}, ONE_WINDOW)["standard"]
    # Threshold 0.9 detects both. Row 44 is in the window (rows 40..49, width 10):
    # y = -(49 - 44 + 1) / 10 = -0.6, weight sig(-0.6) / sig(-1) = tanh(1.5) / tanh(2.5).
    # Row 60 is outside, 11 rows after the window's end row 49: y = 11 / (10 - 1),
    # cost 0.11 * sig(11 / 9) = -0.11 * tanh(2.5 * 11 / 9). Threshold 1.0 (row 60 only) gives
    # -1 - 0.11 * tanh(...), worse; threshold 0 adds 98 more false positives.
    tp = math.tanh(1.5) / MAX_TP
    fp = -0.11 * math.tanh(2.5 * 11 / 9)
    assert s.threshold == 0.9
    assert (s.tp, s.fp, s.fn) == (1, 1, 0)
    assert s.raw == pytest.approx(tp + fp, abs=1e-12)
    assert s.normalised == pytest.approx(100 * (tp + fp + 1) / 2, abs=1e-9)


def test_eval_cli_scores_an_out_of_order_file_and_names_the_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    res_dir = tmp_path / "res" / "cat"
    res_dir.mkdir(parents=True)
    rows = ["timestamp,value,anomaly_score"]
    for i, t in enumerate(_unordered_stamps()):
        score = {44: 0.9, 60: 1.0}.get(i, 0.0)
        rows.append(f"{str(t.astype('datetime64[s]')).replace('T', ' ')},1.0,{score}")
    (res_dir / "f.csv").write_text("\n".join(rows) + "\n")
    labels = tmp_path / "windows.json"
    labels.write_text(json.dumps({"cat/f.csv": [["2020-01-01 00:40:00", "2020-01-01 00:49:00"]]}))
    with caplog.at_level(logging.WARNING, logger="streamrnn.offline.evaluate"):
        rc = ev.main(["--results", str(tmp_path / "res"), "--labels", str(labels), "--json", "-"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    tp = math.tanh(1.5) / MAX_TP
    fp = -0.11 * math.tanh(2.5 * 11 / 9)
    assert out["nab"]["standard"] == pytest.approx(100 * (tp + fp + 1) / 2, abs=1e-9)
    warning = caplog.text
    assert "f.csv" in warning and "2 row(s) out of time order" in warning
    assert "row 44 (line 46: 2020-01-01 00:10:00, after 2020-01-01 00:43:00)" in warning


def test_row_order_walk_equals_time_order_on_sorted_files() -> None:
    # On a file in time order whose window limits are timestamps of its rows (as NAB's labels
    # always are), NAB's walk gives exactly the windows that the time-based mapping gives.
    rng = random.Random(7)
    stamps = T0 + np.arange(500) * MINUTE
    for _ in range(50):
        cuts = sorted(rng.sample(range(500), 6))
        wins = [(stamps[a], stamps[b]) for a, b in zip(cuts[::2], cuts[1::2], strict=True)]
        assert ev._row_order_spans(stamps, wins, "k") == ev._window_spans(stamps, wins, "k")


def test_row_order_walk_edge_cases(caplog: pytest.LogCaptureFixture) -> None:
    stamps = np.array([ts(i) for i in range(20)])
    # The end's timestamp sits on a row before the start: the walk never leaves the window.
    swapped = stamps.copy()
    swapped[3], swapped[12] = stamps[12], stamps[3]  # rows 3 and 12 trade places
    (span,) = ev._row_order_spans(swapped, [(ts(5), ts(12))], "k")
    assert (span.first, span.last, span.right, span.width, span.exited) == (5, 19, 3, -1, False)
    # A window whose start row comes before the previous window's entry is never entered.
    swapped[2], swapped[15] = stamps[15], stamps[2]
    with caplog.at_level(logging.WARNING, logger="streamrnn.offline.evaluate"):
        spans = ev._row_order_spans(swapped, [(ts(8), ts(10)), (ts(15), ts(16))], "k")
    assert [(s.first, s.last) for s in spans] == [(8, 10)]
    assert "never entered" in caplog.text
    with pytest.raises(ValueError, match="not the timestamp of a row"):
        ev._row_order_spans(swapped, [(ts(8), ts(10) + MINUTE // 2)], "k")


def test_evaluate_dir_report_and_table(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    res, labels = _corpus(tmp_path)
    with caplog.at_level(logging.WARNING, logger="streamrnn.offline.evaluate"):
        report = ev.evaluate_dir(res, labels)
    assert "cat/missing.csv" in caplog.text  # label key without result
    assert "deep/er/stray.csv" in caplog.text  # result without label key
    assert report.files == 2
    assert report.missing_results == ["cat/missing.csv"]
    assert report.ignored_results == ["deep/er/stray.csv"]
    out = report.to_json()
    assert set(out) == {"nab", "event", "files", "thresholds"}
    assert out["nab"] == pytest.approx(
        {"standard": 100.0, "reward_low_FP_rate": 100.0, "reward_low_FN_rate": 100.0}
    )
    assert out["thresholds"]["standard"] == 1.0
    # Flags on rows 40..41: one event overlapping the window.
    assert out["event"] == {
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
        "tp": 1,
        "fp": 0,
        "fn": 0,
        "predicted_events": 1,
    }
    assert out["files"] == 2
    json.dumps(out)  # serialisable
    table = ev.format_table(report)
    assert "standard" in table and "100.00" in table and "precision 1.000" in table


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res, labels = _corpus(tmp_path)
    out = tmp_path / "out.json"
    assert ev.main(["--results", str(res), "--labels", str(labels), "--json", str(out)]) == 0
    assert "reward_low_FN_rate" in capsys.readouterr().out
    assert json.loads(out.read_text())["files"] == 2
    assert ev.main(["--results", str(tmp_path / "nope"), "--labels", str(labels)]) == 2
    assert "results directory not found" in capsys.readouterr().err
    assert ev.main(["--results", str(res), "--labels", str(tmp_path / "nope.json")]) == 2
    assert "labels file not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ev.main(["--results", str(empty), "--labels", str(labels)]) == 1
    with pytest.raises(SystemExit) as exc:
        ev.main(["--help"])
    assert exc.value.code == 0
    assert "Numenta Anomaly Benchmark" in capsys.readouterr().out


# --------------------------------------------------------------------- real NAB reference


def _nab_dir() -> Path:
    env = os.environ.get("STREAMRNN_NAB_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared/data/nab-dev"


REFERENCE = {
    "numenta": {"standard": 75.52, "reward_low_FP_rate": 70.68, "reward_low_FN_rate": 78.99},
    "windowedGaussian": {
        "standard": 41.42,
        "reward_low_FP_rate": 26.48,
        "reward_low_FN_rate": 48.45,
    },
}


@pytest.mark.nab
@pytest.mark.parametrize("detector", sorted(REFERENCE))
def test_reproduces_nab_reference_scores(detector: str) -> None:
    root = _nab_dir()
    labels = root / "labels" / "combined_windows.json"
    results = root / "reference-results" / detector
    if not (labels.is_file() and results.is_dir()):
        pytest.skip(
            f"NAB data not found at {root}: git clone https://github.com/numenta/NAB and point "
            "STREAMRNN_NAB_DIR at a folder holding its data/ and labels/ folders plus "
            f"reference-results/{detector}/ (NAB's results/{detector}/ with the "
            f"'{detector}_' file-name prefix removed)"
        )
    report = ev.evaluate_dir(results, labels)
    assert report.files == 41
    for profile, expected in REFERENCE[detector].items():
        assert report.nab[profile].normalised == pytest.approx(expected, abs=0.5), profile
