"""``streamrnn produce`` (synthetic streams and CSV replay into the embedded broker), its rate
limiting, the shipped demo model, and ``streamrnn demo`` end to end."""

from __future__ import annotations

import itertools
import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from streamrnn.cli import main
from streamrnn.tools import demo_model
from streamrnn.tools.console import score_alerts
from streamrnn.tools.produce import TokenBucket, csv_messages, make_producer, produce_events
from streamrnn.tools.stream import InjectedAnomaly, SyntheticStream, synthetic_series


def read_all(bootstrap: str, topic: str, expected: int, timeout: float = 15.0) -> list[Any]:
    """Every record of ``topic`` from the beginning, waiting until ``expected`` arrived."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50
    )
    try:
        deadline = time.monotonic() + timeout
        parts: set[int] = set()
        while not parts and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        while len(records) < expected and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=100).values():
                records.extend(recs)
        # A short extra poll: nothing beyond what was expected.
        for recs in consumer.poll(timeout_ms=300).values():
            records.extend(recs)
        return records
    finally:
        consumer.close(autocommit=False)


def iso(ts: str) -> float:
    assert ts.endswith("Z"), ts
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


# ----------------------------------------------------------------------------------------------
# Without a broker


def test_token_bucket_holds_the_rate():
    now = [0.0]
    bucket = TokenBucket(10.0, burst=1.0, clock=lambda: now[0])
    assert bucket.delay() == 0.0  # starts with one token
    assert bucket.delay() == pytest.approx(0.1)  # in debt: wait 1/rate
    now[0] += 0.1
    assert bucket.delay() == pytest.approx(0.1)
    now[0] += 10.0  # a long pause refills only up to the burst
    assert bucket.delay() == 0.0
    assert bucket.delay() == pytest.approx(0.1)
    with pytest.raises(ValueError):
        TokenBucket(0.0)


def test_score_alerts_recall_and_precision():
    spike = InjectedAnomaly("a", "spike", 100, 101, 0.0, 0.0)
    shift = InjectedAnomaly("b", "level_shift", 200, 260, 0.0, 0.0)
    pending = InjectedAnomaly("a", "drift", 900, 1000, 0.0, 0.0)
    alerts = [("a", 100, 0.99), ("a", 150, 0.99), ("b", 265, 0.9), ("c", 5, 0.95)]
    ev = score_alerts([spike, shift, pending], alerts, {"a": 950, "b": 400}, slack=10)
    assert (ev.injected, ev.evaluated, ev.detected) == (3, 2, 2)  # the drift is still running
    assert ev.by_kind == {"spike": (1, 1), "level_shift": (1, 1)}
    assert (ev.alerts, ev.matched_alerts) == (4, 2)
    assert ev.recall == 1.0 and ev.precision == 0.5


def test_synthetic_stream_cycles_with_time_moving_on():
    series = synthetic_series(
        "energy", 2, 100, anomalies=("spike",), clean_prefix=20, seamless=True
    )
    stream = SyntheticStream(series, interval_s=300.0, cycle=True, malformed_every=50)
    msgs = list(itertools.islice(iter(stream), 210))  # 200 readings and 4 malformed, cycled
    readings = [orjson.loads(v) for k, v in msgs if k is not None and k != b"malformed"]
    assert stream.malformed_sent == 4 and len(readings) == 206
    times = [iso(m["ts"]) for m in readings if m["key"] == "energy_000"]
    assert times == [stream.start_ts + 300.0 * i for i in range(len(times))]
    first = [m["value"] for m in readings if m["key"] == "energy_000"]
    assert first[100] == first[0]  # the second cycle repeats the first
    assert stream.steps_started == 103 and len(stream.injected()) == 2  # one spike per key
    injected = stream.injected(upto_step=200)
    assert [a.start_step >= 100 for a in injected] == [False, False, True, True]
    assert injected[2].start_step == injected[0].start_step + 100


def test_csv_messages_loop_moves_time_on():
    from streamrnn.offline.data import Series

    s = Series("k", "k.csv", ["", ""], np.array([0.0, 60.0]), np.array([[1.0], [2.0]]), ("value",))
    msgs = [orjson.loads(v) for _, v in itertools.islice(csv_messages([s], loop=True), 5)]
    assert [iso(m["ts"]) for m in msgs] == [0.0, 60.0, 120.0, 180.0, 240.0]
    assert [m["value"] for m in msgs] == [1.0, 2.0, 1.0, 2.0, 1.0]


def test_demo_model_is_shipped_and_loads():
    from streamrnn.detector.modeldir import load_model

    d = demo_model.path()
    files = {p.name for p in d.iterdir()}
    assert {"weights.pt", "config.yaml", "model.json", "normalization.json"} <= files
    size = sum(p.stat().st_size for p in d.iterdir() if p.suffix in (".pt", ".json", ".yaml"))
    assert size < 200_000
    loaded = load_model(d)
    assert loaded.feature_names == ("value",)
    assert loaded.config.model.hidden_size == 32
    info = json.loads((d / "model.json").read_text())
    assert loaded.version == info["version"]


def test_produce_rejects_bad_flags(capsys: pytest.CaptureFixture[str]):
    assert main(["produce", "--synthetic", "energy", "--rate", "-1"]) == 2
    assert "--rate" in capsys.readouterr().err
    assert main(["produce", "--synthetic", "energy", "--anomalies", "spike,nope"]) == 2
    assert "--anomalies" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Against the embedded broker


@pytest.mark.kafka
def test_produce_synthetic(
    kafka_broker: Any, topic_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    labels = tmp_path / "labels.json"
    argv = [
        "produce",
        "--bootstrap-servers",
        kafka_broker.bootstrap_servers,
        "--topic",
        topic_name,
        "--synthetic",
        "mixed",
        "--keys",
        "4",
        "--steps",
        "200",
        "--rate",
        "0",
        "--partitions",
        "2",
        "--seed",
        "3",
        "--labels",
        str(labels),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"sent 800 message\(s\) .* 800 acknowledged, 0 failed", out), out
    assert "anomalies injected" in out

    records = read_all(kafka_broker.bootstrap_servers, topic_name, 800)
    assert len(records) == 800
    assert {r.partition for r in records} <= {0, 1}
    by_key: dict[str, list[float]] = {}
    for r in records:
        msg = orjson.loads(r.value)
        assert set(msg) == {"key", "ts", "value"}
        assert r.key == msg["key"].encode()
        assert isinstance(msg["value"], float)
        by_key.setdefault(msg["key"], []).append(iso(msg["ts"]))
    assert sorted(by_key) == ["energy_000", "energy_001", "sensor_000", "sensor_001"]
    start = iso("2024-01-01T00:00:00Z")
    for times in by_key.values():  # one key stays on one partition, in time order
        assert times == [start + 300.0 * i for i in range(200)]

    doc = json.loads(labels.read_text())
    assert doc["topic"] == topic_name and doc["interval_s"] == 300.0
    assert doc["anomalies"], "no anomaly injected"
    for a in doc["anomalies"]:
        assert a["key"] in by_key
        assert a["kind"] in ("spike", "level_shift", "stuck", "drift")
        assert 0 <= a["start_step"] < a["end_step"] <= 200
        assert iso(a["start"]) == start + 300.0 * a["start_step"]
    assert set(doc["windows"]) <= set(by_key)


@pytest.mark.kafka
def test_produce_csv_replay(
    kafka_broker: Any, topic_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    data = tmp_path / "csv"
    data.mkdir()
    (data / "a.csv").write_text(
        "timestamp,value\n2024-03-01 00:00:00,1.5\n2024-03-01 00:10:00,\n2024-03-01 00:20:00,3\n"
    )
    (data / "b.csv").write_text("timestamp,value\n2024-03-01 00:05:00,10\n2024-03-01 00:15:00,20\n")
    bs = kafka_broker.bootstrap_servers
    argv = ["produce", "--bootstrap-servers", bs, "--topic", topic_name, "--csv", str(data)]
    assert main([*argv, "--rate", "0", "--partitions", "1"]) == 0
    assert "sent 5 message(s)" in capsys.readouterr().out
    msgs = [orjson.loads(r.value) for r in read_all(bs, topic_name, 5)]
    assert [(m["key"], m["value"]) for m in msgs] == [
        ("a", 1.5),
        ("b", 10.0),
        ("a", None),  # a missing cell is a missing value
        ("b", 20.0),
        ("a", 3.0),
    ]
    assert msgs[0]["ts"] == "2024-03-01T00:00:00Z" and msgs[-1]["ts"] == "2024-03-01T00:20:00Z"

    # Long format, several value columns, moved in time.
    long_csv = tmp_path / "long.csv"
    long_csv.write_text(
        "timestamp,meter,kw,volts\n"
        "2024-03-01 00:00:00,m1,1.0,230\n"
        "2024-03-01 00:00:00,m2,2.0,231\n"
        "2024-03-01 01:00:00,m1,1.5,229\n"
    )
    topic2 = f"{topic_name}-long"
    argv2 = ["produce", "--bootstrap-servers", bs, "--topic", topic2, "--csv", str(long_csv)]
    argv2 += ["--key-column", "meter", "--start", "2025-01-01T00:00:00Z", "--partitions", "1"]
    assert main([*argv2, "--rate", "0"]) == 0
    msgs = [orjson.loads(r.value) for r in read_all(bs, topic2, 3)]
    assert msgs == [
        {"key": "m1", "ts": "2025-01-01T00:00:00Z", "values": {"kw": 1.0, "volts": 230.0}},
        {"key": "m2", "ts": "2025-01-01T00:00:00Z", "values": {"kw": 2.0, "volts": 231.0}},
        {"key": "m1", "ts": "2025-01-01T01:00:00Z", "values": {"kw": 1.5, "volts": 229.0}},
    ]


@pytest.mark.kafka
def test_produce_events_respects_the_rate(kafka_broker: Any, topic_name: str):
    from streamrnn.tools.broker import create_topics

    create_topics(kafka_broker.bootstrap_servers, {topic_name: 1})
    n, rate = 150, 100.0
    messages = [(b"k", orjson.dumps({"key": "k", "ts": float(i), "value": i})) for i in range(n)]
    producer = make_producer(kafka_broker.bootstrap_servers)
    try:
        t0 = time.monotonic()
        acked = produce_events(producer, topic_name, iter(messages), rate)
        elapsed = time.monotonic() - t0
    finally:
        producer.close(timeout=5)
    assert acked == n
    # Only a lower bound: the bucket never lets the rate be exceeded (beyond one token).
    assert elapsed >= (n / rate) * 0.8, elapsed
    assert len(read_all(kafka_broker.bootstrap_servers, topic_name, n)) == n


@pytest.mark.kafka
@pytest.mark.slow
def test_demo_runs(capsys: pytest.CaptureFixture[str]):
    t0 = time.monotonic()
    rc = main(["demo", "--seconds", "20", "--keys", "20", "--rate", "400", "--metrics-port", "0"])
    elapsed = time.monotonic() - t0
    out = capsys.readouterr().out
    assert rc == 0, out
    assert elapsed < 45, elapsed
    version = json.loads((demo_model.path() / "model.json").read_text())["version"]
    assert f"model: {version} (the demo model shipped in the package" in out
    assert re.search(r"metrics: http://127\.0\.0\.1:\d+/metrics", out)
    assert "[status" in out
    assert "ALERT" in out
    processed = int(re.search(r"events processed\s+(\d+)", out).group(1))
    assert processed > 0
    assert re.search(r"dead letters\s+[1-9]", out), out  # the malformed messages
    assert "summary" in out and "recall" in out and "precision" in out
    assert "the detector stopped with exit status 0" in out
