"""The quality benchmark's generated suite and its metrics, on tiny sizes (bench.quality)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streamrnn.detector.engine import Results
from streamrnn.offline.replay import KeyResult
from streamrnn.tools import suite, synth

quality = pytest.importorskip("bench.quality", reason="bench/ is not in this checkout")

N_STEPS = 700  # the shortest the longest anomaly (a day's drift) and its grace allow


@pytest.fixture(scope="module")
def cases() -> list[suite.Case]:
    return suite.build_cases(1, n_steps=N_STEPS, seed=3)


def by_cell(cases: list[suite.Case], kind: str, level: str) -> suite.Case:
    (case,) = [c for c in cases if (c.kind, c.intensity) == (kind, level)]
    return case


def test_every_kind_and_intensity_once_and_reproducible(cases: list[suite.Case]) -> None:
    assert len(cases) == len(synth.SUITE_KINDS) * 3
    assert {(c.kind, c.intensity) for c in cases} == {
        (k, i) for k in synth.SUITE_KINDS for i in suite.INTENSITIES
    }
    again = suite.build_cases(1, n_steps=N_STEPS, seed=3)
    for a, b in zip(cases, again, strict=True):
        np.testing.assert_array_equal(a.series.values, b.series.values)
        assert (a.start, a.end) == (b.start, b.end)
    for c in cases:
        assert N_STEPS // 2 <= c.start < c.end <= N_STEPS - 48
        assert c.series.labels[c.start : c.end].all() and c.series.labels.sum() == c.end - c.start
        clean = c.series.clean
        assert clean is not None
        changed = ~np.isclose(c.series.values, clean) | np.isnan(c.series.values)
        assert not changed[: c.start].any() and not changed[c.end :].any(), c.series.key


def test_injected_anomalies_have_their_sizes(cases: list[suite.Case]) -> None:
    spike = by_cell(cases, "spike", "strong")
    jump = spike.series.values - spike.series.clean
    assert spike.series.labels[spike.start] and spike.end == spike.start + 1
    assert abs(jump[spike.start]) == pytest.approx(6.0 * spike.series.scale)
    shift = by_cell(cases, "level_shift", "medium")
    diff = (shift.series.values - shift.series.clean)[shift.start : shift.end]
    np.testing.assert_allclose(np.abs(diff), 1.0 * shift.series.scale)
    drift = by_cell(cases, "drift", "strong")
    ramp = (drift.series.values - drift.series.clean)[drift.start : drift.end]
    assert abs(ramp[-1]) == pytest.approx(2.0 * drift.series.scale)
    assert np.all(np.diff(np.abs(ramp)) > 0)  # grows step by step
    stuck = by_cell(cases, "stuck", "strong")
    frozen = stuck.series.values[stuck.start - 1 : stuck.end]
    assert stuck.end - stuck.start == 96 and np.all(frozen == frozen[0])
    gap = by_cell(cases, "missing", "medium")
    assert np.isnan(gap.series.values).sum() == 24
    assert np.isnan(gap.series.values[gap.start : gap.end]).all()
    shape = by_cell(cases, "seasonal_shape", "strong")  # the day moved by half a day
    np.testing.assert_allclose(
        shape.series.values[shape.start : shape.end],
        shape.series.clean[shape.start - 144 : shape.end - 144],
    )
    noisy = by_cell(cases, "variance", "strong")
    extra = (noisy.series.values - noisy.series.clean)[noisy.start : noisy.end]
    assert 0.4 * noisy.series.scale < extra.std() < 0.8 * noisy.series.scale


def test_case_outcome_on_a_hand_case() -> None:
    flags = np.zeros(300, dtype=bool)
    flags[[5, 120, 121, 122, 175, 260]] = True  # 5: in warm-up; 260: after the grace
    o = suite.case_outcome(flags, start=118, end=130, grace=48, warmup=10)
    # Detection window [118, 178): first flag 120 -> delay 2; 175 lies in the grace.
    assert (o.detected, o.delay) == (True, 2)
    assert o.false_alerts == 1  # row 260 (row 5 is in the warm-up)
    assert o.clean_events == 300 - 10 - 60
    assert (o.events, o.true_events) == (4, 2)  # runs {5}, {120..122}, {175}, {260}
    missed = suite.case_outcome(np.zeros(300, dtype=bool), start=118, end=130, grace=48, warmup=10)
    assert (missed.detected, missed.delay, missed.events) == (False, None, 0)


def test_summarise_delays_and_rates() -> None:
    def outcome(delay: int | None, false: int) -> suite.CaseOutcome:
        hit = delay is not None
        return suite.CaseOutcome(hit, delay, false, 5000, int(hit) + false, int(hit))

    s = suite.summarise([outcome(0, 1), outcome(10, 0), outcome(20, 0), outcome(None, 1)])
    assert s["detection_rate"] == 0.75 and s["detected"] == 3
    assert s["median_delay"] == 10.0
    assert s["p90_delay"] == pytest.approx(18.0)  # numpy's linear quantile of 0, 10, 20
    assert s["false_per_10k"] == pytest.approx(1e4 * 2 / 20000)
    assert s["event_precision"] == pytest.approx(3 / 5)


def _key_result(flags: list[int], n: int) -> KeyResult:
    f = np.zeros(n, dtype=bool)
    f[flags] = True
    z = np.zeros(n, dtype=np.float32)
    res = Results(z[:, None], z[:, None], z, z, f, f & False, f & False, np.zeros(n, np.int64))
    return KeyResult(series=None, results=res)  # type: ignore[arg-type]


def test_flag_rates_pooled_and_per_key() -> None:
    items = [_key_result([200, 300], 1150), _key_result([], 1150), _key_result([999], 1150)]
    r = quality.flag_rates(items, warmup=150, configured=1e-3)
    assert (r["flags"], r["events"], r["keys_flagged"]) == (3, 3450, 2)
    assert r["flags_per_10k"] == pytest.approx(1e4 * 3 / 3450)
    assert r["realised_rate"] == pytest.approx(3 / 3000)  # events after the warm-up
    assert r["pooled_ratio"] == pytest.approx(1.0)
    assert r["max_key_ratio"] == pytest.approx((2 / 1000) / 1e-3)
    assert r["flag_steps"] == [200, 999]
    assert "pooled_ratio" not in quality.flag_rates(items, warmup=150, configured=None)


def test_parse_sets() -> None:
    assert quality.parse_sets(["scoring.cooldown=20", "model.cell=gru", "a.b=1e-3"]) == {
        "scoring.cooldown": 20,
        "model.cell": "gru",
        "a.b": 1e-3,
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        quality.parse_sets(["scoring.cooldown"])


def test_docs_block_is_replaced_not_appended(tmp_path: Path) -> None:
    doc = tmp_path / "q.md"
    doc.write_text(f"# Q\n\n{quality.BEGIN}\nold\n{quality.END}\n\ntail\n")
    result = {
        "date": "d",
        "machine": "m",
        "command": "python -m bench.quality",
        "overrides": {},
        "seconds": {"total": 1.0},
    }
    quality.write_docs(doc, result)
    quality.write_docs(doc, result)
    text = doc.read_text()
    assert text.count(quality.BEGIN) == 1 and "old" not in text and text.endswith("tail\n")
    assert "`python -m bench.quality`" in text


def test_only_rejects_unknown_sections(capsys: pytest.CaptureFixture[str]) -> None:
    assert quality.main(["--only", "nab,bogus", "--no-docs"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_tables_of_a_result(tmp_path: Path) -> None:
    outcome = suite.case_outcome(np.zeros(700, bool), start=400, end=401, grace=48, warmup=150)
    cell = suite.summarise([outcome])
    result = {
        "suite": {
            "cases_per_cell": 1,
            "steps": 700,
            "grace": 48,
            "cells": {k: dict.fromkeys(suite.INTENSITIES, cell) for k in synth.SUITE_KINDS},
            "all": suite.summarise([outcome]),
        },
        "clean": {"issue10": quality.flag_rates([_key_result([300], 600)], 150, None)},
        "seconds": {"total": 2.0},
    }
    text = quality.tables(result)
    assert "| spike | 0% | 0% | 0% | - / - |" in text
    assert "| issue10 | 1 | 600 | 1 | 16.7 | 1 |" in text
    json.dumps(result)  # what main writes
