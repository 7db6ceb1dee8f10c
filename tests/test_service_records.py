"""The fast record reader (streamrnn/service/records.py) against kafka-python's own reader.

Batches are built with kafka-python's builders and read both ways; the records must be equal
field by field. The last tests read a real topic of the embedded broker both ways.
"""

from __future__ import annotations

import struct
import uuid
from collections import namedtuple
from typing import Any

import pytest
from kafka.consumer.fetcher import ConsumerRecord, Fetcher
from kafka.errors import CorruptRecordError
from kafka.protocol.consumer.offsets import IsolationLevel
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.legacy_records import LegacyRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords
from kafka.record.util import calc_crc32c
from kafka.structs import TopicPartition

from streamrnn.service import records as reader
from streamrnn.service.decode import Part
from streamrnn.tools.broker import EmbeddedBroker, create_topics

TP = TopicPartition("t", 2)
FAST: Any = reader._partition_records_class()


def _v2(
    n: int,
    *,
    base: int = 0,
    step: int = 1,
    compression: int = 0,
    key: Any = lambda i: f"key-{i}".encode(),
    value: Any = lambda i: b'{"v": %d}' % i,
    headers: Any = lambda i: [],
    transactional: bool = False,
    producer_id: int = -1,
) -> bytes:
    """One v2 batch of ``n`` records at offsets ``base``, ``base + step``, ..."""
    b = DefaultRecordBatchBuilder(
        2, compression, transactional, producer_id, 0 if producer_id >= 0 else -1, -1, 1 << 24
    )
    for i in range(n):
        b.append(step * i, 1_700_000_000_000 + 977 * i, key(i), value(i), headers(i))
    buf = bytearray(b.build())
    struct.pack_into(">q", buf, 0, base)  # the base offset
    return bytes(buf)


def _set_attributes(batch: bytes, bits: int) -> bytes:
    """The batch with attribute bits set and its CRC recomputed (a broker-written look)."""
    buf = bytearray(batch)
    (attrs,) = struct.unpack_from(">h", buf, 21)
    struct.pack_into(">h", buf, 21, attrs | bits)
    struct.pack_into(">I", buf, 17, calc_crc32c(bytes(buf[21:])))
    return bytes(buf)


def _read(cls: Any, data: bytes, fetch_offset: int = 0, **kw: Any) -> tuple[list[Any], Any]:
    part = cls(fetch_offset, TP, MemoryRecords(data), **kw)
    return part.take(), part


def _both(data: bytes, fetch_offset: int = 0, **kw: Any) -> list[Any]:
    """Read ``data`` both ways; assert the records and the next fetch offset agree."""
    want, stock = _read(Fetcher.PartitionRecords, data, fetch_offset, **kw)
    got, fast = _read(FAST, data, fetch_offset, **kw)
    assert [tuple(r) for r in got] == [tuple(r) for r in want]
    assert all(type(r) is ConsumerRecord for r in got)
    assert fast.next_fetch_offset == stock.next_fetch_offset
    assert fast.records_read == stock.records_read
    return got


def test_plain_batches_read_as_kafka_python_reads_them() -> None:
    got = _both(_v2(500) + _v2(200, base=500))
    assert [r.offset for r in got] == list(range(700))
    assert got[3].key == b"key-3" and got[3].value == b'{"v": 3}' and got[3].headers == []
    assert got[3].timestamp == 1_700_000_000_000 + 977 * 3
    assert isinstance(got[3].key, bytes) and isinstance(got[3].value, bytes)


@pytest.mark.parametrize(
    "shape",
    [
        # multi-byte varints: long keys and values, offset and timestamp deltas past 63 and 8191
        dict(key=lambda i: b"k" * (i * 37), value=lambda i: b"v" * (i * 301)),
        dict(step=9000),
        dict(key=lambda i: None if i % 2 else b"k", value=lambda i: None if i % 3 else b""),
        dict(headers=lambda i: [("trace", b"x" * i), ("empty", None), ("é", b"")] if i % 4 else []),
    ],
    ids=["long-fields", "offset-gaps", "null-and-empty", "headers"],
)
def test_record_shapes_read_as_kafka_python_reads_them(shape: dict[str, Any]) -> None:
    _both(_v2(80, **shape))


def test_compressed_batches_are_read_by_the_fast_loop() -> None:
    got = _both(_v2(300, compression=1) + _v2(10, base=300, compression=1))  # gzip
    assert len(got) == 310


def test_a_fetch_from_the_middle_of_a_batch_skips_the_records_before_it() -> None:
    got = _both(_v2(100) + _v2(50, base=100), fetch_offset=42)
    assert got[0].offset == 42 and len(got) == 108


def test_partial_takes_keep_the_position_of_the_last_record_taken() -> None:
    data = _v2(100) + _v2(100, base=100)
    stock = Fetcher.PartitionRecords(0, TP, MemoryRecords(data))
    fast = FAST(0, TP, MemoryRecords(data))
    for n in (7, 93, 1, 150):
        want, got = stock.take(n), fast.take(n)
        assert [tuple(r) for r in got] == [tuple(r) for r in want]
        assert fast.next_fetch_offset == stock.next_fetch_offset
    assert not fast and not stock  # both drained


