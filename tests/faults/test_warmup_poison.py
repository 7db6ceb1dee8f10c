"""A huge but finite reading during a key's warm-up once blinded that key for good."""

from __future__ import annotations

from pathlib import Path

import orjson
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

KEYS, STEPS, POISON_AT, SPIKE_AT = 3, 420, 60, 350


@pytest.mark.parametrize("poison", [3e38, 1e20, 1e15])
def test_a_huge_reading_in_warm_up_does_not_blind_its_key(
    kafka_broker: EmbeddedBroker, topic_name: str, tmp_path: Path, poison: float
) -> None:
    bs = kafka_broker.bootstrap_servers
    create_topics(bs, {topic_name: 1, f"{topic_name}.alerts": 1, f"{topic_name}.dlq": 1})
    events = make_events(KEYS, STEPS, seed=5, spikes=[(k, SPIKE_AT) for k in range(KEYS)])
    poisoned = events[POISON_AT * KEYS]  # key 0's event 60, inside the 150-event warm-up
    poisoned.value = poison
    produce_raw(bs, topic_name, [(e.key.encode(), event_json(e)) for e in events])
    raw = service_config(bs, topic_name, f"g-{topic_name}", model_dir(), tmp_path / "state")
    raw["scoring"]["warmup"] = 150
    det = ThreadedDetector(raw)
    try:
        wait_for(
            lambda: committed(bs, f"g-{topic_name}", topic_name, [0])[0] == len(events),
            90,
            "every event committed",
        )
        assert det.value("streamrnn_events_total", {"outcome": "processed"}) == len(events)
        assert det.value("streamrnn_imputed_values_total") >= 1  # the poison, imputed and counted
    finally:
        assert det.stop() == 0
    reader = TopicReader(bs, f"{topic_name}.alerts")
    reader.read_until(lambda r: len(r) >= KEYS, 30, "an alert per key")
    reader.poll(300)
    reader.close()
    alerts = [orjson.loads(r.value) for r in reader.records]
    spikes = {a["key"]: a for a in alerts if a["source"]["offset"] // KEYS == SPIKE_AT}
    assert set(spikes) == {e.key for e in events[:KEYS]}, [a["key"] for a in alerts]
    for a in spikes.values():  # the poisoned key still forecasts and scores like the others
        assert a["expected"] is not None and a["score"] > 0.5
