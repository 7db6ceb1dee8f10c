"""Per-partition checkpoints of the engine's state, with the offsets they reflect.

A checkpoint holds the state of the keys seen on one source partition (the bytes of
``Engine.snapshot(keys, extra={"offsets": {"<topic>/<partition>": offset}, ...})``) and, in a
small header, the offset after the last event that state includes. Restoring it and seeking the
partition to that offset reproduces the state an uninterrupted run would have had: events after
the offset are processed again (and their alerts published again; consumers dedupe on
``source``), none is skipped and none is stepped twice.

Every checkpoint is self-consistent, so whichever copy survives is a valid restart point; a
stale one only means more events are processed again.

Framing (both stores): ``b"SRNCK1"``, a 4-byte big-endian header length, the header as JSON
(``group``, ``topic``, ``partition``, ``offset``, ``written_at``, ``keys``, ``model``,
``size``, ``sha256`` of the snapshot) and the snapshot bytes.

Stores:

* :class:`LocalCheckpoints`: ``<state_dir>/<group>/<topic>-<partition>.ckpt``, written
  atomically (temporary file, fsync, ``os.replace``, fsync of the directory).
* :class:`KafkaCheckpoints`: a compacted topic (``service.state_topic``, created with
  ``cleanup.policy=compact`` and one partition when absent) so that state follows a partition to
  another host. A checkpoint is written as chunks of at most 512 KiB (keys
  ``<group>/<topic>/<partition>#<id>/<i>``) and then a manifest under the key
  ``<group>/<topic>/<partition>`` naming the chunks and their sha256; the previous checkpoint's
  chunks are then tombstoned, so compaction keeps one checkpoint per partition. Reading scans the
  topic from the beginning to its high watermark and keeps the latest complete checkpoint of
  each wanted partition (a broker that does not compact, like the embedded one, only makes the
  scan longer).

:class:`CheckpointStore` writes to both and, on reading, takes the copy with the higher offset.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import time
import uuid
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
    "KafkaCheckpoints",
    "LocalCheckpoints",
    "decode",
    "encode",
    "offsets_key",
]

log = logging.getLogger(__name__)

MAGIC = b"SRNCK1"
CHUNK_BYTES = 512 * 1024
TP = tuple[str, int]  # (topic, partition)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or a stored one is corrupt."""


def offsets_key(topic: str, partition: int) -> str:
    """Key of a partition in a snapshot's ``extra["offsets"]`` (``/`` never occurs in topic names)."""
    return f"{topic}/{partition}"


@dataclass
class Checkpoint:
    """A decoded checkpoint: its header and the engine snapshot bytes."""

    group: str
    topic: str
    partition: int
    offset: int
    written_at: float
    data: bytes
    header: dict[str, Any]
    origin: str = "local"  # or "kafka"


def encode(group: str, topic: str, partition: int, offset: int, data: bytes, **info: Any) -> bytes:
    """Frame a snapshot with its header (see the module docstring)."""
    header = {
        "format": 1,
        "group": group,
        "topic": topic,
        "partition": int(partition),
        "offset": int(offset),
        "written_at": time.time(),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        **info,
    }
    head = orjson.dumps(header)
    return MAGIC + struct.pack(">I", len(head)) + head + data


