"""Detection quality in one run: NAB, a generated suite of labelled anomalies, clean streams.

Sections (``--only`` picks some; all by default):

- ``nab``: the NAB development subset under the ``synthetic`` and ``loco`` protocols of
  ``bench.nab`` (no model trains on the files it scores): NAB scores of the three profiles and
  event precision / recall from the detector's own flags. Skipped, with how to get the data,
  when the data is absent.
- ``suite``: ``streamrnn.tools.suite``'s cases, every anomaly kind (spike, level shift, variance
  change, stuck, drift, changed seasonal shape, a burst of missing values) at weak, medium and
  strong intensity, ``--cases`` of each, scored by the ``synthetic`` protocol's model (trained on
  other generated streams): detection rate, median and p90 delay in events, false alerts per
  10,000 clean events, event precision / recall.
- ``clean``: streams without anomalies, through the same model: generated sensor and energy
  streams (a daily cycle of 288 events, longer than the warm-up) and sines of a 600-event period;
  and issue 10's scenario, 40 keys x 600 events of ``sin(2 pi i / 96) + 0.3 sin(2 pi i / 672) +
  N(0, 0.05)`` scored by a model that ``streamrnn train`` fits to 4 such series in 3 epochs.
  Flags per 10,000 events and the realised false-alert rate (flags per event after the warm-up)
  against ``scoring.false_alert_rate`` when the config has that key, pooled and per key.

Results go to ``--json`` (default ``bench/results/quality.json``, ``quality-quick.json`` with
``--quick``), the tables to standard output and, unless ``--no-docs`` (or with ``--quick``,
unless ``--docs``), into ``docs/quality.md`` between its ``bench.quality`` markers; plots of the
worst misses to ``--plots``.

    python -m bench.quality [--quick] [--only nab,suite,clean] [--cases N] [--seed S]
                            [--set scoring.KEY=VALUE ...] [--config FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from bench.nab import NAB_MISSING, as_series, fold_model, nab_dir, run_protocol, synthetic_series
from streamrnn.config import Config, load_config
from streamrnn.detector.engine import Engine
from streamrnn.detector.modeldir import load_model
from streamrnn.offline import evaluate as ev
from streamrnn.offline.replay import KeyResult, replay_series
from streamrnn.tools import suite, synth

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("nab", "suite", "clean")
BEGIN, END = "<!-- bench.quality:begin -->", "<!-- bench.quality:end -->"
GRACE = 48  # events after an anomaly's end in which a flag still counts as detecting it


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` config overrides; each value is read as YAML (``true``, ``[a]``) and text
    that reads as a number (``1e-3``) as that number."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        value = yaml.safe_load(text)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as text
            with contextlib.suppress(ValueError):
                value = float(value)
        out[key.strip()] = value
    return out


def configured_rate(cfg: Config) -> float | None:
    """``scoring.false_alert_rate`` when this version of the config has it."""
    rate = getattr(cfg.scoring, "false_alert_rate", None)
    return float(rate) if rate is not None else None


# ------------------------------------------------------------------------------------ NAB


def worst_nab_files(out: Path, labels: Path, n: int) -> list[dict[str, Any]]:
    """The result files with the most windows the detector's flags missed (most first)."""
    windows = ev.load_windows(labels)
    rows: list[dict[str, Any]] = []
    for path in sorted(out.rglob("*.csv")):
        key = path.relative_to(out).as_posix()
        if key not in windows or not windows[key]:
            continue
        m = ev.event_metrics({key: ev.load_result(path)}, windows)
        if m is not None and m.fn:
            rows.append({"file": key, "missed": m.fn, "windows": m.windows, "path": str(path)})
    rows.sort(key=lambda r: (-r["missed"], -r["windows"], r["file"]))
    return rows[:n]