def test_other_batches_go_through_kafka_python_record_by_record() -> None:
    legacy = LegacyRecordBatchBuilder(1, 0, 1 << 20)
    for i in range(20):
        legacy.append(i, 1_700_000_000_000 + i, f"k{i}".encode(), b"v")
    log_append = _set_attributes(_v2(30, base=20), 0x08)
    control = _set_attributes(_v2(1, base=50), 0x20)
    got = _both(bytes(legacy.build()) + log_append + control + _v2(5, base=51))
    assert [r.offset for r in got] == list(range(50)) + list(range(51, 56))
    assert {r.timestamp_type for r in got[20:50]} == {1}  # the broker's append time


def test_aborted_transactions_are_skipped_under_read_committed() -> None:
    aborted = namedtuple("Aborted", "producer_id first_offset")(7, 0)
    txn = _v2(10, transactional=True, producer_id=7)
    got = _both(
        txn + _v2(5, base=10),
        isolation_level=IsolationLevel.READ_COMMITTED,
        aborted_transactions=[aborted],
    )
    assert [r.offset for r in got] == list(range(10, 15))


def test_a_corrupt_batch_is_reported_not_misread() -> None:
    data = bytearray(_v2(10))
    data[61] += 2  # the first record's length: now it runs into the next record
    with pytest.raises(CorruptRecordError, match="invalid record structure"):
        _read(FAST, bytes(data), check_crcs=False)
    with pytest.raises(CorruptRecordError, match="crc"):
        _read(FAST, bytes(data))  # the batch's checksum catches it first


def test_install_checks_itself_and_refuses_a_reader_that_misreads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Consumer:
        def __init__(self) -> None:
            self._fetcher = type("F", (), {"PartitionRecords": Fetcher.PartitionRecords})()

    monkeypatch.setattr(reader, "_CHECKED", None)
    good = Consumer()
    assert reader.install(good) is True
    assert good._fetcher.PartitionRecords is not Fetcher.PartitionRecords

    real = reader.read_batch

    def drops_last(*a: Any) -> tuple[list[Any], int]:
        out, n = real(*a)
        return out[:-1], n

    monkeypatch.setattr(reader, "_CHECKED", None)
    monkeypatch.setattr(reader, "read_batch", drops_last)
    bad = Consumer()
    assert reader.install(bad) is False
    assert bad._fetcher.PartitionRecords is Fetcher.PartitionRecords
    assert reader.install(object()) is False  # no fetcher at all


def test_part_split_transposes_named_tuples_like_attribute_access() -> None:
    recs = _both(_v2(40, headers=lambda i: [("h", b"1")] if i == 5 else []))

    class Plain:
        def __init__(self, r: Any) -> None:
            self.offset, self.timestamp, self.key, self.value, self.headers = (
                r.offset,
                r.timestamp,
                r.key,
                r.value,
                r.headers,
            )

    fast, fast_headers = Part.split("t", 2, recs)
    slow, slow_headers = Part.split("t", 2, [Plain(r) for r in recs])
    for col in ("offsets", "timestamps", "keys", "values"):
        assert list(getattr(fast, col)) == list(getattr(slow, col)), col
    assert list(fast_headers) == list(slow_headers)
    assert [i for i, h in enumerate(fast_headers) if h] == [5]


@pytest.mark.kafka
@pytest.mark.parametrize("compression", [None, "gzip"])
def test_a_topic_reads_the_same_through_both_readers(
    kafka_broker: EmbeddedBroker, compression: str | None
) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    topic = f"test-{uuid.uuid4().hex[:12]}"
    create_topics(kafka_broker.bootstrap_servers, {topic: 3})
    producer = KafkaProducer(
        bootstrap_servers=kafka_broker.bootstrap_servers, compression_type=compression
    )
    for i in range(3000):
        producer.send(
            topic,
            key=None if i % 10 == 0 else f"meter-{i % 97}".encode(),
            value=None if i % 50 == 25 else b"x" * (i % 200),
            headers=[("n", str(i).encode())] if i % 33 == 0 else None,
            partition=i % 3,
        )
    producer.flush()
    producer.close()

    def read(fast: bool) -> list[tuple[Any, ...]]:
        c = KafkaConsumer(
            bootstrap_servers=kafka_broker.bootstrap_servers,
            enable_auto_commit=False,
            max_poll_records=700,  # several polls: positions carry over between them
            max_partition_fetch_bytes=16_384,
        )
        if fast:
            assert reader.install(c)
        tps = [TopicPartition(topic, p) for p in range(3)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out: list[tuple[Any, ...]] = []
        for _ in range(200):
            for recs in c.poll(timeout_ms=200).values():
                out.extend(tuple(r) for r in recs)
            if len(out) >= 3000:
                break
        positions = [c.position(tp) for tp in tps]
        c.close(autocommit=False)
        for p in range(3):  # each partition's records arrive in offset order, without gaps
            offsets = [r[3] for r in out if r[1] == p]
            assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))
        # Partitions interleave as fetches complete, differently from one run to the next.
        return sorted(out, key=lambda r: (r[1], r[3])) + [tuple(positions)]

    stock, fast = read(False), read(True)
    assert len(stock) == 3001
    assert fast == stock
