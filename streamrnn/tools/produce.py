"""Produce readings into a Kafka topic: replay CSV files, or generate synthetic streams.

Every reading becomes one JSON message ``{"key": ..., "ts": ..., "value": ...}`` (``ts`` in ISO
8601, UTC, with a ``Z``; ``value`` null where a CSV cell is missing; ``values``, an object by
column name, for CSV files with several value columns), keyed by the reading's key in UTF-8, so
Kafka keeps each key on one partition. Readings of all keys are interleaved in event-time order.

Sources:

- ``--csv PATH...``: files or directories in the layouts ``streamrnn train`` reads (one file per
  key, or a long format with ``--key-column``), replayed in time order; ``--start`` moves them in
  time; ``--loop`` starts over with the times moved on by the data's span.
- ``--synthetic sensor|energy|mixed``: :mod:`streamrnn.tools.synth` streams (daily and weekly
  seasonality, noise, per-key scales) with injected anomalies (spikes, level shifts, stuck
  values, drifts) after a clean prefix, every ``--interval-s`` seconds of event time from
  ``--start``. Without ``--steps`` the stream never ends: a week of readings is cycled with time
  moving on (each cycle made seamless, so the wrap is no anomaly). ``--labels`` writes the
  injected anomaly windows.

The send rate is held by a token bucket (``--rate`` messages per second, 0 for as fast as the
producer goes); progress is logged every few seconds and a summary printed at the end (also on
Ctrl+C or SIGTERM, which stop the run after flushing what was sent).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..signals import on_stop_signals
from ..times import iso_utc, parse_timestamp
from . import synth

__all__ = [
    "DEFAULT_START",
    "InjectedAnomaly",
    "Message",
    "ProduceStats",
    "SyntheticStream",
    "TokenBucket",
    "csv_messages",
    "encode_event",
    "iso_utc",
    "malformed_messages",
    "produce_events",
    "synthetic_series",
    "write_labels",
]

logger = logging.getLogger(__name__)

#: One Kafka message: (key bytes or None, value bytes).
Message = tuple[bytes | None, bytes]

DEFAULT_START = "2024-01-01T00:00:00Z"
DEFAULT_INTERVAL_S = 300.0
WEEK_S = 7 * 86400.0
MIN_BLOCK, MAX_BLOCK = 64, 20160  # steps of one cycle of an endless synthetic stream
STEPS_PER_ANOMALY = 500  # default spacing of injected anomalies, in steps


# ----------------------------------------------------------------------------------------------
# Encoding


def _num(v: float | None) -> float | None:
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
        body["values"] = {str(k): _num(v) for k, v in value.items()}
    else:
        body["value"] = _num(value)
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
# Synthetic streams


@dataclass(frozen=True)
class InjectedAnomaly:
    """One anomaly as sent: steps count from the stream's first step across cycles."""

    key: str
    kind: str
    start_step: int
    end_step: int  # exclusive
    start_ts: float  # epoch seconds of the first affected reading
    end_ts: float  # epoch seconds of the last affected reading

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "start": iso_utc(self.start_ts),
            "end": iso_utc(self.end_ts),
            "start_step": self.start_step,
            "end_step": self.end_step,
        }


def _parse_start(text: str) -> float:
    """``--start`` as epoch seconds: ISO 8601 (naive = UTC), epoch seconds, or ``now``."""
    if text.strip().lower() == "now":
        return float(math.floor(time.time()))

    try:
        return parse_timestamp(text)
    except ValueError:
        raise ValueError(
            f"--start: must be an ISO 8601 time such as 2024-01-01T00:00:00Z, epoch seconds or "
            f"'now', got {text!r}"
        ) from None


