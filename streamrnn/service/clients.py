"""Kafka client plumbing of the service: output topics and retry backoff."""

from __future__ import annotations

import logging

from ..config import ServiceConfig

log = logging.getLogger(__name__)


class Backoff:
    """Exponential backoff: 0.1 s doubling up to ``cap`` seconds."""

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self.delay = 0.0

    def next(self) -> float:
        self.delay = min(self.cap, max(0.1, self.delay * 2))
        return self.delay

    def reset(self) -> None:
        self.delay = 0.0


def ensure_topics(svc: ServiceConfig) -> None:
    """Create the output topics that do not exist (broker-default partitions)."""
    from kafka import KafkaAdminClient

    wanted = [t for t in (svc.alerts_topic, svc.dlq_topic, svc.scores_topic) if t]
    admin = KafkaAdminClient(
        bootstrap_servers=list(svc.bootstrap_servers), bootstrap_timeout_ms=10_000
    )
    try:
        existing = set(admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if not missing:
            return
        result = admin.create_topics(
            {t: {"num_partitions": -1, "replication_factor": -1} for t in missing},
            raise_errors=False,
        )
        for t in result.get("topics", []):
            code = t.get("error_code", 0)
            if code in (0, 36):
                log.info("output topic %s ready", t.get("name"))
            else:
                log.warning(
                    "could not create output topic %s: error %s %s",
                    t.get("name"),
                    code,
                    t.get("error_message"),
                )
    finally:
        admin.close()
