"""Helpers for the service tests: a tiny trained model, events, producing, reading topics,
running the detector in a thread or as a subprocess, and reference scores from the engine.

The model is trained once per session (hidden 16, one layer, a few epochs on synthetic sensor
streams) and shared by every service test module through :func:`model_dir`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml

from streamrnn.service.clients import Connection, as_connection

ROOT = Path(__file__).resolve().parent.parent
FAST_GROUP = {  # tansu completes a group's first join after the rebalance timeout: keep it short
    "max_poll_interval_ms": 6000,
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
}

_MODEL: dict[str, Path] = {}
_LOCK = threading.Lock()


def model_dir() -> Path:
    """A tiny LSTM forecaster trained on synthetic sensor streams, once per session."""
    with _LOCK:
        if "dir" not in _MODEL:
            _MODEL["dir"] = _train(Path(tempfile.mkdtemp(prefix="streamrnn-model-")) / "model")
        return _MODEL["dir"]


def _train(out: Path) -> Path:
    from streamrnn.config import load_config
    from streamrnn.detector.modeldir import save_model
    from streamrnn.offline.data import Series
    from streamrnn.offline.training import train
    from streamrnn.tools import synth

    cfg = load_config(
        {
            "model": {"hidden_size": 16, "num_layers": 1, "dropout": 0.0},
            "features": {"normalizer_warmup": 16},
            "training": {
                "epochs": 3,
                "window": 32,
                "stride": 32,
                "batch_size": 8,
                "learning_rate": 0.01,
                "seed": 1,
            },
        }
    )
    streams = synth.generate("sensor", 4, 600, interval_s=300, seed=5, anomalies=())
    series = [
        Series(
            key=s.key,
            relpath=f"{s.key}.csv",
            timestamps=[str(t) for t in s.epoch_seconds],
            times=s.epoch_seconds,
            values=s.values.astype(np.float32)[:, None],
            feature_names=("value",),
        )
        for s in streams
    ]
    r = train(series, cfg, device="cpu", progress=False)
    save_model(
        out,
        r.model,
        r.config,
        feature_names=r.feature_names,
        metrics=r.metrics,
        data_summary=r.data_summary,
    )
    return out


@dataclass
class Event:
    key: str
    ts: float
    value: float


def make_events(
    n_keys: int, n_steps: int, *, seed: int, spikes: Sequence[tuple[int, int]] = ()
) -> list[Event]:
    """Events of ``n_keys`` synthetic keys, interleaved step by step (time order).

    ``spikes`` are ``(key index, step)`` pairs where a large spike (40 key scales) is added.
    """
    from streamrnn.tools import synth

    streams = synth.generate(
        "sensor", n_keys, n_steps, interval_s=300, seed=seed, anomalies=(), key_prefix=f"k{seed}"
    )
    bumps = set(spikes)
    out = []
    for i in range(n_steps):
        for k, s in enumerate(streams):
            v = float(s.values[i]) + (40.0 * s.scale if (k, i) in bumps else 0.0)
            out.append(Event(s.key, float(s.epoch_seconds[i]), v))
    return out


def event_json(e: Event) -> bytes:
    return orjson.dumps({"key": e.key, "ts": e.ts, "value": e.value})


def produce(
    bootstrap: str | Connection, topic: str, messages: Iterable[tuple[bytes | None, bytes]]
) -> list[tuple[int, int]]:
    """Send ``(key, value)`` messages in order; returns each one's ``(partition, offset)``.

    ``bootstrap`` is an address, or a :class:`Connection` to a secured cluster (as are the
    other helpers' here)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        **as_connection(bootstrap).options("producer", acks="all", linger_ms=2)
    )
    try:
        futures = [producer.send(topic, key=k, value=v) for k, v in messages]
        producer.flush(timeout=30)
        metas = [f.get(timeout=30) for f in futures]
    finally:
        producer.close(timeout=5)
    return [(m.partition, m.offset) for m in metas]


