"""Throughput, latency and memory of the detector against the ceiling of one Kafka client.

One run, on one broker and one topic (the embedded Tansu broker unless ``--bootstrap-servers``):

1. **produce** ``--keys`` x ``--events-per-key`` JSON events ``{"key", "ts", "value"}`` into a
   topic of ``--partitions`` partitions, keyed by the event key;
2. **bare**: a kafka-python consumer that only polls and decodes each record with orjson, the
   ceiling of one Python process on this broker;
3. **detector**: the real :class:`streamrnn.service.app.Detector` (a randomly initialised model
   written with :func:`streamrnn.detector.modeldir.save_model`) consuming the same topic in its own
   consumer group, its engine side in a child process (``--engine inline`` keeps it in the
   thread); events/s from its ``streamrnn_events_total`` counter between its first batch and
   the last event;
4. **naive**: what one writes by hand: per record, orjson, a dict of per-key ``(h, c)`` and one
   ``torch.nn.LSTMCell`` step per layer (same hidden size and layers) plus the output layer;
5. **latency**: a producer in another process writes events at fixed fractions of the
   detector's measured rate (``--latency-fractions``, 0.1 and 0.5), each stamped with the
   wall-clock time it is due, sent every 5 ms in produce requests it builds itself
   (:class:`_RawProducer`: kafka-python's producer cannot reach these rates beside the
   detector on 2 cores); p50 and p99 from the detector's ``streamrnn_event_lag_seconds``
   histogram (event time to scored and published), interpolated in its buckets, and the exact
   share within 100 ms. Then the floor: the same producer at the same rates into a fresh topic
   read by the bare loop (the detector stopped), lags taken when each poll returns;
6. **memory**: state store bytes per resident key against the bytes of the hidden state;
7. **step**: the engine alone over 1k, 10k, 100k and 1M resident keys (``--step-keys``) on
   ``--device``: ``Engine.process`` (keys to rows, waves, the step, results back on the host),
   the per-wave device step alone (CUDA timed with ``torch.cuda.synchronize()``), the batch's
   way in (host packing and the host-to-device copy) and out (device-to-host, back in arrival
   order) each alone, and on a GPU its memory per resident key (``--step-only``: this part
   alone, no broker).

``--producer-cpus`` pins the paced producer to CPUs of its own: run the benchmark itself under
``taskset -c`` on the detector's cores and the broker (``--bootstrap-servers``) under another
``taskset``, and the latency runs measure the detector, not the machine's other processes
(bench/gpu.sh does this).

The process freezes its garbage collector's view of its start-up heap before the loops (the
detector does so itself). Each Kafka measurement runs ``--repeat`` times (the detector with a fresh consumer group each
time) and the best run counts; rates are measured from the first batch to the last event, so
connection set-up and the group join do not count. A table goes to stdout, everything to
``--json``, a plot of throughput against resident keys to ``--plot``.

    python -m bench.throughput [--quick] [--json FILE] [--plot FILE] [--device cpu|cuda|auto]
                               [--step-only] [--producer-cpus CPUS]
    streamrnn bench ...          (the same, from a source checkout)

Results and what they mean: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import multiprocessing as mp
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch

log = logging.getLogger("bench.throughput")

ROOT = Path(__file__).resolve().parents[1]
# Tansu completes a group's first join after the rebalance timeout (kafka-python's
# max_poll_interval_ms): keep it short so the detector starts in seconds.
FAST_GROUP = {
    "max_poll_interval_ms": 6000,
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
}
T0 = 1_700_000_000.0  # event time of the produced topic's first step
INTERVAL_S = 60.0  # event-time step between a key's events
DEFAULT_STEP_KEYS = (1_000, 10_000, 100_000, 1_000_000)
QUICK_STEP_KEYS = (1_000, 10_000)


# ----------------------------------------------------------------------------------------------
# Arguments


FULL = {
    "keys": 1000,
    "events_per_key": 600,  # 600,000 events: several seconds a loop, where 120 took under one
    "partitions": 4,
    "repeat": 2,
    "latency_seconds": 15.0,
    "latency_fractions": "0.1,0.5",
    "step_keys": ",".join(str(k) for k in DEFAULT_STEP_KEYS),
    "max_poll_records": 5000,
}
QUICK = {
    "keys": 50,
    "events_per_key": 40,
    "partitions": 2,
    "repeat": 1,
    "latency_seconds": 3.0,
    "latency_fractions": "0.5",
    "step_keys": ",".join(str(k) for k in QUICK_STEP_KEYS),
    "max_poll_records": 200,  # several batches even from a small topic
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keys", type=int, help="keys in the topic (default 1000; --quick 50)")
    p.add_argument("--events-per-key", type=int, help="events per key (default 600; --quick 40)")
    p.add_argument("--partitions", type=int, help="topic partitions (default 4; --quick 2)")
    p.add_argument(
        "--cell", choices=["lstm", "gru"], default="lstm", help="model cell (default lstm)"
    )
    p.add_argument("--hidden", type=int, default=64, help="hidden units per layer (default 64)")
    p.add_argument("--layers", type=int, default=1, help="recurrent layers (default 1)")
    p.add_argument(
        "--max-poll-records",
        type=int,
        help="records per poll, every consumer (default 5000, the service's default; --quick 200)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        help="runs of each Kafka measurement, the best counts (default 2; --quick 1)",
    )
    p.add_argument(
        "--latency-seconds",
        type=float,
        help="paced production per latency rate, seconds (default 15; --quick 3; 0 skips)",
    )
    p.add_argument(
        "--latency-fractions",
        help="paced rates as fractions of the detector's measured rate (default 0.1,0.5; --quick 0.5)",
    )
    p.add_argument(
        "--step-keys",
        help="resident keys of the engine benchmark, comma separated "
        "(default 1000,10000,100000,1000000; --quick 1000,10000; empty skips)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="device of the detector and the engine benchmark: auto, cpu, cuda, cuda:N (default auto)",
    )
    p.add_argument(
        "--engine",
        choices=("process", "inline"),
        default="process",
        help="the detector's engine side: in a child process (service.engine_process: true, the "
        "default) or inline in the Kafka side's thread",
    )
    p.add_argument(
        "--record-reader",
        choices=("fast", "kafka-python"),
        default="fast",
        help="the detector's record batch reader: streamrnn's (service.fast_record_reader: true, "
        "the default) or kafka-python's own",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads (default 0: torch's own default)",
    )
    p.add_argument(
        "--bootstrap-servers",
        default=None,
        help="use this broker instead of starting the embedded one",
    )
    p.add_argument("--skip-naive", action="store_true", help="skip the naive loop")
    p.add_argument(
        "--step-only",
        action="store_true",
        help="only the engine benchmark (--step-keys): no broker, topic, detector or latency",
    )
    p.add_argument(
        "--producer-cpus",
        default=None,
        help="CPUs of the paced producer (the latency runs), as taskset -c takes them (0-3,8): "
        "keep it off the detector's cores when this process is pinned with taskset",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test: small topic, one run each, 1k and 10k keys",
    )
    p.add_argument(
        "--json", dest="json_path", default=None, help="write every figure to this JSON file"
    )
    p.add_argument("--plot", default=None, help="write a PNG of throughput against resident keys")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the values and the model (default 0)"
    )


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the size options the command line left out (from QUICK with --quick, else FULL)."""
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    return args


