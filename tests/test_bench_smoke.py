"""The throughput benchmark in quick mode on a tiny topic: it runs and produces every figure.

No timing is asserted: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from streamrnn.cli import bench as benchcmd
from streamrnn.cli.bench import load_benchmark
from streamrnn.tools.broker import EmbeddedBroker

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
    assert 1.0 < mem["row_ratio"] < 1.25
    assert [s["keys"] for s in r["step"]] == [100, 1000]
    assert all(s["wave_steps_per_s"] > 0 and s["process_steps_per_s"] > 0 for s in r["step"])
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
