"""The Kafka side's handle on the engine side: inline, or in a child process.

:class:`EngineClient` is the one protocol the Kafka side talks to, with a real method for each
thing it asks (:meth:`~EngineClient.submit` / :meth:`~EngineClient.result` for polls;
:meth:`~EngineClient.snapshot`, :meth:`~EngineClient.restore`, :meth:`~EngineClient.forget`,
:meth:`~EngineClient.reload` and :meth:`~EngineClient.fetch_stats` for the state). Two classes
implement it:

* :class:`InlineEngine` (``service.engine_process: false``): the :class:`~.worker.EngineSide` in
  this thread; ``submit`` does the work.
* :class:`ProcessEngine` (the default): the engine side in a child process, so that while it
  steps one poll the Kafka client parses the next on another core. Kafka-python's record parsing
  and the engine's Python glue both need the interpreter lock, so threads could not overlap them.

Both run a request as ``method(side, *args)`` with ``method`` one of :class:`~.worker.EngineSide`'s
own functions, so mypy checks every call's arguments and result, and a reader can follow a call
to the code that answers it. Over the pipe the request is the pickled function reference and its
arguments; the answer is ``("ok", result)`` or ``("err", (type, text, traceback))``.

The child is started from a fork server that imported this module (and torch) once, from
:class:`~.worker.EngineSettings` (not the service's config); it loads the model itself, ignores
SIGINT, SIGTERM and SIGHUP (the parent decides when to stop, and finishes the batch first) and
exits when the parent closes the pipe or dies.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing as mp
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from ..signals import ignore_signals
from .alerts import Headers
from .decode import Part
from .worker import EngineSettings, EngineSide, ModelDirError, Outcome, Reload, Stats

__all__ = [
    "EngineCallError",
    "EngineClient",
    "EngineGone",
    "InlineEngine",
    "ProcessEngine",
    "start_engine",
]

log = logging.getLogger(__name__)

TP = tuple[str, int]
START_TIMEOUT_S = 120.0  # the child's import, model load and first device allocation
PIPE_BYTES = 1 << 20  # Linux's default limit for an unprivileged process (fs.pipe-max-size)
P = ParamSpec("P")
T = TypeVar("T")

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/Unix
    fcntl = None  # type: ignore[assignment]


class EngineGone(RuntimeError):
    """The engine process exited or stopped answering: the detector cannot go on."""


class EngineCallError(Exception):
    """A call failed inside the engine process; the message names the remote exception."""


class EngineClient(Protocol):
    """How the Kafka side talks to the engine side, inline or in a process.

    ``submit`` hands over a poll and returns at once; ``result`` returns the outcomes in submit
    order. The state calls need nothing in flight (``RuntimeError`` otherwise). ``stats`` is the
    latest :class:`~.worker.Stats` any answer carried."""

    stats: Stats

    @property
    def in_flight(self) -> int: ...

    def submit(self, parts: list[Part], headers: Mapping[int, Headers] | None = None) -> None: ...

    def ready(self) -> bool: ...

    def result(self) -> Outcome: ...

    def snapshot(self, items: Sequence[tuple[TP, dict[str, Any]]]) -> list[tuple[bytes, int]]: ...

    def restore(self, tp: TP, data: bytes) -> dict[str, Any]: ...

    def forget(self, tps: Sequence[TP]) -> Stats: ...

    def reload(self, model_dir: str) -> Reload: ...

    def fetch_stats(self) -> Stats: ...

    def close(self, timeout_s: float = 10.0) -> None: ...


class _StateCalls:
    """The state calls of :class:`EngineClient`, each one typed request through :meth:`_call`."""

    stats: Stats

    def _call(
        self, method: Callable[Concatenate[EngineSide, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        raise NotImplementedError

    def snapshot(self, items: Sequence[tuple[TP, dict[str, Any]]]) -> list[tuple[bytes, int]]:
        return self._call(EngineSide.snapshot, list(items))

    def restore(self, tp: TP, data: bytes) -> dict[str, Any]:
        return self._call(EngineSide.restore, tp, data)

    def forget(self, tps: Sequence[TP]) -> Stats:
        self.stats = self._call(EngineSide.forget, list(tps))
        return self.stats

    def reload(self, model_dir: str) -> Reload:
        r = self._call(EngineSide.reload, model_dir)
        if r.stats is not None:
            self.stats = r.stats
        return r

    def fetch_stats(self) -> Stats:
        self.stats = self._call(EngineSide.stats)
        return self.stats


class InlineEngine(_StateCalls):
    """The engine side in this thread: ``submit`` does the work."""

    def __init__(self, side: EngineSide) -> None:
        self.side = side
        self.stats = side.stats()
        self._done: list[Outcome] = []

    @property
    def in_flight(self) -> int:
        return len(self._done)

    def submit(self, parts: list[Part], headers: Mapping[int, Headers] | None = None) -> None:
        self._done.append(self.side.process(parts, headers))

    def ready(self) -> bool:
        """An outcome can be collected without waiting."""
        return bool(self._done)

    def result(self) -> Outcome:
        out = self._done.pop(0)
        self.stats = out.stats
        return out

    def _call(
        self, method: Callable[Concatenate[EngineSide, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        if self._done:
            raise RuntimeError(f"{method.__name__}: {len(self._done)} outcome(s) not collected")
        return method(self.side, *args, **kwargs)

    def close(self, timeout_s: float = 10.0) -> None:
        pass


class ProcessEngine(_StateCalls):
    """The engine side in a child process, over a pipe; one request at a time in order."""

    def __init__(self, settings: EngineSettings, *, start_timeout_s: float = START_TIMEOUT_S):
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        # Two one-way pipes of PIPE_BYTES: a poll (a few hundred kB) is written in one go while
        # the child still works on the previous one, so the Kafka side never waits to hand over.
        child_in, self._out = ctx.Pipe(duplex=False)
        self._in, child_out = ctx.Pipe(duplex=False)
        for conn in (self._out, child_out):
            _widen(conn)
        level = logging.getLogger().getEffectiveLevel()
        self._proc = ctx.Process(
            target=_child_main,
            args=(child_in, child_out, settings, level),
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

    def submit(self, parts: list[Part], headers: Mapping[int, Headers] | None = None) -> None:
        self._send((EngineSide.process, (parts, dict(headers or {}))))
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

    def _call(
        self, method: Callable[Concatenate[EngineSide, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        if self._pending:
            raise RuntimeError(f"{method.__name__}: {self._pending} outcome(s) not collected")
        self._send((method, args))
        result: T = self._reply()
        return result

    def close(self, timeout_s: float = 10.0) -> None:
        """Ask the child to exit; terminate it when it does not within ``timeout_s``."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError, ValueError):
            self._out.send(None)
        self._proc.join(timeout_s)
        if self._proc.is_alive():
            log.warning("the engine process did not exit in %.0f s; terminating it", timeout_s)
            self._proc.terminate()
            self._proc.join(5)
        self._out.close()
        self._in.close()

    def _send(self, msg: tuple[Callable[..., Any], tuple[Any, ...]]) -> None:
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
        if name == ModelDirError.__name__:
            raise ModelDirError(text)
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


def _error(e: BaseException) -> tuple[str, tuple[str, str, str]]:
    return "err", (type(e).__name__, str(e), traceback.format_exc())


def _child_main(
    requests: Connection, replies: Connection, settings: EngineSettings, log_level: int
) -> None:
    """The engine process: build the engine side, then answer requests until told to close."""
    ignore_signals()
    logging.basicConfig(
        level=log_level, format="%(asctime)s %(levelname)s %(name)s [engine]: %(message)s"
    )
    try:
        side = EngineSide(settings)
    except BaseException as e:
        replies.send(_error(e))
        return
    # Out of the collector's sight from now on (torch, the model): see Detector.run.
    gc.collect()
    gc.freeze()
    replies.send(("ok", side.stats()))
    while True:
        try:
            request = requests.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if request is None:  # close
            return
        method, args = request
        try:
            out = method(side, *args)
        except Exception as e:
            replies.send(_error(e))
            continue
        replies.send(("ok", out))


def start_engine(settings: EngineSettings, *, child_process: bool) -> EngineClient:
    """The engine side in a child process (``child_process``), or inline in this thread."""
    if child_process:
        return ProcessEngine(settings)
    return InlineEngine(EngineSide(settings))
