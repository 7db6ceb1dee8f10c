"""Poison that once stalled a partition: a dead letter too large to publish as it is."""

from __future__ import annotations

from pathlib import Path

import pytest
from faulttools import produce_raw
from servicetools import (
    ThreadedDetector,
    TopicReader,
    committed,
    event_json,
    make_events,
    model_dir,
    service_config,
    wait_for,
)

from streamrnn.tools.broker import EmbeddedBroker, create_topics

pytestmark = [pytest.mark.faults, pytest.mark.kafka]

BIG = 1_048_300  # bytes of the undecodable value: its dead letter exceeds 1 MiB with headers


def test_an_oversized_dead_letter_is_cut_to_fit_and_the_partition_moves_on(
    kafka_broker: EmbeddedBroker, topic_name: str, tmp_path: Path
) -> None:
    bs = kafka_broker.bootstrap_servers
    create_topics(bs, {topic_name: 1, f"{topic_name}.dlq": 1})
    events = make_events(1, 600, seed=3)
    values: list[tuple[bytes | None, bytes | None]] = [
        (e.key.encode(), event_json(e)) for e in events
    ]
    values.insert(100, (b"poison", b"\xff" * BIG))
    produce_raw(bs, topic_name, values, max_request_size=4 * 1024 * 1024)
    raw = service_config(bs, topic_name, f"g-{topic_name}", model_dir(), tmp_path / "state")
    det = ThreadedDetector(raw)
    try:
        wait_for(
            lambda: committed(bs, f"g-{topic_name}", topic_name, [0])[0] == len(values),
            90,
            "every offset committed past the poison",
        )
        assert det.value("streamrnn_events_total", {"outcome": "processed"}) == 600
        assert det.value("streamrnn_rejected_total", {"reason": "not_json"}) == 1
        assert det.value("streamrnn_dead_letters_cut_total") == 1
    finally:
        assert det.stop() == 0
    reader = TopicReader(bs, f"{topic_name}.dlq")
    (dead,) = reader.read_until(lambda r: len(r) >= 1, 20, "the dead letter")
    reader.close()
    headers = dict(dead.headers)
    assert headers["streamrnn.reason"] == b"not_json"
    assert headers["streamrnn.truncated"] == b"true"
    assert headers["streamrnn.original_size"] == str(BIG).encode()
    assert headers["streamrnn.source.offset"] == b"100"
    assert 0 < len(dead.value) < BIG and dead.value == b"\xff" * len(dead.value)
    print(f"\ndead letter cut from {BIG} to {len(dead.value)} bytes; 600 events settled")
