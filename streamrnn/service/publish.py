"""Publishing a poll's outcome and committing its offsets, in poll order, once acknowledged.

:class:`Publisher` owns the two queues between a poll and its commit:

* in flight: polls handed to the engine side whose outcome is not collected yet (at most one
  beside the one the Kafka client is parsing);
* unacked: scored polls whose messages (dead letters, alerts, scores: built on the engine side
  by :mod:`.alerts`) are sent but not all acknowledged by the broker.

Only once the broker acknowledged every message of a poll (acks=all) are its offsets moved and
committed: nothing is lost. Sends are not awaited one poll at a time: the loop goes on polling
and :meth:`Publisher.settle` commits each poll, oldest first, as its acknowledgements arrive.
Failed sends are classified (:mod:`.unsendable`): those that may succeed later are sent again
with exponential backoff; a message that can never be sent as it is (too large, invalid) is
replaced at once (a dead letter cut to fit, an alert or score message dead-lettered) and
counted, so poison never stalls a partition; a producer whose idempotence state the broker lost
is replaced (``renew_producer``). Dead letters are cut to the producer's ``max_request_size``
before their first send. While stopping, outputs that are still not acknowledged by the
shutdown deadline are abandoned: no partition with events in hand is committed or checkpointed
again (the next start processes them again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..alerting.sinks import AlertSinks
from ..config import ServiceConfig
from .clients import Backoff
from .consume import Poll
from .engine_process import EngineClient
from .health import Health
from .metrics import Metrics
from .partitions import PartitionTable
from .unsendable import classify, cut, max_request_size, remedy
from .worker import Outcome

__all__ = ["Message", "Publisher"]

log = logging.getLogger(__name__)

TP = tuple[str, int]
#: One message to send: (topic, key, value, headers).
Message = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]


class Refused:
    """The future of a send that raised at once (a record the producer will never take)."""

    is_done = True

    def __init__(self, error: BaseException) -> None:
        self.exception = error

    def succeeded(self) -> bool:
        return False

    def failed(self) -> bool:
        return True


@dataclass
class InFlight:
    """A poll handed to the engine side whose outcome is not published yet."""

    next_offsets: dict[TP, int]
    seconds: float  # the Kafka side's time on it so far


@dataclass
class Unacked:
    """A scored poll whose messages are sent but not all acknowledged: not committed yet."""

    sent: list[tuple[Message, Any]]  # each message and its send future (None: send raised)
    out: Outcome
    reasons: Counter[str]
    next_offsets: dict[TP, int]
    seconds: float  # the Kafka side's time on it so far


class Publisher:
    """Hands polls to the engine side, publishes their outcomes and commits them in order.

    ``producer`` and ``consumer`` (for commits) are set once the clients are connected. ``sinks``
    get each poll's alerts and recoveries once its messages are acknowledged, so that every page
    has its record in the alerts topic; handing them over never waits."""

    def __init__(
        self,
        svc: ServiceConfig,
        engine: EngineClient,
        table: PartitionTable,
        metrics: Metrics,
        health: Health,
        stop: threading.Event,
        *,
        sinks: AlertSinks | None = None,
    ) -> None:
        self.svc = svc
        self.sinks = sinks
        self.engine = engine
        self.table = table
        self.metrics = metrics
        self.health = health
        self.stop = stop
        self.producer: Any = None
        self.consumer: Any = None
        # Builds a new producer in place of one the broker no longer knows (set by the Detector).
        self.renew_producer: Callable[[], Any] | None = None
        # time.monotonic() by which a stopping service gives up on unacknowledged outputs.
        self.deadline: float | None = None
        self.inflight: deque[InFlight] = deque()
        self.unacked: deque[Unacked] = deque()
        self.abandoned = False  # a batch's outputs were never acknowledged: leave, no commit
        self.late_total = 0  # late events scored (input.late_events: score)
        self.moved_keys_total = 0
        self._next_late_log = 0.0

    # ------------------------------------------------------------------------------------------
    # Polls in flight

    def submit(self, poll: Poll, started: float) -> None:
        """Hand one poll to the engine side; ``started``: ``perf_counter()`` when the Kafka side
        began on it (its time is counted in the batch duration)."""
        self.engine.submit(poll.parts, poll.headers)
        self.inflight.append(InFlight(poll.next_offsets, time.perf_counter() - started))

    def finish(self) -> bool:
        """Collect the oldest poll in flight and send its messages (committed once acknowledged,
        by :meth:`settle`)."""
        t0 = time.perf_counter()
        job = self.inflight.popleft()
        out = self.engine.result()
        self.metrics.engine_stats(out.stats)
        svc = self.svc
        limit = max_request_size(self.producer)
        messages: list[Message] = [self._fit((svc.dlq_topic, *m), limit) for m in out.dead_letters]
        messages.extend((svc.alerts_topic, k, v, None) for k, v in out.alerts)
        if svc.scores_topic:
            messages.extend((svc.scores_topic, k, v, None) for k, v in out.scores)
        reasons = Counter(reason for _, reason, _ in out.rejects)
        self._log_batch_notes(out)
        sent = self._send_all(messages)
        seconds = job.seconds + time.perf_counter() - t0
        self.unacked.append(Unacked(sent, out, reasons, job.next_offsets, seconds))
        return True

    def _fit(self, msg: Message, limit: int) -> Message:
        """A dead letter cut to the producer's limit (counted), else as it is."""
        fitted = cut(msg, limit)
        if fitted is not msg:
            self.metrics.dead_letters_cut.inc()
            log.warning(
                "dead letter of %s cut to fit max_request_size %d (was %d bytes)",
                _source(msg),
                limit,
                len(msg[2] or b""),
            )
        return fitted

    def _send_all(self, messages: list[Message]) -> list[tuple[Message, Any]]:
        """Each message and its send's future. After a send that blocked for ``max_block_ms``
        (no metadata, no producer id: the broker is away) the rest are not tried, each would
        block as long: they fail with the same error and are retried with backoff."""
        out: list[tuple[Message, Any]] = []
        blocked: Refused | None = None
        for msg in messages:
            future = blocked or self._send(msg)
            if isinstance(future, Refused) and _names(future.exception) & _BLOCKED:
                blocked = future
            out.append((msg, future))
        return out

    def _send(self, msg: Message) -> Any:
        """The send's future; :class:`Refused` when the send raised (handled when the poll
        settles: sent again, or replaced when it can never succeed)."""
        from kafka.errors import KafkaError

        topic, key, value, headers = msg
        try:
            return self.producer.send(topic, key=key, value=value, headers=headers)
        except KafkaError as e:
            return Refused(e)

    def drain(self) -> bool:
        """Publish and commit every poll in flight (before the state is read or changed)."""
        while self.inflight:
            if not self.finish():
                return False
        return self.settle(wait=True) and not self.abandoned

    # ------------------------------------------------------------------------------------------
    # Acknowledgements and commits

    def settle(self, *, wait: bool) -> bool:
        """Commit the scored polls whose messages are all acknowledged, oldest first; with
        ``wait`` all of them (failed sends are retried with backoff). False when outputs were
        never acknowledged (stopping): then nothing after them is committed or checkpointed."""
        while self.unacked:
            t0 = time.perf_counter()
            u = self.unacked[0]
            done = all(f.is_done for _, f in u.sent)
            if not done and not wait:
                return True
            if not done:
                self._flush()
            failed = [(m, _error(f)) for m, f in u.sent if not (f.is_done and f.succeeded())]
            if failed:
                log.warning(
                    "%d of %d message(s) not acknowledged (%r); sending them again",
                    len(failed),
                    len(u.sent),
                    failed[0][1],
                )
                if not self.publish(self._handle_failures(failed)):
                    self._abandon()
                    return False
            self.unacked.popleft()
            self._settled(u, time.perf_counter() - t0)
        return True

    def _flush(self) -> None:
        """Wait for what the producer holds (a failure shows in the futures)."""
        from kafka.errors import KafkaError

        try:
            self.producer.flush(timeout=self._flush_timeout())
        except KafkaError as e:
            log.debug("flush: %r", e)

    def _flush_timeout(self) -> float:
        if self.deadline is None:
            return max(30.0, self.svc.retry_backoff_max_s)
        return max(0.1, self.deadline - time.monotonic())

    def _abandon(self) -> None:
        """Outputs were never acknowledged while stopping: no partition with events in hand is
        committed or checkpointed again."""
        self.abandoned = True
        for held in [u.next_offsets for u in self.unacked] + [
            j.next_offsets for j in self.inflight
        ]:
            self.table.mark_unsafe(held)
        self.unacked.clear()
        self.inflight.clear()

    def _settled(self, u: Unacked, seconds: float) -> None:
        """A poll's outputs are acknowledged: count it, move the offsets, commit."""
        out = u.out
        now = time.time()
        m = self.metrics
        m.processed(out.processed)
        for reason, n in u.reasons.items():
            m.reject(reason, n)
        for topic, n in out.anomalies.items():
            m.anomaly(topic, n)
        if out.alerts:
            m.alerts_published.inc(len(out.alerts))
        if self.sinks is not None and (out.alerts or out.recovered):
            self.sinks.submit([v for _, v in out.alerts], out.recovered)
        m.observe_scores(out.score)
        m.observe_event_lags(now - out.times)
        m.engine_seconds.inc(out.seconds)
        self.table.advance(u.next_offsets)
        self.commit(u.next_offsets, wait=False)
        self.health.progress()
        m.batch_done(u.seconds + seconds)

    def publish(self, messages: list[Message]) -> bool:
        """Send and wait for every acknowledgement; failed sends are retried with backoff, and
        messages that can never be sent are replaced (:meth:`_handle_failures`).

        Returns False only when stopping and the shutdown deadline passed first."""
        pending = messages
        backoff = Backoff(self.svc.retry_backoff_max_s)
        while pending:
            failed = self._send_and_flush(pending)
            if not failed:
                break
            retriable = sum(1 for _, e in failed if classify(e) == "retriable")
            pending = self._handle_failures(failed)
            if not retriable:
                continue  # replaced or a new producer: no reason to wait
            self.health.retrying(True)
            self.health.tick()  # waiting on purpose: liveness judges the progress instead
            if self._past_deadline():
                log.error(
                    "%d message(s) not acknowledged before the shutdown timeout (%r); "
                    "not committing: the next start processes them again",
                    len(pending),
                    failed[0][1],
                )
                self.health.retrying(False)
                return False
            delay = backoff.next()
            log.warning(
                "%d message(s) not acknowledged (%r); retrying in %.1f s",
                retriable,
                failed[0][1],
                delay,
            )
            if self.stop.is_set():
                time.sleep(min(delay, max(0.0, self._deadline() - time.monotonic())))
            else:
                self.stop.wait(delay)
        self.health.retrying(False)
        return True

    def _deadline(self) -> float:
        """The shutdown deadline (set from now + shutdown_timeout_s if the Detector has not)."""
        if self.deadline is None:
            self.deadline = time.monotonic() + self.svc.shutdown_timeout_s
        return self.deadline

    def _past_deadline(self) -> bool:
        return self.stop.is_set() and time.monotonic() >= self._deadline()

    def _handle_failures(self, failed: list[tuple[Message, BaseException | None]]) -> list[Message]:
        """What to send next for each failed message: retriable ones as they are, fatal ones
        replaced (:func:`.unsendable.remedy`, counted; dropped only when even a dead letter
        without a value is refused), all of them through a new producer when the broker no
        longer knows this one's id."""
        out: list[Message] = []
        renew = False
        limit = max_request_size(self.producer)
        for msg, error in failed:
            kind = classify(error)
            self.metrics.broker_errors.inc()
            if kind != "fatal":
                renew = renew or kind == "producer"
                out.append(msg)
                continue
            fix = remedy(msg, error, dlq_topic=self.svc.dlq_topic, limit=limit)
            if fix.message is None:
                self.metrics.unsendable(fix.reason, dead_lettered=False)
                log.error(
                    "dead letter of %s refused even without its value (%r); dropping it",
                    _source(msg),
                    error,
                )
                continue
            self.metrics.unsendable(fix.reason, dead_lettered=True)
            log.warning(
                "%s refused for good (%r): sending %s in its place",
                f"message to {msg[0]}" if msg[0] != self.svc.dlq_topic else "dead letter",
                error,
                "a shorter dead letter" if msg[0] == self.svc.dlq_topic else "a dead letter",
            )
            out.append(fix.message)
        if renew and self.renew_producer is not None:
            log.warning("the broker no longer knows this producer's id: starting a new producer")
            self.producer = self.renew_producer()
        return out

    def _send_and_flush(
        self, messages: list[Message]
    ) -> list[tuple[Message, BaseException | None]]:
        """Send ``messages`` and flush; returns those not acknowledged, each with its error."""
        from kafka.errors import KafkaError

        futures = [f for _, f in self._send_all(messages)]
        try:
            self.producer.flush(timeout=self._flush_timeout())
        except KafkaError as e:
            log.debug("flush: %r", e)
        return [(m, _error(f)) for m, f in zip(messages, futures, strict=True) if not f.succeeded()]

    def commit(self, offsets: dict[TP, int], timeout_s: float = 30.0, *, wait: bool = True) -> None:
        """Commit ``offsets`` of assigned partitions. With ``wait=False`` (after each batch) the
        commit is not awaited: a failed one is logged and the next commit covers it; revocation
        and shutdown commit with ``wait``."""
        from kafka import TopicPartition
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        todo = self.table.uncommitted(offsets)
        if not todo:
            return
        request = {TopicPartition(*tp): OffsetAndMetadata(o, "", -1) for tp, o in todo.items()}
        try:
            if wait:
                self.consumer.commit(request, timeout_ms=int(timeout_s * 1000))
                self.table.committed(todo)
            else:
                self.consumer.commit_async(
                    request, callback=lambda _offsets, response: self._commit_done(todo, response)
                )
        except KafkaError as e:  # the next commit covers these offsets; state is checkpointed apart
            self._commit_done(todo, e)

    def _commit_done(self, todo: dict[TP, int], response: Any) -> None:
        if isinstance(response, BaseException):
            self.metrics.broker_errors.inc()
            log.warning("offset commit failed (%r); the next batch's commit covers it", response)
        else:
            self.table.committed(todo)

    # ------------------------------------------------------------------------------------------

    def _log_batch_notes(self, out: Outcome) -> None:
        if out.late_scored:
            self.late_total += out.late_scored
            if time.monotonic() >= self._next_late_log:  # at most one line a minute
                self._next_late_log = time.monotonic() + 60.0
                log.info(
                    "late events scored (input.late_events: score): %d so far", self.late_total
                )
        for key, old, new in out.moved:
            self.moved_keys_total += 1
            log.warning(
                "key %r moved from %s-%d to %s-%d; its state follows it "
                "(per-key order holds only within one partition)",
                key,
                *old,
                *new,
            )


_BLOCKED = {"KafkaTimeoutError"}  # a send that waited max_block_ms


def _names(error: BaseException) -> set[str]:
    return {c.__name__ for c in type(error).__mro__}


def _error(future: Any) -> BaseException | None:
    """The error of a failed (or unfinished) send's future."""
    if future.is_done and future.failed():
        return future.exception
    return None


def _source(msg: Message) -> str:
    """``topic-partition@offset`` of a dead letter's source, from its headers."""
    h = dict(msg[3] or [])
    try:
        return (
            f"{h['streamrnn.source.topic'].decode()}-{h['streamrnn.source.partition'].decode()}"
            f"@{h['streamrnn.source.offset'].decode()}"
        )
    except (KeyError, UnicodeDecodeError):
        return f"a message to {msg[0]}"
