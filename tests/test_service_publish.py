"""The publisher's publish-then-commit rule, with a fake producer and consumer: a poll's offsets
move and are committed only once every one of its messages is acknowledged, in poll order;
failed sends are retried; outputs never acknowledged while stopping are never committed."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from servicetools import model_dir, service_config

from streamrnn.config import load_config
from streamrnn.service.app import Detector
from streamrnn.service.checkpoint import Checkpointer, CheckpointStore, LocalCheckpoints
from streamrnn.service.engine_process import InlineEngine
from streamrnn.service.partitions import Partition
from streamrnn.service.publish import Publisher, Unacked
from streamrnn.service.worker import EngineSide, Outcome, Stats

TP0 = ("t", 0)


class Future:
    def __init__(self) -> None:
        self.is_done = False
        self.ok = False
        self.exception: Exception | None = None

    def succeeded(self) -> bool:
        return self.is_done and self.ok

    def failed(self) -> bool:
        return self.is_done and not self.ok

    def resolve(self, ok: bool) -> None:
        self.is_done, self.ok = True, ok
        if not ok:
            self.exception = RuntimeError("broker unavailable")


class Producer:
    """Futures stay pending until ``flush``; the first ``failures`` sends fail then."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.sent: list[tuple[str, bytes | None]] = []
        self.pending: list[Future] = []

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Any) -> Future:
        self.sent.append((topic, value))
        f = Future()
        self.pending.append(f)
        return f

    def flush(self, timeout: float | None = None) -> None:
        for f in self.pending:
            ok = self.failures <= 0
            self.failures -= 1
            f.resolve(ok)
        self.pending = []


class Consumer:
    def __init__(self) -> None:
        self.commits: list[dict[tuple[str, int], int]] = []

    def commit_async(self, offsets: dict[Any, Any], callback: Any) -> None:
        self.commits.append({(tp.topic, tp.partition): o.offset for tp, o in offsets.items()})
        callback(offsets, object())

    def commit(self, offsets: dict[Any, Any], timeout_ms: int) -> None:
        self.commits.append({(tp.topic, tp.partition): o.offset for tp, o in offsets.items()})


def _detector(tmp_path: Path, **service: Any) -> tuple[Publisher, Producer, Consumer]:
    """The publisher of a configured detector on an inline engine, with fake clients."""
    raw = service_config("127.0.0.1:9", "t", "g", model_dir(), tmp_path / "state", **service)
    det = Detector(load_config(raw))
    engine = InlineEngine(EngineSide(det.settings))
    d = Publisher(det.svc, engine, det.table, det.metrics, det.health, det._stop)
    producer, consumer = Producer(), Consumer()
    d.producer, d.consumer = producer, consumer
    d.table.parts[TP0] = Partition(offset=0, restored=True, committed=0)
    return d, producer, consumer


def _scored(d: Publisher, end: int) -> None:
    """A scored poll of partition 0 up to offset ``end`` with one alert, sent as finish does."""
    out = Outcome(
        processed=1,
        rejects=[],
        alerts=[(b"k", b'{"score": 0.99}')],
        scores=[],
        anomalies={"t": 1},
        late_scored=0,
        moved=[],
        score=np.array([0.99]),
        times=np.array([0.0]),
        stats=Stats(1, 64, 0, 0, "m"),
    )
    msg = (d.svc.alerts_topic, b"k", b'{"score": 0.99}', None)
    sent = [(msg, d.producer.send(msg[0], key=msg[1], value=msg[2], headers=None))]
    d.unacked.append(Unacked(sent, out, Counter(), {TP0: end}, 0.0))


def test_offsets_move_only_after_acknowledgement_in_order(tmp_path: Path) -> None:
    d, producer, consumer = _detector(tmp_path)
    _scored(d, 5)
    _scored(d, 9)
    assert d.settle(wait=False)
    assert consumer.commits == [] and d.table.parts[TP0].offset == 0, "nothing acknowledged yet"
    # The second poll's message is acknowledged first: still nothing, order is kept.
    producer.pending[1].resolve(True)
    producer.pending = producer.pending[:1]
    assert d.settle(wait=False) and consumer.commits == []
    producer.flush()
    assert d.settle(wait=False)
    assert consumer.commits == [{TP0: 5}, {TP0: 9}] and d.table.parts[TP0].offset == 9
    assert d.table.parts[TP0].dirty and not d.unacked
    assert d.metrics.registry.get_sample_value("streamrnn_alerts_published_total") == 2


def test_failed_sends_are_retried_before_the_commit(tmp_path: Path) -> None:
    d, producer, consumer = _detector(tmp_path, retry_backoff_max_s=0.1)
    producer.failures = 1
    _scored(d, 3)
    assert d.settle(wait=True)  # flush: the send fails, is sent again and acknowledged
    assert len(producer.sent) == 2 and consumer.commits == [{TP0: 3}]
    assert d.metrics.registry.get_sample_value("streamrnn_broker_errors_total") == 1


def test_outputs_never_acknowledged_while_stopping_are_never_committed(tmp_path: Path) -> None:
    d, producer, consumer = _detector(tmp_path, retry_backoff_max_s=0.1, shutdown_timeout_s=0.3)
    producer.failures = 10**6
    _scored(d, 4)
    d.stop.set()  # what Detector.stop does
    assert not d.settle(wait=True)
    assert consumer.commits == [] and d.table.parts[TP0].offset == 0
    assert d.table.parts[TP0].unsafe and d.abandoned
    store = CheckpointStore(LocalCheckpoints(tmp_path / "state", "g"))
    checkpoints = Checkpointer("g", store, d.engine, d.table, d.metrics, drain=d.drain)
    assert checkpoints.write([TP0], force=True) is False  # an abandoned detector writes none


@pytest.mark.parametrize("wait", [False, True])
def test_nothing_to_settle(tmp_path: Path, wait: bool) -> None:
    d, _, consumer = _detector(tmp_path)
    assert d.settle(wait=wait) and consumer.commits == []
