"""The detector's engine side: decode, step, score and encode one poll at a time.

The service is two halves (see ``docs/design.md``). The Kafka side (:mod:`.app`) polls, publishes,
commits, checkpoints and answers the group; the engine side (:class:`EngineSide`, here) owns the
model, every key's state, the decoder and which partition each key belongs to. What crosses
between them is plain data: a poll as columns (:class:`~.codec.Part`) one way, an
:class:`Outcome` (rejects by position, encoded alert messages, scores and times for the metrics)
the other.

With ``service.engine_process: true`` (the default) the engine side runs in a child process
(:class:`ProcessEngine`): while it steps one poll, the Kafka client parses the next, on another
core. Kafka-python's record parsing and the engine's Python glue both need the interpreter lock,
so threads could not overlap them. With ``false`` it runs inline (:class:`InlineEngine`), in the
same thread. Both present the same calls, so the Kafka side does not know which it has.

The child is started from a fork server that imported this module (and torch) once; it ignores
SIGINT, SIGTERM and SIGHUP (the parent decides when to stop, and finishes the batch first) and
exits when the parent closes the pipe or dies.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing as mp
import signal
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Protocol

import numpy as np
import torch

from ..config import Config
from ..detector.engine import Engine
from ..detector.modeldir import LoadedModel, load_model
from .checkpoint import offsets_key
from .decode import Batch, Decoder, Part, event_messages, iso_times

__all__ = [
    "EngineCallError",
    "EngineClient",
    "EngineGone",
    "EngineSide",
    "InlineEngine",
    "Outcome",
    "ProcessEngine",
    "Reload",
    "Stats",
    "start_engine",
]

log = logging.getLogger(__name__)

TP = tuple[str, int]
START_TIMEOUT_S = 120.0  # the child's import, model load and first device allocation
PIPE_BYTES = 1 << 20  # Linux's default limit for an unprivileged process (fs.pipe-max-size)

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/Unix
    fcntl = None  # type: ignore[assignment]


@dataclass
class Stats:
    """The engine side's counters, sent with every outcome."""

    resident: int  # keys with state
    nbytes: int  # bytes of the state store
    imputed_total: int
    evicted_total: int
    model_version: str


@dataclass
class Outcome:
    """One poll's results, everything the Kafka side needs to publish and commit it.

    ``rejects``: ``(position in the poll, reason, detail)`` of every record to dead-letter, the
    decoder's first, then late events dropped by ``input.late_events: drop``. ``alerts`` and
    ``scores``: encoded ``(key, JSON)`` messages. ``score`` and ``times`` (K,): the processed
    events' scores and event times (the metrics' histograms).
    """

    processed: int
    rejects: list[tuple[int, str, str]]
    alerts: list[tuple[bytes, bytes]]
    scores: list[tuple[bytes, bytes]]
    anomalies: dict[str, int]  # flagged events by topic
    late_scored: int
    moved: list[tuple[str, TP, TP]]  # keys seen on another partition: (key, old, new)
    score: np.ndarray
    times: np.ndarray
    stats: Stats
    seconds: float = 0.0  # the engine side's own time for this poll


@dataclass
class Reload:
    """What a model reload came to: ``outcome`` ok | refused | error, and why."""

    outcome: str
    detail: str = ""
    version: str = ""
    cell: str = ""
    hidden_size: int = 0
    features_changed: bool = False
    stats: Stats | None = None


class EngineGone(RuntimeError):
    """The engine process exited or stopped answering: the detector cannot go on."""


class EngineCallError(Exception):
    """A call failed inside the engine process; the message names the remote exception."""