class TopicReader:
    """Reads a topic from the beginning, accumulating records across :meth:`poll` calls."""

    def __init__(self, bootstrap: str | Connection, topic: str) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(
            **as_connection(bootstrap).options(
                "consumer", enable_auto_commit=False, fetch_max_wait_ms=50
            )
        )
        self.topic = topic
        parts: set[int] = set()
        deadline = time.monotonic() + 15
        while not parts and time.monotonic() < deadline:
            parts = self.consumer.partitions_for_topic(topic) or set()
            if not parts:
                time.sleep(0.1)
        assert parts, f"topic {topic} not found"
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.records: list[Any] = []

    def poll(self, timeout_ms: int = 100) -> list[Any]:
        new = []
        for recs in self.consumer.poll(timeout_ms=timeout_ms).values():
            new.extend(recs)
        self.records.extend(new)
        return new

    def read_until(self, cond: Callable[[list[Any]], bool], timeout: float, what: str) -> list[Any]:
        deadline = time.monotonic() + timeout
        while not cond(self.records):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:g} s waiting for {what}; "
                    f"{len(self.records)} record(s) in {self.topic}"
                )
            self.poll()
        return self.records

    def close(self) -> None:
        self.consumer.close(autocommit=False)


def scores_by_source(records: Iterable[Any]) -> dict[tuple[str, int, int], list[dict[str, Any]]]:
    """Score (or alert) messages grouped by their ``source`` (a restart may publish twice)."""
    out: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for r in records:
        m = orjson.loads(r.value)
        s = m["source"]
        out.setdefault((s["topic"], s["partition"], s["offset"]), []).append(m)
    return out


def service_config(
    bootstrap: str, topic: str, group: str, model: Path, state_dir: Path, **service: Any
) -> dict[str, Any]:
    """A raw config for the detector on the test broker (fast group timings, port 0, CPU)."""
    svc = {
        "bootstrap_servers": [bootstrap],
        "topics": [topic],
        "group": group,
        "model": str(model),
        "state_dir": str(state_dir),
        "alerts_topic": f"{topic}.alerts",
        "dlq_topic": f"{topic}.dlq",
        "metrics_host": "127.0.0.1",
        "metrics_port": 0,
        "poll_timeout_ms": 100,
        "model_poll_interval_s": 0.0,
        "retry_backoff_max_s": 1.0,
        **FAST_GROUP,
        **service,
    }
    return {"scoring": {"warmup": 30}, "state": {"device": "cpu"}, "service": svc}


class ThreadedDetector:
    """A Detector running in a thread; ``stop()`` waits for its exit status."""

    def __init__(self, raw_config: dict[str, Any]) -> None:
        from streamrnn.config import load_config
        from streamrnn.service.app import Detector

        self.detector = Detector(load_config(raw_config))
        self.registry = self.detector.registry
        self.rc: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="detector")
        self.thread.start()

    def _run(self) -> None:
        self.rc = self.detector.run()

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0

    def stop(self, timeout: float = 30) -> int | None:
        self.detector.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "detector did not stop in time"
        return self.rc


def wait_for(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def spawn(args: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    """``python -m streamrnn ARGS`` with the repository on the path; output to ``log_path``."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "streamrnn", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
        )


def committed(
    bootstrap: str | Connection, group: str, topic: str, partitions: Iterable[int]
) -> dict[int, int | None]:
    """The group's committed offsets of ``topic``'s partitions."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(
        **as_connection(bootstrap).options("consumer", group_id=group, enable_auto_commit=False)
    )
    try:
        return {p: c.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        c.close(autocommit=False)


def reference(
    raw_config: dict[str, Any], events: Sequence[Event]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores, predictions (N,) and flags of an uninterrupted run: the engine over all events,
    configured exactly as the detector configures it."""
    from streamrnn.config import load_config
    from streamrnn.service.app import Detector
    from streamrnn.service.worker import EngineSide

    engine = EngineSide(Detector(load_config(raw_config)).settings).engine
    keys = [e.key for e in events]
    times = np.array([e.ts for e in events], dtype=np.float64)
    values = np.array([[e.value] for e in events], dtype=np.float32)
    r = engine.process(keys, times, values)
    return r.score, r.prediction[:, 0], r.flag
