"""Per-partition checkpoints of the engine's state, with the offset they reflect.

A checkpoint holds the state of the keys seen on one source partition (the bytes of
``Engine.snapshot(keys, extra={"keys": keys, ...})``) and, in a small header, the offset after
the last event that state includes: the header is the one place that offset is kept. Restoring
it and seeking the partition to that offset reproduces the state an uninterrupted run would have
had: events after the offset are processed again (and their alerts published again; consumers
dedupe on ``source``), none is skipped and none is stepped twice.

Every checkpoint is self-consistent, so whichever copy survives is a valid restart point; a
stale one only means more events are processed again.

Framing (both stores): ``b"SRNCK1"``, a 4-byte big-endian header length, the header as JSON
(``group``, ``topic``, ``partition``, ``offset``, ``written_at``, ``keys``, ``model``,
``topic_id`` and ``committed``: the topic's ID and the group's committed offset when it was
written, null when unknown; ``size``, ``sha256`` of the snapshot) and the snapshot bytes.

Identity: a checkpoint is applied only to the incarnation of the partition it was taken from
(:meth:`Checkpointer.quarantined`). Where the broker gives topic IDs and the checkpoint holds
one, they must be equal. Otherwise the checkpoint's offset must not lie beyond the partition's
log end (where the broker has no topic IDs) and, when the checkpoint saw a committed offset,
the group must still have one. A checkpoint that fails is logged, counted
(``streamrnn_checkpoints_quarantined_total``), kept beside the store as
``<topic>-<partition>.ckpt.quarantined``, and the partition starts fresh by
``auto_offset_reset``. A corrupt local checkpoint is kept as ``.ckpt.corrupt`` before a new one
replaces it. Checkpoints written by streamrnn
0.1 also carry the offset in the snapshot's extra (``offsets``); it equals the header's and is
not read.

Stores:

* :class:`LocalCheckpoints`: ``<state_dir>/<group>/<topic>-<partition>.ckpt``, written
  atomically (temporary file, fsync, ``os.replace``, fsync of the directory).
* :class:`~.state_topic.KafkaCheckpoints`: a compacted topic (``service.state_topic``).

:class:`CheckpointStore` writes to both and, on reading, takes the copy with the higher offset.
:class:`Checkpointer` writes the partition table's checkpoints and restores them into the engine.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

if TYPE_CHECKING:
    from .engine_process import EngineClient
    from .metrics import Metrics
    from .partitions import PartitionTable
    from .state_topic import KafkaCheckpoints

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
    "Checkpointer",
    "LocalCheckpoints",
    "decode",
    "encode",
]

log = logging.getLogger(__name__)

MAGIC = b"SRNCK1"
TP = tuple[str, int]  # (topic, partition)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or a stored one is corrupt."""


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
        """The partition's checkpoint, None when there is none; CheckpointError when corrupt
        (the file is kept as ``.ckpt.corrupt`` first: the next checkpoint replaces the name)."""
        path = self.path(topic, partition)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise CheckpointError(f"{path}: unreadable ({e})") from e
        try:
            ck = decode(raw, where=str(path))
        except CheckpointError as e:
            kept = self.set_aside(topic, partition, "corrupt")
            raise CheckpointError(f"{e}; kept as {kept}" if kept else str(e)) from None
        ck.origin = "local"
        return ck

    def set_aside(self, topic: str, partition: int, suffix: str) -> Path | None:
        """Rename the partition's checkpoint to ``<name>.<suffix>`` (replacing an older one);
        the path, or None when there was none or it could not be renamed."""
        path = self.path(topic, partition)
        kept = path.with_name(f"{path.name}.{suffix}")
        try:
            os.replace(path, kept)
        except OSError:
            return None
        return kept


# ----------------------------------------------------------------------------------------------
# Both


class CheckpointStore:
    """The local store, plus the Kafka store when configured; reads take the newest copy."""

    def __init__(self, local: LocalCheckpoints, kafka: KafkaCheckpoints | None = None) -> None:
        self.local = local
        self.kafka = kafka
        self.corrupt = 0  # corrupt local checkpoints met (and kept) so far

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
                self.corrupt += 1
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


# ----------------------------------------------------------------------------------------------
# Writing and restoring the partition table's checkpoints


