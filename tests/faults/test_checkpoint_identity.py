"""Checkpoints that belong to another incarnation of their partition, and corrupt ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from faulttools import delete_topic, scored
from servicetools import (
    ThreadedDetector,
    event_json,
    make_events,
    model_dir,
    produce,
    service_config,
    wait_for,
)

from streamrnn.service.checkpoint import LocalCheckpoints
from streamrnn.tools.broker import EmbeddedBroker, create_topics

pytestmark = [pytest.mark.faults, pytest.mark.kafka]


def test_a_checkpoint_of_a_deleted_and_recreated_topic_is_quarantined(
    kafka_broker: EmbeddedBroker, topic_name: str, tmp_path: Path
) -> None:
    bs, group, state = kafka_broker.bootstrap_servers, f"g-{topic_name}", tmp_path / "state"
    create_topics(bs, {topic_name: 3})
    first = make_events(6, 100, seed=41)
    produce(bs, topic_name, [(e.key.encode(), event_json(e)) for e in first])
    raw = service_config(bs, topic_name, group, model_dir(), state)
    det = ThreadedDetector(raw)
    try:
        wait_for(
            lambda: det.value("streamrnn_events_total", {"outcome": "processed"}) == len(first),
            60,
            "the first incarnation scored",
        )
    finally:
        assert det.stop() == 0  # checkpoints every partition
    local = LocalCheckpoints(state, group)
    old = {p: local.load(topic_name, p) for p in range(3)}
    assert all(ck is not None and ck.header["topic_id"] for ck in old.values()), old
    assert sum(ck.offset for ck in old.values() if ck is not None) == len(first)

    # The same name again, three partitions again, and more events than before: every
    # offset of the old checkpoints exists in the new log, so only the topic's ID tells.
    delete_topic(bs, topic_name)
    create_topics(bs, {topic_name: 3, f"{topic_name}.scores": 1})
    second = make_events(6, 250, seed=43)
    produce(bs, topic_name, [(e.key.encode(), event_json(e)) for e in second])
    raw2 = service_config(
        bs, topic_name, group, model_dir(), state, scores_topic=f"{topic_name}.scores"
    )
    det = ThreadedDetector(raw2)
    try:
        got = scored(bs, f"{topic_name}.scores", len(second), 90, "every new event scored")
        quarantined = det.value("streamrnn_checkpoints_quarantined_total", {"cause": "topic_id"})
    finally:
        assert det.stop() == 0
    assert len(got) == len(second)
    assert quarantined == 3
    for p in range(3):
        kept = local.path(topic_name, p).with_name(f"{topic_name}-{p}.ckpt.quarantined")
        assert kept.exists(), kept
        new = local.load(topic_name, p)
        assert new is not None and new.header["topic_id"] != old[p].header["topic_id"]
    print(f"\n3 stale checkpoints quarantined; {len(got)} of {len(second)} new events scored")


def test_a_corrupt_checkpoint_is_kept_aside_and_counted(
    kafka_broker: EmbeddedBroker, topic_name: str, tmp_path: Path
) -> None:
    bs, group, state = kafka_broker.bootstrap_servers, f"g-{topic_name}", tmp_path / "state"
    create_topics(bs, {topic_name: 1})
    events = make_events(2, 50, seed=45)
    produce(bs, topic_name, [(e.key.encode(), event_json(e)) for e in events])
    path = LocalCheckpoints(state, group).path(topic_name, 0)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"SRNCK1 not really a checkpoint")
    det = ThreadedDetector(service_config(bs, topic_name, group, model_dir(), state))
    try:
        wait_for(
            lambda: det.value("streamrnn_events_total", {"outcome": "processed"}) == len(events),
            60,
            "every event scored",
        )
        assert det.value("streamrnn_checkpoints_quarantined_total", {"cause": "corrupt"}) == 1
    finally:
        assert det.stop() == 0
    kept = path.with_name(path.name + ".corrupt")
    assert kept.read_bytes() == b"SRNCK1 not really a checkpoint"
    assert LocalCheckpoints(state, group).load(topic_name, 0) is not None  # a new one beside it
