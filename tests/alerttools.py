"""Helpers for the alert sink tests: alert messages as the detector publishes them, and clocks
that tests move by hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from streamrnn.alerting.message import Alert
from streamrnn.times import iso_times


class Clock:
    """A wall clock and a monotonic clock that move only when told (``advance``)."""

    def __init__(self, wall: float = 1_700_000_000.0) -> None:
        self.wall = wall
        self.mono = 1000.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def iso(ts: float) -> str:
    """The alert messages' time format (ISO 8601 UTC with milliseconds)."""
    return iso_times(np.array([ts]))[0]


def alert_message(
    key: str,
    offset: int,
    ts: float,
    *,
    value: float = 9.0,
    expected: float = 1.0,
    score: float = 0.95,
    topic: str = "readings",
    partition: int = 0,
    model: str = "v1",
    fields: dict[str, Any] | None = None,
    **extra: Any,
) -> bytes:
    """An alert message in the service's encoding (one feature)."""
    msg: dict[str, Any] = {
        "key": key,
        "ts": iso(ts),
        "value": value,
        "expected": expected,
        "score": score,
        "threshold": 0.8,
        "model": model,
        "source": {"topic": topic, "partition": partition, "offset": offset},
        **extra,
    }
    if fields is not None:
        msg["fields"] = fields
    return orjson.dumps(msg)


def alert(key: str, offset: int, ts: float, **kw: Any) -> Alert:
    return Alert.parse(alert_message(key, offset, ts, **kw))
