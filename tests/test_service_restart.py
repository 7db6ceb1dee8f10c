"""Restarts, rebalances and shutdown of the detector against the embedded broker: a ``kill -9``
mid-stream and a partition taken over by another instance change no score; SIGTERM exits 0
with offsets committed and checkpoints written; bad configuration exits 2 naming the key."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from servicetools import (
    ThreadedDetector,
    TopicReader,
    committed,
    event_json,
    make_events,
    model_dir,
    produce,
    reference,
    scores_by_source,
    service_config,
    spawn,
    wait_for,
    write_config,
)

from streamrnn.cli import main
from streamrnn.service.checkpoint import (
    CheckpointStore,
    LocalCheckpoints,
    encode,
)
from streamrnn.service.state_topic import KafkaCheckpoints
from streamrnn.tools.broker import EmbeddedBroker, create_topics


@pytest.fixture(scope="module")
def model() -> Path:
    return model_dir()


def _log_tail(path: Path, lines: int = 40) -> str:
    return (
        "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
    )


def _check_against(ref: dict, got: dict, sources: list[tuple[str, int, int]]) -> int:
    """Every source scored, every copy equal to the uninterrupted run; returns the duplicates."""
    missing = [s for s in sources if s not in got]
    assert not missing, f"{len(missing)} event(s) never scored, e.g. {missing[:3]}"
    dup = 0
    for s in sources:
        want = ref[s][0]
        for m in got[s]:
            assert m["score"] == pytest.approx(want["score"], abs=1e-6), s
            assert m["flag"] == want["flag"], s
            if want["expected"] is None:
                assert m["expected"] is None, s
            else:
                assert m["expected"] == pytest.approx(want["expected"], rel=1e-5, abs=1e-6), s
        dup += len(got[s]) - 1
    return dup


@pytest.mark.kafka
def test_kill9_restart_then_sigterm(
    kafka_broker: EmbeddedBroker, topic_name: str, tmp_path: Path, model: Path
) -> None:
    bs = kafka_broker.bootstrap_servers
    ref_topic, scores_topic = f"{topic_name}.ref", f"{topic_name}.scores"
    create_topics(bs, {topic_name: 2, ref_topic: 1, scores_topic: 1})
    events = make_events(4, 500, seed=21)
    n = len(events)
    parts = produce(bs, topic_name, [(e.key.encode(), event_json(e)) for e in events])
    sources = [(topic_name, p, o) for p, o in parts]

    # 1. The uninterrupted run (in a thread): the reference scores.
    ref_raw = service_config(
        bs, topic_name, f"ref-{topic_name}", model, tmp_path / "ref-state", scores_topic=ref_topic
    )
    det = ThreadedDetector(ref_raw)
    try:
        wait_for(
            lambda: det.value("streamrnn_events_total", {"outcome": "processed"}) == n,
            60,
            "reference run",
        )
    finally:
        assert det.stop() == 0
    reader = TopicReader(bs, ref_topic)
    ref = scores_by_source(reader.read_until(lambda r: len(r) >= n, 20, "reference scores"))
    reader.close()
    assert all(len(ref[s]) == 1 for s in sources), "no duplicates without a restart"
    eng_score, eng_pred, eng_flag = reference(ref_raw, events)
    np.testing.assert_allclose([ref[s][0]["score"] for s in sources], eng_score, atol=1e-6, rtol=0)
    assert [ref[s][0]["flag"] for s in sources] == eng_flag.tolist()

    # 2. A subprocess killed with SIGKILL mid-stream, then started again with the same group.
    group, state = f"kill-{topic_name}", tmp_path / "state"
    raw = service_config(
        bs,
        topic_name,
        group,
        model,
        state,
        scores_topic=scores_topic,
        max_poll_records=10,
        checkpoint_interval_s=0.2,
    )
    cfg = write_config(tmp_path / "service.yaml", raw)
    log1, log2 = tmp_path / "run1.log", tmp_path / "run2.log"
    reader = TopicReader(bs, scores_topic)
    p1 = spawn(["run", "--config", str(cfg)], log1)
    try:
        reader.read_until(
            lambda r: len(r) >= n // 4, 90, f"a quarter of the scores\n{_log_tail(log1)}"
        )
        os.kill(p1.pid, signal.SIGKILL)
        assert p1.wait(10) == -signal.SIGKILL
    finally:
        if p1.poll() is None:
            p1.kill()
    t_end = time.monotonic() + 1.0
    while time.monotonic() < t_end:
        reader.poll()
    scored_before = len(scores_by_source(reader.records))
    assert 0 < scored_before < n, f"killed after {scored_before} of {n} events were scored"
    assert list((state / group).glob("*.ckpt")), "checkpoints were written before the kill"

    p2 = spawn(["run", "--config", str(cfg)], log2)
    try:
        t0 = time.monotonic()
        reader.read_until(
            lambda r: len(scores_by_source(r)) >= n,
            90,
            f"every event scored after the restart\n{_log_tail(log2)}",
        )
        t_resume = time.monotonic() - t0
        time.sleep(0.5)  # the last batch's commit follows its acknowledgement
        # 3. SIGTERM: a clean exit with offsets committed and checkpoints written.
        p2.send_signal(signal.SIGTERM)
        rc = p2.wait(30)
    finally:
        if p2.poll() is None:
            p2.kill()
    assert rc == 0, _log_tail(log2)
    reader.poll(500)
    reader.close()
    got = scores_by_source(reader.records)
    dup = _check_against(ref, got, sources)
    print(
        f"\nkilled after {scored_before}/{n} scored; {dup} re-published after the restart; "
        f"all scored {t_resume:.1f} s after the restart"
    )

    ends = {p: max(o for q, o in parts if q == p) + 1 for p in (0, 1)}
    assert committed(bs, group, topic_name, (0, 1)) == ends
    local = LocalCheckpoints(state, group)
    for p in (0, 1):
        ck = local.load(topic_name, p)
        assert ck is not None and ck.offset == ends[p]
    text = log2.read_text()
    assert "restored" in text and "stopped in" in text


@pytest.mark.kafka
def test_rebalance_takeover_restores_state(
    kafka_broker: EmbeddedBroker,
    topic_name: str,
    tmp_path: Path,
    model: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two instances on "two hosts" (separate state dirs, one state topic); B stops, A takes its
    partitions with the state B checkpointed to the state topic."""
    caplog.set_level(logging.INFO, logger="streamrnn.service")
    bs = kafka_broker.bootstrap_servers
    scores_topic = f"{topic_name}.scores"
    create_topics(bs, {topic_name: 4, scores_topic: 1})
    events = make_events(8, 240, seed=31)
    half = 8 * 120

    def config(host: str) -> dict:
        return service_config(
            bs,
            topic_name,
            f"g-{topic_name}",
            model,
            tmp_path / host,
            scores_topic=scores_topic,
            state_topic=f"{topic_name}.state",
            checkpoint_interval_s=60.0,
        )

    eng_score, eng_pred, eng_flag = reference(config("a"), events)

    a = ThreadedDetector(config("a"))
    b = None
    try:
        wait_for(lambda: a.value("streamrnn_assigned_partitions") == 4, 30, "A assigned")
        b = ThreadedDetector(config("b"))
        wait_for(
            lambda: (
                a.value("streamrnn_assigned_partitions") == 2
                and b.value("streamrnn_assigned_partitions") == 2
                and a.value("streamrnn_ready") == 1
                and b.value("streamrnn_ready") == 1
            ),
            40,
            "A and B two partitions each",
        )
        first = produce(bs, topic_name, [(e.key.encode(), event_json(e)) for e in events[:half]])

        def processed(d: ThreadedDetector) -> float:
            return d.value("streamrnn_events_total", {"outcome": "processed"})

        wait_for(lambda: processed(a) + processed(b) == half, 60, "the first half scored")
        assert processed(a) > 0 and processed(b) > 0
        assert b.stop() == 0  # B checkpoints its partitions and leaves the group
        seen = len(caplog.records)
        wait_for(
            lambda: (
                a.value("streamrnn_assigned_partitions") == 4 and a.value("streamrnn_ready") == 1
            ),
            40,
            "A takes over B's partitions",
        )
        from_b = [
            m
            for m in (r.getMessage() for r in caplog.records[seen:])
            if "from the kafka checkpoint at offset" in m and "at offset 0 " not in m
        ]
        assert len(from_b) == 2, f"A restored B's two partitions from the state topic: {from_b}"
        second = produce(bs, topic_name, [(e.key.encode(), event_json(e)) for e in events[half:]])
        reader = TopicReader(bs, scores_topic)
        recs = reader.read_until(
            lambda r: len(scores_by_source(r)) >= len(events), 60, "every score"
        )
        reader.close()
    finally:
        rc_a = a.stop()
        if b is not None and b.thread.is_alive():
            b.stop()
    assert rc_a == 0
    got = scores_by_source(recs)
    sources = [(topic_name, p, o) for p, o in first + second]
    for i, s in enumerate(sources):
        for m in got[s]:
            assert m["score"] == pytest.approx(float(eng_score[i]), abs=1e-6), (i, s)
            assert m["flag"] == bool(eng_flag[i]), (i, s)
            want = float(eng_pred[i])
            if np.isnan(want):
                assert m["expected"] is None
            else:
                assert m["expected"] == pytest.approx(want, rel=1e-5, abs=1e-6), (i, s)


