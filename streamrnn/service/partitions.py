"""The partition table: what the service knows of each assigned partition; rebalances; restore.

:class:`PartitionTable` owns the assignment: per partition the offset after the last event the
state includes, whether the state is restored, changed since the last checkpoint, or unsafe
(outputs of a batch were never acknowledged: never commit or checkpoint it again), and the
offset this instance last committed.

:class:`Rebalancer` answers the group's callbacks, which kafka-python runs inside ``poll``. On
revocation the partitions' polls in flight are drained (published and committed), then they are
checkpointed and their keys dropped; a lost partition (membership expired) is dropped unsaved.
Newly assigned partitions are paused, and right after that ``poll`` returns :meth:`Rebalancer.
restore_pending` restores each from its checkpoint and seeks it to the checkpoint's offset (a
partition without one starts from its committed offset with fresh state and gets an empty
checkpoint at once), then resumes them. A checkpoint of another incarnation of the partition
(:meth:`~.checkpoint.Checkpointer.mismatch`: another topic ID, an offset beyond the log, or the
group's committed offsets gone) is quarantined, and the partition starts fresh by
``auto_offset_reset``.

Everything that reads or changes the state first drains what is in flight, so the state it sees
is the committed offsets' state: the table is handed the publisher's ``drain``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .checkpoint import Checkpoint, Checkpointer
from .engine_process import EngineClient
from .metrics import Metrics
from .topics import reset_partitions, topic_id

__all__ = ["Partition", "PartitionTable", "Rebalancer", "fmt_tps", "listener"]

log = logging.getLogger(__name__)

TP = tuple[str, int]


@dataclass
class Partition:
    """What the service knows of one assigned partition."""

    offset: int | None = None  # after the last event the state includes; None until restored
    restored: bool = False
    dirty: bool = False  # events since the last checkpoint
    unsafe: bool = False  # outputs of a batch were never acknowledged: never checkpoint again
    committed: int | None = None  # the last offset this instance committed
    topic_id: str | None = None  # the topic's ID when the state was restored (None: unknown)


class PartitionTable:
    """The assigned partitions (``parts``) and those whose state is not restored (``pending``).

    >>> table = PartitionTable()
    >>> table.assign([("t", 0)])
    [('t', 0)]
    >>> table.restored(("t", 0), 10)
    >>> table.advance({("t", 0): 12}); table.committable()
    {('t', 0): 12}
    """

    def __init__(self) -> None:
        self.parts: dict[TP, Partition] = {}
        self.pending: set[TP] = set()

    def __len__(self) -> int:
        return len(self.parts)

    def __contains__(self, tp: object) -> bool:
        return tp in self.parts

    def get(self, tp: TP) -> Partition | None:
        return self.parts.get(tp)

    def assign(self, tps: Iterable[TP]) -> list[TP]:
        """Add the partitions not assigned yet (pending restore); returns those."""
        new = [tp for tp in tps if tp not in self.parts]
        for tp in new:
            self.parts[tp] = Partition()
            self.pending.add(tp)
        return new

    def forget(self, tps: Iterable[TP]) -> list[TP]:
        """Drop what is known of ``tps``; returns those that were assigned."""
        tps = list(tps)
        self.pending.difference_update(tps)
        return [tp for tp in tps if self.parts.pop(tp, None) is not None]

    def restored(self, tp: TP, offset: int, *, topic_id: str | None = None) -> None:
        """``tp``'s state is restored and reflects the events before ``offset``. Committing the
        offset the state starts from would add nothing (or move back), so it counts as done."""
        part = self.parts[tp]
        part.offset, part.committed, part.restored, part.dirty = offset, offset, True, False
        part.topic_id = topic_id
        self.pending.discard(tp)

    def advance(self, next_offsets: dict[TP, int]) -> None:
        """A poll's outputs are acknowledged: the state now includes its events."""
        for tp, off in next_offsets.items():
            part = self.parts.get(tp)
            if part is not None:
                part.offset, part.dirty = off, True

    def mark_unsafe(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            if tp in self.parts:
                self.parts[tp].unsafe = True

    def unsafe(self) -> list[TP]:
        return sorted(tp for tp, p in self.parts.items() if p.unsafe)

    def committable(self, tps: Iterable[TP] | None = None) -> dict[TP, int]:
        """The offsets of restored, safe partitions (of ``tps``, default all)."""
        wanted = self.parts if tps is None else [tp for tp in tps if tp in self.parts]
        return {
            tp: p.offset
            for tp in wanted
            if (p := self.parts[tp]).offset is not None and p.restored and not p.unsafe
        }

    def uncommitted(self, offsets: dict[TP, int]) -> dict[TP, int]:
        """The ``offsets`` of assigned partitions that this instance has not committed yet."""
        return {
            tp: o for tp, o in offsets.items() if tp in self.parts and self.parts[tp].committed != o
        }

    def committed(self, offsets: dict[TP, int]) -> None:
        for tp, o in offsets.items():
            part = self.parts.get(tp)
            if part is not None and (part.committed is None or part.committed < o):
                part.committed = o


def fmt_tps(tps: Iterable[TP]) -> str:
    """``t-0, t-1``, or ``none``.

    >>> fmt_tps([("b", 1), ("a", 0)]), fmt_tps([])
    ('a-0, b-1', 'none')
    """
    text = ", ".join(f"{t}-{p}" for t, p in sorted(tps))
    return text or "none"


class Rebalancer:
    """The group's callbacks and the restore of newly assigned partitions.

    ``drain`` publishes and commits every poll in flight (False when outputs were never
    acknowledged); ``commit`` commits offsets and waits; ``on_change`` runs after the assignment
    changed (metrics, readiness); ``crashed`` says the state may be mid-batch: nothing may be
    drained, checkpointed or asked of the engine any more.
    """

    def __init__(
        self,
        table: PartitionTable,
        consumer: Any,
        engine: EngineClient,
        checkpoints: Checkpointer,
        metrics: Metrics,
        *,
        drain: Callable[[], bool],
        commit: Callable[[dict[TP, int]], None],
        on_change: Callable[[], None],
        crashed: Callable[[], bool],
        auto_offset_reset: str = "earliest",
    ) -> None:
        self.auto_offset_reset = auto_offset_reset
        self.table = table
        self.consumer = consumer
        self.engine = engine
        self.checkpoints = checkpoints
        self.metrics = metrics
        self.drain = drain
        self.commit = commit
        self.on_change = on_change
        self.crashed = crashed

    def revoked(self, tps: list[TP]) -> None:
        if not tps:
            return
        log.info("partitions revoked: %s", fmt_tps(tps))
        if not self.crashed() and self.drain():
            mine = [tp for tp in tps if tp in self.table]
            self.commit(self.table.committable(mine))
            self.checkpoints.write(mine)
        self._forget(tps)

    def lost(self, tps: list[TP]) -> None:
        log.warning(
            "partitions lost (membership expired): %s; dropping their state unsaved", fmt_tps(tps)
        )
        if not self.crashed():
            self.drain()  # published, and committed where the broker still takes it
        self._forget(tps)

    def assigned(self, tps: list[TP]) -> None:
        new = self.table.assign(tps)
        if new:
            from kafka import TopicPartition

            # No records until the state is restored and the position sought (after this poll).
            self.consumer.pause(*[TopicPartition(*tp) for tp in new])
        log.info("partitions assigned: %s", fmt_tps(tps))
        self.on_change()

    def _start(self, tp: TP, ck: Checkpoint | None, tid: str | None) -> tuple[int, bool]:
        """Where ``tp`` starts, and whether from its checkpoint ``ck`` (restored and sought)."""
        from kafka import TopicPartition

        if ck is not None and self.checkpoints.quarantined(tp, ck, tid, self.consumer):
            return self._reset(tp), False
        offset = self.checkpoints.restore(tp, ck) if ck is not None else None
        if offset is not None:
            self.consumer.seek(TopicPartition(*tp), offset)
            return offset, True
        # The committed offset, else auto_offset_reset.
        offset = self.consumer.position(TopicPartition(*tp), timeout_ms=30_000)
        log.info("no checkpoint for %s-%d: fresh state from offset %d", *tp, offset)
        return offset, False

    def _reset(self, tp: TP) -> int:
        """Where a partition whose checkpoint was quarantined starts: by auto_offset_reset, not
        from the group's committed offset (which belongs with the stale checkpoint)."""
        offset = reset_partitions(self.consumer, [tp], self.auto_offset_reset)[tp]
        log.warning("%s-%d starts with fresh state from offset %d (auto_offset_reset)", *tp, offset)
        return offset

    def _forget(self, tps: list[TP]) -> None:
        """Drop what is known of ``tps``, and their keys' state."""
        gone = self.table.forget(tps)
        if gone and not self.crashed() and not self.engine.in_flight:
            self.metrics.engine_stats(self.engine.forget(gone))
        self.on_change()

    def restore_pending(self) -> None:
        """Restore newly assigned partitions from their checkpoints and seek; then resume them."""
        from kafka import TopicPartition

        if not self.drain():
            return
        tps = sorted(self.table.pending)
        found = self.checkpoints.load(tps)
        fresh: list[TP] = []
        for tp in tps:
            tid = topic_id(self.consumer, tp[0])
            offset, restored = self._start(tp, found.get(tp), tid)
            if not restored:
                fresh.append(tp)
            self.table.restored(tp, offset, topic_id=tid)
        if fresh:
            # An empty checkpoint at once: a crash before the first periodic one skips nothing.
            self.checkpoints.write(fresh, force=True)
        self.consumer.resume(*[TopicPartition(*tp) for tp in tps])
        self.metrics.engine_stats(self.engine.fetch_stats())
        self.on_change()


def listener(rebalancer: Rebalancer) -> Any:
    """A kafka-python ``ConsumerRebalanceListener`` that calls ``rebalancer``."""
    from kafka.consumer.subscription_state import ConsumerRebalanceListener

    def tps(partitions: Iterable[Any]) -> list[TP]:
        return [(tp.topic, tp.partition) for tp in partitions]

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked: Any) -> None:
            rebalancer.revoked(tps(revoked))

        def on_partitions_assigned(self, assigned: Any) -> None:
            rebalancer.assigned(tps(assigned))

        def on_partitions_lost(self, lost: Any) -> None:
            rebalancer.lost(tps(lost))

    return Listener()
