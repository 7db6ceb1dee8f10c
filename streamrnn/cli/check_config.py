"""Validate a config file and print it with every default filled in.

Exit status 0 when the file is valid, 2 with a message naming the key, the rule and the value
when it is not.
"""

from __future__ import annotations

import argparse
import sys

from ..config import ConfigError, dump_config, load_config

EPILOG = "example:\n  streamrnn check-config config/default.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="YAML config file")
    parser.add_argument("--quiet", action="store_true", help="print nothing when the file is valid")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"# {args.file}: valid; resolved with defaults\n" + dump_config(cfg), end="")
    return 0