class EngineSide:
    """Decoder, engine and the key -> partition map; every method is one call from the Kafka side."""

    def __init__(self, config: Config, loaded: LoadedModel, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.engine = Engine(loaded.model, config, device=device, model_version=loaded.version)
        self.decoder = Decoder(config.input, loaded.feature_names)
        self.feature_names = tuple(config.input.features) or loaded.feature_names
        self.key_tp: dict[str, TP] = {}
        self.tp_keys: dict[TP, set[str]] = {}

    def stats(self) -> Stats:
        store = self.engine.store
        return Stats(
            len(store),
            store.nbytes,
            self.engine.imputed_total,
            store.evicted_total,
            self.engine.model_version,
        )

    def process(self, parts: Sequence[Part]) -> Outcome:
        """Decode, step and score one poll; encode its alerts (and scores)."""
        t0 = time.perf_counter()
        batch = self.decoder.decode_parts(parts)
        rejects = [(r.index, r.reason, r.detail) for r in batch.rejects]
        alerts: list[tuple[bytes, bytes]] = []
        scores: list[tuple[bytes, bytes]] = []
        anomalies: Counter[str] = Counter()
        moved: list[tuple[str, TP, TP]] = []
        late_scored = 0
        kept_scores, kept_times = np.zeros(0), np.zeros(0)
        if len(batch):
            res = self.engine.process(batch.keys, batch.times, batch.values)
            moved = self._track_keys(batch)
            kept = ~res.dropped  # (N,)
            for i in np.flatnonzero(res.dropped).tolist():
                ts = iso_times(batch.times[i : i + 1])[0]
                rejects.append(
                    (
                        int(batch.index[i]),
                        "late_event",
                        f"older than the key's previous event (ts {ts})",
                    )
                )
            late_scored = int((res.late & kept).sum())
            svc = self.config.service

            def encode(index: np.ndarray, flag: np.ndarray | None) -> list[tuple[bytes, bytes]]:
                return event_messages(
                    batch,
                    index,
                    prediction=res.prediction,
                    score=res.score,
                    flag=flag,
                    threshold=self.config.scoring.threshold,
                    model_version=self.engine.model_version,
                    feature_names=self.feature_names,
                )

            flagged = np.flatnonzero(res.flag & kept)
            alerts = encode(flagged, None)
            if svc.scores_topic:
                scores = encode(np.flatnonzero(kept), res.flag)
            anomalies = Counter(batch.topics[i] for i in flagged.tolist())
            kept_scores, kept_times = res.score[kept], batch.times[kept]
        return Outcome(
            processed=len(kept_scores),
            rejects=rejects,
            alerts=alerts,
            scores=scores,
            anomalies=dict(anomalies),
            late_scored=late_scored,
            moved=moved,
            score=kept_scores,
            times=kept_times,
            stats=self.stats(),
            seconds=time.perf_counter() - t0,
        )

    def _track_keys(self, batch: Batch) -> list[tuple[str, TP, TP]]:
        """Remember each key's (latest) partition: checkpoints are per partition."""
        moved = []
        key_tp = self.key_tp
        for tp, start, end in batch.spans:
            for key in dict.fromkeys(batch.keys[start:end]):  # each key once, in order
                old = key_tp.get(key)
                if old == tp:
                    continue
                if old is not None:
                    moved.append((key, old, tp))
                    if old in self.tp_keys:
                        self.tp_keys[old].discard(key)
                key_tp[key] = tp
                self.tp_keys.setdefault(tp, set()).add(key)
        return moved

    def keys_of(self, tp: TP) -> list[str]:
        """The keys of ``tp`` that still have state (evicted ones are forgotten here)."""
        store = self.engine.store
        keys = self.tp_keys.get(tp, set())
        kept = [k for k in keys if k in store]
        if len(kept) != len(keys):
            for k in keys.difference(kept):
                if self.key_tp.get(k) == tp:
                    del self.key_tp[k]
            self.tp_keys[tp] = set(kept)
        return kept

    def snapshot(self, items: Sequence[tuple[TP, int, dict[str, Any]]]) -> list[tuple[bytes, int]]:
        """``(data, number of keys)`` of each ``(partition, offset, extra)``: the snapshot of the
        partition's keys, with the offset and the keys in its extra."""
        out = []
        for tp, offset, extra in items:
            keys = self.keys_of(tp)
            data = self.engine.snapshot(
                keys, extra={**extra, "offsets": {offsets_key(*tp): offset}, "keys": keys}
            )
            out.append((data, len(keys)))
        return out

    def restore(self, tp: TP, data: bytes) -> dict[str, Any]:
        """Restore one partition's snapshot; its keys now belong to ``tp``. Returns its extra."""
        extra = self.engine.restore(data)
        keys = [str(k) for k in extra.get("keys", [])]
        for k in keys:
            old = self.key_tp.get(k)
            if old is not None and old != tp and old in self.tp_keys:
                self.tp_keys[old].discard(k)
            self.key_tp[k] = tp
        self.tp_keys.setdefault(tp, set()).update(keys)
        return extra

    def forget(self, tps: Sequence[TP]) -> Stats:
        """Drop the state of every key of ``tps``."""
        gone: list[str] = []
        for tp in tps:
            for k in self.tp_keys.pop(tp, set()):
                if self.key_tp.get(k) == tp:
                    del self.key_tp[k]
                    gone.append(k)
        self.engine.store.drop(gone)
        return self.stats()

    def reload(self, model_dir: str) -> Reload:
        """Swap in the model of ``model_dir`` if it fits the live state; the old one keeps serving
        otherwise."""
        try:
            loaded = load_model(model_dir, self.device)
        except Exception as e:  # a broken or half-written directory
            return Reload("error", str(e))
        n = self.decoder.n_features
        if len(loaded.feature_names) != n:
            return Reload(
                "refused",
                f"{loaded.version} predicts {len(loaded.feature_names)} feature(s) "
                f"({', '.join(loaded.feature_names)}), the running model {n}",
            )
        try:
            self.engine.swap_model(loaded.model, loaded.version)
        except ValueError as e:
            return Reload("refused", str(e))
        m = loaded.config.model
        return Reload(
            "ok",
            version=loaded.version,
            cell=m.cell,
            hidden_size=m.hidden_size,
            features_changed=loaded.config.features != self.config.features,
            stats=self.stats(),
        )


# ----------------------------------------------------------------------------------------------
# The Kafka side's handle on the engine side


class EngineClient(Protocol):
    """How the Kafka side talks to the engine side, inline or in a process.

    ``submit`` hands over a poll and returns at once; ``result`` returns the outcomes in submit
    order. ``call`` runs one :class:`EngineSide` method and needs nothing in flight."""

    stats: Stats

    @property
    def in_flight(self) -> int: ...

    def submit(self, parts: list[Part]) -> None: ...

    def ready(self) -> bool: ...

    def result(self) -> Outcome: ...

    def call(self, method: str, *args: Any) -> Any: ...

    def close(self, timeout_s: float = 10.0) -> None: ...


class InlineEngine:
    """The engine side in this thread: ``submit`` does the work."""

    def __init__(self, side: EngineSide) -> None:
        self.side = side
        self.stats = side.stats()
        self._done: list[Outcome] = []

    @property
    def in_flight(self) -> int:
        return len(self._done)

    def submit(self, parts: list[Part]) -> None:
        self._done.append(self.side.process(parts))

    def ready(self) -> bool:
        """An outcome can be collected without waiting."""
        return bool(self._done)

    def result(self) -> Outcome:
        out = self._done.pop(0)
        self.stats = out.stats
        return out

    def call(self, method: str, *args: Any) -> Any:
        if self._done:
            raise RuntimeError(f"{method}: {len(self._done)} outcome(s) not collected")
        out = getattr(self.side, method)(*args)
        _note_stats(self, out)
        return out

    def close(self, timeout_s: float = 10.0) -> None:
        pass


def _note_stats(client: Any, out: Any) -> None:
    if isinstance(out, Stats):
        client.stats = out
    elif isinstance(out, Reload) and out.stats is not None:
        client.stats = out.stats


class ProcessEngine:
    """The engine side in a child process, over a pipe; one request at a time in order."""

    def __init__(
        self,
        config: Config,
        device: torch.device,
        *,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        # Two one-way pipes of PIPE_BYTES: a poll (a few hundred kB) is written in one go while
        # the child still works on the previous one, so the Kafka side never waits to hand over.
        child_in, self._out = ctx.Pipe(duplex=False)
        self._in, child_out = ctx.Pipe(duplex=False)
        for conn in (self._out, child_out):
            _widen(conn)
        self._proc = ctx.Process(
            target=_child_main,
            args=(
                child_in,
                child_out,
                config,
                str(device),
                logging.getLogger().getEffectiveLevel(),
            ),
            name="streamrnn-engine",
            daemon=True,
        )
        self._proc.start()
        child_in.close()
        child_out.close()
        self._pending = 0
        self._closed = False
        try:
            self.stats: Stats = self._reply(timeout_s=start_timeout_s)
        except BaseException:
            self.close(timeout_s=5.0)  # the child has exited or is told to; no pipe leaks
            raise

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def in_flight(self) -> int:
        return self._pending

    def submit(self, parts: list[Part]) -> None:
        self._send(("process", (parts,)))
        self._pending += 1

    def ready(self) -> bool:
        """An outcome (or the news of the child's end) can be collected without waiting."""
        return self._pending > 0 and (self._in.poll(0) or not self._proc.is_alive())

    def result(self) -> Outcome:
        if not self._pending:
            raise RuntimeError("result(): nothing submitted")
        self._pending -= 1
        out: Outcome = self._reply()
        self.stats = out.stats
        return out

    def call(self, method: str, *args: Any) -> Any:
        if self._pending:
            raise RuntimeError(f"{method}: {self._pending} outcome(s) not collected")
        self._send((method, args))
        out = self._reply()
        _note_stats(self, out)
        return out

    def close(self, timeout_s: float = 10.0) -> None:
        """Ask the child to exit; terminate it when it does not within ``timeout_s``."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError, ValueError):
            self._out.send(("close", ()))
        self._proc.join(timeout_s)
        if self._proc.is_alive():
            log.warning("the engine process did not exit in %.0f s; terminating it", timeout_s)
            self._proc.terminate()
            self._proc.join(5)
        self._out.close()
        self._in.close()

    def _send(self, msg: tuple[str, tuple[Any, ...]]) -> None:
        try:
            self._out.send(msg)
        except (OSError, ValueError) as e:
            raise EngineGone(self._gone_text(f"cannot send to it ({e})")) from None

    def _reply(self, timeout_s: float | None = None) -> Any:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._in.poll(0.5):
            if not self._proc.is_alive():
                raise EngineGone(self._gone_text("it exited"))
            if deadline is not None and time.monotonic() > deadline:
                raise EngineGone(self._gone_text(f"no answer in {timeout_s:.0f} s"))
        try:
            status, payload = self._in.recv()
        except (EOFError, OSError) as e:
            raise EngineGone(self._gone_text(f"the pipe closed ({e!r})")) from None
        if status == "ok":
            return payload
        name, text, tb = payload
        log.debug("engine process traceback:\n%s", tb)
        raise EngineCallError(f"{name}: {text}")

    def _gone_text(self, what: str) -> str:
        code = self._proc.exitcode
        status = f" (exit status {code})" if code is not None else ""
        return f"the engine process (pid {self._proc.pid}): {what}{status}"


def _widen(conn: Connection) -> None:
    """Make the pipe under ``conn`` PIPE_BYTES long where Linux allows it (else keep its size)."""
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if setpipe is None:
        return
    with contextlib.suppress(OSError):
        fcntl.fcntl(conn.fileno(), setpipe, PIPE_BYTES)


def _child_main(
    requests: Connection, replies: Connection, config: Config, device: str, log_level: int
) -> None:
    """The engine process: build the engine side, then answer requests until told to close."""
    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(
        level=log_level, format="%(asctime)s %(levelname)s %(name)s [engine]: %(message)s"
    )
    try:
        dev = torch.device(device)
        loaded = load_model(config.service.model or "", dev)
        side = EngineSide(config, loaded, dev)
    except BaseException as e:
        replies.send(("err", (type(e).__name__, str(e), traceback.format_exc())))
        return
    # Out of the collector's sight from now on (torch, the model): see Detector.run.
    gc.collect()
    gc.freeze()
    replies.send(("ok", side.stats()))
    while True:
        try:
            method, args = requests.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if method == "close":
            return
        try:
            out = getattr(side, method)(*args)
        except Exception as e:
            replies.send(("err", (type(e).__name__, str(e), traceback.format_exc())))
            continue
        replies.send(("ok", out))


def start_engine(config: Config, loaded: LoadedModel, device: torch.device) -> EngineClient:
    """The engine side by ``service.engine_process``: a child process, or inline with ``loaded``."""
    if config.service.engine_process:
        return ProcessEngine(config, device)
    return InlineEngine(EngineSide(config, loaded, device))
