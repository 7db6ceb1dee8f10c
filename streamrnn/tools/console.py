"""What the demo shows: alerts matched with the injected anomalies, and the console view.

:func:`score_alerts` matches alerts to injected anomalies (an alert counts for an anomaly when
it falls inside the anomaly's window or up to ``slack`` readings after it) and gives recall and
precision; :class:`Console` reads the alerts and scores topics and prints one line per alert
(event time, key, value, expected, score, and which injected anomaly it belongs to, if any).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson

from ..service.clients import Connection, as_connection, reader
from ..times import parse_iso
from .stream import InjectedAnomaly, SyntheticStream

__all__ = ["Console", "Evaluation", "Scoreboard", "score_alerts"]

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 30.0  # the console's fetches (kafka-python's default is 305 s)


@dataclass
class Scoreboard:
    """What the console saw: alerts and each key's progress, as global steps of the stream."""

    alerts: list[tuple[str, int, float]] = field(default_factory=list)  # (key, step, score)
    progress: dict[str, int] = field(default_factory=dict)  # key -> last scored step
    scored: int = 0  # score messages read
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_alert(self, key: str, step: int, score: float) -> None:
        with self._lock:
            self.alerts.append((key, step, score))

    def add_progress(self, key: str, step: int) -> None:
        with self._lock:
            self.scored += 1
            if step > self.progress.get(key, -1):
                self.progress[key] = step

    def snapshot(self) -> tuple[list[tuple[str, int, float]], dict[str, int]]:
        with self._lock:
            return list(self.alerts), dict(self.progress)


@dataclass
class Evaluation:
    """Recall over the injected anomalies that could be judged, precision over the alerts."""

    injected: int
    evaluated: int
    detected: int
    by_kind: dict[str, tuple[int, int]]  # kind -> (detected, evaluated)
    alerts: int
    matched_alerts: int

    @property
    def recall(self) -> float | None:
        return self.detected / self.evaluated if self.evaluated else None

    @property
    def precision(self) -> float | None:
        return self.matched_alerts / self.alerts if self.alerts else None


def _match(a: InjectedAnomaly, key: str, step: int, slack: int) -> bool:
    return a.key == key and a.start_step <= step < a.end_step + slack


def score_alerts(
    anomalies: Sequence[InjectedAnomaly],
    alerts: Sequence[tuple[str, int, float]],
    progress: dict[str, int],
    slack: int,
) -> Evaluation:
    """Match alerts ``(key, step, score)`` with injected anomalies.

    An alert matches an anomaly of its key when its step lies in ``[start, end + slack)``. An
    anomaly is *detected* when some alert matches it, and *evaluated* when detected or when its
    key was scored up to ``end + slack - 1`` (so anomalies still in progress count for nothing).
    """
    by_key: dict[str, list[InjectedAnomaly]] = {}
    for a in anomalies:
        by_key.setdefault(a.key, []).append(a)
    hit: set[InjectedAnomaly] = set()
    matched = 0
    for key, step, _ in alerts:
        found = [a for a in by_key.get(key, ()) if _match(a, key, step, slack)]
        if found:
            matched += 1
            hit.update(found)
    kinds: dict[str, list[int]] = {}
    evaluated = 0
    for a in anomalies:
        done = a in hit or progress.get(a.key, -1) >= a.end_step + slack - 1
        if not done:
            continue
        evaluated += 1
        k = kinds.setdefault(a.kind, [0, 0])
        k[1] += 1
        if a in hit:
            k[0] += 1
    return Evaluation(
        injected=len(anomalies),
        evaluated=evaluated,
        detected=len(hit),
        by_kind={k: (v[0], v[1]) for k, v in kinds.items()},
        alerts=len(alerts),
        matched_alerts=matched,
    )


# ----------------------------------------------------------------------------------------------
# Console view


def _ts_seconds(text: Any) -> float | None:
    try:
        return parse_iso(str(text)).timestamp()
    except ValueError:
        return None


def _fmt_num(x: Any) -> str:
    return f"{x:>10.4g}" if isinstance(x, (int, float)) else f"{'-':>10}"


class Console(threading.Thread):
    """Reads the alerts and scores ``topics`` ({name: partitions}; assigned, no group) and prints
    each alert of ``alerts_topic``; scores only move the keys' progress."""

    def __init__(
        self,
        bootstrap: str | Connection,
        topics: dict[str, int],
        stream: SyntheticStream,
        board: Scoreboard,
        out: TextIO,
        *,
        alerts_topic: str,
        slack: int = 20,
    ) -> None:
        super().__init__(name="demo-console", daemon=True)
        from kafka import TopicPartition

        self.stream = stream
        self.alerts_topic = alerts_topic
        self.slack = slack
        self.board = board
        self.out = out
        self._stop_after_drain = threading.Event()
        self.consumer = reader(
            as_connection(bootstrap), "streamrnn-demo-console", timeout_s=REQUEST_TIMEOUT_S
        )
        tps = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.error: BaseException | None = None

    def finish(self, timeout: float = 5.0) -> None:
        """Read what is left (until a poll returns nothing), then stop; waits for the thread."""
        self._stop_after_drain.set()
        self.join(timeout)

    def run(self) -> None:
        try:
            while True:
                batch = self.consumer.poll(timeout_ms=200)
                for tp, records in batch.items():
                    for r in records:
                        self._handle(tp.topic, r.value)
                if self._stop_after_drain.is_set() and not batch:
                    return
        except Exception as e:  # the view must not take the demo down
            self.error = e
            logger.exception("the console view stopped")
        finally:
            with contextlib.suppress(Exception):
                self.consumer.close(autocommit=False)

    def _handle(self, topic: str, value: bytes | None) -> None:
        try:
            msg = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            return
        key = str(msg.get("key"))
        t = _ts_seconds(msg.get("ts"))
        if t is None:
            return
        step = self.stream.step_of(t)
        if topic == self.alerts_topic:
            score = float(msg.get("score") or 0.0)
            self.board.add_alert(key, step, score)
            self._print_alert(key, step, msg, score)
        else:
            self.board.add_progress(key, step)

    def _print_alert(self, key: str, step: int, msg: dict[str, Any], score: float) -> None:
        injected = [
            a for a in self.stream.injected(step + 1) if _match(a, key, step, slack=self.slack)
        ]
        if injected:
            a = injected[-1]
            where = f"injected {a.kind} (+{step - a.start_step} steps)"
        else:
            where = "no injected anomaly"
        when = str(msg.get("ts", "")).replace("T", " ").rstrip("Z")[:16]
        print(
            f"{time.strftime('%H:%M:%S')}  ALERT  {key:<12} {when}  value {_fmt_num(msg.get('value'))}"
            f"  expected {_fmt_num(msg.get('expected'))}  score {score:.4f}  {where}",
            file=self.out,
            flush=True,
        )
