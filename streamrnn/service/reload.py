"""Model reloads: on SIGHUP, or when the model directory's ``model.json`` changes.

The directory is checked every ``service.model_poll_interval_s`` (0: only on SIGHUP). A reload
first drains what is in flight, then asks the engine side to swap the model in; an incompatible
model (another state layout or feature count) is refused and a broken directory is an error:
either way the old model keeps serving (``streamrnn_model_reloads_total{outcome}``). A model
trained with other ``features`` settings is swapped in, but the running normaliser settings stay
until restart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from ..detector.modeldir import INFO
from .engine_process import EngineClient
from .metrics import Metrics

__all__ = ["ModelWatcher"]

log = logging.getLogger(__name__)


class ModelWatcher:
    """Reloads the model of ``model_dir`` when asked or when its ``model.json`` changed."""

    def __init__(
        self, model_dir: str, poll_interval_s: float, metrics: Metrics, device: str, now: float
    ) -> None:
        self.model_dir = model_dir
        self.poll_interval_s = poll_interval_s
        self.metrics = metrics
        self.device = device
        self.requested = threading.Event()
        self._signature = self._read_signature()
        self._next_check = now + poll_interval_s

    def request(self) -> None:
        """Reload at the loop's next iteration (what SIGHUP does)."""
        self.requested.set()

    def _read_signature(self) -> tuple[int, int] | None:
        try:
            st = (Path(self.model_dir) / INFO).stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def check(self, now: float, engine: EngineClient, drain: Callable[[], bool]) -> None:
        """Reload if asked, or if the directory changed (looked at once per poll interval)."""
        if not self.requested.is_set() and not (self.poll_interval_s and now >= self._next_check):
            return
        self._next_check = now + self.poll_interval_s
        forced = self.requested.is_set()
        self.requested.clear()
        sig = self._read_signature()
        if not forced and (sig is None or sig == self._signature):
            return
        self._signature = sig
        if drain():
            self._reload(engine)

    def _reload(self, engine: EngineClient) -> None:
        old = engine.stats.model_version
        r = engine.reload(self.model_dir)
        self.metrics.model_reload(r.outcome)
        if r.outcome == "error":  # a broken or half-written directory: keep serving the old model
            log.error(
                "model reload from %s failed: %s; still serving %s", self.model_dir, r.detail, old
            )
            return
        if r.outcome != "ok":
            log.error("model reload refused: %s; still serving %s", r.detail, old)
            return
        if r.features_changed:
            log.warning(
                "model %s was trained with other features settings; the running "
                "normaliser settings stay until restart",
                r.version,
            )
        self.metrics.set_model(r.version, r.cell, r.hidden_size, self.device)
        log.info(
            "model reloaded: %s -> %s (state of %d key(s) kept)",
            old,
            r.version,
            engine.stats.resident,
        )
