"""Start-up checks of the service config that need no broker and no model."""

from __future__ import annotations

import re

from ..config import Config, ConfigError

_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def _topic_ok(key: str, value: str | None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not _TOPIC_RE.match(value) or value in (".", ".."):
        raise ConfigError(
            f"{key}: must be a topic name (1-249 of A-Z a-z 0-9 . _ -), got {value!r}"
        )


def validate_service_config(config: Config) -> None:
    """Checks of the ``service`` section that need no broker and no model; raises ConfigError."""
    svc = config.service
    if not svc.topics and not svc.topic_pattern:
        raise ConfigError(
            "service.topics: one of service.topics or service.topic_pattern is required to run, "
            f"got topics {list(svc.topics)} and topic_pattern null"
        )
    if svc.topics and svc.topic_pattern:
        raise ConfigError(
            "service.topic_pattern: must be null when service.topics is set (use one of the two), "
            f"got {svc.topic_pattern!r} with topics {list(svc.topics)}"
        )
    for t in svc.topics:
        _topic_ok("service.topics", t)
    pattern = None
    if svc.topic_pattern:
        try:
            pattern = re.compile(svc.topic_pattern)
        except re.error as e:
            raise ConfigError(
                f"service.topic_pattern: must be a regular expression ({e}), got {svc.topic_pattern!r}"
            ) from None
    if not svc.model:
        raise ConfigError(
            "service.model: a model directory written by `streamrnn train` is required to run, "
            f"got {svc.model!r}"
        )
    if not svc.bootstrap_servers or not all(s.strip() for s in svc.bootstrap_servers):
        raise ConfigError(
            f"service.bootstrap_servers: must list host:port addresses, got {list(svc.bootstrap_servers)}"
        )
    if not svc.group.strip():
        raise ConfigError(f"service.group: must not be empty, got {svc.group!r}")
    if svc.heartbeat_interval_ms >= svc.session_timeout_ms:
        raise ConfigError(
            "service.heartbeat_interval_ms: must be below service.session_timeout_ms "
            f"({svc.session_timeout_ms}), got {svc.heartbeat_interval_ms}"
        )
    outputs = {
        "service.alerts_topic": svc.alerts_topic,
        "service.dlq_topic": svc.dlq_topic,
        "service.scores_topic": svc.scores_topic,
        "service.state_topic": svc.state_topic,
    }
    for key, topic in outputs.items():
        _topic_ok(key, topic, optional=key in ("service.scores_topic", "service.state_topic"))
        if topic is None:
            continue
        if topic in svc.topics or (pattern is not None and pattern.fullmatch(topic)):
            raise ConfigError(f"{key}: must not be a source topic (it would loop), got {topic!r}")