@pytest.mark.kafka
def test_state_topic_keeps_the_latest_checkpoint(
    kafka_broker: EmbeddedBroker, topic_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kafka import KafkaProducer

    from streamrnn.service import state_topic

    monkeypatch.setattr(state_topic, "CHUNK_BYTES", 1000)  # several chunks per checkpoint
    bs = kafka_broker.bootstrap_servers
    state_topic = f"{topic_name}.state"
    producer = KafkaProducer(bootstrap_servers=bs, acks="all")
    try:
        store = KafkaCheckpoints([bs], state_topic, "g", producer)
        store.ensure_topic()
        store.ensure_topic()  # idempotent
        blob = os.urandom(3500)
        store.save_many(
            [("t", 0, encode("g", "t", 0, 10, blob)), ("t", 1, encode("g", "t", 1, 3, b"x"))]
        )
        store.save_many([("t", 0, encode("g", "t", 0, 20, blob[::-1]))])
        other = KafkaCheckpoints([bs], state_topic, "other-group", producer)
        other.save_many([("t", 0, encode("other-group", "t", 0, 99, b"y"))])

        reader = KafkaCheckpoints([bs], state_topic, "g", producer)
        found = reader.load_many([("t", 0), ("t", 1), ("t", 2)])
        assert sorted(found) == [("t", 0), ("t", 1)]
        assert found[("t", 0)].offset == 20 and found[("t", 0)].data == blob[::-1]
        assert found[("t", 1)].offset == 3 and found[("t", 0)].origin == "kafka"

        # With the local store: the copy with the higher offset wins.
        local = LocalCheckpoints(tmp_path, "g")
        local.save("t", 0, encode("g", "t", 0, 15, b"older"))
        local.save("t", 1, encode("g", "t", 1, 7, b"newer"))
        both = CheckpointStore(local, reader).load_many([("t", 0), ("t", 1)])
        assert (both[("t", 0)].origin, both[("t", 0)].offset) == ("kafka", 20)
        assert (both[("t", 1)].origin, both[("t", 1)].data) == ("local", b"newer")
    finally:
        producer.close(timeout=5)


# -- bad configuration -------------------------------------------------------------------------


def test_bad_config_exits_2_naming_the_key(
    tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["run", "--bootstrap-servers", "127.0.0.1:1", "--state-dir", str(tmp_path / "s")]
    cases = [
        (
            base + ["--model", str(model)],
            "service.topics: one of service.topics or service.topic_pattern is required",
        ),
        (
            base + ["--topic", "t"],
            "service.model: a model directory written by `streamrnn train` is required",
        ),
        (
            base + ["--topic", "t", "--model", str(tmp_path)],
            "service.model: must be a model directory",
        ),
        (
            base + ["--topic", "t", "--model", str(model), "--metrics-port", "70000"],
            "service.metrics_port: must be a port in [0, 65535], got 70000",
        ),
        (
            base + ["--topic", "t", "--model", str(model), "--alerts-topic", "t"],
            "service.alerts_topic: must not be a source topic",
        ),
        (
            base + ["--topic", "t", "--model", str(model), "--device", "tpu"],
            "state.device: must be auto, cpu",
        ),
        (
            base + ["--topic-pattern", "(", "--model", str(model)],
            "service.topic_pattern: must be a regular expression",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (argv, err)

    # A port already taken: found when the endpoint starts, before any Kafka connection.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        argv = base + ["--topic", "t", "--model", str(model), "--metrics-port", str(port)]
        cfg = write_config(tmp_path / "c.yaml", {"service": {"metrics_host": "127.0.0.1"}})
        assert main([*argv, "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert (
        "error: service.metrics_port: must be free to listen on 127.0.0.1" in err
        and str(port) in err
    )


def test_bad_config_subprocess_exit_status(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    p = spawn(["run", "--bootstrap-servers", "127.0.0.1:1", "--model", str(tmp_path / "none")], log)
    assert p.wait(60) == 2
    assert "error: service.topics:" in log.read_text()