class Checkpointer:
    """Checkpoints of the partitions of ``table``: snapshots from ``engine``, framed, to ``store``.

    ``drain`` publishes and commits every poll in flight first, so a snapshot holds exactly the
    events before its partition's offset; it returns False when outputs were never acknowledged
    (then nothing is written)."""

    def __init__(
        self,
        group: str,
        store: CheckpointStore,
        engine: EngineClient,
        table: PartitionTable,
        metrics: Metrics,
        *,
        drain: Callable[[], bool],
    ) -> None:
        self.group = group
        self.store = store
        self.engine = engine
        self.table = table
        self.metrics = metrics
        self.drain = drain
        self._corrupt_seen = store.corrupt

    def write(self, tps: Iterable[TP], *, force: bool = False) -> bool:
        """Checkpoint the partitions whose state changed (all given ones with ``force``)."""
        if not self.drain():
            return False
        todo = []
        for tp in tps:
            part = self.table.get(tp)
            if part is None or not part.restored or part.unsafe or part.offset is None:
                continue
            if part.dirty or force:
                todo.append((tp, part, part.offset))
        items = []
        if todo:
            snaps = self.engine.snapshot(
                [
                    (tp, {"group": self.group, "topic": tp[0], "partition": tp[1]})
                    for tp, _, _ in todo
                ]
            )
            version = self.engine.stats.model_version
            for (tp, part, offset), (data, n_keys) in zip(todo, snaps, strict=True):
                framed = encode(
                    self.group,
                    tp[0],
                    tp[1],
                    offset,
                    data,
                    keys=n_keys,
                    model=version,
                    topic_id=part.topic_id,
                    committed=part.committed,
                )
                items.append((tp[0], tp[1], framed))
        ok = True
        if items:
            try:
                self.store.save_many(items)
            except CheckpointError as e:
                ok = False
                log.error("checkpoint failed: %s", e)
            else:
                for _, part, _ in todo:
                    part.dirty = False
                log.debug("checkpointed %d partition(s)", len(items))
        self.metrics.checkpoint(ok)
        return ok

    def load(self, tps: Iterable[TP]) -> dict[TP, Checkpoint]:
        """The newest checkpoint of each of ``tps`` that has one (corrupt ones counted)."""
        found = self.store.load_many(tps)
        if self.store.corrupt > self._corrupt_seen:
            n, self._corrupt_seen = self.store.corrupt - self._corrupt_seen, self.store.corrupt
            self.metrics.checkpoints_quarantined.labels(cause="corrupt").inc(n)
        return found

    def quarantined(self, tp: TP, ck: Checkpoint, topic_id: str | None, consumer: Any) -> bool:
        """Whether ``ck`` belongs to another incarnation of ``tp`` (module docstring): then it is
        logged, counted, kept aside as ``.quarantined`` and not applied. ``topic_id`` is the
        topic's ID now (None: the broker gives none); ``consumer`` answers the log end and the
        group's committed offset when there is no ID to compare."""
        cause, detail = mismatch(ck, topic_id, consumer)
        if cause is None:
            return False
        self.metrics.checkpoints_quarantined.labels(cause=cause).inc()
        kept = self.store.local.set_aside(tp[0], tp[1], "quarantined")
        log.error(
            "the %s checkpoint of %s-%d at offset %d belongs to another incarnation of the "
            "partition (%s); not applying it%s",
            ck.origin,
            *tp,
            ck.offset,
            detail,
            f", kept as {kept}" if kept else "",
        )
        return True

    def restore(self, tp: TP, ck: Checkpoint) -> int | None:
        """Restore ``ck`` into the engine; returns the offset to seek ``tp`` to, or None when the
        snapshot cannot be restored (corrupt or incompatible: logged, the partition starts with
        fresh state from its committed offset)."""
        from .engine_process import EngineGone

        try:
            extra = self.engine.restore(tp, ck.data)
        except EngineGone:
            raise
        except Exception as e:  # corrupt or incompatible snapshot: fall back to fresh state
            log.error(
                "checkpoint of %s-%d (%s) cannot be restored: %s; starting it with "
                "fresh state from its committed offset",
                *tp,
                ck.origin,
                e,
            )
            return None
        version = extra.get("model_version")
        log.info(
            "restored %d key(s) of %s-%d from the %s checkpoint at offset %d "
            "(written %.0f s ago%s)",
            len(extra.get("keys", [])),
            *tp,
            ck.origin,
            ck.offset,
            time.time() - ck.written_at,
            "" if version == self.engine.stats.model_version else f" by model {version}",
        )
        return ck.offset


def mismatch(ck: Checkpoint, topic_id: str | None, consumer: Any) -> tuple[str | None, str]:
    """Why ``ck`` does not belong to its partition as it is now: ``(cause, detail)``, or
    ``(None, "")`` when it does. Causes are those of ``streamrnn_checkpoints_quarantined_total``."""
    from kafka import TopicPartition

    theirs = ck.header.get("topic_id")
    if theirs is not None and topic_id is not None:
        if theirs != topic_id:
            return "topic_id", f"it was taken of topic ID {theirs}, the topic's ID is {topic_id}"
        return None, ""
    tp = TopicPartition(ck.topic, ck.partition)
    if topic_id is None:  # no IDs from this broker: its log end is right (unlike Tansu's)
        end = consumer.end_offsets([tp]).get(tp)
        if end is not None and ck.offset > end:
            return "offsets", f"its offset is beyond the log end {end}"
    if ck.header.get("committed") is not None and consumer.committed(tp) is None:
        return "committed_offset", "the group has no committed offset, the checkpoint saw one"
    return None, ""