def plot_nab_file(row: dict[str, Any], labels: Path, target: Path, threshold: float) -> Path:
    """Value, prediction band, score and flags of one replayed NAB file; a line at its first
    missed window's start."""
    import csv

    from streamrnn.offline.plot import plot_trace

    with open(row["path"], newline="") as fh:
        table = list(csv.DictReader(fh))

    def num(name: str) -> np.ndarray:
        return np.array([float(r[name]) if r[name] else np.nan for r in table])

    result = ev.load_result(row["path"])
    windows = ev.load_windows(labels)[row["file"]]
    flags = result.flags if result.flags is not None else np.zeros(len(result), dtype=bool)
    missed = [
        a
        for a, b in windows
        if not flags[(result.timestamps >= a) & (result.timestamps <= b)].any()
    ]
    return plot_trace(
        target,
        title=f"{row['file']}: {row['missed']} of {row['windows']} windows missed",
        times=result.timestamps.astype("datetime64[s]").astype(np.int64).astype(np.float64),
        values=num("value"),
        prediction=num("prediction"),
        scale=num("scale"),
        score=num("anomaly_score"),
        flag=flags,
        threshold=threshold,
        mark=float(missed[0].astype("datetime64[s]").astype(np.int64)) if missed else None,
    )


def run_nab(cfg: Config, args: argparse.Namespace, plots: list[str]) -> dict[str, Any]:
    data = nab_dir()
    if data is None:
        print(NAB_MISSING)
        return {"skipped": NAB_MISSING}
    labels = data / "labels" / "combined_windows.json"
    out: dict[str, Any] = {}
    for protocol in ("synthetic", "loco"):
        t0 = time.perf_counter()
        res_dir = Path(args.work) / f"nab-{protocol}"
        report = run_protocol(protocol, data, cfg, out=res_dir, models=Path(args.models))
        worst = worst_nab_files(res_dir, labels, args.plot_count)
        for row in worst:
            png = Path(args.plots) / f"nab-{protocol}" / (row["file"][: -len(".csv")] + ".png")
            plots.append(str(plot_nab_file(row, labels, png, _threshold(cfg))))
        out[protocol] = {
            **report.to_json(),
            "worst_files": [{k: v for k, v in r.items() if k != "path"} for r in worst],
            "seconds": round(time.perf_counter() - t0, 1),
        }
    return out


# ---------------------------------------------------------------------------------- suite


def _threshold(cfg: Config) -> float:
    return float(getattr(cfg.scoring, "threshold", math.nan))