# ----------------------------------------------------------------------------------------------
# The topic


def event_bytes(keys: int, steps: int, seed: int) -> Iterator[tuple[bytes, bytes]]:
    """``(key, JSON)`` of every event, step by step (each key's events in time order)."""
    rng = np.random.default_rng(seed)
    names = [f"key-{i:05d}" for i in range(keys)]
    level = rng.uniform(10.0, 1000.0, size=keys)  # (K,)
    phase = rng.uniform(0.0, 2 * math.pi, size=keys)  # (K,)
    for j in range(steps):
        ts = T0 + j * INTERVAL_S
        vals = level * (1.0 + 0.1 * np.sin(phase + j * 2 * math.pi / 96)) + rng.normal(
            0.0, 1.0, keys
        )
        for name, v in zip(names, vals.tolist(), strict=True):
            yield name.encode(), orjson.dumps({"key": name, "ts": ts, "value": round(v, 4)})


def produce_topic(bootstrap: str, topic: str, keys: int, steps: int, seed: int) -> dict[str, Any]:
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=20,
        batch_size=512 * 1024,
        max_request_size=8 << 20,
    )
    t0 = time.perf_counter()
    n = 0
    try:
        for k, v in event_bytes(keys, steps, seed):
            producer.send(topic, key=k, value=v)
            n += 1
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=10)
    dt = time.perf_counter() - t0
    return {"events": n, "seconds": dt, "events_per_s": n / dt}


def _consumer(bootstrap: str, topic: str, max_poll_records: int, fast: bool = False) -> Any:
    """A group-less consumer assigned every partition of ``topic`` from the beginning; with
    ``fast``, reading record batches with the detector's reader (service/records.py)."""
    from kafka import KafkaConsumer, TopicPartition

    from streamrnn.config import ServiceConfig
    from streamrnn.service.records import install

    svc = ServiceConfig()  # the detector's fetch settings, so the ceiling is measured like for like
    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_poll_records=max_poll_records,
        fetch_max_wait_ms=svc.fetch_max_wait_ms,
        max_partition_fetch_bytes=svc.max_partition_fetch_bytes,
        retry_backoff_ms=svc.client_retry_backoff_ms,
    )
    if fast and not install(c):
        raise RuntimeError("the fast record reader does not work with this kafka-python")
    parts: set[int] = set()
    deadline = time.monotonic() + 30
    while not parts:
        parts = c.partitions_for_topic(topic) or set()
        if not parts:
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {topic} not found")
            time.sleep(0.05)
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    return c


class _Rate:
    """Events per second from the end of the first batch to the last event."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.first_t: float | None = None
        self.first_n = 0

    def seen(self, n: int) -> None:
        if self.first_t is None and n > 0:
            self.first_t, self.first_n = time.perf_counter(), n

    def result(self, n: int) -> dict[str, Any]:
        dt = time.perf_counter() - (self.first_t or time.perf_counter())
        measured = n - self.first_n
        return {
            "events": n,
            "measured_events": measured,
            "seconds": dt,
            "events_per_s": measured / dt if dt > 0 and measured > 0 else float("nan"),
        }


def _consume(
    bootstrap: str,
    topic: str,
    total: int,
    max_poll_records: int,
    handle: Callable[[list[Any]], None],
    timeout_s: float,
    fast: bool = False,
) -> dict[str, Any]:
    c = _consumer(bootstrap, topic, max_poll_records, fast)
    rate = _Rate(total)
    n = 0
    deadline = time.monotonic() + timeout_s
    try:
        while n < total:
            if time.monotonic() > deadline:
                raise RuntimeError(f"consumed {n} of {total} events in {timeout_s:g} s")
            polled = c.poll(timeout_ms=200, max_records=max_poll_records)
            for recs in polled.values():
                handle(recs)
                n += len(recs)
            rate.seen(n)
    finally:
        c.close(autocommit=False)
    return rate.result(n)


def bare_loop(
    bootstrap: str, topic: str, total: int, max_poll_records: int, fast: bool = False
) -> dict[str, Any]:
    """Poll and decode each record with orjson: nothing else. With ``fast``, kafka-python's
    consumer reads record batches with the detector's reader (service/records.py)."""
    loads = orjson.loads

    def handle(recs: list[Any]) -> None:
        for r in recs:
            loads(r.value)

    return _consume(bootstrap, topic, total, max_poll_records, handle, timeout_s=600, fast=fast)


