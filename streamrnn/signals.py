"""Signal handling: the one place that installs handlers and puts the previous ones back.

Handlers can only be installed from the main thread; elsewhere (a detector or a producer run in a
test's thread) nothing is installed and the returned restorer does nothing.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ignore_signals", "on_signals", "on_stop_signals"]

Restore = Callable[[], None]


def on_signals(handlers: Mapping[int, Callable[[int], None]]) -> Restore:
    """Install ``{signal number: handler(signum)}``; returns the restorer of the previous ones."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def wrap(handler: Callable[[int], None]) -> Callable[[int, Any], None]:
        return lambda signum, _frame: handler(signum)

    previous = {s: signal.signal(s, wrap(h)) for s, h in handlers.items()}

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    return restore


def on_stop_signals(stop: Callable[[str], None], **more: Callable[[int], None]) -> Restore:
    """SIGTERM and SIGINT call ``stop(signal name)``; a second Ctrl+C then raises
    KeyboardInterrupt as usual. ``more`` adds handlers by signal name (``SIGHUP=...``), skipped
    where the platform lacks the signal. Returns the restorer."""

    def on_stop(signum: int) -> None:
        stop(signal.Signals(signum).name)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    handlers: dict[int, Callable[[int], None]] = {signal.SIGTERM: on_stop, signal.SIGINT: on_stop}
    for name, handler in more.items():
        if hasattr(signal, name):
            handlers[getattr(signal, name)] = handler
    return on_signals(handlers)


def ignore_signals() -> None:
    """Ignore SIGINT, SIGTERM and SIGHUP (a child process whose parent decides when to stop)."""
    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)
