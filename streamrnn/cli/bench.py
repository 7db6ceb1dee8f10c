"""Throughput, latency and memory of the detector against the ceiling of one Kafka client.

``streamrnn bench`` runs ``python -m bench.throughput`` (see that module and docs/benchmarks.md):
a bare kafka-python loop, the detector and a hand-written per-message loop on one topic of the
embedded broker, latency at half the detector's rate, memory per key and the engine alone over
1k to 1M resident keys. The benchmark ships in the source checkout (``bench/``), not in the
installed package.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import ModuleType

EPILOG = """\
examples:
  streamrnn bench --quick
  streamrnn bench --json bench/results/throughput-cpu.json --plot docs/throughput_vs_keys.png
  streamrnn bench --device cuda --step-keys 1000,10000,100000,1000000
"""

MISSING = (
    "the benchmark ships in the source checkout, not in the installed package: clone the "
    "repository and run `python -m bench.throughput` (or `streamrnn bench`) from its root"
)


def load_benchmark() -> ModuleType | None:
    """``bench.throughput`` from the path, else from the checkout this package lives in."""
    try:
        return importlib.import_module("bench.throughput")
    except ImportError:
        pass
    root = Path(__file__).resolve().parents[2]
    if not (root / "bench" / "throughput.py").is_file():
        return None
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module("bench.throughput")
    except ImportError:
        return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    module = load_benchmark()
    if module is not None:
        module.add_arguments(parser)
    else:
        parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    module = load_benchmark()
    if module is None:
        print(f"streamrnn bench: {MISSING}", file=sys.stderr)
        return 2
    return int(module.run(args))