def naive_loop(
    bootstrap: str,
    topic: str,
    total: int,
    max_poll_records: int,
    hidden: int,
    layers: int,
    cell: str,
    seed: int,
) -> dict[str, Any]:
    """The hand-written loop: one torch cell step per record, a dict of per-key state."""
    torch.manual_seed(seed)
    cls = torch.nn.LSTMCell if cell == "lstm" else torch.nn.GRUCell
    cells = [cls(1 if i == 0 else hidden, hidden).eval() for i in range(layers)]
    head = torch.nn.Linear(hidden, 2).eval()
    state: dict[str, list[Any]] = {}
    loads = orjson.loads
    lstm = cell == "lstm"

    def handle(recs: list[Any]) -> None:
        with torch.no_grad():
            for r in recs:
                ev = loads(r.value)
                key = ev["key"]
                st = state.get(key)
                if st is None:
                    zero = torch.zeros(1, hidden)
                    st = [(zero, zero) if lstm else zero for _ in range(layers)]
                x = torch.tensor([[float(ev["value"])]])
                new = []
                for c, s in zip(cells, st, strict=True):
                    s = c(x, s)
                    new.append(s)
                    x = s[0] if lstm else s
                head(x)
                state[key] = new

    return _consume(bootstrap, topic, total, max_poll_records, handle, timeout_s=1800)


# ----------------------------------------------------------------------------------------------
# The detector


def write_model(out: Path, cell: str, hidden: int, layers: int, seed: int) -> Path:
    """A randomly initialised forecaster in a model directory (save_model's format)."""
    from streamrnn.config import load_config
    from streamrnn.detector.features import N_CALENDAR
    from streamrnn.detector.model import Forecaster
    from streamrnn.detector.modeldir import save_model

    cfg = load_config(
        None,
        overrides={
            "model.cell": cell,
            "model.hidden_size": hidden,
            "model.num_layers": layers,
            "model.dropout": 0.0,
        },
    )
    torch.manual_seed(seed)
    model = Forecaster(cfg.model, n_values=1, n_extra=N_CALENDAR if cfg.model.calendar else 0)
    save_model(out, model, cfg, feature_names=("value",), metrics={}, data_summary={})
    return out


def detector_config(
    bootstrap: str,
    topic: str,
    group: str,
    model: Path,
    state_dir: Path,
    device: str,
    max_poll_records: int,
    engine_process: bool = True,
    fast_record_reader: bool = True,
) -> Any:
    from streamrnn.config import load_config

    raw = {
        "state": {"device": device},
        "service": {
            "bootstrap_servers": [bootstrap],
            "topics": [topic],
            "group": group,
            "model": str(model),
            "state_dir": str(state_dir),
            "alerts_topic": f"{topic}.alerts",
            "dlq_topic": f"{topic}.dlq",
            "metrics_host": "127.0.0.1",
            "metrics_port": 0,
            "model_poll_interval_s": 0.0,
            "max_poll_records": max_poll_records,
            "engine_process": engine_process,
            "fast_record_reader": fast_record_reader,
            **FAST_GROUP,
        },
    }
    return load_config(raw)


class RunningDetector:
    """A :class:`Detector` in a thread of this process, read through its own metrics."""

    def __init__(self, config: Any) -> None:
        from streamrnn.service.app import Detector

        self.detector = Detector(config)
        self.registry = self.detector.registry
        self.rc: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="detector")
        self.thread.start()

    def _run(self) -> None:
        self.rc = self.detector.run()

    def processed(self) -> int:
        return int(
            self.registry.get_sample_value("streamrnn_events_total", {"outcome": "processed"}) or 0
        )

    def lag_buckets(self) -> dict[float, float]:
        """Cumulative counts of streamrnn_event_lag_seconds by upper bound."""
        out: dict[float, float] = {}
        for metric in self.registry.collect():
            if metric.name != "streamrnn_event_lag_seconds":
                continue
            for s in metric.samples:
                if s.name.endswith("_bucket"):
                    out[float(s.labels["le"])] = s.value
        return out

    def wait_processed(
        self, total: int, timeout_s: float, interval: float = 0.005
    ) -> dict[str, Any]:
        """Sample the processed counter until it reaches ``total``; the rate from the first batch."""
        rate = _Rate(total)
        deadline = time.monotonic() + timeout_s
        n = 0
        batch_s_first = engine_s_first = 0.0
        while n < total:
            if not self.thread.is_alive():
                raise RuntimeError(
                    f"the detector stopped (exit status {self.rc}) after {n} of {total} events"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the detector processed {n} of {total} events in {timeout_s:g} s"
                )
            time.sleep(interval)
            n = self.processed()
            first = rate.first_t is None and n > 0
            rate.seen(n)
            if first:
                # The first batch is counted as processed just before its timer is recorded.
                settle = time.monotonic() + 0.1
                while (
                    self.registry.get_sample_value("streamrnn_batch_duration_seconds_count") == 0
                    and time.monotonic() < settle
                ):
                    time.sleep(0.0005)
                batch_s_first = self.batch_seconds()
                engine_s_first = self.engine_seconds()
        res = rate.result(n)
        # Over the same window: the share of the detector's time in its batch work.
        res["batch_share"] = (
            (self.batch_seconds() - batch_s_first) / res["seconds"] if res["seconds"] > 0 else None
        )
        # The engine side's busy share (decode, step, score, encode), on its own core when it
        # runs in a process.
        res["engine_share"] = (
            (self.engine_seconds() - engine_s_first) / res["seconds"]
            if res["seconds"] > 0
            else None
        )
        return res

    def batch_seconds(self) -> float:
        """The detector's own batch timer: decode, engine, publish, commit (all but poll)."""
        return float(self.registry.get_sample_value("streamrnn_batch_duration_seconds_sum") or 0)

    def engine_seconds(self) -> float:
        """The engine side's own time: decode, step, score, encode."""
        return float(self.registry.get_sample_value("streamrnn_engine_seconds_total") or 0)

    def stop(self, timeout: float = 60) -> int | None:
        self.detector.stop()
        self.thread.join(timeout)
        return self.rc


