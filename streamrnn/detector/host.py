"""Host-side helpers of the engine: glibc's malloc thresholds, intra-op threads, staging buffers.

None of this changes a number the engine computes; it decides where the host's memory and
threads go (docs/benchmarks.md says what each bought).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger("streamrnn.detector.engine")

_MALLOC_TUNED = False
# glibc mallopt parameters: keep freed blocks up to this size in the heap, and map only bigger ones.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_TRIM_BYTES, _MMAP_BYTES = 256 << 20, 64 << 20


def tune_malloc() -> bool:
    """Keep a wave's freed temporaries in glibc's heap instead of handing them back to the kernel.

    With glibc's defaults, the megabyte-sized temporaries of each CPU wave are unmapped or trimmed
    when freed and page-faulted back on the next wave: up to half of a 10k-key wave's time and
    most of the run-to-run variance (docs/benchmarks.md). This sets ``M_MMAP_THRESHOLD`` (64 MiB)
    and ``M_TRIM_THRESHOLD`` (256 MiB) once per process; a process keeps at most that much freed
    memory. Nothing happens off glibc, when ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_``
    is set, or with ``STREAMRNN_MALLOC_TUNING=0``. Returns whether the settings were applied.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return True
    env = os.environ
    if (
        not sys.platform.startswith("linux")
        or env.get("STREAMRNN_MALLOC_TUNING", "1") == "0"
        or "MALLOC_MMAP_THRESHOLD_" in env
        or "MALLOC_TRIM_THRESHOLD_" in env
    ):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    ok = (
        mallopt(_M_MMAP_THRESHOLD, _MMAP_BYTES) == 1
        and mallopt(_M_TRIM_THRESHOLD, _TRIM_BYTES) == 1
    )
    _MALLOC_TUNED = ok
    log.debug("glibc malloc thresholds %s", "set" if ok else "not set")
    return ok


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (0: as configured), restoring the setting after."""
    before = torch.get_num_threads()
    if n <= 0 or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Staging:
    """Host buffers for one engine's batches, reused and grown by doubling; page-locked on a
    CUDA device (its copies then do not block), plain memory elsewhere (tests run this path on
    the CPU).

    ``inbound`` hands out the buffer the host writes the next batch into; it first waits for the
    previous batch's copy out of it (:meth:`sent` marks that copy). ``outbound`` copies a device
    tensor into the outbound buffer without blocking, waits for that copy alone and returns the
    buffer as a NumPy view, valid until the next call (copy what must outlive it).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pinned = device.type == "cuda"
        self._in = torch.empty(0, dtype=torch.float64)
        self._out = torch.empty(0, dtype=torch.float32)
        self._in_done = torch.cuda.Event() if self.pinned else None
        self._out_done = torch.cuda.Event() if self.pinned else None

    def _room(self, buf: Tensor, numel: int) -> Tensor:
        if buf.numel() >= numel:
            return buf
        size = max(numel, 2 * buf.numel())
        return torch.empty(size, dtype=buf.dtype, pin_memory=self.pinned)

    def inbound(self, n: int, width: int) -> Tensor:
        if self._in_done is not None:
            self._in_done.synchronize()  # the previous batch's copy has left the buffer
        self._in = self._room(self._in, n * width)
        return self._in[: n * width].view(n, width)  # (n, width)

    def sent(self) -> None:
        if self._in_done is not None:
            self._in_done.record(torch.cuda.current_stream(self.device))

    def outbound(self, src: Tensor) -> np.ndarray:
        self._out = self._room(self._out, src.numel())
        dst = self._out[: src.numel()].view(src.shape)
        dst.copy_(src, non_blocking=self.pinned)
        if self._out_done is not None:
            self._out_done.record(torch.cuda.current_stream(self.device))
            self._out_done.synchronize()  # the one wait of a batch: its results are on the host
        return dst.numpy()
