"""The generated suite of the quality benchmark: labelled single-anomaly cases and clean streams.

A **case** is one key's stream (:func:`streamrnn.tools.synth.generate`, ``sensor`` or ``energy``,
clean) with one anomaly of one kind (:data:`~streamrnn.tools.synth.SUITE_KINDS`) at one
intensity (``weak``, ``medium``, ``strong``) written into it by
:func:`~streamrnn.tools.synth.apply_anomaly`. Sizes are in the key's own scale (its daily
amplitude) and durations in steps (:data:`INTENSITY`). The anomaly starts at a random step in
the second half of the stream, so the key has seen more than a day of normal readings.

Scoring a case, from the detector's flags (one bool per event):

* the **detection window** is ``[start, end + grace)``: the anomaly's rows and ``grace`` more
  (a burst of missing values or the end of a stuck run shows only when readings come back);
* **detected** when a flag falls in it; the **delay** is the first such flag's step minus
  ``start`` (0 = flagged at the first anomalous reading);
* every other flag after the warm-up is a **false alert**; the events there are the case's
  **clean events**;
* an **event** is a maximal run of flagged steps; it is a true event when it overlaps the
  detection window.

>>> flags = np.zeros(100, dtype=bool); flags[[20, 53, 54, 90]] = True
>>> o = case_outcome(flags, start=50, end=52, grace=5, warmup=10)
>>> (o.detected, o.delay, o.false_alerts, o.clean_events, o.events, o.true_events)
(True, 3, 2, 83, 3, 1)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import synth

__all__ = [
    "INTENSITIES",
    "INTENSITY",
    "Case",
    "CaseOutcome",
    "build_cases",
    "case_outcome",
    "summarise",
]

INTENSITIES: tuple[str, ...] = ("weak", "medium", "strong")

# Per kind and intensity: (magnitude in units of the key's scale, duration in steps at 5-minute
# steps; a day is 288). Weak is meant to be hard to see, strong to be plain to a person.
INTENSITY: dict[str, dict[str, tuple[float, int]]] = {
    "spike": {"weak": (1.5, 1), "medium": (3.0, 1), "strong": (6.0, 1)},
    "level_shift": {"weak": (0.5, 96), "medium": (1.0, 96), "strong": (2.0, 96)},
    "variance": {"weak": (0.15, 96), "medium": (0.3, 96), "strong": (0.6, 96)},
    "stuck": {"weak": (0.0, 12), "medium": (0.0, 36), "strong": (0.0, 96)},
    "drift": {"weak": (0.5, 288), "medium": (1.0, 288), "strong": (2.0, 288)},
    "seasonal_shape": {"weak": (0.3, 288), "medium": (0.6, 288), "strong": (1.0, 288)},
    "missing": {"weak": (0.0, 6), "medium": (0.0, 24), "strong": (0.0, 96)},
}


@dataclass
class Case:
    """One labelled case: ``series.values`` holds the anomaly at ``[start, end)``."""

    series: synth.SyntheticSeries
    kind: str
    intensity: str
    start: int
    end: int


def build_cases(
    n_per_cell: int,
    *,
    n_steps: int = 2000,
    seed: int = 0,
    interval_s: float = 300.0,
    kinds: Sequence[str] = synth.SUITE_KINDS,
    grace: int = 48,
) -> list[Case]:
    """``n_per_cell`` cases for every kind x intensity, half on sensor and half on energy streams.

    Keys are ``suite/<kind>/<intensity>/<n>``. Everything follows from the arguments.
    """
    if n_per_cell < 1:
        raise ValueError(f"n_per_cell must be >= 1, got {n_per_cell}")
    longest = max(d for k in kinds for _, d in INTENSITY[k].values())
    if n_steps < 2 * (longest + grace) + 2:
        raise ValueError(
            f"n_steps must be >= {2 * (longest + grace) + 2} for these kinds, got {n_steps}"
        )
    per_day = int(round(86400.0 / interval_s))
    cells = [(k, i) for k in kinds for i in INTENSITIES]
    total = len(cells) * n_per_cell
    bases = {
        kind: synth.generate(
            kind,  # type: ignore[arg-type]
            total,
            n_steps,
            interval_s=interval_s,
            anomalies=(),
            seed=seed + j,
            key_prefix=f"suite-{kind}",
        )
        for j, kind in enumerate(("sensor", "energy"))
    }
    rng = np.random.default_rng(np.random.SeedSequence([seed, 10]))
    out: list[Case] = []
    for c, (kind, intensity) in enumerate(cells):
        size, length = INTENSITY[kind][intensity]
        for n in range(n_per_cell):
            j = c * n_per_cell + n
            base = bases["sensor" if j % 2 == 0 else "energy"][j]
            values = base.values.copy()
            start = int(rng.integers(n_steps // 2, n_steps - length - grace))
            sign = 1.0 if rng.random() < 0.5 else -1.0
            # seasonal_shape's size is a blend weight; variance's a standard deviation
            if kind == "seasonal_shape":
                magnitude = size
            else:
                magnitude = size * base.scale * (sign if kind != "variance" else 1.0)
            synth.apply_anomaly(
                values, base.values, kind, start, start + length, magnitude, period=per_day, rng=rng
            )
            series = synth.SyntheticSeries(
                key=f"suite/{kind}/{intensity}/{n:03d}",
                timestamps=base.timestamps,
                values=values,
                anomalies=[synth.Anomaly(kind, start, start + length)],
                clean=base.values,
                kind=base.kind,
                scale=base.scale,
                offset=base.offset,
            )
            out.append(Case(series, kind, intensity, start, start + length))
    return out


@dataclass(frozen=True)
class CaseOutcome:
    """What the flags of one case say (see the module docstring)."""

    detected: bool
    delay: int | None
    false_alerts: int
    clean_events: int
    events: int
    true_events: int


def case_outcome(
    flags: np.ndarray, *, start: int, end: int, grace: int, warmup: int
) -> CaseOutcome:
    """Score one case's flags ``(n,)`` bool against its anomaly at ``[start, end)``."""
    flags = np.asarray(flags, dtype=bool)
    n = len(flags)
    lo, hi = start, min(end + grace, n)
    inside = np.flatnonzero(flags[lo:hi])
    outside = np.ones(n, dtype=bool)
    outside[:warmup] = False
    outside[lo:hi] = False
    padded = np.r_[False, flags, False].astype(np.int8)
    d = np.diff(padded)
    run_starts, run_ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)  # ends exclusive
    true_events = int(np.count_nonzero((run_starts < hi) & (run_ends > lo)))
    return CaseOutcome(
        detected=bool(len(inside)),
        delay=int(inside[0]) if len(inside) else None,
        false_alerts=int(np.count_nonzero(flags & outside)),
        clean_events=int(np.count_nonzero(outside)),
        events=len(run_starts),
        true_events=true_events,
    )


def _quantile(xs: Sequence[int], q: float) -> float | None:
    return float(np.quantile(np.asarray(xs, dtype=np.float64), q)) if xs else None


def summarise(outcomes: Sequence[CaseOutcome]) -> dict[str, float | int | None]:
    """Detection rate, median and p90 delay (of the detected cases), false alerts per 10,000
    clean events, and event precision / recall of a group of cases."""
    n = len(outcomes)
    delays = [o.delay for o in outcomes if o.delay is not None]
    clean = sum(o.clean_events for o in outcomes)
    false = sum(o.false_alerts for o in outcomes)
    events = sum(o.events for o in outcomes)
    true = sum(o.true_events for o in outcomes)
    return {
        "cases": n,
        "detected": len(delays),
        "detection_rate": len(delays) / n if n else None,
        "median_delay": _quantile(delays, 0.5),
        "p90_delay": _quantile(delays, 0.9),
        "false_alerts": false,
        "clean_events": clean,
        "false_per_10k": 1e4 * false / clean if clean else None,
        "events": events,
        "event_precision": true / events if events else None,
        "event_recall": len(delays) / n if n else None,
    }
