"""A faster record reader for kafka-python's consumer.

kafka-python turns each record of a fetched batch into a ``DefaultRecord`` and then a
``ConsumerRecord``, decoding seven varints through function calls on the way: about 3.5 us a
record on the benchmark machine, most of a consumer's time (docs/benchmarks.md, round 3). This
module reads a whole batch in one loop instead, straight into ``ConsumerRecord`` tuples that are
equal to kafka-python's own (fields, types and values), about 1 us a record.

It replaces the fetcher's ``PartitionRecords`` class on one consumer (``install``); kafka-python
keeps the fetch requests, positions, the consumer group and everything else. Batches the fast
loop does not read (legacy message formats, control and transactional batches, log-append
timestamps) go through kafka-python's own path, record by record. ``install`` first checks the
fast loop against kafka-python's on batches it builds, and leaves the consumer alone (returning
False) when the installed kafka-python differs from what this module was written against.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

_HEADER_SIZE = 61  # a v2 record batch's header, from base offset to record count


class CorruptBatch(ValueError):
    """A record batch whose records do not parse (lengths that do not add up)."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint of any length at ``pos``: (value, next position)."""
    shift = 0
    raw = 0
    while True:
        b = buf[pos]
        pos += 1
        raw |= (b & 0x7F) << shift
        if b < 0x80:
            return (raw >> 1) ^ -(raw & 1), pos
        shift += 7
        if shift > 63:
            raise CorruptBatch(f"varint longer than 10 bytes at {pos}")


def read_batch(
    buf: bytes,
    pos: int,
    count: int,
    base_offset: int,
    first_timestamp: int,
    make: Any,
    head: tuple[Any, ...],
    timestamp_type: int,
) -> tuple[list[Any], int]:
    """The ``count`` records of a v2 batch whose records start at ``buf[pos]``.

    Each record becomes ``make((*head, offset, timestamp, timestamp_type, key, value, headers,
    None, key_size, value_size, header_size))``: with ``make = ConsumerRecord._make`` and
    ``head = (topic, partition, leader_epoch)`` exactly kafka-python's ``ConsumerRecord``.
    Returns the records and the bytes their bodies take (kafka-python's ``bytes_read``).
    """
    # A deliberately unrolled hot loop: one pass per record, each field's one-byte varint case
    # inlined and no function call per field (the reason this reader is 2x kafka-python's).
    out: list[Any] = []
    append = out.append
    varint = _varint
    nbytes = 0
    end = len(buf)
    for _ in range(count):
        # Each field is a zigzag varint; the one-byte case (0..63 and -1..-64) is inlined.
        x = buf[pos]
        if x < 0x80:
            length = (x >> 1) ^ -(x & 1)
            pos += 1
        else:
            length, pos = varint(buf, pos)
        start = pos
        stop = start + length
        if length < 0 or stop > end:
            raise CorruptBatch(f"record of {length} bytes at {start} in a {end}-byte batch")
        pos += 1  # attributes (unused in v2)
        x = buf[pos]
        if x < 0x80:
            timestamp = first_timestamp + ((x >> 1) ^ -(x & 1))
            pos += 1
        else:
            delta, pos = varint(buf, pos)
            timestamp = first_timestamp + delta
        x = buf[pos]
        if x < 0x80:
            offset = base_offset + ((x >> 1) ^ -(x & 1))
            pos += 1
        else:
            delta, pos = varint(buf, pos)
            offset = base_offset + delta
        x = buf[pos]
        if x < 0x80:
            n = (x >> 1) ^ -(x & 1)
            pos += 1
        else:
            n, pos = varint(buf, pos)
        if n >= 0:
            key: bytes | None = buf[pos : pos + n]
            key_size = n
            pos += n
        else:
            key, key_size = None, -1
        x = buf[pos]
        if x < 0x80:
            n = (x >> 1) ^ -(x & 1)
            pos += 1
        else:
            n, pos = varint(buf, pos)
        if n >= 0:
            value: bytes | None = buf[pos : pos + n]
            value_size = n
            pos += n
        else:
            value, value_size = None, -1
        if buf[pos] == 0:  # no headers: the common case
            pos += 1
            headers: list[tuple[str, bytes | None]] = []
            header_size = -1
        else:
            headers, pos = _headers(buf, pos)
            header_size = sum(
                len(k.encode()) + (len(v) if v is not None else 0) for k, v in headers
            )
        if pos != stop:
            raise CorruptBatch(f"record at {start} is {length} bytes long but reads {pos - start}")
        nbytes += length
        append(
            make(
                (
                    *head,
                    offset,
                    timestamp,
                    timestamp_type,
                    key,
                    value,
                    headers,
                    None,
                    key_size,
                    value_size,
                    header_size,
                )
            )
        )
    if pos != end:
        raise CorruptBatch(f"{end - pos} bytes left after the batch's {count} records")
    return out, nbytes


