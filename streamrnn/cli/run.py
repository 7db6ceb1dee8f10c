"""Run the Kafka detector daemon: consume events, score them, publish alerts, export metrics.

Flags override the config file's keys (``--group`` is ``service.group``, and so on), and
environment variables sit between the two (``STREAMRNN_SERVICE__GROUP``; the rule is in
``config/default.yaml``). The daemon stops cleanly on SIGTERM or Ctrl+C (a second Ctrl+C forces), always within
``service.shutdown_timeout_s``: exit status 0 when everything it took was settled, 1 after a line
that says what was not,
and reloads its model on SIGHUP or when the model directory changes. A bad configuration stops
start-up with ``error: <key>: <rule>, got <value>`` and exit status 2, and so does a cluster that
refuses the connection's security settings (a wrong password, an unknown CA, a host name the
broker's certificate does not hold).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..config import ConfigError, load_config
from . import kafka_flags

EPILOG = """\
examples:
  streamrnn run --config service.yaml
  streamrnn run --bootstrap-servers kafka:9092 --topic readings --model models/demand \\
      --group streamrnn-demand --state-dir /var/lib/streamrnn --metrics-port 9108
  streamrnn run --config service.yaml --topic-pattern 'sensors\\..*' --scores-topic scores
  streamrnn run --config service.yaml --alertmanager-url http://alertmanager:9093
  streamrnn run --config service.yaml --webhook-url https://hooks.example/streamrnn \\
      --webhook-secret-file /run/secrets/webhook.key
  STREAMRNN_SERVICE__KAFKA__SASL_PASSWORD__FILE=/run/secrets/kafka-password \\
    streamrnn run --config service.yaml --bootstrap-servers kafka:9093 \\
      --security-protocol SASL_SSL --ssl-cafile ca.crt --sasl-mechanism SCRAM-SHA-512 \\
      --sasl-username streamrnn

endpoints: /metrics (Prometheus), /healthz (liveness), /readyz (readiness); with
--metrics-web-config, TLS and basic auth as Prometheus's web config says (docs/security.md)
alerts: the alerts topic is the record; Alertmanager and webhooks are paged off the hot path
(docs/alerts.md)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``streamrnn run``."""
    parser.add_argument("--config", help="YAML config file (default: the built-in defaults)")
    parser.add_argument(
        "--bootstrap-servers",
        help="comma-separated host:port list (service.bootstrap_servers)",
    )
    parser.add_argument(
        "--topic",
        action="append",
        help="topic to consume; repeat for several (service.topics)",
    )
    parser.add_argument(
        "--topic-pattern", help="regular expression of topics to consume (service.topic_pattern)"
    )
    parser.add_argument("--group", help="consumer group (service.group)")
    parser.add_argument(
        "--model", help="model directory written by `streamrnn train` (service.model)"
    )
    parser.add_argument("--alerts-topic", help="topic receiving alerts (service.alerts_topic)")
    parser.add_argument("--dlq-topic", help="dead-letter topic (service.dlq_topic)")
    parser.add_argument(
        "--scores-topic", help="topic receiving every event's score (service.scores_topic)"
    )
    parser.add_argument(
        "--state-dir", help="directory of per-partition checkpoints (service.state_dir)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        help="port of /metrics, /healthz and /readyz; 0 picks a free one (service.metrics_port)",
    )
    parser.add_argument(
        "--metrics-web-config",
        metavar="FILE",
        help="Prometheus web-config file: TLS and basic auth of the endpoint "
        "(service.metrics_web_config)",
    )
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (state.device)")
    parser.add_argument(
        "--one-process",
        action="store_const",
        const=False,
        dest="engine_process",
        help="decode, model and scoring in the Kafka client's thread instead of a child process "
        "(service.engine_process: false): one core instead of two",
    )
    parser.add_argument(
        "--alertmanager-url",
        action="append",
        help="send alerts to this Alertmanager; repeat for each member of a cluster "
        "(alerts.sinks.alertmanager.urls)",
    )
    parser.add_argument(
        "--webhook-url",
        action="append",
        help="POST each alert as JSON to this URL; repeat for several (alerts.sinks.webhook.urls)",
    )
    parser.add_argument(
        "--webhook-secret-file",
        help="sign webhook bodies with HMAC-SHA256 under this file's key "
        "(alerts.sinks.webhook.secret_file)",
    )
    kafka_flags.add_arguments(parser)


def overrides_from(args: argparse.Namespace) -> dict[str, object]:
    """Dotted config keys for the flags that were given (None values are ignored by load_config)."""
    servers = None
    if args.bootstrap_servers is not None:
        servers = [s.strip() for s in args.bootstrap_servers.split(",") if s.strip()]
    return {
        "service.bootstrap_servers": servers,
        "service.topics": args.topic,
        "service.topic_pattern": args.topic_pattern,
        "service.group": args.group,
        "service.model": args.model,
        "service.alerts_topic": args.alerts_topic,
        "service.dlq_topic": args.dlq_topic,
        "service.scores_topic": args.scores_topic,
        "service.state_dir": args.state_dir,
        "service.metrics_port": args.metrics_port,
        "service.metrics_web_config": getattr(args, "metrics_web_config", None),
        "state.device": args.device,
        "service.engine_process": getattr(args, "engine_process", None),
        "alerts.sinks.alertmanager.urls": args.alertmanager_url,
        "alerts.sinks.webhook.urls": args.webhook_url,
        "alerts.sinks.webhook.secret_file": args.webhook_secret_file,
        **kafka_flags.overrides(args),
    }


def run(args: argparse.Namespace) -> int:
    """Entry point of ``streamrnn run``: the daemon's exit status (2 for a bad configuration)."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO lines drown ours
    try:
        config = load_config(args.config, overrides=overrides_from(args), environ=os.environ)
        from ..service.app import Detector  # imports torch: after the cheap checks

        return Detector(config).run(watchdog=True)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
