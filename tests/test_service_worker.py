"""streamrnn.service.worker and .engine_process without a broker: the engine side in a child process gives what it
gives inline, reports failures as errors, and dies loudly."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from servicetools import event_json, make_events, model_dir, service_config

from streamrnn.config import load_config
from streamrnn.service.app import Detector
from streamrnn.service.decode import Part
from streamrnn.service.engine_process import (
    EngineCallError,
    EngineGone,
    InlineEngine,
    ProcessEngine,
)
from streamrnn.service.worker import EngineSide, ModelDirError


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Detector:
    """A configured (never run) detector: its engine settings and model version."""
    tmp = tmp_path_factory.mktemp("worker")
    raw = service_config("127.0.0.1:9", "t", "g", model_dir(), tmp / "state")
    raw["scoring"]["warmup"] = 5
    return Detector(load_config(raw))


def _polls(n_polls: int) -> list[list[Part]]:
    """Polls of two partitions' records, malformed ones among them, in offset order."""
    events = make_events(4, 30 * n_polls, seed=5, spikes=[(1, 25)])
    per_part: dict[int, list[tuple[bytes, bytes]]] = {0: [], 1: []}
    for i, e in enumerate(events):
        per_part[i % 4 // 2].append((e.key.encode(), event_json(e)))
        if i % 37 == 0:
            per_part[0].append((b"bad", b"{not json"))
    polls = []
    for p in range(n_polls):
        parts = []
        for partition, recs in per_part.items():
            size = len(recs) // n_polls
            chunk = recs[p * size : (p + 1) * size]
            offs = list(range(p * size, p * size + len(chunk)))
            parts.append(
                Part(
                    "t",
                    partition,
                    offs,
                    [int(1.7e12)] * len(chunk),
                    [k for k, _ in chunk],
                    [v for _, v in chunk],
                )
            )
        polls.append(parts)
    return polls


def _same(a: Any, b: Any) -> None:
    assert a.processed == b.processed and a.rejects == b.rejects
    np.testing.assert_allclose(a.score, b.score, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a.times, b.times)
    assert [k for k, _ in a.alerts] == [k for k, _ in b.alerts]
    for (_, x), (_, y) in zip(a.alerts, b.alerts, strict=True):
        mx, my = orjson.loads(x), orjson.loads(y)
        assert mx["source"] == my["source"] and mx["score"] == pytest.approx(my["score"], abs=1e-6)
    assert a.stats.resident == b.stats.resident and a.stats.nbytes == b.stats.nbytes


def test_process_engine_matches_inline_and_keeps_order(detector: Detector) -> None:
    polls = _polls(3)
    inline = InlineEngine(EngineSide(detector.settings))
    remote = ProcessEngine(detector.settings)
    try:
        assert remote.stats.resident == 0 and remote.stats.model_version == detector.model_version
        for parts in polls:  # all three in flight at once: outcomes come back in order
            remote.submit(parts)
        assert remote.in_flight == 3
        with pytest.raises(RuntimeError, match="not collected"):
            remote.fetch_stats()
        alerts = rejects = 0
        for parts in polls:
            inline.submit(parts)
            want = inline.result()
            got = remote.result()
            _same(got, want)
            alerts += len(got.alerts)
            rejects += sum(reason == "not_json" for _, reason, _ in got.rejects)
        assert remote.in_flight == 0 and not remote.ready()
        sent_bad = sum(v == b"{not json" for parts in polls for p in parts for v in p.values)
        assert rejects == sent_bad > 0
        assert alerts >= 1, "the spike is alerted"
        assert remote.stats == inline.stats
    finally:
        remote.close()


def test_state_calls_round_trip(detector: Detector) -> None:
    polls = _polls(2)
    remote = ProcessEngine(detector.settings)
    inline = InlineEngine(EngineSide(detector.settings))
    try:
        for eng in (remote, inline):
            eng.submit(polls[0])
            eng.result()
        tp0, tp1 = ("t", 0), ("t", 1)
        [(data, n0), (_, n1)] = remote.snapshot([(tp0, {"x": 1}), (tp1, {})])
        assert n0 == n1 == 2 and remote.stats.resident == 4
        stats = remote.forget([tp0])
        assert stats.resident == 2 and remote.stats.resident == 2
        extra = remote.restore(tp0, data)
        # The offset a snapshot reflects lives in its checkpoint's header only.
        assert "offsets" not in extra and extra["x"] == 1
        assert len(extra["keys"]) == 2
        # Restored state continues exactly where the uninterrupted inline run is.
        remote.submit(polls[1])
        inline.submit(polls[1])
        _same(remote.result(), inline.result())
    finally:
        remote.close()


def test_remote_errors_and_refused_reload(detector: Detector, tmp_path: Path) -> None:
    remote = ProcessEngine(detector.settings)
    try:
        with pytest.raises(EngineCallError, match="Error"):
            remote.restore(("t", 0), b"not a snapshot")
        assert remote.fetch_stats().resident == 0  # still serving after a failed call
        r = remote.reload(str(tmp_path / "no-such-model"))
        assert r.outcome == "error" and r.detail
        r = remote.reload(str(model_dir()))
        assert r.outcome == "ok" and r.version == detector.model_version
    finally:
        remote.close()


def test_child_ignores_stop_signals_and_closes_cleanly(detector: Detector) -> None:
    remote = ProcessEngine(detector.settings)
    pid = remote.pid
    assert pid is not None and pid != os.getpid()
    os.kill(pid, signal.SIGTERM)  # a terminal's Ctrl+C or a group kill: the parent decides
    os.kill(pid, signal.SIGINT)
    time.sleep(0.2)
    assert remote.fetch_stats().resident == 0
    remote.close()
    assert remote._proc.exitcode == 0


def test_a_dead_child_is_reported(detector: Detector) -> None:
    remote = ProcessEngine(detector.settings)
    try:
        assert remote.pid is not None
        os.kill(remote.pid, signal.SIGKILL)
        remote._proc.join(10)
        with pytest.raises(EngineGone, match="exit status -9"):
            remote.submit(_polls(1)[0])
            remote.result()
    finally:
        remote.close()


def test_a_child_that_cannot_start_says_why(detector: Detector, tmp_path: Path) -> None:
    import dataclasses

    settings = dataclasses.replace(detector.settings, model_dir=str(tmp_path / "missing"))
    with pytest.raises(ModelDirError, match="service.model: .*missing"):
        ProcessEngine(settings)


def test_a_key_seen_on_another_partition_moves_there(detector: Detector) -> None:
    side = EngineSide(detector.settings)

    def part(partition: int, offset: int, keys: list[str]) -> Part:
        vals = [orjson.dumps({"key": k, "ts": 1.7e9 + offset, "value": 1.0}) for k in keys]
        offs = list(range(offset, offset + len(keys)))
        return Part("t", partition, offs, [None] * len(keys), [None] * len(keys), vals)

    first = side.process([part(0, 0, ["a", "b", "a"]), part(1, 0, ["c"])])
    assert first.moved == [] and side.tp_keys == {("t", 0): {"a", "b"}, ("t", 1): {"c"}}
    second = side.process([part(1, 1, ["a", "c"])])
    assert second.moved == [("a", ("t", 0), ("t", 1))]
    assert side.keys_of(("t", 0)) == ["b"] and sorted(side.keys_of(("t", 1))) == ["a", "c"]
    side.forget([("t", 1)])
    assert "b" in side.engine.store and "a" not in side.engine.store
    assert side.stats().resident == 1


def test_run_flags_choose_the_engine_side() -> None:
    """`streamrnn run` runs the engine process by default; --one-process keeps one process."""
    import argparse

    from streamrnn.cli.run import add_arguments, overrides_from

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    default = load_config(None, overrides=overrides_from(parser.parse_args([])))
    one = load_config(None, overrides=overrides_from(parser.parse_args(["--one-process"])))
    assert default.service.engine_process is True and one.service.engine_process is False
