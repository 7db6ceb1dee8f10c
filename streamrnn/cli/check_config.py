"""Validate a config and print it resolved: every default filled in, secrets masked, and after
each value where it came from (``# file``, ``# env STREAMRNN_...``, ``# default``).

The environment applies as it does for ``streamrnn run`` (``STREAMRNN_SECTION__KEY``; the rule
is in ``config/default.yaml``), so ``check-config`` in the service's container shows what the
service will run with. Passwords and tokens print as ``***`` or as their reference
(``{file: /run/secrets/pw}``), never as their value. Exit status 0 when the config is valid, 2
with a message naming the key (and the variable), the rule and the value when it is not.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..config import ConfigError, dump_config

EPILOG = """\
examples:
  streamrnn check-config config/default.yaml
  STREAMRNN_SERVICE__KAFKA__SASL_USERNAME=streamrnn streamrnn check-config service.yaml
  streamrnn check-config --no-env            # the defaults alone
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", nargs="?", default=None, help="YAML config file (default: none, the defaults)"
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing when the file is valid")
    parser.add_argument(
        "--no-env", action="store_true", help="ignore STREAMRNN_* environment variables"
    )


def run(args: argparse.Namespace) -> int:
    from ..configsources import resolve_config

    try:
        resolved = resolve_config(args.file, None, None if args.no_env else os.environ)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        what = args.file or "no file"
        env = "" if args.no_env else " the environment and"
        print(
            f"# {what}: valid; resolved with{env} the defaults; after each value, its source\n"
            + dump_config(resolved.config, resolved.sources),
            end="",
        )
    return 0