def memory_figures(engine: Any, stats: Any = None) -> dict[str, Any]:
    """Bytes per resident key: the state store's rows against the hidden state alone.

    ``stats`` (the detector's engine side's :class:`~streamrnn.service.worker.Stats`) gives the
    resident keys and allocated bytes when the store itself is in another process."""
    from streamrnn.detector.engine import state_fields

    store = engine.store
    keys = stats.resident if stats is not None else len(store)
    nbytes = stats.nbytes if stats is not None else store.nbytes
    hidden = state_fields(engine.model, engine.config)["hidden"]
    hidden_bytes = int(np.prod(hidden.shape)) * torch.empty((), dtype=hidden.dtype).element_size()
    row = store.row_nbytes
    host = sys.getsizeof(store.key_to_row) + sys.getsizeof(store.row_keys) + store.last_seen.nbytes
    host += sum(sys.getsizeof(k) for k in store.key_to_row)
    return {
        "resident_keys": keys,
        "capacity_rows": nbytes // row,
        "hidden_bytes_per_key": hidden_bytes,
        "row_bytes_per_key": row,
        "row_ratio": row / hidden_bytes,
        "allocated_bytes": nbytes,
        "allocated_bytes_per_key": nbytes / max(keys, 1),
        "allocated_ratio": nbytes / max(keys, 1) / hidden_bytes,
        "host_index_bytes_per_key": host / max(len(store), 1),
    }


def detector_memory(det: RunningDetector) -> dict[str, Any]:
    """:func:`memory_figures` of a running detector: its engine side reports resident keys and
    store bytes; the row layout and the host index are measured on an engine of the same model
    and config in this process, fed as many keys (the engine side may be another process)."""
    from streamrnn.service.worker import EngineSide

    d = det.detector
    assert d.engine is not None
    stats = d.engine.stats
    engine = EngineSide(d.settings).engine
    names = [f"key-{i:05d}" for i in range(stats.resident)]
    engine.process(names, np.full(len(names), T0), np.ones((len(names), 1), dtype=np.float32))
    return memory_figures(engine, stats)


def detector_run(
    bootstrap: str,
    topic: str,
    total: int,
    model: Path,
    work: Path,
    device: str,
    max_poll_records: int,
    engine_process: bool = True,
    fast_record_reader: bool = True,
) -> tuple[dict[str, Any], RunningDetector]:
    group = f"bench-{uuid.uuid4().hex[:8]}"
    state_dir = work / group
    cfg = detector_config(
        bootstrap,
        topic,
        group,
        model,
        state_dir,
        device,
        max_poll_records,
        engine_process,
        fast_record_reader,
    )
    det = RunningDetector(cfg)
    try:
        res = det.wait_processed(total, timeout_s=600)
    except BaseException:
        det.stop()
        raise
    res["batches"] = det.registry.get_sample_value("streamrnn_batch_duration_seconds_count") or 0
    res["batch_seconds_total"] = det.batch_seconds()
    return res, det


# ----------------------------------------------------------------------------------------------
# Latency at a fixed rate


TICK_S = 0.005  # the paced producer sends what is due this often


