"""Kafka clients of the service: how each one is built, topic creation, and retry backoff.

Every Kafka client the service makes (the producer, the group consumer, the admin client, the
state topic's reader) is built here, so the settings all of them share live in one place: a
:class:`Connection`, the bootstrap servers and ``service.kafka`` (TLS and SASL) with the
security arguments built once from them (one TLS context and one token provider for every
client), and each client's pass-through options. The tools (``streamrnn produce``, ``demo``,
the embedded broker's helpers) build theirs from a Connection too.
:func:`create_topics` is the one place that creates topics and knows which error means "it
exists already"; the embedded broker's helper (:func:`streamrnn.tools.broker.create_topics`)
uses it too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import KafkaConfig, ServiceConfig
from .kafka_security import Role, client_options, security_options

__all__ = [
    "TOPIC_ALREADY_EXISTS",
    "Backoff",
    "Connection",
    "admin_client",
    "as_connection",
    "create_topics",
    "ensure_output_topics",
    "group_consumer",
    "holds_connection",
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


def split_servers(servers: str | Sequence[str]) -> tuple[str, ...]:
    """``"a:9092, b:9092"`` or a list, as a tuple of addresses.

    >>> split_servers("k1:9093, k2:9093")
    ('k1:9093', 'k2:9093')
    """
    items = servers.split(",") if isinstance(servers, str) else servers
    return tuple(s.strip() for s in items if s.strip())


@dataclass(frozen=True)
class Connection:
    """Where and how the Kafka clients of one process connect.

    ``servers`` are the bootstrap servers, ``kafka`` the ``service.kafka`` section; ``security``
    holds the TLS and SASL arguments built from it once (:meth:`of`), so every client shares one
    TLS context and one OAUTHBEARER token provider. It is left out of ``repr``.

    >>> c = Connection.of("localhost:9092")
    >>> c.options("producer", acks="all")
    {'bootstrap_servers': ['localhost:9092'], 'acks': 'all', 'security_protocol': 'PLAINTEXT'}
    """

    servers: tuple[str, ...]
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    security: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, servers: str | Sequence[str], kafka: KafkaConfig | None = None) -> Connection:
        """Build the security arguments: reads the TLS files and the secrets now, so an unreadable
        one raises :class:`~streamrnn.config.ConfigError` naming its key."""
        kafka = kafka if kafka is not None else KafkaConfig()
        return cls(split_servers(servers), kafka, security_options(kafka))

    def options(self, role: Role, **own: Any) -> dict[str, Any]:
        """Keyword arguments of a ``role`` client: the servers, the caller's ``own`` arguments,
        then the security arguments and ``service.kafka.<role>_options`` (which may override
        the caller's own, but never what streamrnn owns: :func:`.kafka_security.check_options`)."""
        return {
            "bootstrap_servers": list(self.servers),
            **own,
            **client_options(self.kafka, role, self.security),
        }

    def check(self, timeout_s: float = 10.0) -> str:
        """One connection before the clients start (:mod:`.preflight`); the server that answered.

        Raises :class:`~.preflight.ConnectionSetupError` (a ConfigError) when the cluster refuses
        the configuration, :class:`~.preflight.BrokerUnreachable` when no server answers."""
        from .preflight import check_cluster

        return check_cluster(self.servers, self.kafka, self.security, timeout_s)

    @property
    def secured(self) -> bool:
        return self.kafka.security_protocol != "PLAINTEXT"


def as_connection(servers: Connection | str | Sequence[str]) -> Connection:
    """A Connection as it is, or a PLAINTEXT one to ``servers``."""
    return servers if isinstance(servers, Connection) else Connection.of(servers)


def producer(svc: ServiceConfig, conn: Connection) -> Any:
    """The service's producer: every send acknowledged by all in-sync replicas (acks=all)."""
    from kafka import KafkaProducer

    return KafkaProducer(
        **conn.options(
            "producer",
            client_id=f"streamrnn-{svc.group}",
            acks="all",
            linger_ms=5,
            max_block_ms=10_000,
            bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
        )
    )


def group_consumer(svc: ServiceConfig, conn: Connection) -> Any:
    """The service's group member: no auto-commit (offsets are committed once outputs are
    acknowledged), polls of ``max_poll_records``."""
    from kafka import KafkaConsumer

    return KafkaConsumer(
        **conn.options(
            "consumer",
            client_id=f"streamrnn-{svc.group}",
            group_id=svc.group,
            enable_auto_commit=False,
            # A missing input topic is waited for (service/topics.py): created by a consumer, it
            # would get the broker's default partition count.
            allow_auto_create_topics=False,
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
    )


def holds_connection(client: Any) -> bool:
    """Whether a kafka-python client holds a ready connection to some broker. kafka-python has
    no public call for it; its network client's connection table says."""
    net = getattr(client, "_client", None)
    conns = getattr(net, "_conns", None)
    if conns is None:
        return True  # not a kafka-python client we know: do not claim it is cut off
    return any(conn.connected() for conn in list(conns.values()))


def reader(conn: Connection, client_id: str, *, timeout_s: float, **own: Any) -> Any:
    """A consumer without a group, for reading topics from their beginning (the state topic,
    the demo's console); ``own`` adds arguments."""
    from kafka import KafkaConsumer

    return KafkaConsumer(
        **conn.options(
            "consumer",
            client_id=client_id,
            enable_auto_commit=False,
            group_id=None,
            request_timeout_ms=int(timeout_s * 1000),
            fetch_max_wait_ms=100,  # an empty partition answers its high watermark sooner
            **own,
        )
    )


def admin_client(
    servers: Connection | str | Sequence[str], client_id: str | None = None, **own: Any
) -> Any:
    """A KafkaAdminClient; ``own`` arguments (timeouts) are passed on."""
    from kafka import KafkaAdminClient

    if client_id is not None:
        own["client_id"] = client_id
    return KafkaAdminClient(**as_connection(servers).options("admin", **own))


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


def ensure_output_topics(svc: ServiceConfig, conn: Connection) -> None:
    """Create the output topics that do not exist (broker-default partitions); a failure is
    logged, not raised (the broker may create them on the first send)."""
    wanted = [t for t in (svc.alerts_topic, svc.dlq_topic, svc.scores_topic) if t]
    admin = admin_client(conn, bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS)
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
