"""Alerts: the recent and active ones from the alerts topic, and a receiver that logs pages.

``streamrnn alerts list`` reads the alerts topic (``service.alerts_topic`` of ``--config``) from
``--since`` to its end, keeps the alerts of the ``--key`` patterns, and prints them with a summary
per key; ``--active`` keeps the keys whose latest alert is within ``alerts.resolve_timeout_s``.
It joins no consumer group and commits nothing.

``streamrnn alerts receive`` is a webhook receiver that prints one line per alert it is sent,
by Alertmanager or by the webhook sink (whose signatures it checks with ``--secret-file``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import orjson

from ..alerting.listing import (
    KeySummary,
    format_alerts,
    format_summary,
    read_alerts,
    select,
    summarize,
)
from ..alerting.message import Alert
from ..alerting.reader import TopicError, parse_when
from ..config import ConfigError, load_config
from . import kafka_flags

log = logging.getLogger(__name__)

EPILOG = """\
examples:
  streamrnn alerts list --config service.yaml
  streamrnn alerts receive --port 9095 --secret-file /run/secrets/webhook.key
  streamrnn alerts list --bootstrap-servers kafka:9092 --since 6h --key 'meter-*'
  streamrnn alerts list --config service.yaml --active
  streamrnn alerts list --config service.yaml --since 2024-03-01T00:00:00Z --until 2024-03-02 --json
"""


def add_kafka_arguments(parser: argparse.ArgumentParser, topic_help: str) -> None:
    """``--config``, ``--bootstrap-servers`` and ``--topic``: where to read (shared with explain)."""
    parser.add_argument("--config", help="the detector's YAML config (default: built-in defaults)")
    parser.add_argument(
        "--bootstrap-servers", help="comma-separated host:port list (service.bootstrap_servers)"
    )
    parser.add_argument("--topic", help=topic_help)
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="stop reading after this many seconds (60)"
    )
    kafka_flags.add_arguments(parser)


def servers_override(args: argparse.Namespace) -> list[str] | None:
    if args.bootstrap_servers is None:
        return None
    return [s.strip() for s in args.bootstrap_servers.split(",") if s.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser(
        "list",
        help="recent and active alerts from the alerts topic",
        description=__doc__.strip().split("\n\n")[1] if __doc__ else None,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_kafka_arguments(ls, "alerts topic (service.alerts_topic)")
    ls.add_argument(
        "--key", action="append", default=[], help="key or shell pattern; repeat for several"
    )
    ls.add_argument(
        "--since", default="24h", help="event time from: 90s, 15m, 6h, 2d, 1w or ISO 8601 (24h)"
    )
    ls.add_argument("--until", help="event time before: a duration ago or ISO 8601")
    ls.add_argument(
        "--active",
        action="store_true",
        help="only keys whose latest alert is within alerts.resolve_timeout_s",
    )
    ls.add_argument("--limit", type=int, default=50, help="print at most the latest N alerts (50)")
    ls.add_argument("--json", action="store_true", help="one JSON alert message a line, no table")
    rv = sub.add_parser(
        "receive",
        help="a webhook receiver that prints the alerts it is sent",
        description=__doc__.strip().split("\n\n")[2] if __doc__ else None,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rv.add_argument("--host", default="0.0.0.0", help="address to listen on (0.0.0.0)")
    rv.add_argument("--port", type=int, default=9095, help="port to listen on (9095)")
    rv.add_argument("--secret-file", help="check the webhook sink's HMAC signatures with this key")
    rv.add_argument(
        "--signature-header",
        default="X-Streamrnn-Signature",
        help="the header carrying the signature (X-Streamrnn-Signature)",
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of ``streamrnn alerts``: 0, 1 when the topic cannot be read, 2 for bad flags."""
    if args.action == "receive":
        return _receive(args)
    try:
        config = load_config(
            args.config,
            overrides={
                "service.bootstrap_servers": servers_override(args),
                "service.alerts_topic": args.topic,
                **kafka_flags.overrides(args),
            },
            environ=os.environ,
        )
        now = time.time()
        since = parse_when(args.since, now)
        until = parse_when(args.until, now) if args.until else None
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    svc = config.service
    try:
        alerts, bad = read_alerts(svc, since=since, timeout_s=args.timeout)
    except TopicError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ConfigError as e:  # service.kafka: a file, a secret, or the cluster refused them
        print(f"error: {e}", file=sys.stderr)
        return 2
    chosen = select(alerts, keys=args.key, since=since, until=until)
    summaries = summarize(chosen, now=now, active_s=config.alerts.resolve_timeout_s)
    if args.active:
        live = {s.key for s in summaries if s.active}
        chosen = [a for a in chosen if a.key in live]
        summaries = [s for s in summaries if s.active]
    if bad:
        print(f"warning: {bad} message(s) of {svc.alerts_topic} are not alerts", file=sys.stderr)
    if args.json:
        for a in chosen:
            sys.stdout.write(orjson.dumps(dict(a.raw)).decode() + "\n")
        return 0
    _print(chosen, summaries, args.limit, svc.alerts_topic, config.alerts.resolve_timeout_s)
    return 0


def _print(
    chosen: list[Alert], summaries: list[KeySummary], limit: int, topic: str, active_s: float
) -> None:
    if not chosen:
        print(f"no alerts in {topic} for this selection")
        return
    shown = chosen[-limit:] if limit > 0 else chosen
    if len(shown) < len(chosen):
        print(f"(the latest {len(shown)} of {len(chosen)} alerts; --limit to see more)")
    print(format_alerts(shown))
    print()
    print(format_summary(summaries))
    active = sum(s.active for s in summaries)
    print(
        f"\n{len(chosen)} alert(s) of {len(summaries)} key(s); {active} active "
        f"(latest alert less than {active_s:g} s old)"
    )


def _receive(args: argparse.Namespace) -> int:
    import threading

    from ..alerting.receiver import Receiver
    from ..alerting.transport import read_secret
    from ..signals import on_stop_signals
    from ..times import iso_utc

    try:
        secret = read_secret(args.secret_file, "--secret-file") if args.secret_file else None
        server = Receiver(
            args.host,
            args.port,
            secret=secret,
            signature_header=args.signature_header,
            emit=lambda line: print(f"{iso_utc(time.time())} {line}", flush=True),
        )
    except (ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # serve_forever runs in this thread: shutdown() must come from another one.
    restore = on_stop_signals(lambda _name: threading.Thread(target=server.shutdown).start())
    print(f"receiving alerts on http://{args.host}:{server.server_port}/", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        restore()
        server.server_close()
    return 0
