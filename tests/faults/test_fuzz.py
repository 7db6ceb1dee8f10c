"""A poison-message fuzz: whatever arrives, processed + rejected = sent, and every reject is in
the dead-letter topic with a reason the metrics know."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest
from faulttools import produce_raw
from servicetools import ThreadedDetector, TopicReader, model_dir, service_config, wait_for

from streamrnn.service.metrics import REJECT_REASONS
from streamrnn.tools.broker import EmbeddedBroker, create_topics

pytestmark = [pytest.mark.faults, pytest.mark.kafka]

N = 600
T0 = 1.7e9


def _nested(depth: int) -> bytes:
    return b'{"key": "deep", "value": ' + b"[" * depth + b"1" + b"]" * depth + b"}"


def _poison(rng: random.Random, i: int) -> tuple[bytes | None, bytes | None]:
    """One message of a random kind: valid events among many broken ones."""
    kind = rng.randrange(12)
    good = {"key": f"k{i % 7}", "ts": T0 + i, "value": rng.gauss(0, 1)}
    if kind == 0:
        return None, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    if kind == 1:
        return None, _nested(rng.choice([3, 100, 5000]))
    if kind == 2:
        return None, orjson.dumps({**good, "value": rng.choice([1e300, -1e39, 3e38, "1e999"])})
    if kind == 3:
        key = rng.choice(["", None, 7, True, "\u0000", "k" * 5000, {"a": 1}, "🔥"])
        return None, orjson.dumps({**good, "key": key})
    if kind == 4:
        ts = rng.choice([-9e10, 1e30, "year 3000", 253402300800, -1, "2999-01-01T00:00:00Z"])
        return None, orjson.dumps({**good, "ts": ts})
    if kind == 5:
        return None, orjson.dumps({**good, "value": rng.choice(["1_000", " 1", "0x1", "NaN"])})
    if kind == 6:
        return b"mkey", None  # a tombstone
    if kind == 7:
        return None, orjson.dumps([good])
    if kind == 8:
        return None, orjson.dumps({"key": good["key"], "ts": good["ts"]})
    return None, orjson.dumps(good)


def test_poison_fuzz_loses_nothing(
    kafka_broker: EmbeddedBroker, topic_name: str, tmp_path: Path
) -> None:
    bs = kafka_broker.bootstrap_servers
    create_topics(bs, {topic_name: 2, f"{topic_name}.dlq": 1})
    rng = random.Random(12)
    messages = [_poison(rng, i) for i in range(N)]
    produce_raw(bs, topic_name, messages)
    det = ThreadedDetector(service_config(bs, topic_name, f"g-{topic_name}", model_dir(), tmp_path))

    def settled() -> float:
        return det.value("streamrnn_events_total", {"outcome": "processed"}) + det.value(
            "streamrnn_events_total", {"outcome": "rejected"}
        )

    try:
        wait_for(lambda: settled() >= N, 90, "every message processed or rejected")
        rejected = {r: det.value("streamrnn_rejected_total", {"reason": r}) for r in REJECT_REASONS}
        processed = det.value("streamrnn_events_total", {"outcome": "processed"})
    finally:
        assert det.stop() == 0
    assert processed + sum(rejected.values()) == N
    reader = TopicReader(bs, f"{topic_name}.dlq")
    dead = reader.read_until(lambda r: len(r) >= sum(rejected.values()), 30, "the dead letters")
    reader.poll(300)
    reader.close()
    assert len(reader.records) == sum(rejected.values())
    reasons = [dict(r.headers)["streamrnn.reason"].decode() for r in dead]
    assert all(r in REJECT_REASONS for r in reasons)
    assert {r: reasons.count(r) for r in set(reasons)} == {r: n for r, n in rejected.items() if n}
    print(f"\n{N} sent: {processed:g} processed, rejected by reason {sorted(set(reasons))}")
