"""A state directory that cannot be written (a full or read-only disk): checkpoints fail,
counted, scoring goes on, and checkpoints resume once the directory is writable again."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from servicetools import (
    ThreadedDetector,
    event_json,
    make_events,
    model_dir,
    produce,
    service_config,
    wait_for,
)

from streamrnn.tools.broker import EmbeddedBroker, create_topics

pytestmark = [pytest.mark.faults, pytest.mark.kafka]


def test_an_unwritable_state_dir_costs_checkpoints_not_scoring(
    kafka_broker: EmbeddedBroker, topic_name: str, tmp_path: Path
) -> None:
    bs, group, state = kafka_broker.bootstrap_servers, f"g-{topic_name}", tmp_path / "state"
    create_topics(bs, {topic_name: 1})
    raw = service_config(bs, topic_name, group, model_dir(), state, checkpoint_interval_s=0.3)
    det = ThreadedDetector(raw)
    processed = lambda: det.value("streamrnn_events_total", {"outcome": "processed"})  # noqa: E731
    errors = lambda: det.value("streamrnn_checkpoints_total", {"outcome": "error"})  # noqa: E731
    group_dir = next(iter(state.iterdir()))
    try:
        first = make_events(2, 60, seed=61)
        produce(bs, topic_name, [(e.key.encode(), event_json(e)) for e in first])
        wait_for(lambda: processed() == len(first), 60, "the first events scored")
        # The group's directory becomes a plain file: every write in it fails (as root, a
        # read-only mode would not stop us; a full disk fails the same calls with ENOSPC).
        shutil.rmtree(group_dir)
        group_dir.write_bytes(b"")
        more = make_events(2, 60, seed=63)
        produce(bs, topic_name, [(e.key.encode(), event_json(e)) for e in more])
        wait_for(lambda: processed() == len(first) + len(more), 60, "scoring goes on")
        wait_for(lambda: errors() >= 2, 30, "failed checkpoints counted")
        assert det.thread.is_alive()
        group_dir.unlink()
        ok = det.value("streamrnn_checkpoints_total", {"outcome": "ok"})
        last = make_events(2, 10, seed=65)
        produce(bs, topic_name, [(e.key.encode(), event_json(e)) for e in last])
        wait_for(
            lambda: det.value("streamrnn_checkpoints_total", {"outcome": "ok"}) > ok,
            30,
            "checkpoints written again",
        )
    finally:
        assert det.stop() == 0
    assert list(group_dir.glob("*.ckpt"))
    print(f"\n{errors():g} failed checkpoints counted while the state dir was unwritable")