def _replay(engine: Engine, keyed: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> list[KeyResult]:
    return replay_series(engine, [as_series(k, t, v) for k, t, v in keyed])


def run_suite(
    cfg: Config, args: argparse.Namespace, engine: Engine, plots: list[str]
) -> dict[str, Any]:
    t0 = time.perf_counter()
    cases = suite.build_cases(args.cases, n_steps=args.steps, seed=1000 + args.seed, grace=GRACE)
    items = _replay(engine, [(c.series.key, c.series.timestamps, c.series.values) for c in cases])
    warmup = cfg.scoring.warmup
    outcomes = [
        suite.case_outcome(it.results.flag, start=c.start, end=c.end, grace=GRACE, warmup=warmup)
        for c, it in zip(cases, items, strict=True)
    ]
    cells: dict[str, dict[str, Any]] = {}
    for kind in synth.SUITE_KINDS:
        cells[kind] = {}
        for level in suite.INTENSITIES:
            group = [
                o
                for c, o in zip(cases, outcomes, strict=True)
                if (c.kind, c.intensity) == (kind, level)
            ]
            cells[kind][level] = suite.summarise(group)
    # Worst misses: undetected cases, strongest intensity first.
    rank = {level: i for i, level in enumerate(reversed(suite.INTENSITIES))}
    missed = [(c, it) for c, it, o in zip(cases, items, outcomes, strict=True) if not o.detected]
    missed.sort(key=lambda x: (rank[x[0].intensity], x[0].series.key))
    from streamrnn.offline.plot import plot_file

    for c, it in missed[: args.plot_count]:
        png = Path(args.plots) / (c.series.key.replace("/", "_") + ".png")
        plots.append(str(plot_file(it.series, it.results, png, threshold=_threshold(cfg))))
    return {
        "cases_per_cell": args.cases,
        "steps": args.steps,
        "grace": GRACE,
        "cells": cells,
        "all": suite.summarise(outcomes),
        "missed": [c.series.key for c, _ in missed],
        "seconds": round(time.perf_counter() - t0, 1),
    }


# ---------------------------------------------------------------------------------- clean


def flag_rates(items: Sequence[KeyResult], warmup: int, configured: float | None) -> dict[str, Any]:
    """Flags per 10,000 events; the realised rate (flags per event after the warm-up), pooled
    and per key, and its ratio to the configured one."""
    flags = np.array([int(it.results.flag.sum()) for it in items])
    events = np.array([len(it.results.flag) for it in items])
    eligible = np.maximum(events - warmup, 0)
    per_key = np.divide(flags, eligible, out=np.zeros(len(items)), where=eligible > 0)
    pooled = float(flags.sum() / eligible.sum()) if eligible.sum() else 0.0
    steps = np.concatenate(
        [np.flatnonzero(it.results.flag) for it in items] or [np.zeros(0, dtype=np.int64)]
    )
    out: dict[str, Any] = {
        "keys": len(items),
        "events": int(events.sum()),
        "flags": int(flags.sum()),
        "flags_per_10k": 1e4 * float(flags.sum()) / float(events.sum()) if events.sum() else 0.0,
        "keys_flagged": int(np.count_nonzero(flags)),
        "flag_steps": [int(steps.min()), int(steps.max())] if len(steps) else None,
        "realised_rate": pooled,
        "max_key_rate": float(per_key.max()) if len(per_key) else 0.0,
        "configured_rate": configured,
    }
    if configured:
        out["pooled_ratio"] = pooled / configured
        out["max_key_ratio"] = out["max_key_rate"] / configured
    return out


def issue_scenario_model(cfg: Config, work: Path) -> Path:
    """Issue 10's model: ``streamrnn train`` on 4 clean two-period series, 3 epochs."""
    from streamrnn.cli import main as cli_main

    data = work / "issue10-train"
    start = np.datetime64("2024-01-01T00:00:00", "ms")
    for k in range(4):
        values = synth.seasonal_mix(600, (96, 672), (1.0, 0.3), 0.05, seed=100 + k)
        stamps = start + np.arange(600) * np.timedelta64(900_000, "ms")
        synth.write_csvs([synth.SyntheticSeries(f"train_{k}", stamps, values)], data)
    model = work / "issue10-model"
    conf = work / "issue10-config.yaml"
    conf.write_text(
        yaml.safe_dump({s: cfg.to_dict()[s] for s in ("model", "features", "training")})
    )
    argv = ["train", "--data", str(data), "--out", str(model), "--config", str(conf)]
    rc = cli_main([*argv, "--epochs", "3", "--no-progress"])
    if rc != 0:
        raise RuntimeError(f"streamrnn train failed with status {rc}")
    return model


def run_clean(cfg: Config, args: argparse.Namespace, engine: Engine) -> dict[str, Any]:
    t0 = time.perf_counter()
    seed, n, k = 2000 + args.seed, args.clean_steps, args.clean_keys
    keyed: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {"sensor": [], "energy": []}
    for kind in ("sensor", "energy"):
        for g in synth.generate(kind, k, n, anomalies=(), seed=seed, key_prefix=f"clean-{kind}"):
            keyed[kind].append((g.key, g.timestamps, g.values))
    start = np.datetime64("2024-01-01T00:00:00", "ms")
    stamps5 = start + np.arange(n) * np.timedelta64(300_000, "ms")
    keyed["period600"] = [
        (
            f"clean-p600-{j:03d}",
            stamps5,
            5.0 + (1 + j) * synth.seasonal_mix(n, (600,), (1.0,), 0.05, seed=seed + j),
        )
        for j in range(k)
    ]
    warmup, rate = cfg.scoring.warmup, configured_rate(cfg)
    out: dict[str, Any] = {}
    everything: list[KeyResult] = []
    for name, group in keyed.items():
        items = _replay(engine, group)
        everything += items
        out[name] = flag_rates(items, warmup, rate)
    # Issue 10's scenario, with its own model.
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(issue_scenario_model(cfg, Path(tmp)))
    stamps15 = start + np.arange(600) * np.timedelta64(900_000, "ms")
    scenario = [
        (f"issue10-{j:03d}", stamps15, synth.seasonal_mix(600, (96, 672), (1.0, 0.3), 0.05, seed=j))
        for j in range(40)
    ]
    own = Engine(model.model, cfg, model_version=model.version)
    items = _replay(own, scenario)
    everything += items
    out["issue10"] = flag_rates(items, warmup, rate)
    out["all"] = flag_rates(everything, warmup, rate)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


# -------------------------------------------------------------------------------- reporting


def _f(x: Any, fmt: str = ".2f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, fmt)


def tables(result: dict[str, Any]) -> str:
    """The Markdown tables of one run."""
    lines: list[str] = []
    nab = result.get("nab")
    if nab is not None and "skipped" in nab:
        lines += [f"NAB: {nab['skipped']}", ""]
    elif nab is not None:
        lines += [
            "| NAB dev protocol | standard | reward_low_FP | reward_low_FN | event precision | event recall | worst files (missed windows) |",
            "|---|---|---|---|---|---|---|",
        ]
        for protocol, r in nab.items():
            e = r["event"] or {}
            worst = ", ".join(
                f"{w['file'].split('/')[-1]} ({w['missed']}/{w['windows']})"
                for w in r["worst_files"]
            )
            lines.append(
                f"| {protocol} | {_f(r['nab']['standard'])} | {_f(r['nab']['reward_low_FP_rate'])} | "
                f"{_f(r['nab']['reward_low_FN_rate'])} | {_f(e.get('precision'), '.3f')} | "
                f"{_f(e.get('recall'), '.3f')} | {worst} |"
            )
        lines.append("")
    st = result.get("suite")
    if st is not None:
        lines += [
            f"Generated suite: {st['cases_per_cell']} case(s) per cell, {st['steps']} events each; "
            f"a flag in [start, end + {st['grace']}) detects; delays in events.",
            "",
            "| anomaly | weak | medium | strong | median / p90 delay (strong) | false alerts / 10k clean |",
            "|---|---|---|---|---|---|",
        ]
        for kind, cells in st["cells"].items():
            rates = [_f(cells[i]["detection_rate"], ".0%") for i in suite.INTENSITIES]
            strong = cells["strong"]
            false = sum(c["false_alerts"] for c in cells.values())
            clean = sum(c["clean_events"] for c in cells.values())
            lines.append(
                f"| {kind} | {' | '.join(rates)} | {_f(strong['median_delay'], '.0f')} / "
                f"{_f(strong['p90_delay'], '.0f')} | {_f(1e4 * false / clean if clean else None, '.1f')} |"
            )
        a = st["all"]
        lines += [
            f"| all | | | | detected {a['detected']} of {a['cases']} | {_f(a['false_per_10k'], '.1f')} |",
            "",
            f"Suite events: precision {_f(a['event_precision'], '.3f')}, recall {_f(a['event_recall'], '.3f')}.",
            "",
        ]
    cl = result.get("clean")
    if cl is not None:
        lines += [
            "| clean streams | keys | events | flags | flags / 10k | keys flagged | realised rate | configured | pooled ratio | max key ratio |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in cl.items():
            if name == "seconds":
                continue
            lines.append(
                f"| {name} | {r['keys']} | {r['events']} | {r['flags']} | {_f(r['flags_per_10k'], '.1f')} | "
                f"{r['keys_flagged']} | {_f(r['realised_rate'], '.2e')} | {_f(r['configured_rate'], '.0e')} | "
                f"{_f(r.get('pooled_ratio'), '.2f')} | {_f(r.get('max_key_ratio'), '.1f')} |"
            )
        lines.append("")
    secs = ", ".join(f"{k} {v:.0f} s" for k, v in result["seconds"].items())
    lines.append(f"Wall time: {secs}.")
    return "\n".join(lines)


def write_docs(path: Path, result: dict[str, Any]) -> None:
    """Replace the block between the markers in ``path`` with this run's tables."""
    text = path.read_text() if path.is_file() else ""
    block = "\n".join(
        [
            BEGIN,
            f"Run {result['date']} on {result['machine']}, commit {result.get('commit')}, "
            f"`{result['command']}`"
            + (f", config overrides `{result['overrides']}`" if result["overrides"] else "")
            + ":",
            "",
            tables(result),
            END,
        ]
    )
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


# ------------------------------------------------------------------------------------ main


def _commit() -> str | None:
    """The checkout's commit, with ``+`` when it has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench.quality",
        description=__doc__.split("\n\n")[0],
        epilog="Example: python -m bench.quality --quick --set scoring.false_alert_rate=1e-3",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and short training: a few minutes on 2 cores",
    )
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SECTIONS",
        help="comma-separated among nab, suite, clean (default: all)",
    )
    ap.add_argument(
        "--cases", type=int, help="suite cases per anomaly kind and intensity (default 20, quick 5)"
    )
    ap.add_argument("--steps", type=int, help="events per suite case (default 2000, quick 1500)")
    ap.add_argument(
        "--clean-keys", type=int, help="keys per generated clean group (default 20, quick 6)"
    )
    ap.add_argument(
        "--clean-steps", type=int, help="events per generated clean key (default 4000, quick 2000)"
    )
    ap.add_argument(
        "--seed", type=int, default=0, help="seed of the generated suite and clean streams"
    )
    ap.add_argument("--config", help="YAML config (default: the built-in defaults)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. scoring.cooldown=20; repeatable",
    )
    ap.add_argument(
        "--max-seconds", type=float, help="training budget per model (default 120, quick 30)"
    )
    ap.add_argument(
        "--models",
        help="trained models are cached here (default runs/nab-models, quick runs/nab-models-quick)",
    )
    ap.add_argument(
        "--retrain", action="store_true", help="empty --models first: every model is trained again"
    )
    ap.add_argument("--work", default="runs/quality", help="replay outputs (default runs/quality)")
    ap.add_argument(
        "--plots", default="runs/quality/plots", help="plots of the worst misses go here"
    )
    ap.add_argument(
        "--plot-count", type=int, default=3, help="worst misses plotted per part (default 3)"
    )
    ap.add_argument(
        "--json",
        help="results JSON (default bench/results/quality.json, quick: quality-quick.json)",
    )
    ap.add_argument(
        "--docs",
        help="write the tables into this Markdown file (default docs/quality.md, not with --quick)",
    )
    ap.add_argument("--no-docs", action="store_true", help="do not write the tables into the docs")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared machine more threads spin and run ~30x slower; 0 = torch's default)",
    )
    return ap


def _defaults(args: argparse.Namespace) -> None:
    quick = args.quick
    for name, full, small in (
        ("cases", 20, 5),
        ("steps", 2000, 1500),
        ("clean_keys", 20, 6),
        ("clean_steps", 4000, 2000),
        ("max_seconds", 120.0, 30.0),
        ("models", "runs/nab-models", "runs/nab-models-quick"),
        ("json", "bench/results/quality.json", "bench/results/quality-quick.json"),
    ):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    if args.docs is None and not quick and not args.no_docs:
        args.docs = str(ROOT / "docs" / "quality.md")
    if args.no_docs:
        args.docs = None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _defaults(args)
    only = [s.strip() for item in args.only for s in item.split(",") if s.strip()] or list(SECTIONS)
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        print(
            f"--only: expected among {', '.join(SECTIONS)}, got {', '.join(bad)}", file=sys.stderr
        )
        return 2
    try:
        sets = parse_sets(args.set)
        cfg = load_config(args.config, overrides={**sets, "training.max_seconds": args.max_seconds})
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python -m bench.quality" + (
        ""
        if argv is None and len(sys.argv) <= 1
        else " " + shlex.join(sys.argv[1:] if argv is None else argv)
    )
    result: dict[str, Any] = {
        "command": command,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"a {os.cpu_count()}-core CPU, {torch.get_num_threads()} torch thread(s)",
        "commit": _commit(),
        "overrides": {k: v for k, v in sets.items()},
        "configured_false_alert_rate": configured_rate(cfg),
        "seconds": {},
    }
    if args.retrain and Path(args.models).is_dir():
        shutil.rmtree(args.models)
    plots: list[str] = []
    t0 = time.perf_counter()
    if "nab" in only:
        result["nab"] = run_nab(cfg, args, plots)
        result["seconds"]["nab"] = time.perf_counter() - t0
    if "suite" in only or "clean" in only:
        t1 = time.perf_counter()
        model = fold_model(
            Path(args.models) / "synthetic" / "synthetic",
            synthetic_series(cfg.training.seed),
            cfg,
            retrain=False,
        )
        if "suite" in only:
            engine = Engine(model.model, cfg, model_version=model.version)
            result["suite"] = run_suite(cfg, args, engine, plots)
            result["seconds"]["suite"] = time.perf_counter() - t1
        if "clean" in only:
            t2 = time.perf_counter()
            engine = Engine(model.model, cfg, model_version=model.version)
            result["clean"] = run_clean(cfg, args, engine)
            result["seconds"]["clean"] = time.perf_counter() - t2
    result["seconds"]["total"] = time.perf_counter() - t0
    result["plots"] = plots
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(tables(result))
    print(f"results in {out}; plots of the worst misses: {len(plots)} in {args.plots}")
    if args.docs:
        write_docs(Path(args.docs), result)
        print(f"tables written into {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