class _RawProducer:
    """Produce requests (v3, acks=all) built here, for the paced producer.

    kafka-python's ``KafkaProducer.send`` costs about 18 us of Python per message on these
    machines: half the detector's rate would need most of a core, which a 2-core machine running
    the broker and the detector does not have, and the producer would fall behind its rate. Here
    each tick's records go into one record batch per partition (kafka-python's batch builder,
    about 1.5 us a record) and one request, over one socket to a single-broker cluster (the
    embedded one): keys are partitioned with murmur2 as kafka-python and Java do."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        import socket

        host, _, port = bootstrap.split(",")[0].rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.topic = topic.encode()
        self.partitions = partitions
        self.correlation = 0

    def partition_of(self, key: bytes) -> int:
        from kafka.partitioner.default import murmur2

        return (murmur2(key) & 0x7FFFFFFF) % self.partitions

    def send(self, by_partition: dict[int, list[tuple[bytes, bytes]]], ts_ms: int) -> None:
        """One request with one batch per partition; waits for the answer (raises on an error)."""
        import struct

        from kafka.record.default_records import DefaultRecordBatchBuilder

        parts = []
        for p, records in by_partition.items():
            b = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 30)
            for i, (k, v) in enumerate(records):
                b.append(i, timestamp=ts_ms, key=k, value=v, headers=[])
            batch = bytes(b.build())
            parts.append(struct.pack(">ii", p, len(batch)) + batch)
        self.correlation += 1
        client = b"streamrnn-bench"
        body = (
            struct.pack(">hhih", 0, 3, self.correlation, len(client))
            + client
            + struct.pack(">hhii", -1, -1, 30_000, 1)  # no transactional id, acks=all, 1 topic
            + struct.pack(">h", len(self.topic))
            + self.topic
            + struct.pack(">i", len(parts))
            + b"".join(parts)
        )
        self.sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", self._read(4))
        resp = self._read(size)
        # correlation id, topics: [name, partitions: [index, error code, base offset, log time]]
        pos = 4 + 4
        (name_len,) = struct.unpack_from(">h", resp, pos)
        pos += 2 + name_len
        (n,) = struct.unpack_from(">i", resp, pos)
        pos += 4
        for _ in range(n):
            index, error = struct.unpack_from(">ih", resp, pos)
            pos += 4 + 2 + 8 + 8
            if error:
                raise RuntimeError(f"produce to {self.topic.decode()}-{index}: error code {error}")

    def _read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            buf += chunk
        return bytes(buf)

    def close(self) -> None:
        self.sock.close()


def parse_cpus(text: str) -> set[int]:
    """CPUs as ``taskset -c`` takes them: ``0,1``, ``2-15``, ``0-3,8``."""
    cpus: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"--producer-cpus: must be like 2-15 or 0,1, got {text!r}")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def _paced_producer(
    bootstrap: str,
    topic: str,
    keys: int,
    partitions: int,
    rate: float,
    seconds: float,
    out: Any,
    cpus: str | None = None,
) -> None:
    """Produce ``rate`` events/s for ``seconds``: event ``j`` is stamped with the wall-clock time
    it is due (``start + j / rate``), and sent with the others due in the same ``TICK_S``
    (:class:`_RawProducer`), so its lag includes the producer's own batching. ``cpus``: run on
    these CPUs only (``taskset -c``'s syntax)."""
    if cpus:
        os.sched_setaffinity(0, parse_cpus(cpus))
    producer = _RawProducer(bootstrap, topic, partitions)
    names = [f"key-{i:05d}" for i in range(keys)]
    encoded = [n.encode() for n in names]
    part_of = [producer.partition_of(k) for k in encoded]
    rng = np.random.default_rng(1)
    levels = rng.uniform(10.0, 1000.0, size=keys).tolist()
    sent = 0
    start = time.perf_counter()
    wall0 = time.time() - (time.perf_counter() - start)
    end = start + seconds
    try:
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            due = int((now - start) * rate)
            if due > sent:
                by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
                for j in range(sent, due):
                    k = j % keys
                    v = levels[k] * (1.0 + 0.01 * math.sin(j * 0.01))
                    stamp = wall0 + j / rate
                    value = orjson.dumps({"key": names[k], "ts": stamp, "value": v})
                    by_partition.setdefault(part_of[k], []).append((encoded[k], value))
                producer.send(by_partition, int(time.time() * 1000))
                sent = due
            time.sleep(TICK_S)
        elapsed = time.perf_counter() - start
    finally:
        producer.close()
    out.put({"sent": sent, "seconds": elapsed, "events_per_s": sent / elapsed})


def _paced_process(
    bootstrap: str,
    topic: str,
    keys: int,
    partitions: int,
    rate: float,
    seconds: float,
    cpus: str | None = None,
) -> tuple[Any, Any]:
    """:func:`_paced_producer` in a fresh interpreter (not started) and the queue of its result."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(
        target=_paced_producer,
        args=(bootstrap, topic, keys, partitions, rate, seconds, q, cpus),
        daemon=True,
    )
    return proc, q


def quantile_from_buckets(buckets: dict[float, float], q: float) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding ``q``."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return float("nan")
    rank = q * total
    prev_b, prev_c = 0.0, 0.0
    for b in bounds:
        c = buckets[b]
        if c >= rank:
            if math.isinf(b):
                return prev_b
            return prev_b + (b - prev_b) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 0.0)
        prev_b, prev_c = b, c
    return bounds[-2]


def latency_run(
    det: RunningDetector,
    bootstrap: str,
    topic: str,
    keys: int,
    partitions: int,
    rate: float,
    seconds: float,
    cpus: str | None = None,
) -> dict[str, Any]:
    """Events stamped with the wall clock at ``rate`` per second for ``seconds`` (the producer on
    ``cpus``); their lag from the detector's histogram, without the first ``warm`` seconds."""
    already = det.processed()
    warm = min(2.0, seconds / 4)
    proc, q = _paced_process(bootstrap, topic, keys, partitions, rate, seconds, cpus)
    proc.start()
    try:
        # The producer's start-up (a fresh interpreter) is not part of the measurement.
        deadline = time.monotonic() + 60
        while det.processed() <= already:
            if time.monotonic() > deadline:
                raise RuntimeError("no paced event reached the detector in 60 s")
            time.sleep(0.01)
        time.sleep(warm)
        before = det.lag_buckets()
        got = q.get(timeout=seconds + 120)
        proc.join(30)
        det.wait_processed(already + got["sent"], timeout_s=120)
        after = det.lag_buckets()
    finally:
        if proc.is_alive():
            proc.terminate()
    delta = {b: after[b] - before.get(b, 0.0) for b in after}
    total = delta[math.inf]
    within = delta.get(0.1, 0.0)
    return {
        "fraction_of_max": None,
        "target_events_per_s": rate,
        "produced_events_per_s": got["events_per_s"],
        "seconds": got["seconds"],
        "observed_events": total,
        "p50_s": quantile_from_buckets(delta, 0.5),
        "p99_s": quantile_from_buckets(delta, 0.99),
        "within_100ms": within / total if total else float("nan"),
        "buckets": {("+Inf" if math.isinf(b) else repr(b)): delta[b] for b in sorted(delta)},
    }


def _lag_quantiles(lags: np.ndarray) -> dict[str, Any]:
    """Exact quantiles of lags (s), and the detector's way: its histogram's buckets, interpolated."""
    from streamrnn.service.metrics import EVENT_LAG_BUCKETS

    bounds = [*EVENT_LAG_BUCKETS, math.inf]
    counts = np.searchsorted(np.sort(lags), bounds, side="right").astype(float)  # cumulative
    buckets = dict(zip(bounds, counts.tolist(), strict=True))
    return {
        "observed_events": len(lags),
        "p50_s": quantile_from_buckets(buckets, 0.5),
        "p99_s": quantile_from_buckets(buckets, 0.99),
        "exact_p50_s": float(np.quantile(lags, 0.5)) if len(lags) else float("nan"),
        "exact_p99_s": float(np.quantile(lags, 0.99)) if len(lags) else float("nan"),
        "within_100ms": float(np.mean(lags <= 0.1)) if len(lags) else float("nan"),
    }


def bare_latency_run(
    bootstrap: str,
    topic: str,
    keys: int,
    partitions: int,
    rate: float,
    seconds: float,
    cpus: str | None = None,
) -> dict[str, Any]:
    """The floor under the detector's latency: the paced producer into a fresh topic, read by the
    bare loop (poll and orjson), each event's lag taken when its poll returns."""
    from streamrnn.tools.broker import create_topics

    create_topics(bootstrap, {topic: partitions})
    c = _consumer(bootstrap, topic, 5000)
    warm = min(2.0, seconds / 4)
    proc, q = _paced_process(bootstrap, topic, keys, partitions, rate, seconds, cpus)
    lags: list[float] = []
    got: dict[str, Any] | None = None
    proc.start()
    try:
        loads = orjson.loads
        first: float | None = None
        deadline = time.monotonic() + seconds + 120
        while got is None or len(lags) < got["sent"]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the bare consumer read {len(lags)} paced events")
            polled = c.poll(timeout_ms=200, max_records=5000)
            now = time.time()
            for recs in polled.values():
                lags.extend(now - loads(r.value)["ts"] for r in recs)
            if first is None and lags:
                first = now
            if got is None and not proc.is_alive():
                got = q.get(timeout=10)
            elif got is None:
                with contextlib.suppress(Exception):
                    got = q.get_nowait()
    finally:
        c.close(autocommit=False)
        if proc.is_alive():
            proc.terminate()
    # Like the detector's: without the first `warm` seconds (events are due at rate per second).
    skip = int(warm * rate)
    out = _lag_quantiles(np.asarray(lags[skip:], dtype=np.float64))
    out["produced_events_per_s"] = got["events_per_s"]
    out["target_events_per_s"] = rate
    return out


# ----------------------------------------------------------------------------------------------
# The engine alone


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(
    fn: Callable[[], Any], device: torch.device, min_seconds: float, min_reps: int
) -> tuple[float, int]:
    """Seconds per call (best of the calls made), after one warm-up call."""
    fn()
    _sync(device)
    best = math.inf
    reps = 0
    t_all = time.perf_counter()
    while reps < min_reps or time.perf_counter() - t_all < min_seconds:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
        reps += 1
    return best, reps


def step_bench(
    cell: str,
    hidden: int,
    layers: int,
    sizes: Sequence[int],
    device: torch.device,
    seed: int,
    quick: bool,
) -> list[dict[str, Any]]:
    """The engine alone over each number of resident keys (one event per key: one wave)."""
    out = []
    for k in sizes:
        out.append(_step_one(cell, hidden, layers, k, device, seed, 0.2 if quick else 1.0))
        log.info(
            "engine, %s keys on %s: process %.0f steps/s, wave %.0f steps/s",
            f"{k:,}",
            device,
            out[-1]["process_steps_per_s"],
            out[-1]["wave_steps_per_s"],
        )
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def _step_one(
    cell: str, hidden: int, layers: int, k: int, device: torch.device, seed: int, min_s: float
) -> dict[str, Any]:
    """``Engine.process`` of one event for each of ``k`` resident keys (keys to rows, waves, the
    step, results back on the host), and the per-wave device step alone (``Engine.step_wave``)."""
    from streamrnn.config import load_config
    from streamrnn.detector.engine import Engine
    from streamrnn.detector.features import N_CALENDAR, calendar_features
    from streamrnn.detector.model import Forecaster
    from streamrnn.detector.waves import wave_order

    cfg = load_config(
        None,
        overrides={
            "model.cell": cell,
            "model.hidden_size": hidden,
            "model.num_layers": layers,
            "state.max_keys": k,
            "state.initial_capacity": k,
        },
    )
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(seed)
    engine = Engine(Forecaster(cfg.model, n_values=1, n_extra=N_CALENDAR), cfg, device=device)
    keys = [f"key-{i:07d}" for i in range(k)]
    values = np.random.default_rng(seed).normal(100.0, 10.0, size=(k, 1)).astype(np.float32)
    clock = [T0]

    def process() -> None:
        clock[0] += INTERVAL_S
        engine.process(keys, np.full(k, clock[0]), values)

    per_process, reps_p = _timed(process, device, min_s, 2)
    gpu: dict[str, Any] = {}
    if cuda:
        gpu = {
            # The state store and the model, resident between batches; the peak includes one
            # batch's temporaries.
            "gpu_bytes_per_key": (torch.cuda.memory_allocated(device) - base) / k,
            "gpu_peak_bytes_per_key": (torch.cuda.max_memory_allocated(device) - base) / k,
        }

    # The batch's way in (host packing and the copy, Engine._to_device) and out (the results
    # back in arrival order on the host, Engine._to_host), each alone.
    host_rows = engine.store.rows(keys)  # (k,)
    order, _ = wave_order(host_rows)
    host_times = np.full(k, clock[0])
    _, _, _, order_d = engine._to_device(host_rows, order, host_times, values)
    results = torch.zeros(k, 6 + 2 * engine.n_values, device=device)  # (k, C) as a wave leaves it
    per_in, _ = _timed(
        lambda: engine._to_device(host_rows, order, host_times, values), device, min_s / 4, 3
    )
    per_out, _ = _timed(lambda: engine._to_host(results, order, order_d), device, min_s / 4, 3)

    rows = torch.as_tensor(engine.store.rows(keys), device=device)  # (k,)
    times = torch.full((k,), clock[0] + INTERVAL_S, dtype=torch.float64, device=device)  # (k,)
    vals = torch.as_tensor(values, device=device)  # (k, 1)
    cal = torch.as_tensor(calendar_features(np.full(k, clock[0])), device=device)  # (k, 4)

    def wave() -> None:
        engine.step_wave(rows, times, vals, cal)

    per_wave, reps_w = _timed(wave, device, min_s, 3)
    mem = memory_figures(engine)
    return {
        "keys": k,
        "device": str(device),
        "process_steps_per_s": k / per_process,
        "process_seconds": per_process,
        "process_reps": reps_p,
        "wave_steps_per_s": k / per_wave,
        "wave_seconds": per_wave,
        "wave_reps": reps_w,
        "to_device_seconds": per_in,
        "to_host_seconds": per_out,
        **gpu,
        "row_ratio": mem["row_ratio"],
        "allocated_ratio": mem["allocated_ratio"],
        "host_index_bytes_per_key": mem["host_index_bytes_per_key"],
    }


# ----------------------------------------------------------------------------------------------
# Report


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    with contextlib.suppress(Exception):
        import kafka

        info["kafka_python"] = kafka.__version__
    return info


def _fmt_rate(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:,.0f}"


def format_report(r: dict[str, Any]) -> str:
    lines = []
    m = r["machine"]
    lines.append(
        f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads)"
    )
    c = r["config"]
    model = f"model {c['cell']} hidden {c['hidden']} x {c['layers']} layer(s)"
    if c.get("step_only"):
        lines.append(f"{model}; the engine alone on {c['device']}")
    else:
        lines.append(
            f"topic: {c['keys']} keys x {c['events_per_key']} events, {c['partitions']} partitions; "
            f"{model}; max_poll_records {c['max_poll_records']}"
        )
    tp = r.get("throughput") or {}
    if tp:
        lines.append("")
        lines.append(f"{'loop':<10} {'events/s':>12} {'runs (events/s)':<40}")
    for name in ("bare", "bare_fast", "detector", "naive"):
        t = tp.get(name)
        if not t:
            continue
        runs = ", ".join(_fmt_rate(x["events_per_s"]) for x in t["runs"])
        lines.append(f"{name:<10} {_fmt_rate(t['events_per_s']):>12} {runs:<40}")
    ratios = tp.get("ratios", {})
    if ratios:
        lines.append(
            "detector / bare = {:.2f} (target >= 0.8); detector / naive = {}".format(
                ratios["detector_over_bare"],
                f"{ratios['detector_over_naive']:.1f} (target >= 3)"
                if "detector_over_naive" in ratios
                else "-",
            )
        )
        if "detector_over_bare_fast" in ratios:
            lines.append(
                "detector / bare_fast = {:.2f} (bare_fast: the bare loop with the detector's "
                "record reader)".format(ratios["detector_over_bare_fast"])
            )
    det = tp.get("detector") or {}
    if det.get("batch_share") is not None:
        lines.append(
            f"detector: the Kafka side spent {det['batch_share'] * 100:.0f}% of its time on batches "
            f"(hand over, wait for the outcome, publish, commit), the rest in poll; the engine side "
            f"was busy {(det.get('engine_share') or 0) * 100:.0f}% (decode, step, score); "
            f"{det['events_per_batch']:.0f} events per batch"
        )
    for lat in r.get("latency_by_rate") or []:
        lines.append(
            f"latency at {lat['produced_events_per_s']:,.0f} events/s ({lat['fraction_of_max']:g} x the detector's rate): "
            f"p50 {lat['p50_s'] * 1000:.1f} ms, p99 {lat['p99_s'] * 1000:.1f} ms, "
            f"{lat['within_100ms'] * 100:.2f}% within 100 ms (target at 0.5 x: p99 <= 100 ms)"
        )
        floor = lat.get("bare")
        if floor:
            lines.append(
                f"  the bare loop at {floor['produced_events_per_s']:,.0f} events/s (the floor): "
                f"p50 {floor['p50_s'] * 1000:.1f} ms, p99 {floor['p99_s'] * 1000:.1f} ms "
                f"(exact {floor['exact_p99_s'] * 1000:.1f} ms), "
                f"{floor['within_100ms'] * 100:.2f}% within 100 ms"
            )
    mem = r.get("memory")
    if mem:
        lines.append(
            f"state per key: {mem['row_bytes_per_key']} B in rows vs {mem['hidden_bytes_per_key']} B of hidden state "
            f"= {mem['row_ratio']:.3f}x (1.25x before the per-key adaptation and calibration of issue 10; docs/quality.md); allocated {mem['allocated_bytes_per_key']:.0f} B/key "
            f"= {mem['allocated_ratio']:.3f}x ({mem['capacity_rows']} rows for {mem['resident_keys']} keys); "
            f"host index {mem['host_index_bytes_per_key']:.0f} B/key"
        )
    steps = r.get("step") or []
    if steps:
        lines.append("")
        lines.append(
            f"{'resident keys':>14} {'device':<8} {'process steps/s':>16} {'wave steps/s':>14} "
            f"{'wave ms':>9} {'in ms':>8} {'out ms':>8} {'GPU B/key':>10}"
        )
        for s in steps:
            gpu_b = s.get("gpu_bytes_per_key")
            lines.append(
                f"{s['keys']:>14,} {s['device']:<8} {_fmt_rate(s['process_steps_per_s']):>16} "
                f"{_fmt_rate(s['wave_steps_per_s']):>14} {s['wave_seconds'] * 1000:>9.2f} "
                f"{s['to_device_seconds'] * 1000:>8.2f} {s['to_host_seconds'] * 1000:>8.2f} "
                f"{f'{gpu_b:.0f}' if gpu_b is not None else '-':>10}"
            )
    return "\n".join(lines)


