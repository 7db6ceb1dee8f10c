"""Checkpoints written by streamrnn 0.1 still restore.

``tests/data/checkpoint-format1.ckpt`` was written by the checkpoint code of streamrnn 0.1
(commit 1935edb): the shipped demo model, default settings, 60 events of keys ``k0``..``k2`` on
partition ``t``-0 (see :func:`_part`), snapshotted at offset 60 with the offset both in the
frame's header and in the snapshot's extra (``offsets``). The offset now lives in the header
only; the old extra is not read. Its state layout is older too: the recurrent state, the
normaliser and the pending prediction restore exactly; the adaptation, the views' records and
their calibration (added since) start fresh.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson
from prometheus_client import CollectorRegistry

from streamrnn.config import load_config
from streamrnn.service.checkpoint import Checkpointer, CheckpointStore, LocalCheckpoints, decode
from streamrnn.service.decode import Part
from streamrnn.service.engine_process import InlineEngine
from streamrnn.service.metrics import Metrics
from streamrnn.service.partitions import PartitionTable
from streamrnn.service.worker import EngineSettings, EngineSide
from streamrnn.tools import demo_model

FIXTURE = Path(__file__).parent / "data" / "checkpoint-format1.ckpt"
TP0 = ("t", 0)


def _part(lo: int, hi: int) -> Part:
    """Offsets ``lo``..``hi - 1`` of partition t-0: key k(i % 3), every 5 minutes per key."""
    values = [
        orjson.dumps(
            {"key": f"k{i % 3}", "ts": 1.7e9 + 300 * (i // 3), "value": math.sin(i / 7) + i % 3}
        )
        for i in range(lo, hi)
    ]
    n = hi - lo
    return Part("t", 0, list(range(lo, hi)), [None] * n, [None] * n, values)


def _settings() -> EngineSettings:
    config = load_config({"state": {"device": "cpu"}, "service": {"model": str(demo_model.path())}})
    return EngineSettings.of(config, "cpu")


def _checkpointer(tmp_path: Path, engine: InlineEngine, table: PartitionTable) -> Checkpointer:
    store = CheckpointStore(LocalCheckpoints(tmp_path, "g"))
    metrics = Metrics(CollectorRegistry())
    return Checkpointer("g", store, engine, table, metrics, drain=lambda: True)


def _rows(engine: InlineEngine, name: str) -> np.ndarray:
    e = engine.side.engine
    return e.store.tensors[name][e.store.rows(["k0", "k1", "k2"])].numpy()


def test_a_format1_checkpoint_restores_what_it_holds_and_continues(tmp_path: Path) -> None:
    raw = FIXTURE.read_bytes()
    header = decode(raw)
    assert (header.group, header.topic, header.partition, header.offset) == ("g", "t", 0, 60)

    engine = InlineEngine(EngineSide(_settings()))
    table = PartitionTable()
    table.assign([TP0])
    checkpoints = _checkpointer(tmp_path, engine, table)
    checkpoints.store.local.save("t", 0, raw)
    found = checkpoints.load([TP0])
    assert checkpoints.restore(TP0, found[TP0]) == 60, "the offset to seek to is the header's"
    assert engine.fetch_stats().resident == 3

    # What the old layout holds is exactly what an uninterrupted run of today has after 60 events
    # (the model and the normaliser did not change); what it lacks starts fresh.
    whole = InlineEngine(EngineSide(_settings()))
    whole.submit([_part(0, 60)])
    whole.result()
    for name in ("hidden", "norm", "pred", "steps", "last_ts"):
        np.testing.assert_allclose(_rows(engine, name), _rows(whole, name), rtol=0, atol=1e-6)
    adapted = _rows(whole, "adapt")[:, 5]  # the RMS error each key has learned (rows: adapt.py)
    assert (_rows(engine, "adapt")[:, 5] == 1.0).all() and (adapted != 1.0).all()
    engine.submit([_part(60, 90)])
    whole.submit([_part(60, 90)])
    got, want = engine.result(), whole.result()
    assert got.processed == want.processed == 30
    assert np.isfinite(got.score).all()


def test_the_current_format_keeps_the_offset_in_the_header_only(tmp_path: Path) -> None:
    engine = InlineEngine(EngineSide(_settings()))
    engine.submit([_part(0, 60)])
    engine.result()
    table = PartitionTable()
    table.assign([TP0])
    table.restored(TP0, 0)
    table.advance({TP0: 60})
    checkpoints = _checkpointer(tmp_path, engine, table)
    assert checkpoints.write([TP0])
    ck = checkpoints.load([TP0])[TP0]
    assert ck.offset == 60 and ck.header["keys"] == 3
    fresh = InlineEngine(EngineSide(_settings()))
    extra = fresh.restore(TP0, ck.data)
    assert "offsets" not in extra and sorted(extra["keys"]) == ["k0", "k1", "k2"]
    assert extra["topic"] == "t" and extra["partition"] == 0 and extra["group"] == "g"