def _headers(buf: bytes, pos: int) -> tuple[list[tuple[str, bytes | None]], int]:
    count, pos = _varint(buf, pos)
    if count < 0:
        raise CorruptBatch(f"negative header count {count}")
    headers: list[tuple[str, bytes | None]] = []
    for _ in range(count):
        n, pos = _varint(buf, pos)
        if n < 0:
            raise CorruptBatch(f"negative header key size {n}")
        name = buf[pos : pos + n].decode("utf-8")
        pos += n
        n, pos = _varint(buf, pos)
        if n >= 0:
            headers.append((name, buf[pos : pos + n]))
            pos += n
        else:
            headers.append((name, None))
    return headers, pos


def _partition_records_class() -> type:
    """``PartitionRecords`` with the fast loop for plain v2 batches (made on first use, so that
    importing this module does not import kafka)."""
    from kafka.consumer.fetcher import ConsumerRecord, Fetcher
    from kafka.errors import CorruptRecordError
    from kafka.protocol.consumer.offsets import IsolationLevel

    base = Fetcher.PartitionRecords
    make = ConsumerRecord._make
    read_committed = IsolationLevel.READ_COMMITTED

    # _unpack_records is kafka-python's own loop over a fetch's batches with the v2 record loop
    # swapped for read_batch; it stays one function, in kafka-python's order, so that it can be
    # compared line by line with the method it overrides.
    class FastPartitionRecords(base):  # type: ignore[misc, valid-type]
        def _unpack_records(
            self, tp: Any, records: Any, key_deserializer: Any, value_deserializer: Any
        ) -> Iterator[Any]:
            if key_deserializer is not None or value_deserializer is not None:
                yield from super()._unpack_records(
                    tp, records, key_deserializer, value_deserializer
                )
                return
            last_batch = None
            batch = records.next_batch()
            while batch is not None:
                last_batch = batch
                if self.check_crcs and not batch.validate_crc():
                    raise CorruptRecordError(
                        f"Record batch for partition {self.topic_partition} at offset "
                        f"{batch.base_offset} failed crc check"
                    )
                if batch.magic == 2:
                    self.leader_epoch = batch.leader_epoch
                    if self._skipped(batch):
                        self.next_fetch_offset = batch.next_offset
                        batch = records.next_batch()
                        continue
                if batch.magic != 2 or batch.timestamp_type != 0:
                    # Legacy formats and log-append times: kafka-python's records, one by one.
                    for record in batch:
                        rec = self._convert(tp, record)
                        self.next_fetch_offset = rec[3] + 1
                        yield rec
                    batch = records.next_batch()
                    continue
                iter(batch)  # decompresses the records, if they are compressed
                try:
                    recs, nbytes = read_batch(
                        bytes(batch._buffer),
                        batch._pos,
                        batch.records_count,
                        batch.base_offset,
                        batch.first_timestamp,
                        make,
                        (tp.topic, tp.partition, batch.leader_epoch),
                        0,
                    )
                except (CorruptBatch, IndexError) as e:
                    raise CorruptRecordError(
                        f"Found invalid record structure in partition {self.topic_partition} "
                        f"at offset {batch.base_offset}: {e!r}"
                    ) from e
                self.records_read += len(recs)
                self.bytes_read += nbytes
                for rec in recs:
                    self.next_fetch_offset = rec[3] + 1
                    yield rec
                batch = records.next_batch()
            # A v2 batch keeps its last offset even when compaction removed its last record.
            if last_batch is not None and last_batch.magic == 2:
                self.next_fetch_offset = last_batch.next_offset
            self.drain()

        def _skipped(self, batch: Any) -> bool:
            """Whether a v2 batch is left out: a control batch, or one of an aborted transaction
            under read_committed (keeping kafka-python's bookkeeping of aborted producers)."""
            if self.isolation_level == read_committed and batch.has_producer_id():
                self._consume_aborted_transactions_up_to(batch.last_offset)
                if self._contains_abort_marker(batch):
                    self.aborted_producer_ids.discard(batch.producer_id)
                elif self._is_batch_aborted(batch):
                    return True
            return bool(batch.is_control_batch)

        def _convert(self, tp: Any, record: Any) -> Any:
            if self.check_crcs and not record.validate_crc():
                raise CorruptRecordError(
                    f"Record for partition {self.topic_partition} at offset {record.offset} "
                    "failed crc check"
                )
            key, value, headers = record.key, record.value, record.headers
            self.records_read += 1
            self.bytes_read += record.size_in_bytes
            return make(
                (
                    tp.topic,
                    tp.partition,
                    self.leader_epoch,
                    record.offset,
                    record.timestamp,
                    record.timestamp_type,
                    key,
                    value,
                    headers,
                    record.checksum,
                    len(key) if key is not None else -1,
                    len(value) if value is not None else -1,
                    sum(len(k.encode()) + (len(v) if v is not None else 0) for k, v in headers)
                    if headers
                    else -1,
                )
            )

    return FastPartitionRecords


