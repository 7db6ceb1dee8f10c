"""Why a key alerted: its readings, the prediction band, the score and the flags around an alert.

``streamrnn explain KEY`` takes the key's recent events from the scores topic
(``service.scores_topic`` of ``--config``; only the partition the key maps to is read), or, with
``--model`` and ``--data``, replays history files through the model exactly as the detector
would. It picks the alert at ``--at`` (the flagged event nearest to that time; default the
latest one), prints the ``--before`` events before it and the ``--after`` events after it (value,
expected value, the band of +-2 predicted scales, score, flag), and with ``--plot PNG`` draws
them. Exit status 0; 1 when the key has no events or the topic cannot be read; 2 for bad flags.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..alerting.explain import choose_window, format_window, plot_window, replay_trace, topic_trace
from ..alerting.reader import TopicError, parse_when
from ..config import ConfigError, load_config
from . import kafka_flags
from .alerts import add_kafka_arguments, servers_override

EPILOG = """\
examples:
  streamrnn explain meter-17 --config service.yaml
  streamrnn explain meter-17 --config service.yaml --at 2024-03-01T04:10:00Z --plot meter-17.png
  streamrnn explain meter-17 --model models/demand --data history/meter-17.csv --plot m17.png
  streamrnn explain site-a --model models/demand --data meters.csv --key-column meter --after 30
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``streamrnn explain``."""
    parser.add_argument("key", help="the key to explain")
    add_kafka_arguments(parser, "scores topic (service.scores_topic)")
    parser.add_argument(
        "--since", default="7d", help="read score messages from: a duration ago or ISO 8601 (7d)"
    )
    parser.add_argument("--model", help="replay instead: model directory written by `train`")
    parser.add_argument("--data", nargs="+", help="replay instead: CSV files or directories")
    parser.add_argument("--key-column", help="replay, long format: the column naming the key")
    parser.add_argument("--time-column", default="timestamp", help="replay: time column")
    parser.add_argument("--feature", help="the feature to show (default: the first)")
    parser.add_argument("--at", help="the alert nearest to this time (default: the latest)")
    parser.add_argument("--before", type=int, default=48, help="events before the alert (48)")
    parser.add_argument("--after", type=int, default=12, help="events after the alert (12)")
    parser.add_argument("--plot", metavar="PNG", help="also draw the window into this PNG")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``streamrnn explain``."""
    try:
        at = parse_when(args.at, time.time()) if args.at else None
        if bool(args.model) != bool(args.data):
            raise ConfigError("--model and --data: give both to replay, or neither")
        if args.before < 0 or args.after < 0:
            raise ConfigError(f"--before/--after: must be >= 0, got {args.before}/{args.after}")
        if args.model:
            trace = replay_trace(
                args.key,
                args.model,
                args.data,
                config=args.config,
                key_column=args.key_column,
                time_column=args.time_column,
                feature=args.feature,
            )
        else:
            config = load_config(
                args.config,
                overrides={
                    "service.bootstrap_servers": servers_override(args),
                    "service.scores_topic": args.topic,
                    **kafka_flags.overrides(args),
                },
                environ=os.environ,
            )
            since = parse_when(args.since, time.time())
            trace = topic_trace(
                config.service, args.key, since=since, timeout_s=args.timeout, feature=args.feature
            )
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TopicError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not len(trace):
        print(f"error: no events of {args.key!r} in {trace.origin}", file=sys.stderr)
        return 1
    window = choose_window(trace, at=at, before=args.before, after=args.after)
    print(format_window(window))
    if args.plot:
        print(f"plot: {plot_window(window, Path(args.plot))}")
    return 0
