"""Kafka clients of the service: how each one is built, topic creation, and retry backoff.

Every Kafka client the service makes (the producer, the group consumer, the admin client, the
state topic's reader) is built here, so the settings all of them share live in one place.
:func:`create_topics` is the one place that creates topics and knows which error means "it
exists already"; the embedded broker's helper (:func:`streamrnn.tools.broker.create_topics`)
uses it too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from ..config import ServiceConfig

__all__ = [
    "TOPIC_ALREADY_EXISTS",
    "Backoff",
    "admin_client",
    "create_topics",
    "ensure_output_topics",
    "group_consumer",
    "producer",
    "reader",
]

log = logging.getLogger(__name__)

TOPIC_ALREADY_EXISTS = 36  # Kafka's error code: another client created the topic first
BOOTSTRAP_TIMEOUT_MS = 10_000


class Backoff:
    """Exponential backoff: 0.1 s doubling up to ``cap`` seconds.

    >>> b = Backoff(0.5)
    >>> [b.next() for _ in range(4)]
    [0.1, 0.2, 0.4, 0.5]
    """

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self.delay = 0.0

    def next(self) -> float:
        self.delay = min(self.cap, max(0.1, self.delay * 2))
        return self.delay

    def reset(self) -> None:
        self.delay = 0.0


def producer(svc: ServiceConfig) -> Any:
    """The service's producer: every send acknowledged by all in-sync replicas (acks=all)."""
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=list(svc.bootstrap_servers),
        client_id=f"streamrnn-{svc.group}",
        acks="all",
        linger_ms=5,
        max_block_ms=10_000,
        bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
    )


def group_consumer(svc: ServiceConfig) -> Any:
    """The service's group member: no auto-commit (offsets are committed once outputs are
    acknowledged), polls of ``max_poll_records``."""
    from kafka import KafkaConsumer

    return KafkaConsumer(
        bootstrap_servers=list(svc.bootstrap_servers),
        client_id=f"streamrnn-{svc.group}",
        group_id=svc.group,
        enable_auto_commit=False,
        auto_offset_reset=svc.auto_offset_reset,
        max_poll_records=svc.max_poll_records,
        fetch_max_wait_ms=svc.fetch_max_wait_ms,
        max_partition_fetch_bytes=svc.max_partition_fetch_bytes,
        max_poll_interval_ms=svc.max_poll_interval_ms,
        session_timeout_ms=svc.session_timeout_ms,
        heartbeat_interval_ms=svc.heartbeat_interval_ms,
        bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
        retry_backoff_ms=svc.client_retry_backoff_ms,
    )


def reader(bootstrap_servers: Sequence[str], client_id: str, *, timeout_s: float) -> Any:
    """A consumer without a group, for reading a topic from its beginning (the state topic)."""
    from kafka import KafkaConsumer

    return KafkaConsumer(
        bootstrap_servers=list(bootstrap_servers),
        client_id=client_id,
        enable_auto_commit=False,
        group_id=None,
        request_timeout_ms=int(timeout_s * 1000),
        fetch_max_wait_ms=100,  # an empty partition answers its high watermark sooner
    )


def admin_client(
    bootstrap_servers: str | Sequence[str], client_id: str | None = None, **options: Any
) -> Any:
    """A KafkaAdminClient; ``options`` are passed on (timeouts)."""
    from kafka import KafkaAdminClient

    servers = bootstrap_servers if isinstance(bootstrap_servers, str) else list(bootstrap_servers)
    if client_id is not None:
        options["client_id"] = client_id
    return KafkaAdminClient(bootstrap_servers=servers, **options)


def create_topics(
    admin: Any, specs: Mapping[str, Mapping[str, Any]], *, timeout_ms: int | None = None
) -> dict[str, str]:
    """Create the topics of ``{name: {num_partitions, replication_factor, configs}}``.

    Returns ``{name: error text}`` of those that could not be created; a topic that exists
    already (created meanwhile by another client) is not an error."""
    result = admin.create_topics(
        {name: dict(spec) for name, spec in specs.items()},
        timeout_ms=timeout_ms,
        raise_errors=False,
    )
    failed: dict[str, str] = {}
    for t in result.get("topics", []):
        code = t.get("error_code", 0)
        if code not in (0, TOPIC_ALREADY_EXISTS):
            failed[str(t.get("name"))] = f"error {code} {t.get('error_message')!r}"
    return failed


def ensure_output_topics(svc: ServiceConfig) -> None:
    """Create the output topics that do not exist (broker-default partitions); a failure is
    logged, not raised (the broker may create them on the first send)."""
    wanted = [t for t in (svc.alerts_topic, svc.dlq_topic, svc.scores_topic) if t]
    admin = admin_client(svc.bootstrap_servers, bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS)
    try:
        missing = [t for t in wanted if t not in set(admin.list_topics())]
        if not missing:
            return
        failed = create_topics(
            admin, {t: {"num_partitions": -1, "replication_factor": -1} for t in missing}
        )
        for t in missing:
            if t in failed:
                log.warning("could not create output topic %s: %s", t, failed[t])
            else:
                log.info("output topic %s ready", t)
    finally:
        admin.close()