_CLASS: type | None = None
_CHECKED: bool | None = None


def _self_check(cls: type) -> bool:
    """Whether the fast class reads batches built here as kafka-python's own class does."""
    from kafka.consumer.fetcher import Fetcher
    from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
    from kafka.structs import TopicPartition

    tp = TopicPartition("check", 3)
    for compression in (0, 1):
        builder = MemoryRecordsBuilder(2, compression, 1 << 20)
        for i in range(300):
            headers = [("h", b"v" * (i % 3)), ("n", None)] if i % 7 == 0 else []
            builder.append(
                timestamp=1_700_000_000_000 + i * 1000,
                key=None if i % 11 == 0 else f"k{i}".encode() * (1 + i % 40),
                value=None if i % 13 == 0 else b"x" * (i % 150),
                headers=headers,
            )
        builder.close()
        data = builder.buffer()
        got = [
            tuple(r)
            for r in cls(5, tp, MemoryRecords(data)).take()  # from the middle of the batch
        ]
        want = [tuple(r) for r in Fetcher.PartitionRecords(5, tp, MemoryRecords(data)).take()]
        if got != want or len(got) != 295:
            return False
    return True


def install(consumer: Any) -> bool:
    """Give ``consumer`` (a ``kafka.KafkaConsumer``) the fast record reader; False, and the
    consumer unchanged, when this kafka-python is not the one the reader was checked against."""
    global _CLASS, _CHECKED
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None or not hasattr(fetcher, "PartitionRecords"):
        log.warning("fast record reader not installed: kafka-python's fetcher is not as expected")
        return False
    if _CHECKED is None:
        try:
            _CLASS = _partition_records_class()
            _CHECKED = _self_check(_CLASS)
        except Exception as e:  # an unexpected kafka-python: keep its own reader
            log.warning("fast record reader not installed: %r", e)
            _CHECKED = False
        if not _CHECKED:
            log.warning("fast record reader not installed: its self-check failed")
    if not _CHECKED:
        return False
    fetcher.PartitionRecords = _CLASS
    return True
