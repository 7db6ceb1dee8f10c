"""Reading an output topic (alerts, scores) from a point in time to its end, without a group.

Used by ``streamrnn alerts list`` and ``streamrnn explain``. Partitions are assigned directly (no
consumer group, nothing committed). Each starts at the first record published at or after
``since`` (ListOffsets by time; from the beginning without ``since``) and is read up to its high
watermark as of the fetch responses, which every broker reports right (the embedded broker's
``end_offsets`` does not, see :mod:`streamrnn.tools.broker`).

Record times are publish times, and an alert is published after its event happened, so seeking
by ``since`` never skips an event at or after ``since`` (callers filter on the event time).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ..config import ServiceConfig
from ..times import parse_timestamp

__all__ = ["TopicError", "key_partition", "parse_when", "read_topic"]

log = logging.getLogger(__name__)

POLL_MS = 200
SKEW_S = 300.0  # seek this much earlier than since: producer clocks behind ours


class TopicError(RuntimeError):
    """The topic cannot be read (it does not exist, or the broker does not answer)."""


def key_partition(key: bytes, partitions: Sequence[int]) -> int:
    """The partition the default (murmur2) partitioner puts ``key`` in, as the detector's
    producer does."""
    from kafka.partitioner.default import murmur2

    ordered = sorted(partitions)
    return ordered[(murmur2(key) & 0x7FFFFFFF) % len(ordered)]


def read_topic(
    svc: ServiceConfig,
    topic: str,
    *,
    since: float | None = None,
    key: bytes | None = None,
    timeout_s: float = 60.0,
) -> Iterator[Any]:
    """The records of ``topic`` on ``svc``'s brokers (kafka-python ``ConsumerRecord``),
    partition by partition in offset order, from ``since`` (epoch seconds) to the end. With
    ``key`` only the partition that key maps to is read, and only records with that message key
    are returned. Stops with a warning after ``timeout_s``."""
    from kafka import TopicPartition
    from kafka.errors import KafkaError

    from ..service import clients
    from ..service.preflight import BrokerUnreachable

    servers = ",".join(svc.bootstrap_servers)
    # service.kafka's TLS and SASL; a refused configuration raises ConnectionSetupError (a
    # ConfigError naming the setting) before kafka-python would retry it silently.
    conn = clients.Connection.of(svc.bootstrap_servers, svc.kafka)
    try:
        conn.check(timeout_s=min(timeout_s, 10.0))
        consumer = clients.reader(
            conn,
            f"streamrnn-{svc.group}-reader",
            timeout_s=min(timeout_s, 30.0) + 1,
        )
    except (KafkaError, BrokerUnreachable) as e:
        raise TopicError(f"cannot reach Kafka at {servers}: {e}") from None
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise TopicError(f"topic {topic!r} does not exist on {servers}")
        chosen = [key_partition(key, list(parts))] if key is not None else sorted(parts)
        tps = [TopicPartition(topic, p) for p in chosen]
        consumer.assign(tps)
        _seek(consumer, tps, since)
        yield from _drain(consumer, tps, key, time.monotonic() + timeout_s)
    finally:
        consumer.close()


def _seek(consumer: Any, tps: list[Any], since: float | None) -> None:
    if since is None:
        consumer.seek_to_beginning(*tps)
        return
    found = consumer.offsets_for_times({tp: max(0, int((since - SKEW_S) * 1000)) for tp in tps})
    for tp in tps:
        hit = found.get(tp)
        if hit is None:
            consumer.seek_to_end(tp)  # nothing published since
        else:
            consumer.seek(tp, hit.offset)


def _drain(consumer: Any, tps: list[Any], key: bytes | None, deadline: float) -> Iterator[Any]:
    """Poll until every partition's position reaches its high watermark."""
    pending = set(tps)
    while pending:
        if time.monotonic() > deadline:
            log.warning(
                "stopped reading %s before its end (timeout); the output may be incomplete",
                ", ".join(f"{tp.topic}-{tp.partition}" for tp in sorted(pending)),
            )
            return
        batch = consumer.poll(timeout_ms=POLL_MS)
        for _tp, records in sorted(batch.items()):
            for r in records:
                if key is None or r.key == key:
                    yield r
        for tp in list(pending):
            hw = consumer.highwater(tp)
            if hw is not None and consumer.position(tp) >= hw:
                pending.discard(tp)


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_when(text: str, now: float) -> float:
    """Epoch seconds for ``90s``, ``15m``, ``6h``, ``2d``, ``1w`` (that long before ``now``), ISO
    8601 text or an epoch number; ValueError naming the forms otherwise.

    >>> parse_when("2h", 10_000.0), parse_when("1970-01-01T00:01:00Z", 0.0)
    (2800.0, 60.0)
    """
    s = text.strip()
    if len(s) > 1 and s[-1] in _UNITS:
        try:
            return now - float(s[:-1]) * _UNITS[s[-1]]
        except ValueError:
            pass
    try:
        return parse_timestamp(s)
    except (ValueError, OverflowError):
        raise ValueError(
            f"must be a duration (90s, 15m, 6h, 2d, 1w), ISO 8601 time or epoch seconds, got {text!r}"
        ) from None
