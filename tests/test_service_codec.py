"""streamrnn.service.decode and .checkpoint without a broker: the number and reject policy, the
message formats, checkpoint framing and the local store."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from streamrnn.config import InputConfig
from streamrnn.service.alerts import dlq_headers, event_messages
from streamrnn.service.checkpoint import (
    CheckpointError,
    CheckpointStore,
    LocalCheckpoints,
    decode,
    encode,
)
from streamrnn.service.decode import Decoder
from streamrnn.service.metrics import REJECT_REASONS
from streamrnn.times import iso_times

T0 = 1_700_000_000.0


@dataclass
class Rec:
    value: bytes | None
    key: bytes | None = b"mk"
    topic: str = "t"
    partition: int = 0
    offset: int = 0
    timestamp: int | None = int(T0 * 1000)
    headers: list[Any] | None = None


def _decode(values: list[Any], features: tuple[str, ...] = ("value",), **cfg: Any) -> Any:
    recs = []
    for i, v in enumerate(values):
        rec = (
            v
            if isinstance(v, Rec)
            else Rec(v if isinstance(v, bytes) or v is None else orjson.dumps(v))
        )
        rec.offset = i
        recs.append(rec)
    return Decoder(InputConfig(**cfg), features).decode(recs)


def test_accepts_value_values_and_time_forms() -> None:
    b = _decode(
        [
            {"key": "a", "ts": "2023-11-14T22:13:20Z", "value": 1.5},
            {"key": "a", "ts": T0 + 1, "value": "2.5"},
            {"key": "a", "ts": (T0 + 2) * 1000, "value": 3},
            {"key": 7, "ts": str(T0 + 3), "values": {"value": 4.0, "other": 1}},
            {"value": None},  # key from the message key, time from the record
            {"key": "b", "values": [6.0]},
            {"key": "c", "value": "NaN"},
        ]
    )
    assert b.rejects == []
    assert b.keys == ["a", "a", "a", "7", "mk", "b", "c"]
    np.testing.assert_array_equal(b.times, [T0, T0 + 1, T0 + 2, T0 + 3, T0, T0, T0])
    assert b.values.shape == (7, 1) and b.values.dtype == np.float32
    assert b.values[:4, 0].tolist() == [1.5, 2.5, 3.0, 4.0]
    assert math.isnan(b.values[4, 0]) and math.isnan(b.values[6, 0]) and b.missing == 2
    assert b.offsets.tolist() == list(range(7)) and b.partitions.tolist() == [0] * 7
    assert b.next_offsets == {("t", 0): 7}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not_json"),
        (None, "not_json"),
        (b"[1, 2]", "wrong_shape"),
        ({"key": "a", "value": 1, "values": {"value": 1}}, "wrong_shape"),
        ({"key": "a", "values": 3}, "wrong_shape"),
        ({"key": "a", "values": [1, 2]}, "wrong_shape"),
        ({"key": "a", "values": {"nope": 1}}, "wrong_shape"),
        ({"key": "a", "value": [1]}, "wrong_shape"),
        (Rec(orjson.dumps({"value": 1}), key=None), "missing_key"),
        ({"key": True, "value": 1}, "missing_key"),
        ({"key": "", "value": 1}, "missing_key"),
        ({"key": "a", "ts": T0}, "missing_value"),
        ({"key": "a", "value": "abc"}, "non_numeric_value"),
        ({"key": "a", "value": True}, "non_numeric_value"),
        ({"key": "a", "value": "inf"}, "non_finite_value"),
        ({"key": "a", "value": 1e39}, "non_finite_value"),
        ({"key": "a", "value": 1, "ts": "yesterday"}, "bad_timestamp"),
        ({"key": "a", "value": 1, "ts": 1e30}, "bad_timestamp"),
        ({"key": "a", "value": 1, "ts": False}, "bad_timestamp"),
        (Rec(orjson.dumps({"key": "a", "value": 1}), timestamp=None), "bad_timestamp"),
        # numeric text in JSON's number syntax only: Python's float() takes all of these
        ({"key": "a", "value": "1_000"}, "non_numeric_value"),
        ({"key": "a", "value": " 12.5"}, "non_numeric_value"),
        ({"key": "a", "value": "0x10"}, "non_numeric_value"),
        ({"key": "a", "value": "1."}, "non_numeric_value"),
        # a representable time outside input.min_event_time .. max_event_time (1970 .. 2262)
        ({"key": "a", "value": 1, "ts": -9e10}, "event_time_out_of_window"),
        ({"key": "a", "value": 1, "ts": "2300-01-01T00:00:00Z"}, "event_time_out_of_window"),
        ({"key": "a", "value": 1, "ts": "1969-12-31T23:59:59Z"}, "event_time_out_of_window"),
        (Rec(orjson.dumps({"key": "a", "value": 1}), timestamp=-5), "bad_timestamp"),
    ],
)
def test_rejects_name_their_reason(raw: Any, reason: str) -> None:
    b = _decode([raw, {"key": "ok", "value": 1.0}])
    assert b.keys == ["ok"], "the good record after a bad one is kept"
    assert [r.reason for r in b.rejects] == [reason]
    assert reason in REJECT_REASONS
    assert b.rejects[0].detail and b.rejects[0].record.offset == 0
    assert b.next_offsets == {("t", 0): 2}


def test_multi_feature_values() -> None:
    events = [
        {"key": "a", "values": {"x": 1, "y": 2}},
        {"key": "a", "values": {"y": 3}},
        {"key": "a", "values": [4, None]},
        {"key": "a", "value": 5},
    ]
    # input.features names the event fields; the model's own names do not matter.
    decoder = Decoder(InputConfig(features=("x", "y")), ("f1", "f2"))
    b = decoder.decode([Rec(orjson.dumps(e), offset=i) for i, e in enumerate(events)])
    assert [r.reason for r in b.rejects] == ["wrong_shape"]  # `value` for a 2-feature model
    v = b.values
    assert v.shape == (3, 2)
    assert v[0].tolist() == [1, 2] and math.isnan(v[1, 0]) and v[1, 1] == 3
    assert v[2, 0] == 4 and math.isnan(v[2, 1]) and b.missing == 2


def test_event_messages_and_dlq_headers() -> None:
    b = _decode([{"key": "a", "ts": T0, "value": 1.0}, {"key": "b", "ts": T0 + 0.25, "value": 2.0}])
    pred = np.array([[np.nan], [1.5]], dtype=np.float32)
    scale = np.array([[np.nan], [0.5]], dtype=np.float32)
    score = np.array([0.0, 0.75], dtype=np.float32)
    flag = np.array([False, True])
    msgs = event_messages(
        b,
        np.array([0, 1]),
        prediction=pred,
        scale=scale,
        score=score,
        flag=flag,
        threshold=0.5,
        model_version="lstm-x",
        feature_names=("value",),
    )
    assert [k for k, _ in msgs] == [b"a", b"b"]
    first, second = (orjson.loads(v) for _, v in msgs)
    assert first == {
        "key": "a",
        "ts": "2023-11-14T22:13:20.000Z",
        "value": 1.0,
        "expected": None,
        "score": 0.0,
        "threshold": 0.5,
        "model": "lstm-x",
        "source": {"topic": "t", "partition": 0, "offset": 0},
        "scale": None,
        "flag": False,
    }
    assert second["expected"] == 1.5 and second["score"] == 0.75 and second["flag"] is True
    assert second["scale"] == 0.5
    assert second["ts"] == "2023-11-14T22:13:20.250Z"
    alerts = event_messages(
        b,
        np.array([1]),
        prediction=pred,
        scale=scale,
        score=score,
        flag=None,
        threshold=0.5,
        model_version="m",
        feature_names=("value",),
        fields=[{"site": "north"}],
    )
    alert = orjson.loads(alerts[0][1])
    assert "flag" not in alert and alert["fields"] == {"site": "north"}
    h = dict(dlq_headers("not_json", "bad ✓", "t", 3, 42))
    assert h == {
        "streamrnn.reason": b"not_json",
        "streamrnn.detail": "bad ✓".encode(),
        "streamrnn.source.topic": b"t",
        "streamrnn.source.partition": b"3",
        "streamrnn.source.offset": b"42",
    }
    assert iso_times(np.array([0.0])) == ["1970-01-01T00:00:00.000Z"]


def test_checkpoint_framing_detects_corruption() -> None:
    framed = encode("g", "t", 2, 17, b"snapshot-bytes", keys=3)
    ck = decode(framed)
    assert (ck.group, ck.topic, ck.partition, ck.offset, ck.data) == (
        "g",
        "t",
        2,
        17,
        b"snapshot-bytes",
    )
    assert ck.header["keys"] == 3
    with pytest.raises(CheckpointError, match="corrupt"):
        decode(framed[:-1] + b"X")
    with pytest.raises(CheckpointError, match="magic"):
        decode(b"garbage")


def test_local_store_is_atomic_and_per_partition(tmp_path: Path) -> None:
    local = LocalCheckpoints(tmp_path, "my/group")
    local.check_writable()
    assert local.load("t", 0) is None
    path = local.save("t", 0, encode("my/group", "t", 0, 5, b"a"))
    assert path == tmp_path / "my%2Fgroup" / "t-0.ckpt"
    local.save("t", 0, encode("my/group", "t", 0, 9, b"b"))
    assert local.load("t", 0).offset == 9  # type: ignore[union-attr]
    assert [p.name for p in path.parent.iterdir()] == ["t-0.ckpt"], "no temporary files left"
    store = CheckpointStore(local)
    (path.parent / "t-1.ckpt").write_bytes(b"broken")
    local.save("t", 2, encode("other-group", "t", 2, 1, b"c"))
    found = store.load_many([("t", 0), ("t", 1), ("t", 2), ("t", 3)])
    assert list(found) == [("t", 0)], "corrupt and foreign checkpoints are ignored"


def test_local_store_unwritable(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        local = LocalCheckpoints(blocker, "g")  # a file where the directory should be
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        local = LocalCheckpoints(ro, "g")
    with pytest.raises(OSError):
        local.check_writable()


def test_whole_part_decoding_matches_record_by_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path (a whole partition's records of the common shape at once) gives what the
    record-by-record path gives, and hands irregular parts to it."""
    common = [
        {"key": "a", "ts": T0, "value": 1.5},
        {"key": "b", "ts": int(T0 * 1000) + 250, "value": None},  # epoch ms, missing value
        {"key": "a", "ts": T0 + 60, "value": 7, "unit": "kW"},  # an int, an extra field
        {"key": "c", "ts": int(T0) + 120, "value": -3.25e5},
    ]
    irregular = [*common, {"key": "d", "ts": "2023-11-14T22:13:20Z", "value": "2.5"}]
    bad = [*common, {"key": "", "ts": T0, "value": 1.0}, {"key": "e", "ts": T0, "value": 1e39}]

    def decode(events: list[Any], fast: bool) -> Any:
        if not fast:
            monkeypatch.setattr(Decoder, "_decode_fast", lambda self, part: None)
        try:
            return _decode(events)
        finally:
            monkeypatch.undo()

    calls = []
    real = Decoder._decode_fast

    def spy(self: Decoder, part: Any) -> Any:
        out = real(self, part)
        calls.append(out is not None)
        return out

    for events, took_fast in ((common, True), (irregular, False), (bad, False)):
        calls.clear()
        monkeypatch.setattr(Decoder, "_decode_fast", spy)
        got = _decode(events)
        monkeypatch.undo()
        assert calls == [took_fast]
        want = decode(events, fast=False)
        assert got.keys == want.keys
        np.testing.assert_array_equal(got.times, want.times)
        np.testing.assert_array_equal(got.values, want.values)
        np.testing.assert_array_equal(got.index, want.index)
        np.testing.assert_array_equal(got.offsets, want.offsets)
        assert [(r.index, r.reason) for r in got.rejects] == [
            (r.index, r.reason) for r in want.rejects
        ]
    assert [r.reason for r in _decode(bad).rejects] == ["missing_key", "non_finite_value"]
    b = _decode(common)
    assert b.times[1] == T0 + 0.25 and math.isnan(b.values[1, 0]) and b.values[2, 0] == 7.0


def test_numeric_text_in_json_syntax_is_a_number() -> None:
    b = _decode([{"key": "a", "value": v} for v in ("-0.5", "12", "1e3", "2.5E-2", "NaN")])
    assert not b.rejects
    assert b.values[:4, 0].tolist() == pytest.approx([-0.5, 12.0, 1000.0, 0.025])
    assert np.isnan(b.values[4, 0])


def test_the_event_time_window_is_configurable() -> None:
    from streamrnn.config import InputConfig
    from streamrnn.service.decode import Decoder, Part

    d = Decoder(InputConfig(min_event_time="2020-01-01T00:00:00Z"), ["value"])
    raw = [orjson.dumps({"key": "a", "value": 1, "ts": t}) for t in (1.6e9, 1.5e9)]
    b = d.decode_parts([Part("t", 0, [0, 1], [None, None], [None, None], raw)])
    assert [r.reason for r in b.rejects] == ["event_time_out_of_window"]
    assert b.rejects[0].index == 1
