"""Consuming: one ``poll`` of the group consumer, as the columns that go to the engine side.

:meth:`Poller.poll` calls ``consumer.poll(max_records=service.max_poll_records)``; an unexpected
error inside the client (no state was touched yet) is logged and retried like a broker error, up
to :data:`MAX_CLIENT_FAILURES` times in a row. :func:`split_poll` turns the records into one
:class:`~.decode.Part` per partition: only columns are kept, not the records, so fewer objects
live on to the older GC generations while a poll is in flight. :meth:`Poller.update_lag` reads
each partition's lag from the fetch responses' high watermarks (no ListOffsets round trip).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .alerts import Headers
from .decode import Part
from .metrics import Metrics
from .partitions import PartitionTable

__all__ = ["MAX_CLIENT_FAILURES", "Poll", "Poller", "split_poll"]

log = logging.getLogger(__name__)

TP = tuple[str, int]
MAX_CLIENT_FAILURES = 20  # unexpected errors from consumer.poll in a row before giving up


@dataclass
class Poll:
    """One poll as it crosses to the engine side: by partition, in the order polled."""

    parts: list[Part]
    headers: dict[int, Headers] = field(default_factory=dict)  # non-empty ones, by position
    next_offsets: dict[TP, int] = field(default_factory=dict)  # after each part's last record

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)


def split_poll(records: dict[Any, list[Any]]) -> Poll:
    """The columns of ``consumer.poll``'s ``{partition: records}``, one part per partition."""
    parts: list[Part] = []
    headers: dict[int, Headers] = {}  # position in the poll -> the record's headers, if any
    base = 0
    for recs in records.values():
        if not recs:
            continue
        part, hdrs = Part.split(recs[0].topic, recs[0].partition, recs)
        if any(hdrs):
            headers.update((base + i, h) for i, h in enumerate(hdrs) if h)
        parts.append(part)
        base += len(part)
    next_offsets = {(p.topic, p.partition): p.offsets[-1] + 1 for p in parts}
    return Poll(parts, headers, next_offsets)


class Poller:
    """``consumer.poll`` with the client's own failures counted, and consumer lag."""

    def __init__(self, consumer: Any, max_records: int, metrics: Metrics) -> None:
        self.consumer = consumer
        self.max_records = max_records
        self.metrics = metrics
        self.failures = 0

    def poll(self, timeout_ms: int) -> dict[Any, list[Any]]:
        """One poll; an unexpected error in the client becomes a KafkaError (retried with
        backoff), until ``MAX_CLIENT_FAILURES`` in a row: then it is raised as it is."""
        from kafka.errors import KafkaError

        try:
            records = self.consumer.poll(timeout_ms=timeout_ms, max_records=self.max_records)
        except KafkaError:
            raise
        except Exception as e:
            self.failures += 1
            if self.failures > MAX_CLIENT_FAILURES:
                raise
            log.exception(
                "unexpected error in the Kafka client's poll (%d in a row)", self.failures
            )
            raise KafkaError(f"poll failed: {e!r}") from e
        self.failures = 0
        return records

    def update_lag(self, table: PartitionTable) -> int:
        """Lag from the fetch responses' high watermarks (free; no ListOffsets round trip);
        returns the total over the assigned partitions."""
        from kafka import TopicPartition

        total = 0
        for (t, p), part in list(table.parts.items()):
            if part.offset is None:
                continue
            try:
                hw = self.consumer.highwater(TopicPartition(t, p))
            except Exception:  # not assigned any more (a rebalance in between)
                continue
            if hw is not None:
                lag = max(0, hw - part.offset)
                total += lag
                self.metrics.set_consumer_lag(t, p, lag)
        return total