def decode(raw: bytes, *, where: str = "checkpoint") -> Checkpoint:
    """Parse and verify a framed checkpoint; raises :class:`CheckpointError` when corrupt."""
    if len(raw) < len(MAGIC) + 4 or not raw.startswith(MAGIC):
        raise CheckpointError(f"{where}: not a streamrnn checkpoint (bad magic)")
    (n,) = struct.unpack(">I", raw[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    try:
        header = orjson.loads(raw[start : start + n])
    except orjson.JSONDecodeError as e:
        raise CheckpointError(f"{where}: corrupt header ({e})") from None
    data = raw[start + n :]
    if not isinstance(header, dict) or header.get("format") != 1:
        raise CheckpointError(f"{where}: unknown header {header!r}")
    if header.get("size") != len(data) or header.get("sha256") != hashlib.sha256(data).hexdigest():
        raise CheckpointError(f"{where}: truncated or corrupt (size/sha256 mismatch)")
    try:
        return Checkpoint(
            group=str(header["group"]),
            topic=str(header["topic"]),
            partition=int(header["partition"]),
            offset=int(header["offset"]),
            written_at=float(header["written_at"]),
            data=data,
            header=header,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: incomplete header ({e})") from None


# ----------------------------------------------------------------------------------------------
# Local directory


class LocalCheckpoints:
    """``<state_dir>/<group>/<topic>-<partition>.ckpt`` files, replaced atomically."""

    def __init__(self, state_dir: str | os.PathLike[str], group: str) -> None:
        self.group = group
        self.dir = Path(state_dir) / quote(group, safe="")

    def path(self, topic: str, partition: int) -> Path:
        return self.dir / f"{topic}-{partition}.ckpt"

    def check_writable(self) -> None:
        """Create the directory and write a probe file; raises OSError when that fails."""
        self.dir.mkdir(parents=True, exist_ok=True)
        probe = self.dir / f".probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"ok")
        probe.unlink()

    def save(self, topic: str, partition: int, framed: bytes) -> Path:
        """Write atomically: a reader (or a crash) sees the old file or the new one, never half."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(topic, partition)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(framed)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        with contextlib.suppress(OSError):  # make the rename durable too
            fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return path

    def load(self, topic: str, partition: int) -> Checkpoint | None:
        """The partition's checkpoint, None when there is none; CheckpointError when corrupt."""
        path = self.path(topic, partition)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise CheckpointError(f"{path}: unreadable ({e})") from e
        ck = decode(raw, where=str(path))
        ck.origin = "local"
        return ck


# ----------------------------------------------------------------------------------------------
# Compacted Kafka topic


class KafkaCheckpoints:
    """Checkpoints in a compacted topic, chunked, one manifest per partition (module docstring).

    ``producer`` is the service's KafkaProducer (acks=all); reading uses a short-lived consumer
    without a group.
    """

    def __init__(
        self,
        bootstrap_servers: Sequence[str],
        topic: str,
        group: str,
        producer: Any,
        *,
        timeout_s: float = 30.0,
        client_id: str = "streamrnn-state",
    ) -> None:
        self.bootstrap_servers = list(bootstrap_servers)
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
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            request_timeout_ms=int(self.timeout_s * 1000),
        )
        try:
            if self.topic in set(admin.list_topics()):
                return
            result = admin.create_topics(
                {
                    self.topic: {
                        "num_partitions": 1,
                        "replication_factor": -1,
                        "configs": {"cleanup.policy": "compact"},
                    }
                },
                timeout_ms=int(self.timeout_s * 1000),
                raise_errors=False,
            )
            for t in result.get("topics", []):
                code = t.get("error_code", 0)
                if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS (a racing instance)
                    raise CheckpointError(
                        f"service.state_topic: creating {self.topic!r} failed: error {code} "
                        f"{t.get('error_message')!r}"
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
        from kafka import KafkaConsumer, TopicPartition

        bases = {self.base_key(t, p): (t, p) for t, p in wanted}
        if not bases:
            return {}
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            enable_auto_commit=False,
            group_id=None,
            request_timeout_ms=int(self.timeout_s * 1000),
            fetch_max_wait_ms=100,  # an empty partition answers its high watermark sooner
        )
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


# ----------------------------------------------------------------------------------------------
# Both


class CheckpointStore:
    """The local store, plus the Kafka store when configured; reads take the newest copy."""

    def __init__(self, local: LocalCheckpoints, kafka: KafkaCheckpoints | None = None) -> None:
        self.local = local
        self.kafka = kafka

    @property
    def group(self) -> str:
        return self.local.group

    def save_many(self, items: Sequence[tuple[str, int, bytes]]) -> None:
        """Write every ``(topic, partition, framed)`` to each store; raises on the first failure
        (after trying every store, so one bad store does not stop the other)."""
        errors: list[str] = []
        for topic, partition, framed in items:
            try:
                self.local.save(topic, partition, framed)
            except OSError as e:
                errors.append(f"{self.local.path(topic, partition)}: {e}")
        if self.kafka is not None and items:
            try:
                self.kafka.save_many(items)
            except Exception as e:  # kafka errors of every kind: reported, the local copy stands
                errors.append(str(e))
        if errors:
            raise CheckpointError("; ".join(errors))

    def load_many(self, tps: Iterable[TP]) -> dict[TP, Checkpoint]:
        """For each partition the checkpoint with the highest offset among the stores."""
        wanted = list(tps)
        found: dict[TP, Checkpoint] = {}
        for t, p in wanted:
            try:
                ck = self.local.load(t, p)
            except CheckpointError as e:
                log.error("%s; ignoring it", e)
                continue
            if ck is not None and self._matches(ck, t, p):
                found[(t, p)] = ck
        if self.kafka is not None and wanted:
            try:
                remote = self.kafka.load_many(wanted)
            except Exception as e:  # unreachable state topic: the local copies are still valid
                log.error("reading checkpoints from state topic %s failed: %s", self.kafka.topic, e)
                remote = {}
            for tp, ck in remote.items():
                if not self._matches(ck, *tp):
                    continue
                mine = found.get(tp)
                if mine is None or ck.offset > mine.offset:
                    found[tp] = ck
        return found

    def _matches(self, ck: Checkpoint, topic: str, partition: int) -> bool:
        if (ck.group, ck.topic, ck.partition) != (self.group, topic, partition):
            log.error(
                "checkpoint for %s/%s-%d holds %s/%s-%d; ignoring it",
                self.group,
                topic,
                partition,
                ck.group,
                ck.topic,
                ck.partition,
            )
            return False
        return True
