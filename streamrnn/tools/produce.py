"""Producing readings into a Kafka topic: the message format, a rate limit, the send loop.

Every reading becomes one JSON message ``{"key": ..., "ts": ..., "value": ...}`` (``ts`` in ISO
8601, UTC, with a ``Z``; ``value`` null where a value is missing; ``values``, an object by
column name, for readings of several values), keyed by the reading's key in UTF-8, so Kafka
keeps each key on one partition. :func:`csv_messages` interleaves CSV series of all keys in
event-time order; :mod:`.stream` makes synthetic streams. ``streamrnn produce``
(:mod:`streamrnn.cli.produce`) is the command line.

The send rate is held by a token bucket (:class:`TokenBucket`); :func:`produce_events` logs
progress every few seconds and stops, after flushing what was sent, when its ``stop`` event is
set (Ctrl+C or SIGTERM with :func:`install_stop_signals`).
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from ..service.clients import Connection, as_connection
from ..signals import on_stop_signals
from ..times import iso_utc

__all__ = [
    "DEFAULT_INTERVAL_S",
    "DEFAULT_START",
    "Message",
    "ProduceStats",
    "TokenBucket",
    "csv_messages",
    "encode_event",
    "install_stop_signals",
    "json_number",
    "make_producer",
    "malformed_messages",
    "produce_events",
]

logger = logging.getLogger(__name__)

#: One Kafka message: (key bytes or None, value bytes).
Message = tuple[bytes | None, bytes]

DEFAULT_START = "2024-01-01T00:00:00Z"
DEFAULT_INTERVAL_S = 300.0


# ----------------------------------------------------------------------------------------------
# Encoding


def json_number(v: float | None) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def encode_event(
    key: str, ts: float | str, value: float | Mapping[str, float | None] | None
) -> Message:
    """One reading as a message: ``{"key", "ts", "value"}`` (or ``"values"`` for a mapping).

    ``ts`` is epoch seconds or ready-made ISO text; NaN values become null (missing).

    >>> encode_event("m1", 60.0, 1.5)
    (b'm1', b'{"key":"m1","ts":"1970-01-01T00:01:00Z","value":1.5}')
    """
    stamp = ts if isinstance(ts, str) else iso_utc(ts)
    body: dict[str, Any] = {"key": key, "ts": stamp}
    if isinstance(value, Mapping):
        body["values"] = {str(k): json_number(v) for k, v in value.items()}
    else:
        body["value"] = json_number(value)
    return key.encode("utf-8"), orjson.dumps(body)


def malformed_messages(key: str = "malformed") -> list[Message]:
    """A few messages the detector must send to its dead-letter topic, one per reason."""
    return [
        (key.encode(), b"this is not JSON"),
        (key.encode(), orjson.dumps({"key": key, "ts": DEFAULT_START, "value": "high"})),
        (None, orjson.dumps({"ts": DEFAULT_START, "value": 1.0})),  # no key anywhere
        (key.encode(), orjson.dumps({"key": key, "ts": "last tuesday", "value": 1.0})),
        (key.encode(), orjson.dumps({"key": key, "ts": DEFAULT_START})),  # no value
        (key.encode(), orjson.dumps({"key": key, "ts": DEFAULT_START, "value": "inf"})),
    ]


# ----------------------------------------------------------------------------------------------
# Rate limiting and sending


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; :meth:`delay` takes tokens.

    Taking more than there are leaves a debt that :meth:`delay` returns as the seconds to sleep,
    so sleeping too long or too short is made up by the following calls and the long-run rate
    stays ``rate`` (bursts up to ``burst`` after a pause).
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else max(1.0, self.rate / 20.0)
        self._clock = clock
        self._tokens = min(1.0, self.burst)
        self._last = clock()

    def delay(self, n: float = 1.0) -> float:
        """Take ``n`` tokens; returns the seconds to wait before going on (0 when none)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate) - n
        self._last = now
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


