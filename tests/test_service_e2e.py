"""The detector end to end against the embedded broker: alerts, dead letters, metrics, health
endpoints, committed offsets and model reloads."""

from __future__ import annotations

import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest
import torch
from servicetools import (
    ThreadedDetector,
    TopicReader,
    committed,
    event_json,
    make_events,
    model_dir,
    produce,
    reference,
    service_config,
    wait_for,
)

from streamrnn.service import app
from streamrnn.service.checkpoint import LocalCheckpoints
from streamrnn.service.engine_process import ProcessEngine
from streamrnn.tools.broker import EmbeddedBroker, create_topics

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def model() -> Path:
    return model_dir()


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


MALFORMED = [
    (b"not json {", "not_json"),
    (orjson.dumps({"key": "bad", "ts": 1_700_000_000}), "missing_value"),
    (orjson.dumps({"key": "bad", "ts": "yesterday", "value": 1.0}), "bad_timestamp"),
    (orjson.dumps({"key": "bad", "ts": 1_700_000_000, "value": "twelve"}), "non_numeric_value"),
    (orjson.dumps({"key": "bad", "ts": 1_700_000_000, "values": [1.0, 2.0]}), "wrong_shape"),
]


@pytest.mark.parametrize("engine_process", [True, False], ids=["engine-process", "inline"])
def test_end_to_end(
    kafka_broker: EmbeddedBroker,
    topic_name: str,
    tmp_path: Path,
    model: Path,
    monkeypatch: pytest.MonkeyPatch,
    engine_process: bool,
) -> None:
    monkeypatch.setattr(app, "LAG_INTERVAL_S", 0.3)
    bs = kafka_broker.bootstrap_servers
    create_topics(bs, {topic_name: 2})
    events = make_events(3, 200, seed=11, spikes=[(0, 150)])
    spike = 150 * 3  # index of key 0's step 150 in the interleaved events
    k0, k1, k2 = events[0].key, events[1].key, events[2].key
    last_ts = events[-1].ts
    extra_good = [  # a missing value (imputed) and a late event (dropped by the policy below)
        (k2.encode(), orjson.dumps({"key": k2, "ts": last_ts + 300, "value": None})),
        (k1.encode(), orjson.dumps({"key": k1, "ts": events[1].ts, "value": 1.0})),
    ]
    messages = [(e.key.encode(), event_json(e)) for e in events] + extra_good
    messages += [(b"bad", raw) for raw, _ in MALFORMED]
    sources = produce(bs, topic_name, messages)
    n_good = len(events) + 1  # the late one is rejected
    n_bad = len(MALFORMED) + 1

    model_copy = tmp_path / "model"
    shutil.copytree(model, model_copy)
    raw = service_config(
        bs, topic_name, f"g-{topic_name}", model_copy, tmp_path / "state", model_poll_interval_s=0.2
    )
    raw["input"] = {"late_events": "drop"}
    raw["service"]["engine_process"] = engine_process
    ref_score, _, ref_flag = reference(raw, events)
    assert ref_flag[spike], "the spike is flagged by an uninterrupted engine run"

    det = ThreadedDetector(raw)
    try:
        wait_for(
            lambda: (
                det.value("streamrnn_events_total", {"outcome": "processed"}) == n_good
                and det.value("streamrnn_events_total", {"outcome": "rejected"}) == n_bad
            ),
            60,
            "every event processed or rejected",
        )
        # Alerts: one for the spike, scored as the uninterrupted run scores it.
        alerts = TopicReader(bs, f"{topic_name}.alerts")
        n_alerts = int(ref_flag.sum())
        recs = alerts.read_until(lambda r: len(r) >= n_alerts, 20, "alerts")
        alerts.close()
        by_source = {
            (m["source"]["partition"], m["source"]["offset"]): m
            for m in (orjson.loads(r.value) for r in recs)
        }
        spike_alert = by_source[sources[spike]]
        assert spike_alert["key"] == k0 and spike_alert["value"] == pytest.approx(
            events[spike].value
        )
        assert spike_alert["score"] == pytest.approx(float(ref_score[spike]), abs=1e-6)
        assert (
            spike_alert["threshold"] == det.detector.config.scoring.threshold
            and spike_alert["model"] == det.detector.model_version
        )
        assert set(spike_alert) == {
            "key",
            "ts",
            "value",
            "expected",
            "score",
            "threshold",
            "model",
            "source",
            "scale",
        }
        assert len(recs) == n_alerts and all(
            r.key == orjson.loads(r.value)["key"].encode() for r in recs
        )

        # Dead letters: every malformed record with its reason, original key and bytes, source.
        dlq = TopicReader(bs, f"{topic_name}.dlq")
        dead = dlq.read_until(lambda r: len(r) >= n_bad, 20, "dead letters")
        dlq.close()
        assert len(dead) == n_bad
        got = {}
        for r in dead:
            h = dict(r.headers)
            assert r.key in (b"bad", k1.encode())
            assert h["streamrnn.source.topic"] == topic_name.encode() and h["streamrnn.detail"]
            src = (int(h["streamrnn.source.partition"]), int(h["streamrnn.source.offset"]))
            assert messages[sources.index(src)][1] == r.value, "original bytes"
            got[r.value] = h["streamrnn.reason"].decode()
        expected = {raw_: reason for raw_, reason in MALFORMED} | {extra_good[1][1]: "late_event"}
        assert got == expected

        # Metrics agree with what was published.
        v = det.value
        for _, reason in MALFORMED:
            assert v("streamrnn_rejected_total", {"reason": reason}) == 1, reason
        assert v("streamrnn_rejected_total", {"reason": "late_event"}) == 1
        assert v("streamrnn_rejected_total", {"reason": "non_finite_value"}) == 0
        assert v("streamrnn_anomalies_total", {"topic": topic_name}) == n_alerts
        assert v("streamrnn_alerts_published_total") == n_alerts
        assert v("streamrnn_imputed_values_total") == 1
        assert v("streamrnn_anomaly_score_count") == n_good
        assert v("streamrnn_event_lag_seconds_count") == n_good
        assert v("streamrnn_batch_duration_seconds_count") >= 1
        assert v("streamrnn_active_keys") == 3 and v("streamrnn_state_bytes") > 0
        assert v("streamrnn_assigned_partitions") == 2 and v("streamrnn_ready") == 1
        assert v("streamrnn_evicted_keys_total") == 0
        assert v("streamrnn_checkpoints_total", {"outcome": "ok"}) >= 1
        assert v("streamrnn_checkpoints_total", {"outcome": "error"}) == 0
        version = det.detector.model_version
        assert (
            v(
                "streamrnn_model_info",
                {"version": version, "cell": "lstm", "hidden": "16", "device": "cpu"},
            )
            == 1
        )
        wait_for(
            lambda: all(
                v("streamrnn_consumer_lag", {"topic": topic_name, "partition": str(p)}) == 0
                and det.registry.get_sample_value(
                    "streamrnn_consumer_lag", {"topic": topic_name, "partition": str(p)}
                )
                is not None
                for p in (0, 1)
            ),
            10,
            "consumer lag 0",
        )

        # Health endpoints.
        port = det.detector.metrics_port
        assert port
        assert _get(port, "/healthz") == (200, "ok\n")
        assert _get(port, "/readyz") == (200, "ok\n")
        status, body = _get(port, "/metrics")
        assert status == 200 and f'streamrnn_events_total{{outcome="processed"}} {n_good}.0' in body

        # Model reload: a compatible model is swapped in, an incompatible one refused.
        _resave(model_copy, seed=99)
        wait_for(lambda: v("streamrnn_model_reloads_total", {"outcome": "ok"}) == 1, 15, "a reload")
        new_version = det.detector.model_version
        assert new_version != version
        assert (
            v(
                "streamrnn_model_info",
                {"version": new_version, "cell": "lstm", "hidden": "16", "device": "cpu"},
            )
            == 1
        )
        assert (
            det.registry.get_sample_value(
                "streamrnn_model_info",
                {"version": version, "cell": "lstm", "hidden": "16", "device": "cpu"},
            )
            is None
        )
        _resave(model_copy, seed=7, hidden=8)
        wait_for(
            lambda: v("streamrnn_model_reloads_total", {"outcome": "refused"}) == 1, 15, "a refusal"
        )
        assert det.detector.model_version == new_version
        assert v("streamrnn_active_keys") == 3, "state kept across reloads"
    finally:
        rc = det.stop()
    assert rc == 0

    # Committed offsets are at the end of each partition; checkpoints hold the same offsets.
    ends = {p: max(o for q, o in sources if q == p) + 1 for p in (0, 1)}
    assert committed(bs, f"g-{topic_name}", topic_name, (0, 1)) == ends
    local = LocalCheckpoints(tmp_path / "state", f"g-{topic_name}")
    for p in (0, 1):
        ck = local.load(topic_name, p)
        assert ck is not None and ck.offset == ends[p]


