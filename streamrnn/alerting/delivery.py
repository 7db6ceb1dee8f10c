"""One target of one sink: its queue and the worker thread that delivers it, with retries.

A :class:`Target` is one URL of a sink (each Alertmanager of a cluster, each webhook). The
dispatcher offers notices (:meth:`Target.offer`, never blocking); the target's own thread takes
the due ones from its :class:`~.queue.KeyedQueue` (up to the sink's batch size), renders and
sends them, and:

* on success counts them sent and observes their delivery latency;
* on a failure that may pass (:class:`~.transport.Retry`) counts a failure, keeps them queued
  and pauses the whole target, from 0.1 s doubling up to ``alerts.delivery.retry_backoff_max_s``
  (a target that is down gets one request per pause, not one per notification);
* on a refusal (:class:`~.transport.Rejected`) counts a failure and drops them (``rejected``):
  sending the same payload again cannot succeed.

Notifications queued longer than ``alerts.delivery.max_age_s`` are dropped (``expired``). An idle
target whose sink can be probed (Alertmanager's ``/-/healthy``) is probed every
``probe_interval_s``, so its failure shows before the next page needs it. :meth:`Target.close`
sends what is queued (group-interval waits no longer apply) until the deadline and drops the rest
(``shutdown``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from ..config import DeliveryConfig
from ..service.clients import Backoff
from .incidents import Notice
from .metrics import TargetMetrics
from .queue import Entry, KeyedQueue, Offered
from .transport import DeliveryError, Rejected, Transport

__all__ = ["Sink", "Target"]

log = logging.getLogger(__name__)

EXPIRE_EVERY_S = 1.0  # the queue is searched for expired notifications at most this often
IDLE_WAIT_S = 5.0  # longest sleep of an idle worker


class Sink(Protocol):
    """How one kind of sink turns notices into requests."""

    name: str
    batch_max: int  # notices per request
    probe_interval_s: float | None  # None: the sink has no probe

    def send(
        self, transport: Transport, notices: Sequence[Notice], now: float, timeout_s: float
    ) -> None:
        """Deliver ``notices`` (wall time ``now``) or raise :class:`DeliveryError`."""

    def probe(self, transport: Transport, timeout_s: float) -> None:
        """Raise :class:`DeliveryError` when the target is not healthy."""


def _behind(pending: Notice, new: Notice) -> bool:
    """A resolution never overtakes a page: it waits behind a firing notice still queued."""
    return new.status == "resolved" and pending.status == "firing"


class Target:
    """One URL of one sink: a bounded queue and the thread delivering it."""

    def __init__(
        self,
        sink: Sink,
        transport: Transport,
        delivery: DeliveryConfig,
        group_interval_s: float,
        metrics: TargetMetrics,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self.transport = transport
        self.delivery = delivery
        self.metrics = metrics
        self.name = f"{sink.name} {transport.display}"
        self.queue: KeyedQueue[Notice] = KeyedQueue(
            delivery.queue_size, group_interval_s, monotonic=monotonic
        )
        self._clock = clock
        self._now = monotonic
        self._closing = threading.Event()
        self._deadline = float("inf")
        self._thread: threading.Thread | None = None
        self._backoff = Backoff(delivery.retry_backoff_max_s)
        self._retry_at = 0.0
        self._next_expire = 0.0
        self._last_request = monotonic()
        self._failing = False  # for logging the first failure and the recovery only

    def offer(self, notice: Notice, *, resend: bool = False) -> Offered:
        """Queue ``notice``; a merge is counted as collapsed, a refusal as dropped
        (``queue_full``). A ``resend`` (a keep-alive of an active alert) is counted as neither."""
        got = self.queue.offer(notice.fingerprint, notice, hold=not resend, behind=_behind)
        if not resend:
            if got == "merged":
                self.metrics.collapsed.inc()
            elif got == "dropped":
                self.metrics.dropped("queue_full")
        return got

    @property
    def room(self) -> int:
        """Entries the queue can still take."""
        return self.queue.capacity - len(self.queue)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"streamrnn-sink-{self.sink.name}", daemon=True
        )
        self._thread.start()

    def close(self, deadline: float) -> None:
        """Deliver what is queued until ``deadline`` (monotonic), drop the rest, stop."""
        self._deadline = deadline
        self._closing.set()
        self.queue.wake()

    def join(self, deadline: float) -> bool:
        """Wait for the worker until ``deadline``; whether it has stopped."""
        if self._thread is None:
            return True
        self._thread.join(max(0.0, deadline - self._now()))
        return not self._thread.is_alive()

    # ------------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._closing.is_set():
                self._step()
            self._flush()
        except Exception:  # a bug must not pass silently, nor take the detector down
            log.exception("alert sink %s: worker stopped", self.name)

    def _step(self) -> None:
        now = self._now()
        if now >= self._next_expire:
            self._next_expire = now + EXPIRE_EVERY_S
            old = self.queue.expire(self.delivery.max_age_s)
            self.metrics.dropped("expired", sum(1 + (e.next is not None) for e in old))
        if now < self._retry_at:  # paused after a failure; close() ends the pause
            self._closing.wait(min(self._retry_at - now, EXPIRE_EVERY_S))
            return
        batch = self.queue.take(self.sink.batch_max)
        if batch:
            self._deliver(batch, self.delivery.timeout_s)
            return
        wait = IDLE_WAIT_S
        due = self.queue.next_due()
        if due is not None:
            wait = min(wait, max(0.0, due - now))
        probe = self.sink.probe_interval_s
        if probe is not None:
            if now - self._last_request >= probe:
                self._probe()
                return
            wait = min(wait, self._last_request + probe - now)
        self.queue.wait(max(0.01, min(wait, EXPIRE_EVERY_S)))

    def _deliver(self, batch: list[tuple[Entry[Notice], Notice, int]], timeout_s: float) -> bool:
        m = self.metrics
        t0 = self._now()
        self._last_request = t0
        try:
            self.sink.send(self.transport, [n for _, n, _ in batch], self._clock(), timeout_s)
        except DeliveryError as e:
            m.request_seconds.observe(self._now() - t0)
            self._failed(e)
            for entry, _, _ in batch:
                if isinstance(e, Rejected):
                    self.queue.discard(entry)
                else:
                    self.queue.release(entry)
            if isinstance(e, Rejected):
                m.dropped("rejected", len(batch))
                log.error("alert sink %s refused %d notification(s): %s", self.name, len(batch), e)
                return True  # the target answered: no reason to pause it
            self._retry_at = self._now() + self._backoff.next()
            return False
        except Exception:  # rendering failed: a bug, not the target's fault
            log.exception("alert sink %s: cannot send %d notification(s)", self.name, len(batch))
            for entry, _, _ in batch:
                self.queue.discard(entry)
            m.dropped("malformed", len(batch))
            return True
        done = self._now()
        m.request_seconds.observe(done - t0)
        for entry, _, version in batch:
            m.delivery_seconds.observe(max(0.0, done - entry.queued_at))
            self.queue.done(entry, version)
        m.sent.inc(len(batch))
        self._succeeded()
        return True

    def _probe(self) -> None:
        self._last_request = self._now()
        try:
            self.sink.probe(self.transport, self.delivery.timeout_s)
        except DeliveryError as e:
            self._failed(e)
            return
        self._succeeded()

    def _failed(self, e: DeliveryError) -> None:
        self.metrics.failures.inc()
        self.metrics.last_failure.set(self._clock())
        if not self._failing:
            self._failing = True
            log.warning(
                "alert sink %s is failing: %s; %d notification(s) queued, retrying",
                self.name,
                e,
                len(self.queue),
            )
        else:
            log.debug("alert sink %s: %s", self.name, e)

    def _succeeded(self) -> None:
        self._backoff.reset()
        self._retry_at = 0.0
        self.metrics.last_success.set(self._clock())
        if self._failing:
            self._failing = False
            log.info("alert sink %s delivers again", self.name)

    def _flush(self) -> None:
        """After close: everything queued, due or not, until the deadline; then drop the rest."""
        while True:
            left = self._deadline - self._now()
            if left <= 0:
                break
            if self._now() < self._retry_at:
                time.sleep(min(self._retry_at - self._now(), left))
                continue
            batch = self.queue.take(self.sink.batch_max, ignore_due=True)
            if not batch:
                break
            self._deliver(batch, max(0.05, min(self.delivery.timeout_s, left)))
        rest = self.queue.take(len(self.queue) + 1, ignore_due=True)
        lost = sum(1 + (entry.next is not None) for entry, _, _ in rest)
        for entry, _, _ in rest:
            self.queue.discard(entry)
        if lost:
            self.metrics.dropped("shutdown", lost)
            log.warning(
                "alert sink %s: %d notification(s) undelivered at shutdown", self.name, lost
            )
