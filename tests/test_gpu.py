"""The CUDA path against the CPU: cells, the engine, snapshots and the service's engine child.

The tests marked ``gpu`` run cuda against cpu and are skipped without a CUDA device
(``pytest -m gpu`` on a machine with one; ``bench/gpu.sh`` runs them first). Each of them has a
twin here that runs the same comparison (tests/devicetools.py) cpu against cpu on every CI run,
where the answer must be exact, so the checking code itself is tested.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from devicetools import (
    assert_same_results,
    cell_gap,
    child_owns_device,
    engine_gap,
    gap_config,
    gap_stream,
    make_engine,
    run_stream,
    snapshot_round_trip,
)

from streamrnn.detector.host import Staging

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

CELL_ATOL = 1e-5  # fp32 cells, the bound
SCORE_ATOL = 1e-4  # the engine's scores after a stream


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cell_gap_is_zero_on_one_device(cell: str) -> None:
    assert cell_gap(cell, "cpu", "cpu") == 0.0


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_engine_gap_is_zero_on_one_device(cell: str) -> None:
    g = engine_gap("cpu", "cpu", cell=cell)
    assert g.evicted[0] == g.evicted[1] > 0, "the stream must evict"
    assert g.imputed[0] == g.imputed[1] > 0, "the stream must have missing values"
    assert g.a.late.any() and g.a.flag.any() and (g.a.score > 0).any()
    assert_same_results(g.a, g.b, atol=0.0)


def test_engine_gap_catches_a_difference() -> None:
    """The comparison is not blind: one score moved by twice the tolerance fails it."""
    g = engine_gap("cpu", "cpu")
    i = int(g.b.score.argmax())
    g.b.score[i] -= 2 * SCORE_ATOL
    with pytest.raises(AssertionError):
        assert_same_results(g.a, g.b, atol=SCORE_ATOL)


@pytest.mark.parametrize("late", ["score", "drop"])
def test_gpu_transfer_path_on_the_cpu(late: str) -> None:
    """The GPU's way in and out of Engine.process (host buffers reused across batches, the wave
    order applied and undone on the device) gives exactly the CPU's results."""
    cfg = gap_config(late=late)
    keys, times, values = gap_stream()
    plain, staged = make_engine("cpu", cfg), make_engine("cpu", cfg)
    staged._staging = Staging(torch.device("cpu"))
    sizes = [37, 1, 64, 11, 200]  # the buffers grow, then serve smaller batches
    want = run_stream(plain, keys, times, values, sizes)
    got = run_stream(staged, keys, times, values, sizes)
    assert_same_results(got, want, atol=0.0)
    assert staged._staging._in.numel() >= 200


def test_snapshot_round_trip_on_one_device() -> None:
    snapshot_round_trip("cpu", "cpu")


def test_engine_child_on_the_cpu() -> None:
    r = child_owns_device("cpu")
    assert r["processed"][0] == r["processed"][1] > 0
    assert r["resident"] == [6, 6]
    assert r["score_gap"] == 0.0
    assert not r["parent_cuda_initialized"]


# ----------------------------------------------------------------------------------------------
# On a CUDA device


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.gpu
@needs_cuda
def test_cells_on_cuda_match_the_cpu(cell: str) -> None:
    gap = cell_gap(cell, "cuda", "cpu")
    assert gap <= CELL_ATOL, f"{cell} on cuda differs from the cpu by {gap:.2e}"


@pytest.mark.parametrize(("cell", "late"), [("lstm", "score"), ("gru", "score"), ("lstm", "drop")])
@pytest.mark.gpu
@needs_cuda
def test_engine_on_cuda_scores_as_on_the_cpu(cell: str, late: str) -> None:
    g = engine_gap("cuda", "cpu", cell=cell, late=late)
    assert g.evicted[0] == g.evicted[1] > 0
    assert g.imputed[0] == g.imputed[1]
    assert_same_results(g.a, g.b, atol=SCORE_ATOL)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.gpu
@needs_cuda
def test_snapshot_on_cuda_restores_on_the_cpu_and_back(cell: str) -> None:
    snapshot_round_trip("cuda", "cpu", cell=cell)


@pytest.mark.gpu
@needs_cuda
def test_snapshot_on_the_cpu_restores_on_cuda() -> None:
    snapshot_round_trip("cpu", "cuda")


@pytest.mark.gpu
@needs_cuda
def test_service_engine_child_owns_the_device() -> None:
    r = child_owns_device("cuda")
    assert r["child_maps_libcuda"], "the engine child never loaded the CUDA driver"
    assert not r["parent_cuda_initialized"], "the Kafka side initialised CUDA"
    assert r["processed"][0] == r["processed"][1] > 0
    assert r["resident"] == [6, 6]
    assert r["score_gap"] <= SCORE_ATOL
    assert r["alerts"][0] == r["alerts"][1]


@pytest.mark.gpu
@needs_cuda
def test_no_host_synchronisation_inside_a_wave() -> None:
    """A batch of ten waves waits for the device as often as a batch of one (its one wait for
    the results), counted by torch's synchronisation debug mode."""
    cfg = gap_config(max_keys=64)
    engine = make_engine("cuda", cfg)
    keys = [f"k{i}" for i in range(50)]

    def waits(n_waves: int, t0: float) -> int:
        batch = keys * n_waves
        times = t0 + 60.0 * (torch.arange(len(batch)) // len(keys)).double().numpy()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                engine.process(batch, times, torch.ones(len(batch), 2).numpy())
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in seen)

    waits(10, 1.7e9)  # every key resident and the host buffers grown: nothing left to set up
    one, ten = waits(1, 1.8e9), waits(10, 1.9e9)
    assert ten == one <= 1, f"{one} waits for one wave, {ten} for ten"
