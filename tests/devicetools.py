"""One computation on two devices, compared: the checks behind tests/test_gpu.py.

Each helper takes the two devices as arguments, so the same code runs cuda against cpu in the
gpu-marked tests (on a machine with a CUDA device) and cpu against cpu in the ordinary suite,
where the answer must be exact: what the CUDA run relies on is exercised on every CI run.

- :func:`cell_gap`: an LSTM or GRU cell stepped on both devices from the same weights and
  inputs, each device feeding its own state back; the largest difference seen.
- :func:`engine_gap`: the same stream through two engines (waves, late events, eviction);
  :func:`assert_same_results` checks the results against a tolerance.
- :func:`snapshot_round_trip`: state snapshotted on one device, restored on the other and back;
  the fields must be bit-identical, and the restored engine goes on as the original does.
- :func:`child_owns_device`: run in a fresh interpreter (``python -m devicetools DEVICE``), the
  service's engine child process steps a poll on the device while the parent never initialises
  CUDA.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamrnn.config import Config, load_config
from streamrnn.detector.engine import Engine, Results
from streamrnn.detector.model import Forecaster, GRUCell, LSTMCell

HERE = Path(__file__).resolve().parent


def cell_gap(
    cell: str, device: str, ref: str = "cpu", *, batch: int = 64, steps: int = 30, seed: int = 0
) -> float:
    """Largest absolute difference between ``cell`` (lstm | gru, 5 inputs, 64 hidden) stepped
    ``steps`` times on ``device`` and on ``ref``, same weights and inputs, fp32."""
    torch.manual_seed(seed)
    cls = LSTMCell if cell == "lstm" else GRUCell
    base = cls(5, 64)
    a, b = cls(5, 64).to(device), cls(5, 64).to(ref)
    a.load_state_dict(base.state_dict())
    b.load_state_dict(base.state_dict())
    xs = torch.randn(steps, batch, 5)  # (T, B, I)
    slots = 2 if cell == "lstm" else 1
    state0 = torch.randn(slots, batch, 64) * 0.5  # (slots, B, H)
    sa = [s.to(device) for s in state0]
    sb = [s.to(ref) for s in state0]
    gap = 0.0
    with torch.no_grad():
        for x in xs:
            if cell == "lstm":
                sa = list(a(x.to(device), (sa[0], sa[1])))
                sb = list(b(x.to(ref), (sb[0], sb[1])))
            else:
                sa = [a(x.to(device), sa[0])]
                sb = [b(x.to(ref), sb[0])]
            for u, v in zip(sa, sb, strict=True):
                gap = max(gap, (u.cpu() - v.cpu()).abs().max().item())
    return gap


def gap_config(cell: str = "lstm", max_keys: int = 5, late: str = "score") -> Config:
    """A config that reaches scoring and flagging within a short stream, and evicts."""
    return load_config(
        None,
        overrides={
            "model.cell": cell,
            "model.hidden_size": 32,
            "model.num_layers": 2,
            "scoring.warmup": 20,
            "scoring.cooldown": 5,
            "state.max_keys": max_keys,
            "state.initial_capacity": 2,  # the banks grow on the way
            "input.late_events": late,
        },
    )


def gap_stream(
    n_keys: int = 8, n_steps: int = 120, seed: int = 3
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Keys of different scales with spikes, missing values and late events, in an order where
    keys go quiet and come back (so that ``state.max_keys`` below ``n_keys`` evicts)."""
    rng = np.random.default_rng(seed)
    keys: list[str] = []
    times: list[float] = []
    values: list[list[float]] = []
    for j in range(n_steps):
        # Each step a rotating subset of the keys: the others are idle and become eviction's victims.
        active = [i for i in range(n_keys) if (i + j // 10) % n_keys < n_keys - 3]
        # ... in a different order each step, so that a batch's wave order is not its arrival order.
        active = [active[x] for x in rng.permutation(len(active))]
        for i in active:
            scale = 10.0 ** (i % 3)
            v = scale * (5 + np.sin(2 * np.pi * j / 24)) + rng.normal() * 0.1 * scale
            if j % 29 == 7 and i == active[0]:
                v += 40 * scale  # a spike
            t = 1.7e9 + 60.0 * j
            if j % 17 == 5 and i == active[-1]:
                t -= 600.0  # late
            keys.append(f"k{i}")
            times.append(t)
            values.append([v, np.nan if (i + j) % 23 == 0 else v / scale])
    return keys, np.array(times), np.array(values, dtype=np.float32)


def make_engine(device: str, cfg: Config, *, seed: int = 0, n_values: int = 2) -> Engine:
    torch.manual_seed(seed)
    return Engine(Forecaster(cfg.model, n_values=n_values, n_extra=4), cfg, device=device)


def run_stream(
    engine: Engine, keys: list[str], times: np.ndarray, values: np.ndarray, sizes: list[int]
) -> Results:
    """The stream in batches of the given sizes, cycled; the results concatenated."""
    parts = []
    pos, i = 0, 0
    while pos < len(keys):
        hi = pos + sizes[i % len(sizes)]
        parts.append(engine.process(keys[pos:hi], times[pos:hi], values[pos:hi]))
        pos, i = hi, i + 1
    return Results(
        *(np.concatenate(cols) for cols in zip(*(vars(p).values() for p in parts), strict=True))
    )


@dataclass
class EngineGap:
    a: Results
    b: Results
    evicted: tuple[int, int]
    imputed: tuple[int, int]


def engine_gap(
    device: str, ref: str = "cpu", *, cell: str = "lstm", late: str = "score"
) -> EngineGap:
    """One stream through an engine on ``device`` and one on ``ref`` (same model, batches of
    several waves each, more keys than ``state.max_keys``)."""
    cfg = gap_config(cell, late=late)
    keys, times, values = gap_stream()
    out = []
    for dev in (device, ref):
        engine = make_engine(dev, cfg)
        res = run_stream(engine, keys, times, values, [37, 1, 64, 11])
        out.append((res, engine.store.evicted_total, engine.imputed_total))
    (a, ea, ia), (b, eb, ib) = out
    return EngineGap(a, b, (ea, eb), (ia, ib))


def assert_same_results(a: Results, b: Results, atol: float, threshold: float = 0.8) -> None:
    """Scores and errors within ``atol``; predictions and scales within ``atol`` relative;
    the boolean columns equal, except a flag whose score lies within ``atol`` of ``threshold``."""
    np.testing.assert_array_equal(a.late, b.late)
    np.testing.assert_array_equal(a.dropped, b.dropped)
    np.testing.assert_allclose(a.score, b.score, rtol=0, atol=atol)
    np.testing.assert_allclose(a.error, b.error, rtol=atol, atol=atol)
    np.testing.assert_allclose(a.prediction, b.prediction, rtol=atol, atol=atol, equal_nan=True)
    np.testing.assert_allclose(a.scale, b.scale, rtol=atol, atol=atol, equal_nan=True)
    differ = a.flag != b.flag
    near = np.abs(a.score - threshold) <= atol
    assert not (differ & ~near).any(), f"flags differ at events {np.nonzero(differ & ~near)[0]}"
    if not differ.any():
        np.testing.assert_array_equal(a.since_flag, b.since_flag)


def _fields(data: bytes) -> tuple[list[str], dict[str, torch.Tensor]]:
    payload = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    return payload["keys"], payload["fields"]


def assert_same_fields(x: bytes, y: bytes) -> None:
    """Two snapshots hold the same keys with bit-identical fields (NaN included)."""
    kx, fx = _fields(x)
    ky, fy = _fields(y)
    assert sorted(kx) == sorted(ky)
    ix = {k: i for i, k in enumerate(kx)}
    perm = torch.tensor([ix[k] for k in ky], dtype=torch.int64)
    assert set(fx) == set(fy)
    for name in fx:
        a, b = fx[name][perm], fy[name]
        assert a.dtype == b.dtype and a.shape == b.shape, name
        # Compare the bits: exact, and NaN equal to itself.
        assert torch.equal(_bits(a), _bits(b)), f"field {name} differs after the round trip"


def _bits(t: torch.Tensor) -> torch.Tensor:
    size = t.element_size()
    return t.contiguous().view(
        {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[size]
    )


def snapshot_round_trip(device: str, other: str = "cpu", *, cell: str = "lstm") -> None:
    """State built on ``device``, snapshotted, restored on ``other`` and from there back on
    ``device``: the fields are the same bits at every stop, and the engine restored back on
    ``device`` scores the rest of the stream exactly as the one that never stopped."""
    cfg = gap_config(cell, max_keys=16)
    keys, times, values = gap_stream()
    half = len(keys) // 2
    original = make_engine(device, cfg)
    run_stream(original, keys[:half], times[:half], values[:half], [40])
    first = original.snapshot()
    there = make_engine(other, cfg, seed=1)  # other weights: the state alone travels
    there.restore(first)
    second = there.snapshot()
    assert_same_fields(first, second)
    back = make_engine(device, cfg, seed=2)
    back.restore(second)
    third = back.snapshot()
    assert_same_fields(first, third)
    back.swap_model(original.model, "same")  # the same weights, for the rest of the stream
    want = run_stream(original, keys[half:], times[half:], values[half:], [40])
    got = run_stream(back, keys[half:], times[half:], values[half:], [40])
    assert_same_results(got, want, atol=0.0)
    assert_same_fields(original.snapshot(), back.snapshot())


# ----------------------------------------------------------------------------------------------
# The service's engine child on the device


def child_owns_device(device: str, timeout: float = 300.0) -> dict[str, Any]:
    """Run :func:`_child_check` in a fresh interpreter; its JSON report."""
    proc = subprocess.run(
        [sys.executable, "-m", "devicetools", device],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"the check failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child_check(device: str) -> dict[str, Any]:
    """The service's engine settings on ``device``, the engine side in its child process: one
    poll through it and through an inline engine side on the CPU. Reports whether this (the
    parent) process initialised CUDA, whether the child mapped the CUDA driver, and the
    largest score difference."""
    import tempfile

    from servicetools import event_json, make_events, model_dir, service_config

    from streamrnn.service.decode import Part
    from streamrnn.service.engine_process import InlineEngine, ProcessEngine
    from streamrnn.service.worker import EngineSettings, EngineSide

    with tempfile.TemporaryDirectory() as tmp:
        raw = service_config("127.0.0.1:9", "t", "g", model_dir(), Path(tmp) / "state")
        raw["scoring"]["warmup"] = 5
        raw["state"]["device"] = device
        cfg = load_config(raw)
        settings = EngineSettings.of(cfg, device)
        events = make_events(6, 40, seed=5, spikes=[(2, 30)])
        recs = [(e.key.encode(), event_json(e)) for e in events]
        part = Part(
            "t",
            0,
            list(range(len(recs))),
            [int(1.7e12)] * len(recs),
            [k for k, _ in recs],
            [v for _, v in recs],
        )
        remote = ProcessEngine(settings)
        try:
            remote.submit([part])
            got = remote.result()
            pid = remote.pid
            maps = Path(f"/proc/{pid}/maps").read_text() if pid else ""
        finally:
            remote.close()
        parent_cuda = torch.cuda.is_initialized()
        cpu = InlineEngine(EngineSide(EngineSettings.of(cfg, "cpu")))
        cpu.submit([part])
        want = cpu.result()
    return {
        "device": device,
        "parent_cuda_initialized": parent_cuda,
        "child_maps_libcuda": "libcuda" in maps,
        "processed": [got.processed, want.processed],
        "resident": [got.stats.resident, want.stats.resident],
        "score_gap": float(np.max(np.abs(got.score - want.score))) if len(got.score) else 0.0,
        "alerts": [len(got.alerts), len(want.alerts)],
    }


if __name__ == "__main__":
    print(json.dumps(_child_check(sys.argv[1])))