def _resave(model_path: Path, *, seed: int, hidden: int | None = None) -> None:
    """Write another model into the directory: same weights and a new seed (compatible), or
    an untrained one of another hidden size (incompatible with the live state)."""
    import dataclasses

    from streamrnn.detector.model import Forecaster
    from streamrnn.detector.modeldir import load_model, save_model

    time.sleep(0.05)  # a distinct mtime for model.json
    loaded = load_model(model_path)
    cfg = dataclasses.replace(
        loaded.config, training=dataclasses.replace(loaded.config.training, seed=seed)
    )
    m = loaded.model
    if hidden is not None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, hidden_size=hidden))
        torch.manual_seed(seed)
        m = Forecaster(cfg.model, n_values=1, n_extra=m.input_size - 1)
    save_model(model_path, m, cfg, feature_names=loaded.feature_names, metrics={}, data_summary={})


def test_a_dead_engine_process_stops_the_detector_without_committing(
    kafka_broker: EmbeddedBroker,
    topic_name: str,
    tmp_path: Path,
    model: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The engine process killed under a running detector: the detector exits 1 and says why;
    the batch in hand is neither committed nor checkpointed (the next start processes it again)."""
    import os
    import signal

    bs = kafka_broker.bootstrap_servers
    create_topics(bs, {topic_name: 1})
    events = make_events(2, 40, seed=3)
    first = [(e.key.encode(), event_json(e)) for e in events[:40]]
    produce(bs, topic_name, first)
    group = f"g-{topic_name}"
    det = ThreadedDetector(service_config(bs, topic_name, group, model, tmp_path / "state"))
    try:
        wait_for(
            lambda: det.value("streamrnn_events_total", {"outcome": "processed"}) == 40,
            60,
            "the first events scored",
        )
        engine = det.detector.engine
        assert isinstance(engine, ProcessEngine) and engine.pid is not None
        os.kill(engine.pid, signal.SIGKILL)
        produce(bs, topic_name, [(e.key.encode(), event_json(e)) for e in events[40:]])
        det.thread.join(60)
        assert not det.thread.is_alive() and det.rc == 1
    finally:
        if det.thread.is_alive():
            det.stop()
    assert any("engine process" in r.getMessage() for r in caplog.records)
    assert det.value("streamrnn_events_total", {"outcome": "processed"}) == 40
    assert committed(bs, group, topic_name, (0,)) == {0: 40}


def test_the_engine_process_exits_with_the_detector(
    kafka_broker: EmbeddedBroker, topic_name: str, tmp_path: Path, model: Path
) -> None:
    bs = kafka_broker.bootstrap_servers
    create_topics(bs, {topic_name: 1})
    det = ThreadedDetector(
        service_config(bs, topic_name, f"g-{topic_name}", model, tmp_path / "state")
    )
    wait_for(lambda: det.value("streamrnn_ready") == 1, 60, "ready")
    engine = det.detector.engine
    assert isinstance(engine, ProcessEngine)
    assert det.stop() == 0
    assert engine._proc.exitcode == 0
