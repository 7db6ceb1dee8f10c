"""The ``streamrnn`` command line.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their command runs, so ``--help`` is fast.
The commands' modules are in this package (``run``, ``produce``, ``demo``, ``broker``,
``check_config``, ``bench``, ``alerts``, ``explain``), except ``train``, ``replay`` and ``eval``, whose command lines
still live beside their code in :mod:`streamrnn.offline`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .. import __version__

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("streamrnn.offline.training", "train a forecaster on CSV history"),
    "replay": ("streamrnn.offline.replay", "score CSV history exactly as the live service would"),
    "eval": (
        "streamrnn.offline.evaluate",
        "NAB and event-level scores of replay results against labels",
    ),
    "check-config": ("streamrnn.cli.check_config", "validate a config file and print it resolved"),
    "broker": (
        "streamrnn.cli.broker",
        "run the embedded Kafka-compatible broker in the foreground",
    ),
    "run": ("streamrnn.cli.run", "the Kafka detector daemon: score streams, publish alerts"),
    "produce": (
        "streamrnn.cli.produce",
        "replay CSV files or generate synthetic streams into a topic",
    ),
    "demo": (
        "streamrnn.cli.demo",
        "the one-command tour: broker, generator, model, detector, alerts",
    ),
    "bench": (
        "streamrnn.cli.bench",
        "throughput, latency and memory against the Kafka client's ceiling",
    ),
    "alerts": (
        "streamrnn.cli.alerts",
        "recent and active alerts from the alerts topic; a receiver that logs pages",
    ),
    "explain": (
        "streamrnn.cli.explain",
        "a key's readings, prediction band, score and flags around an alert (--plot: a PNG)",
    ),
}

EPILOG = """\
examples:
  streamrnn train --data history/ --out models/demand --epochs 20
  streamrnn replay --model models/demand --data history/ --out results/ --plot
  streamrnn eval --results results/ --labels labels.json --json scores.json
  streamrnn check-config config/default.yaml
  streamrnn produce --topic readings --synthetic energy --keys 200 --rate 200
  streamrnn demo --seconds 60
  streamrnn alerts list --config service.yaml --since 6h
  streamrnn explain meter-17 --config service.yaml --plot meter-17.png
"""


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(
        prog="streamrnn",
        description="Real-time anomaly detection for keyed streams with stateful LSTM/GRU forecasters.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"streamrnn {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default: INFO)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser, sub


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, sub = build_parser()
    # Find the command first, then build only that command's parser.
    pre, rest = parser.parse_known_args(argv)
    if pre.command is None:
        parser.print_help()
        return 2
    module_name, help_text = COMMANDS[pre.command]
    module = importlib.import_module(module_name)
    cmd = argparse.ArgumentParser(
        prog=f"streamrnn {pre.command}",
        description=(module.__doc__ or help_text).strip().split("\n\n")[0],
        epilog=getattr(module, "EPILOG", None),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(cmd)
    args = cmd.parse_args(rest)
    logging.basicConfig(
        level=getattr(logging, pre.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return int(module.run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