def _make_seamless(s: synth.SyntheticSeries, n: int, k: int, positive: bool) -> None:
    """Cut ``s`` (generated with ``n + k`` steps) to ``n`` and tilt it so that cycling it is
    seamless: the level the series would have had at step ``n`` becomes that of step 0."""
    assert s.clean is not None
    d = float(np.mean(s.clean[n : n + k] - s.clean[:k]))  # same time of day/week when aligned
    ramp = d * np.arange(n, dtype=np.float64) / n  # (n,)
    values = s.values[:n] - ramp
    clean = s.clean[:n] - ramp
    if positive:
        floor = 0.02 * s.scale
        values, clean = np.maximum(values, floor), np.maximum(clean, floor)
    s.values, s.clean, s.timestamps = values, clean, s.timestamps[:n]
    s.anomalies = [
        synth.Anomaly(a.kind, a.start_index, min(a.end_index, n))
        for a in s.anomalies
        if a.start_index < n
    ]


def synthetic_series(
    kind: str,
    keys: int,
    steps: int,
    *,
    interval_s: float = DEFAULT_INTERVAL_S,
    start: float | str = DEFAULT_START,
    anomalies: Sequence[str] = synth.ANOMALY_KINDS,
    anomalies_per_key: int | None = None,
    clean_prefix: int | None = None,
    seed: int = 0,
    seamless: bool = False,
) -> list[synth.SyntheticSeries]:
    """``keys`` synthetic series of ``steps`` readings sharing their timestamps.

    ``kind`` is ``sensor``, ``energy`` or ``mixed`` (energy keys first, then sensor keys; the two
    kinds use seeds ``seed`` and ``seed + 1``). ``clean_prefix`` defaults to ``min(300, steps //
    4)`` steps without anomalies; ``anomalies_per_key`` to one per 500 steps after it (at least
    one when ``anomalies`` names any kind). ``seamless`` prepares the series to be cycled.
    """
    if kind not in ("sensor", "energy", "mixed"):
        raise ValueError(f"kind must be sensor, energy or mixed, got {kind!r}")
    if keys < 1 or steps < 1:
        raise ValueError(f"keys and steps must be >= 1, got {keys} and {steps}")
    prefix = min(300, steps // 4) if clean_prefix is None else clean_prefix
    if not 0 <= prefix < steps:
        raise ValueError(f"clean prefix must be in [0, steps={steps}), got {prefix}")
    eligible = steps - prefix
    if anomalies_per_key is None:
        count = max(1, eligible // STEPS_PER_ANOMALY) if anomalies else 0
    else:
        count = anomalies_per_key if anomalies else 0
    count = min(count, eligible // 16)
    start_ts = _parse_start(start) if isinstance(start, str) else float(start)
    start_dt = datetime.fromtimestamp(start_ts, tz=timezone.utc)
    # One cycle later the stream continues at step 0: generate a few steps more to see where the
    # series would have gone and tilt it back (see _make_seamless).
    extra = max(1, min(12, steps // 8)) if seamless else 0
    if kind == "mixed":
        parts = [("energy", (keys + 1) // 2, seed), ("sensor", keys // 2, seed + 1)]
    else:
        parts = [(kind, keys, seed)]
    out: list[synth.SyntheticSeries] = []
    for k, n_keys, part_seed in parts:
        if n_keys == 0:
            continue
        gen = synth.generate(
            k,  # type: ignore[arg-type]
            n_keys,
            steps + extra,
            start=start_dt,
            interval_s=interval_s,
            anomalies=tuple(anomalies),
            anomalies_per_key=count,
            clean_prefix=prefix,
            seed=part_seed,
        )
        if seamless:
            for s in gen:
                _make_seamless(s, steps, extra, positive=(k == "energy"))
        out.extend(gen)
    return out


class SyntheticStream:
    """Messages of synthetic series that share their timestamps, step by step.

    Step ``g`` sends every key's reading at ``start + g * interval_s``; with ``cycle`` the series
    repeat (step ``g`` reads row ``g % n``) and time moves on, forever. ``malformed_every`` > 0
    slips one malformed message (see :func:`malformed_messages`) in after every that many
    readings. :attr:`steps_started`, :meth:`injected` and :meth:`step_of` tell what was sent.
    """

    def __init__(
        self,
        series: Sequence[synth.SyntheticSeries],
        *,
        interval_s: float,
        cycle: bool = False,
        malformed_every: int = 0,
    ) -> None:
        if not series:
            raise ValueError("series: need at least one")
        lengths = {len(s) for s in series}
        if len(lengths) != 1:
            raise ValueError(f"series must have the same length, got {sorted(lengths)}")
        self.series = list(series)
        self.n = lengths.pop()
        self.interval_s = float(interval_s)
        self.start_ts = float(series[0].epoch_seconds[0])
        self.cycle = cycle
        self.malformed_every = max(0, int(malformed_every))
        self.steps_started = 0
        self.readings_sent = 0
        self.malformed_sent = 0
        self._bad = malformed_messages()

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.series]

    def ts_of(self, step: int) -> float:
        """Epoch seconds of global step ``step``."""
        return self.start_ts + step * self.interval_s

    def step_of(self, ts: float) -> int:
        """The global step of an event time (nearest)."""
        return int(round((ts - self.start_ts) / self.interval_s))

    def __iter__(self) -> Iterator[Message]:
        keys = [s.key for s in self.series]
        key_bytes = [k.encode("utf-8") for k in keys]
        values = np.stack([s.values for s in self.series], axis=1)  # (n, K)
        steps: Iterable[int] = itertools.count() if self.cycle else range(self.n)
        for g in steps:
            self.steps_started = g + 1
            stamp = iso_utc(self.ts_of(g))
            row = values[g % self.n].tolist()  # (K,)
            for kb, key, v in zip(key_bytes, keys, row, strict=True):
                yield kb, orjson.dumps({"key": key, "ts": stamp, "value": _num(v)})
                self.readings_sent += 1
                if self.malformed_every and self.readings_sent % self.malformed_every == 0:
                    yield self._bad[self.malformed_sent % len(self._bad)]
                    self.malformed_sent += 1

    def injected(self, upto_step: int | None = None) -> list[InjectedAnomaly]:
        """Anomalies whose first step is below ``upto_step`` (default: the steps started)."""
        limit = self.steps_started if upto_step is None else upto_step
        out: list[InjectedAnomaly] = []
        for cycle in range(0, max(0, math.ceil(limit / self.n))):
            base = cycle * self.n
            for s in self.series:
                for a in s.anomalies:
                    start = base + a.start_index
                    if start >= limit:
                        continue
                    end = base + a.end_index
                    out.append(
                        InjectedAnomaly(
                            s.key, a.kind, start, end, self.ts_of(start), self.ts_of(end - 1)
                        )
                    )
        out.sort(key=lambda a: (a.start_step, a.key))
        return out


def write_labels(
    path: str | Path,
    anomalies: Sequence[InjectedAnomaly],
    *,
    topic: str,
    interval_s: float,
) -> Path:
    """Write the injected anomalies as JSON: a list of them, and NAB-style windows by key.

    ``{"topic", "interval_s", "anomalies": [{key, kind, start, end, start_step, end_step}],
    "windows": {key: [[start, end], ...]}}`` with ISO 8601 UTC times (``end`` = the last affected
    reading).
    """
    windows: dict[str, list[list[str]]] = {}
    for a in anomalies:
        windows.setdefault(a.key, []).append([iso_utc(a.start_ts), iso_utc(a.end_ts)])
    doc = {
        "topic": topic,
        "interval_s": interval_s,
        "anomalies": [a.to_json() for a in anomalies],
        "windows": windows,
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(doc, indent=1) + "\n")
    return target


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
# Command line

EPILOG = """\
examples:
  streamrnn produce --bootstrap-servers localhost:9092 --topic readings --synthetic energy \\
      --keys 200 --rate 200
  streamrnn produce --topic readings --synthetic sensor --keys 50 --steps 5000 --rate 0 \\
      --anomalies spike,level_shift --seed 3 --labels labels.json --partitions 4
  streamrnn produce --topic readings --csv history/ --rate 1000 --start 2025-01-01T00:00:00Z
  streamrnn produce --topic readings --csv long.csv --key-column meter --loop

Messages: {"key": KEY, "ts": "2024-01-01T00:05:00Z", "value": 12.5} keyed by KEY.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``streamrnn produce``."""
    parser.add_argument(
        "--bootstrap-servers",
        default="localhost:9092",
        help="comma-separated host:port list (default: %(default)s)",
    )
    parser.add_argument("--topic", default="readings", help="topic to write (default: %(default)s)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--csv", nargs="+", metavar="PATH", help="CSV files or directories to replay"
    )
    source.add_argument(
        "--synthetic",
        choices=["sensor", "energy", "mixed"],
        help="generate synthetic streams (mixed: half energy, half sensor keys)",
    )
    csv = parser.add_argument_group("CSV replay")
    csv.add_argument("--key-column", help="column naming the key (long format)")
    csv.add_argument(
        "--time-column", default="timestamp", help="time column (default: %(default)s)"
    )
    csv.add_argument(
        "--value-columns", help="comma-separated value columns (default: all the others)"
    )
    syn = parser.add_argument_group("synthetic streams")
    syn.add_argument("--keys", type=int, default=10, help="number of keys (default: %(default)s)")
    syn.add_argument(
        "--steps",
        type=int,
        default=None,
        help="readings per key; default: endless, a week of readings cycled with time moving on",
    )
    syn.add_argument(
        "--anomalies",
        default=",".join(synth.ANOMALY_KINDS),
        help="comma-separated kinds to inject, or 'none' (default: %(default)s)",
    )
    syn.add_argument(
        "--anomalies-per-key",
        type=int,
        default=None,
        help=f"anomalies per key and cycle (default: one per {STEPS_PER_ANOMALY} steps)",
    )
    syn.add_argument(
        "--clean-prefix",
        type=int,
        default=None,
        help="steps without anomalies at the start of each cycle (default: min(300, steps/4))",
    )
    syn.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    syn.add_argument(
        "--interval-s",
        type=float,
        default=DEFAULT_INTERVAL_S,
        help="seconds between a key's readings, in event time (default: %(default)s)",
    )
    syn.add_argument(
        "--labels", type=Path, help="write the injected anomaly windows to this JSON file"
    )
    syn.add_argument(
        "--malformed-every",
        type=int,
        default=0,
        help="slip in a malformed message after every N readings (default: none)",
    )
    parser.add_argument(
        "--start",
        default=None,
        help=f"event time of the first reading: ISO 8601, epoch seconds or 'now' (synthetic "
        f"default: {DEFAULT_START}; CSV default: the files' own times)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=100.0,
        help="messages per second; 0 = as fast as possible (default: %(default)s)",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="create the topic with this many partitions when it is missing",
    )
    parser.add_argument(
        "--loop", action="store_true", help="start over when the data ends, until stopped"
    )


def _check_args(args: argparse.Namespace) -> None:
    """Raise ValueError naming the flag for bad values."""
    if args.rate < 0 or not math.isfinite(args.rate):
        raise ValueError(f"--rate: must be >= 0, got {args.rate}")
    if args.partitions is not None and args.partitions < 1:
        raise ValueError(f"--partitions: must be >= 1, got {args.partitions}")
    if args.synthetic:
        if args.keys < 1:
            raise ValueError(f"--keys: must be >= 1, got {args.keys}")
        if args.steps is not None and args.steps < 1:
            raise ValueError(f"--steps: must be >= 1, got {args.steps}")
        if not args.interval_s > 0:
            raise ValueError(f"--interval-s: must be > 0, got {args.interval_s}")
        if args.malformed_every < 0:
            raise ValueError(f"--malformed-every: must be >= 0, got {args.malformed_every}")


def _anomaly_kinds(text: str) -> tuple[str, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in synth.ANOMALY_KINDS]
    if bad:
        raise ValueError(
            f"--anomalies: must be among {', '.join(synth.ANOMALY_KINDS)} or 'none', got {text!r}"
        )
    return kinds


def build_synthetic(args: argparse.Namespace) -> SyntheticStream:
    """The synthetic stream the flags describe."""
    endless = args.steps is None
    if endless:
        week = int(round(WEEK_S / args.interval_s))
        steps = min(max(week, MIN_BLOCK), MAX_BLOCK)
    else:
        steps = args.steps
    cycle = endless or args.loop
    series = synthetic_series(
        args.synthetic,
        args.keys,
        steps,
        interval_s=args.interval_s,
        start=args.start or DEFAULT_START,
        anomalies=_anomaly_kinds(args.anomalies),
        anomalies_per_key=args.anomalies_per_key,
        clean_prefix=args.clean_prefix,
        seed=args.seed,
        seamless=cycle,
    )
    return SyntheticStream(
        series, interval_s=args.interval_s, cycle=cycle, malformed_every=args.malformed_every
    )


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


def make_producer(bootstrap_servers: str | Sequence[str], **overrides: Any) -> Any:
    """A KafkaProducer for readings: acks from the leader (not idempotent), a short linger."""
    from kafka import KafkaProducer

    servers = (
        [s.strip() for s in bootstrap_servers.split(",") if s.strip()]
        if isinstance(bootstrap_servers, str)
        else list(bootstrap_servers)
    )
    options: dict[str, Any] = {
        "bootstrap_servers": servers,
        "client_id": "streamrnn-produce",
        "acks": 1,
        "enable_idempotence": False,
        "linger_ms": 10,
        "max_block_ms": 30_000,
    }
    options.update(overrides)
    return KafkaProducer(**options)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``streamrnn produce``: 0 when every message was acknowledged."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("kafka").setLevel(logging.WARNING)
    stream: SyntheticStream | None = None
    try:
        _check_args(args)
        if args.synthetic:
            stream = build_synthetic(args)
            messages: Iterable[Message] = stream
            what = (
                f"synthetic {args.synthetic}: {args.keys} key(s), "
                + (f"{stream.n} steps" if args.steps else f"endless ({stream.n}-step cycle)")
                + (", looping" if args.loop and args.steps else "")
            )
        else:
            from ..offline.data import load_series

            columns = args.value_columns.split(",") if args.value_columns else None
            series = load_series(
                args.csv,
                key_column=args.key_column,
                time_column=args.time_column,
                value_columns=columns,
            )
            start = _parse_start(args.start) if args.start else None
            messages = csv_messages(series, loop=args.loop, start=start)
            what = f"CSV replay: {len(series)} key(s), {sum(len(s) for s in series)} reading(s)" + (
                ", looping" if args.loop else ""
            )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from kafka.errors import KafkaError

    stop = threading.Event()
    stats = ProduceStats()
    restore = install_stop_signals(stop)
    producer = None
    try:
        if args.partitions:
            from .broker import BrokerError, create_topics

            try:
                create_topics(args.bootstrap_servers, {args.topic: args.partitions})
            except BrokerError as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
        producer = make_producer(args.bootstrap_servers)
        rate_text = f"{args.rate:g}/s" if args.rate else "as fast as possible"
        logger.info(
            "producing to %s on %s at %s; %s", args.topic, args.bootstrap_servers, rate_text, what
        )
        produce_events(producer, args.topic, messages, args.rate, stop, stats=stats)
    except KafkaError as e:
        print(f"error: Kafka at {args.bootstrap_servers}: {e!r}", file=sys.stderr)
        return 1
    finally:
        restore()
        if producer is not None:
            try:
                producer.close(timeout=5)
            except Exception as e:  # closing is best effort
                logger.debug("closing the producer: %r", e)

    summary = (
        f"sent {stats.sent} message(s) to {args.topic} in {stats.seconds:.1f} s "
        f"({stats.rate:.0f}/s); {stats.acked} acknowledged, {stats.failed} failed"
    )
    if stream is not None:
        injected = stream.injected()
        kinds = Counter(a.kind for a in injected)
        detail = ", ".join(f"{k} {kinds[k]}" for k in synth.ANOMALY_KINDS if kinds[k])
        summary += f"; anomalies injected: {len(injected)}" + (f" ({detail})" if detail else "")
        if stream.malformed_sent:
            summary += f"; malformed: {stream.malformed_sent}"
        if args.labels:
            path = write_labels(
                args.labels, injected, topic=args.topic, interval_s=stream.interval_s
            )
            summary += f"; labels: {path}"
    print(summary, flush=True)
    return 0 if stats.failed == 0 and stats.acked == stats.sent else 1
