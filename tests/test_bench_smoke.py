"""The throughput benchmark in quick mode on a tiny topic: it runs and produces every figure.

No timing is asserted: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from streamrnn.cli import bench as benchcmd
from streamrnn.cli.bench import load_benchmark
from streamrnn.tools.broker import EmbeddedBroker


def _fields(layers: int) -> dict:
    """The engine's state fields for the benchmark's model (LSTM, 64 units, one value)."""
    from streamrnn.config import load_config
    from streamrnn.detector.engine import state_fields
    from streamrnn.detector.model import Forecaster

    cfg = load_config(None, overrides={"model.num_layers": layers})
    return state_fields(Forecaster(cfg.model, n_values=1, n_extra=4), cfg)


pytestmark = pytest.mark.kafka

throughput = load_benchmark()
if throughput is None:  # pragma: no cover - an installed package without the source checkout
    pytest.skip("bench/ is not in this checkout", allow_module_level=True)


def test_quick_benchmark_produces_figures(
    kafka_broker: EmbeddedBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "result.json"
    png = tmp_path / "plot.png"
    rc = throughput.main(
        [
            "--quick",
            "--bootstrap-servers",
            kafka_broker.bootstrap_servers,
            "--keys",
            "20",
            "--events-per-key",
            "15",
            "--max-poll-records",
            "60",
            "--latency-seconds",
            "2",
            "--step-keys",
            "100,1000",
            "--device",
            "cpu",
            "--json",
            str(out),
            "--plot",
            str(png),
        ]
    )
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["command"].startswith("python -m bench.throughput --quick")
    assert r["config"]["events"] == 300
    tp = r["throughput"]
    for name in ("bare", "bare_fast", "detector", "naive"):
        runs = tp[name]["runs"]
        assert runs and all(x["events"] == 300 for x in runs), name
        assert tp[name]["events_per_s"] > 0
    assert math.isfinite(tp["ratios"]["detector_over_bare"])
    assert math.isfinite(tp["ratios"]["detector_over_naive"])
    assert math.isfinite(tp["ratios"]["detector_over_bare_fast"])
    lat = r["latency"]
    assert lat["observed_events"] > 0 and lat["p50_s"] <= lat["p99_s"]
    mem = r["memory"]
    assert mem["resident_keys"] == 20
    assert mem["hidden_bytes_per_key"] == 64 * 2 * 4  # one LSTM layer: h and c of 64 floats
    # The row is the hidden state plus the per-key fields the detector keeps beside it (the
    # normaliser, the adaptation, the views' records and calibration), each counted here.
    spec = [(s.shape, s.dtype) for n, s in _fields(layers=1).items() if n != "hidden"]
    extra = sum(math.prod(shape) * torch.empty((), dtype=dt).element_size() for shape, dt in spec)
    assert mem["row_bytes_per_key"] == mem["hidden_bytes_per_key"] + extra
    assert 1.0 < mem["row_ratio"] < 2.0
    assert [s["keys"] for s in r["step"]] == [100, 1000]
    assert all(s["wave_steps_per_s"] > 0 and s["process_steps_per_s"] > 0 for s in r["step"])
    assert all(s["to_device_seconds"] > 0 and s["to_host_seconds"] > 0 for s in r["step"])
    assert png.stat().st_size > 0
    table = capsys.readouterr().out
    assert "detector / bare" in table and "resident keys" in table


def test_cli_bench_command_is_registered() -> None:
    from streamrnn.cli import COMMANDS, build_parser

    assert COMMANDS["bench"][0] == "streamrnn.cli.bench"
    assert "bench" in build_parser()[0].format_help()

    parser = argparse.ArgumentParser()
    benchcmd.add_arguments(parser)
    args = parser.parse_args(["--quick", "--keys", "10"])
    assert args.quick and args.keys == 10


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_step_only_needs_no_broker(
    cell: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "step.json"
    argv = ["--step-only", "--quick", "--cell", cell, "--layers", "2", "--device", "cpu"]
    rc = throughput.main([*argv, "--step-keys", "100,300", "--json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert "throughput" not in r and r["config"]["step_only"]
    assert [s["keys"] for s in r["step"]] == [100, 300]
    for s in r["step"]:
        assert s["process_steps_per_s"] > 0 and s["wave_seconds"] > 0
        assert s["to_device_seconds"] > 0 and s["to_host_seconds"] > 0
        assert "gpu_bytes_per_key" not in s  # a CPU run has no GPU memory figure
    table = capsys.readouterr().out
    assert f"model {cell} hidden 64 x 2 layer(s); the engine alone on cpu" in table
    assert "in ms" in table and "GPU B/key" in table


def test_producer_cpus_take_tasksets_syntax() -> None:
    assert throughput.parse_cpus("2-5,8") == {2, 3, 4, 5, 8}
    assert throughput.parse_cpus("0,1") == {0, 1}
    with pytest.raises(ValueError, match=r"--producer-cpus: must be like 2-15 or 0,1, got 'a-b'"):
        throughput.parse_cpus("a-b")


def test_e2e_runs_the_command_line(kafka_broker: EmbeddedBroker, tmp_path: Path) -> None:
    from bench import e2e

    out = tmp_path / "e2e.json"
    argv = ["--bootstrap-servers", kafka_broker.bootstrap_servers, "--devices", "cpu"]
    sizes = ["--keys", "30", "--events-per-key", "20", "--max-poll-records", "50"]
    rc = e2e.main([*argv, *sizes, "--json", str(out)])
    assert rc == 0
    [run] = json.loads(out.read_text())["runs"]
    assert run["device"] == "cpu" and run["events"] == 600
    assert run["events_per_s"] > 0 and run["exit_code"] == 0
    assert "streamrnn run --config" in run["command"] and run["command"].endswith("--device cpu")
