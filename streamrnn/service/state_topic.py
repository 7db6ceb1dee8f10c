"""Checkpoints in a compacted Kafka topic, so that state follows a partition to another host.

The topic is ``service.state_topic``, created with ``cleanup.policy=compact`` and one partition
when absent. A checkpoint (framed as :mod:`.checkpoint` frames it) is written as chunks of at
most 512 KiB (keys ``<group>/<topic>/<partition>#<id>/<i>``) and then a manifest under the key
``<group>/<topic>/<partition>`` naming the chunks and their sha256; the previous checkpoint's
chunks are then tombstoned, so compaction keeps one checkpoint per partition. Reading scans the
topic from the beginning to its high watermark and keeps the latest complete checkpoint of each
wanted partition (a broker that does not compact, like the embedded one, only makes the scan
longer).
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from .checkpoint import Checkpoint, CheckpointError, decode
from .clients import Connection, admin_client, as_connection, create_topics, reader

__all__ = ["CHUNK_BYTES", "KafkaCheckpoints"]

log = logging.getLogger(__name__)

CHUNK_BYTES = 512 * 1024
COMPACTED = {"cleanup.policy": "compact"}
TP = tuple[str, int]  # (topic, partition)


class KafkaCheckpoints:
    """Checkpoints in a compacted topic, chunked, one manifest per partition (module docstring).

    ``producer`` is the service's KafkaProducer (acks=all); reading uses a short-lived consumer
    without a group, and topic creation an admin client, both on ``connection`` (the service's
    :class:`~.clients.Connection`, or bootstrap servers for a PLAINTEXT one).
    """

    def __init__(
        self,
        connection: Connection | Sequence[str],
        topic: str,
        group: str,
        producer: Any,
        *,
        timeout_s: float = 30.0,
        client_id: str = "streamrnn-state",
    ) -> None:
        self.connection = as_connection(connection)
        self.topic = topic
        self.group = group
        self.producer = producer
        self.timeout_s = timeout_s
        self.client_id = client_id
        self._previous: dict[
            str, tuple[str, int]
        ] = {}  # base key -> (id, chunks) last written/read
        self._n_partitions: int | None = None

    def base_key(self, topic: str, partition: int) -> str:
        return f"{self.group}/{topic}/{partition}"

    def ensure_topic(self) -> None:
        """Create the topic (compacted, one partition) when it does not exist."""
        admin = admin_client(
            self.connection, self.client_id, request_timeout_ms=int(self.timeout_s * 1000)
        )
        try:
            if self.topic in set(admin.list_topics()):
                return
            spec = {"num_partitions": 1, "replication_factor": -1, "configs": COMPACTED}
            failed = create_topics(admin, {self.topic: spec}, timeout_ms=int(self.timeout_s * 1000))
            if self.topic in failed:
                raise CheckpointError(
                    f"service.state_topic: creating {self.topic!r} failed: {failed[self.topic]}"
                )
            log.info("created state topic %s (cleanup.policy=compact)", self.topic)
        finally:
            admin.close()

    def _partition_for(self, base: str) -> int:
        if self._n_partitions is None:
            parts = self.producer.partitions_for(self.topic)
            self._n_partitions = max(1, len(parts or ()))
        return zlib.crc32(base.encode()) % self._n_partitions

    def save_many(self, items: Iterable[tuple[str, int, bytes]]) -> None:
        """Write ``(topic, partition, framed)`` checkpoints; returns once the broker acknowledged
        them. Raises :class:`CheckpointError` when a send fails."""
        written: list[tuple[str, int, str, int]] = []
        futures: list[Any] = []
        for topic, partition, framed in items:
            base = self.base_key(topic, partition)
            part = self._partition_for(base)
            cid = uuid.uuid4().hex[:16]
            chunks = [framed[i : i + CHUNK_BYTES] for i in range(0, len(framed), CHUNK_BYTES)] or [
                b""
            ]
            for i, chunk in enumerate(chunks):
                futures.append(
                    self.producer.send(
                        self.topic, key=f"{base}#{cid}/{i}".encode(), value=chunk, partition=part
                    )
                )
            manifest = {
                "id": cid,
                "chunks": len(chunks),
                "size": len(framed),
                "sha256": hashlib.sha256(framed).hexdigest(),
            }
            written.append((base, part, cid, len(chunks)))
            # Same partition, sent after its chunks: a reader never sees a manifest before them.
            futures.append(
                self.producer.send(
                    self.topic, key=base.encode(), value=orjson.dumps(manifest), partition=part
                )
            )
        self._wait(futures, "checkpoint")
        # The new manifests are acknowledged: the previous chunks can go.
        tombstones = []
        for base, part, cid, n in written:
            old = self._previous.get(base)
            self._previous[base] = (cid, n)
            if old is not None and old[0] != cid:
                for i in range(old[1]):
                    tombstones.append(
                        self.producer.send(
                            self.topic,
                            key=f"{base}#{old[0]}/{i}".encode(),
                            value=None,
                            partition=part,
                        )
                    )
        if tombstones:
            try:
                self._wait(tombstones, "tombstone")
            except CheckpointError as e:  # harmless: compaction just keeps an extra copy
                log.warning("%s", e)

    def _wait(self, futures: list[Any], what: str) -> None:
        self.producer.flush(timeout=self.timeout_s)
        for f in futures:
            if not f.is_done:
                raise CheckpointError(f"state topic {self.topic}: {what} not acknowledged in time")
            if f.failed():
                raise CheckpointError(f"state topic {self.topic}: {what} failed: {f.exception!r}")

    def load_many(self, wanted: Iterable[TP]) -> dict[TP, Checkpoint]:
        """The latest complete checkpoint of each wanted partition found in the topic."""
        from kafka import TopicPartition

        bases = {self.base_key(t, p): (t, p) for t, p in wanted}
        if not bases:
            return {}
        consumer = reader(self.connection, self.client_id, timeout_s=self.timeout_s)
        latest: dict[str, tuple[bytes, str, int]] = {}  # base -> (framed, id, chunks)
        pending: dict[str, dict[str, dict[int, bytes]]] = {b: {} for b in bases}
        try:
            parts = consumer.partitions_for_topic(self.topic) or set()
            tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
            if not tps:
                return {}
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            deadline = time.monotonic() + self.timeout_s
            while True:
                for records in consumer.poll(timeout_ms=200, max_records=10_000).values():
                    for rec in records:
                        self._scan(rec, bases, pending, latest)
                done = True
                for tp in tps:
                    hw = consumer.highwater(tp)
                    if hw is None or consumer.position(tp) < hw:
                        done = False
                if done:
                    break
                if time.monotonic() > deadline:
                    raise CheckpointError(
                        f"state topic {self.topic}: not read to its end within {self.timeout_s:g} s"
                    )
        finally:
            consumer.close(autocommit=False)
        out: dict[TP, Checkpoint] = {}
        for base, (framed, cid, n) in latest.items():
            t, p = bases[base]
            try:
                ck = decode(framed, where=f"state topic {self.topic} key {base}")
            except CheckpointError as e:
                log.error("%s", e)
                continue
            ck.origin = "kafka"
            out[(t, p)] = ck
            self._previous.setdefault(base, (cid, n))
        return out

    @staticmethod
    def _scan(
        rec: Any,
        bases: dict[str, TP],
        pending: dict[str, dict[str, dict[int, bytes]]],
        latest: dict[str, tuple[bytes, str, int]],
    ) -> None:
        key = rec.key.decode("utf-8", "replace") if rec.key else ""
        base, sep, rest = key.partition("#")
        if base not in bases:
            return
        if sep:  # a chunk: <base>#<id>/<i>
            cid, _, index = rest.partition("/")
            if not index.isdigit():
                return
            chunks = pending[base].setdefault(cid, {})
            if rec.value is None:
                chunks.pop(int(index), None)
            else:
                chunks[int(index)] = rec.value
            return
        if rec.value is None:  # manifest tombstone: the partition's checkpoint was deleted
            latest.pop(base, None)
            return
        try:
            m = orjson.loads(rec.value)
            cid, n = str(m["id"]), int(m["chunks"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("state topic: ignoring a corrupt manifest under %s", base)
            return
        chunks = pending[base].get(cid, {})
        if any(i not in chunks for i in range(n)):
            log.warning(
                "state topic: checkpoint %s of %s lacks chunks; keeping the previous one", cid, base
            )
            return
        framed = b"".join(chunks[i] for i in range(n))
        if hashlib.sha256(framed).hexdigest() != m.get("sha256"):
            log.warning(
                "state topic: checkpoint %s of %s fails its sha256; keeping the previous one",
                cid,
                base,
            )
            return
        latest[base] = (framed, cid, n)
        pending[base] = {}