def plot(r: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = r.get("step") or []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for dev in sorted({s["device"] for s in steps}):
        rows = [s for s in steps if s["device"] == dev]
        ks = [s["keys"] for s in rows]
        ax.plot(ks, [s["wave_steps_per_s"] for s in rows], "o-", label=f"per-wave step ({dev})")
        ax.plot(
            ks, [s["process_steps_per_s"] for s in rows], "s--", label=f"Engine.process ({dev})"
        )
    tp = r.get("throughput", {})
    keys = r["config"]["keys"]
    for name, marker in (("detector", "*"), ("bare", "^"), ("bare_fast", "<"), ("naive", "v")):
        if tp.get(name):
            ax.plot(
                [keys], [tp[name]["events_per_s"]], marker, markersize=11, label=f"{name} on Kafka"
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("resident keys")
    ax.set_ylabel("steps (events) per second")
    c = r["config"]
    m = r["machine"]
    ax.set_title(
        f"{c['cell'].upper()} {c['hidden']}x{c['layers']}, {m['cores']} cores ({m['cpu']})",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Main


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    best = max(runs, key=lambda x: x["events_per_s"] if math.isfinite(x["events_per_s"]) else -1.0)
    return {"events_per_s": best["events_per_s"], "runs": runs}


@contextlib.contextmanager
def _broker(bootstrap: str | None) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    from streamrnn.tools.broker import EmbeddedBroker

    with EmbeddedBroker() as b:
        yield b.bootstrap_servers


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from streamrnn.detector.modeldir import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    total = args.keys * args.events_per_key
    result: dict[str, Any] = {
        "machine": machine(),
        "config": {
            "keys": args.keys,
            "events_per_key": args.events_per_key,
            "events": total,
            "partitions": args.partitions,
            "cell": args.cell,
            "hidden": args.hidden,
            "layers": args.layers,
            "max_poll_records": args.max_poll_records,
            "repeat": args.repeat,
            "device": str(device),
            "engine": args.engine,
            "record_reader": args.record_reader,
            "quick": args.quick,
            "step_only": args.step_only,
            "producer_cpus": args.producer_cpus,
            "affinity": sorted(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else None,
        },
    }
    if args.producer_cpus:
        parse_cpus(args.producer_cpus)  # a typo stops the run before the long parts
    if not args.step_only:
        kafka_part(args, device, total, result)
    sizes = [int(s) for s in str(args.step_keys).split(",") if s.strip()]
    if sizes:
        result["step"] = step_bench(
            args.cell, args.hidden, args.layers, sizes, device, args.seed, args.quick
        )
    result["machine"]["load_average_at_end"] = (
        os.getloadavg() if hasattr(os, "getloadavg") else None
    )
    return result


def kafka_part(
    args: argparse.Namespace, device: torch.device, total: int, result: dict[str, Any]
) -> None:
    """The topic, the loops, latency and memory (everything but the engine alone) into ``result``."""
    from streamrnn.tools.broker import create_topics

    with (
        tempfile.TemporaryDirectory(prefix="streamrnn-bench-") as tmp,
        _broker(args.bootstrap_servers) as bootstrap,
    ):
        work = Path(tmp)
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        create_topics(bootstrap, {topic: args.partitions})
        log.info("producing %s events to %s", f"{total:,}", topic)
        result["produce"] = produce_topic(
            bootstrap, topic, args.keys, args.events_per_key, args.seed
        )
        model = write_model(work / "model", args.cell, args.hidden, args.layers, args.seed)

        bare, bare_fast, detector, naive = [], [], [], []
        # The detector freezes the collector's view of its start-up heap (a full collection
        # then scans only the new objects); so does this process before any loop, or whichever
        # loop ran after the first detector would get that for free.
        gc.collect()
        gc.freeze()
        det: RunningDetector | None = None
        try:
            for i in range(args.repeat):
                if det is not None:
                    det.stop()
                    det = None
                log.info("bare loop, run %d", i + 1)
                bare.append(bare_loop(bootstrap, topic, total, args.max_poll_records))
                log.info("bare: %.0f events/s", bare[-1]["events_per_s"])
                log.info("bare loop with the fast record reader, run %d", i + 1)
                bare_fast.append(
                    bare_loop(bootstrap, topic, total, args.max_poll_records, fast=True)
                )
                log.info("bare (fast reader): %.0f events/s", bare_fast[-1]["events_per_s"])
                log.info("detector, run %d", i + 1)
                res, det = detector_run(
                    bootstrap,
                    topic,
                    total,
                    model,
                    work,
                    str(device),
                    args.max_poll_records,
                    args.engine == "process",
                    args.record_reader == "fast",
                )
                detector.append(res)
                log.info("detector: %.0f events/s", res["events_per_s"])
            assert det is not None
            result["memory"] = detector_memory(det)
            tp: dict[str, Any] = {
                "bare": _best(bare),
                "bare_fast": _best(bare_fast),
                "detector": _best(detector),
            }
            best = max(detector, key=lambda x: x["events_per_s"])
            tp["detector"]["batch_share"] = best["batch_share"]
            tp["detector"]["engine_share"] = best["engine_share"]
            tp["detector"]["events_per_batch"] = best["events"] / max(best["batches"], 1)
            if args.latency_seconds > 0:
                runs = []
                for frac in [float(x) for x in str(args.latency_fractions).split(",") if x.strip()]:
                    top = tp["detector"]["events_per_s"]
                    rate = (top if math.isfinite(top) else 2000.0) * frac
                    log.info(
                        "latency: %.0f events/s (%g of the detector's rate) for %g s",
                        rate,
                        frac,
                        args.latency_seconds,
                    )
                    lat = latency_run(
                        det,
                        bootstrap,
                        topic,
                        args.keys,
                        args.partitions,
                        rate,
                        args.latency_seconds,
                        args.producer_cpus,
                    )
                    lat["fraction_of_max"] = frac
                    runs.append(lat)
                result["latency_by_rate"] = runs
                half = [x for x in runs if x["fraction_of_max"] == 0.5]
                result["latency"] = half[0] if half else runs[-1]
        finally:
            if det is not None:
                det.stop()
        for lat in result.get("latency_by_rate", []):
            log.info("latency floor: the bare loop at %.0f events/s", lat["target_events_per_s"])
            lat["bare"] = bare_latency_run(
                bootstrap,
                f"{topic}-bare-{lat['fraction_of_max']:g}",
                args.keys,
                args.partitions,
                lat["target_events_per_s"],
                args.latency_seconds,
                args.producer_cpus,
            )
        if not args.skip_naive:
            for i in range(args.repeat):
                log.info("naive loop, run %d", i + 1)
                naive.append(
                    naive_loop(
                        bootstrap,
                        topic,
                        total,
                        args.max_poll_records,
                        args.hidden,
                        args.layers,
                        args.cell,
                        args.seed,
                    )
                )
                log.info("naive: %.0f events/s", naive[-1]["events_per_s"])
            tp["naive"] = _best(naive)
        ratios = {
            "detector_over_bare": tp["detector"]["events_per_s"] / tp["bare"]["events_per_s"],
            "detector_over_bare_fast": (
                tp["detector"]["events_per_s"] / tp["bare_fast"]["events_per_s"]
            ),
        }
        if naive:
            ratios["detector_over_naive"] = (
                tp["detector"]["events_per_s"] / tp["naive"]["events_per_s"]
            )
        tp["ratios"] = ratios
        result["throughput"] = tp


def run(args: argparse.Namespace, command: str | None = None) -> int:
    """Run the benchmark for parsed arguments; print the table, write --json and --plot."""
    resolve(args)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
        )
    log.setLevel(logging.INFO)
    for noisy in ("kafka", "streamrnn"):  # the clients' and the detector's own INFO lines
        logging.getLogger(noisy).setLevel(logging.WARNING)
    result = run_benchmark(args)
    result["command"] = command or " ".join(
        ["python -m bench.throughput", *map(shlex.quote, sys.argv[1:])]
    )
    print(format_report(result))
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(result, indent=2, default=float) + "\n")
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot(result, args.plot)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )
    return run(args, " ".join(["python -m bench.throughput", *map(shlex.quote, argv)]))


if __name__ == "__main__":
    sys.exit(main())