@dataclass
class ProduceStats:
    """Counters of a :func:`produce_events` run, updated while it runs (readable from threads)."""

    sent: int = 0  # handed to the producer
    acked: int = 0  # acknowledged by the broker
    failed: int = 0  # failed after the producer's retries
    seconds: float = 0.0
    first_error: BaseException | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _ok(self, _meta: Any) -> None:
        with self._lock:
            self.acked += 1

    def _err(self, exc: BaseException) -> None:
        with self._lock:
            self.failed += 1
            if self.first_error is None:
                self.first_error = exc

    @property
    def rate(self) -> float:
        """Messages sent per second of the run so far."""
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def produce_events(
    producer: Any,
    topic: str,
    events_iter: Iterable[Message],
    rate: float,
    stop_event: threading.Event | None = None,
    *,
    progress_interval_s: float = 5.0,
    stats: ProduceStats | None = None,
    flush_timeout_s: float = 30.0,
) -> int:
    """Send ``(key, value)`` messages to ``topic`` at ``rate`` per second (0 = no limit).

    Stops when the iterator is exhausted or ``stop_event`` is set, then flushes. Progress is
    logged every ``progress_interval_s``; ``stats`` (optional) is updated as it goes. Returns the
    number of messages the broker acknowledged. Errors of ``producer.send`` itself (a broker
    unreachable for the producer's ``max_block_ms``) propagate after the flush.
    """
    st = stats if stats is not None else ProduceStats()
    bucket = TokenBucket(rate) if rate > 0 else None
    stop = stop_event if stop_event is not None else threading.Event()
    t0 = time.monotonic()
    next_log = t0 + progress_interval_s
    logged_sent, logged_at = 0, t0
    try:
        for key, value in events_iter:
            if stop.is_set():
                break
            if bucket is not None:
                wait = bucket.delay()
                if wait > 0.001 and stop.wait(wait):
                    break
            future = producer.send(topic, key=key, value=value)
            future.add_callback(st._ok)
            future.add_errback(st._err)
            st.sent += 1
            now = time.monotonic()
            st.seconds = now - t0
            if now >= next_log:
                logger.info(
                    "%s: %d message(s) sent, %.0f/s over the last %.0f s, %d acknowledged",
                    topic,
                    st.sent,
                    (st.sent - logged_sent) / (now - logged_at),
                    now - logged_at,
                    st.acked,
                )
                logged_sent, logged_at = st.sent, now
                next_log = now + progress_interval_s
    finally:
        try:
            producer.flush(timeout=flush_timeout_s)
        except Exception as e:  # unacknowledged messages are reported below
            logger.warning("flushing the producer failed: %r", e)
        st.seconds = time.monotonic() - t0
    if st.failed:
        logger.error(
            "%d of %d message(s) to %s failed; first error: %r",
            st.failed,
            st.sent,
            topic,
            st.first_error,
        )
    return st.acked


# ----------------------------------------------------------------------------------------------
# CSV replay


def csv_messages(
    series: Sequence[Any],
    *,
    loop: bool = False,
    start: float | None = None,
) -> Iterator[Message]:
    """Messages of :class:`streamrnn.offline.data.Series` interleaved in time order (ties: input order).

    ``start`` moves every time so that the earliest is ``start``; ``loop`` repeats forever, each
    pass later by the data's span plus its smallest time step.
    """
    if not series:
        return
    names = series[0].feature_names
    single = len(names) == 1
    times = [np.asarray(s.times, dtype=np.float64) for s in series]
    t_min = min(float(t.min()) for t in times if t.size)
    t_max = max(float(t.max()) for t in times if t.size)
    diffs = [np.diff(np.sort(t)) for t in times if t.size > 1]
    positive = np.concatenate(diffs) if diffs else np.zeros(0)
    positive = positive[positive > 0]
    step = float(positive.min()) if positive.size else 1.0
    span = t_max - t_min + step
    shift0 = 0.0 if start is None else start - t_min
    # One global order: by time, then input order of the series, then row (a stable merge).
    all_times = np.concatenate(times)  # (N,)
    which = np.concatenate([np.full(t.size, i, dtype=np.int64) for i, t in enumerate(times)])
    rows = np.concatenate([np.arange(t.size, dtype=np.int64) for t in times])  # (N,)
    order = np.lexsort((rows, which, all_times))  # (N,)
    all_times, which, rows = all_times[order], which[order], rows[order]
    keys = [s.key for s in series]
    for cycle in itertools.count():
        shift = shift0 + cycle * span
        for t, i, r in zip(all_times.tolist(), which.tolist(), rows.tolist(), strict=True):
            vals = series[i].values[r]  # (F,)
            if single:
                yield encode_event(keys[i], t + shift, float(vals[0]))
            else:
                yield encode_event(keys[i], t + shift, dict(zip(names, vals.tolist(), strict=True)))
        if not loop:
            return


# ----------------------------------------------------------------------------------------------
# Clients and signals


def install_stop_signals(
    stop: threading.Event, announce: Callable[[str], None] | None = None
) -> Callable[[], None]:
    """SIGINT / SIGTERM set ``stop`` (main thread only; a second Ctrl+C interrupts as usual).

    ``announce`` gets the signal's name (default: a log line). Returns the restorer.
    """

    def on_stop(name: str) -> None:
        if announce is None:
            logger.info("received %s: flushing and stopping", name)
        else:
            announce(name)
        stop.set()

    return on_stop_signals(on_stop)


def make_producer(bootstrap_servers: str | Sequence[str] | Connection, **overrides: Any) -> Any:
    """A KafkaProducer for readings: acks from the leader (not idempotent), a short linger.

    ``bootstrap_servers`` is an address list, or a
    :class:`~streamrnn.service.clients.Connection` (TLS, SASL and the producer's pass-through
    options of ``service.kafka``)."""
    from kafka import KafkaProducer

    options: dict[str, Any] = {
        "client_id": "streamrnn-produce",
        "acks": 1,
        "enable_idempotence": False,
        "linger_ms": 10,
        "max_block_ms": 30_000,
        **overrides,
    }
    return KafkaProducer(**as_connection(bootstrap_servers).options("producer", **options))
