"""What the service knows of its input topics: that they exist, their partition counts and their
identities, and how it notices that the broker lost its data.

The detector never creates an input topic: a consumer that did would create a missing topic
with the broker's default partition count, the wrong one after a broker lost its data. Its
consumer sets ``allow_auto_create_topics`` false, and :class:`InputTopics` logs a missing topic
once and again when it appears; the group assigns it then. (Tansu 0.6 creates a topic named in
a metadata request whatever the flag says: on it, the topic comes back with the broker's
default partition count, which :meth:`InputTopics.check` reports as ``partition_count``.)

Broker data loss shows in three ways, each counted in ``streamrnn_broker_data_loss_total`` by
``kind`` (:data:`DATA_LOSS_KINDS`):

* ``offsets_reset``: a partition's records start below the offset its state already includes
  (its log was cut short or started again, and the consumer reset its position);
* ``topic_id``: the topic's ID in the metadata changed (deleted and created again, or a
  broker that lost everything), see :func:`topic_id`;
* ``partition_count``: the topic's partition count changed.

The first two make the partitions' state stale: the :class:`~.app.Detector` drops it and
starts them again by ``auto_offset_reset`` (docs/reliability.md says why the state is dropped).
A changed partition count is logged and counted; the group's rebalance that follows restores
each partition from a checkpoint only if the checkpoint's topic ID matches
(:mod:`.checkpoint`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["DATA_LOSS_KINDS", "InputTopics", "reset_partitions", "topic_id"]

log = logging.getLogger(__name__)

TP = tuple[str, int]
DATA_LOSS_KINDS: tuple[str, ...] = ("offsets_reset", "topic_id", "partition_count")


def topic_id(consumer: Any, topic: str) -> str | None:
    """The topic's ID from the consumer's metadata (Kafka 2.8+, Tansu), None when the broker
    does not give one. kafka-python keeps it in its cluster metadata only."""
    cluster = getattr(getattr(consumer, "_client", None), "cluster", None)
    getter = getattr(cluster, "topic_id", None)
    if getter is None:
        return None
    tid = getter(topic)
    return str(tid) if tid is not None else None


def reset_partitions(consumer: Any, tps: Sequence[TP], policy: str) -> dict[TP, int]:
    """Seek ``tps`` by ``auto_offset_reset`` (``earliest`` or ``latest``); the new positions."""
    from kafka import TopicPartition

    parts = [TopicPartition(*tp) for tp in tps]
    if policy == "latest":
        consumer.seek_to_end(*parts)
    else:
        consumer.seek_to_beginning(*parts)
    return {
        tp: int(consumer.position(p, timeout_ms=30_000)) for tp, p in zip(tps, parts, strict=True)
    }


class InputTopics:
    """The configured input topics (``topics``; empty with a pattern subscription) and what the
    metadata says of them: missing ones are logged once, changed partition counts and IDs
    returned by :meth:`check`."""

    def __init__(self, topics: Iterable[str]) -> None:
        self.topics = tuple(topics)
        self.missing: set[str] = set()
        self.counts: dict[str, int] = {}
        self.ids: dict[str, str] = {}

    def check(self, consumer: Any) -> list[tuple[str, str, str]]:
        """Look at the consumer's metadata; returns ``(topic, kind, detail)`` for each topic
        whose partition count or ID changed since the last look."""
        if consumer is None:
            return []
        changes: list[tuple[str, str, str]] = []
        for topic in self.topics or sorted(self.counts):
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                if topic not in self.missing:
                    self.missing.add(topic)
                    log.warning(
                        "input topic %s does not exist; waiting for it (the detector never "
                        "creates its input topics)",
                        topic,
                    )
                continue
            if topic in self.missing:
                self.missing.discard(topic)
                log.info("input topic %s exists now (%d partition(s))", topic, len(parts))
            changes += self._compare(topic, len(parts), topic_id(consumer, topic))
        return changes

    def seen(self, topic: str, consumer: Any) -> None:
        """Remember a topic met through an assignment (pattern subscriptions)."""
        if topic not in self.counts and consumer is not None:
            parts = consumer.partitions_for_topic(topic)
            if parts:
                self._compare(topic, len(parts), topic_id(consumer, topic))

    def _compare(self, topic: str, count: int, tid: str | None) -> list[tuple[str, str, str]]:
        changes = []
        old_count, old_id = self.counts.get(topic), self.ids.get(topic)
        if old_count is not None and old_count != count:
            changes.append(
                (topic, "partition_count", f"{topic} has {count} partition(s), had {old_count}")
            )
        if tid is not None and old_id is not None and tid != old_id:
            changes.append((topic, "topic_id", f"{topic}'s topic ID is {tid}, was {old_id}"))
        self.counts[topic] = count
        if tid is not None:
            self.ids[topic] = tid
        return changes
