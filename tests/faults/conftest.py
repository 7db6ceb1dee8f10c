"""The fault suite's fixtures: a hard time bound on every test, and a broker of its own.

Every test here is bounded twice: each wait names its own timeout, and :func:`bounded` arms an
interval timer that fails the test (``FaultTimeout``) if it runs past ``FAULT_TEST_LIMIT_S``
anyway, so the suite always stops by itself. Tests that kill, pause or restart a broker get
their own (:func:`own_broker`), never the session's shared one.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from streamrnn.tools.broker import BrokerNotInstalledError, EmbeddedBroker, find_tansu

FAULT_TEST_LIMIT_S = 240.0


class FaultTimeout(Exception):
    """A fault test ran past its hard bound."""


@pytest.fixture(autouse=True)
def bounded(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if it runs longer than ``FAULT_TEST_LIMIT_S`` (or its ``limit`` marker)."""
    if threading.current_thread() is not threading.main_thread():  # pragma: no cover
        yield
        return
    marker = request.node.get_closest_marker("limit")
    limit = float(marker.args[0]) if marker else FAULT_TEST_LIMIT_S

    def expire(_signum: int, _frame: FrameType | None) -> None:
        raise FaultTimeout(f"{request.node.name} ran past its bound of {limit:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker for this test alone (it may be killed, paused or restarted)."""
    try:
        find_tansu()
    except BrokerNotInstalledError as exc:
        pytest.skip(f"embedded Kafka broker unavailable: {exc}")
    broker = EmbeddedBroker("127.0.0.1", 0, log_path=tmp_path / "tansu.log")
    with broker:
        yield broker
