"""Liveness and readiness: what ``/healthz`` and ``/readyz`` answer.

* Liveness fails when the loop has not iterated for ``max(HEALTH_MIN_S, max_poll_interval_ms)``
  (the loop is stuck), or when it has made no progress for ``service.stall_timeout_s`` while
  work is waiting: polls in flight or sent but unacknowledged, consumer lag, or sends retried
  in a loop. Progress is a poll settled (its outputs acknowledged and its offsets committed);
  time without work waiting counts as progress. A pod stuck this way is worth a restart.
* Readiness needs a Kafka connection (a connected broker, not only a client object), an
  assignment and every assigned partition's state restored, and fails once the service is
  stopping.

Each check returns ``(ok, reason)``; the reason is the probe's response body.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["HEALTH_MIN_S", "Health", "Readiness"]

# /healthz fails when the loop has not iterated for max(this, max_poll_interval_ms)
HEALTH_MIN_S = 30.0


@dataclass(frozen=True)
class Readiness:
    """The facts readiness is decided on."""

    stopping: bool
    connected: bool
    assigned: int  # partitions
    restoring: int  # partitions whose state is not restored yet
    broker_reachable: bool = True


class Health:
    """The loop's heartbeat (:meth:`tick`), its progress (:meth:`progress`), the work waiting
    (:meth:`waiting`, :meth:`retrying`) and the two checks.

    >>> h = Health(max_poll_interval_ms=1000, stall_timeout_s=60)
    >>> h.liveness()
    (True, 'ok')
    >>> h.waiting("2 poll(s) unacknowledged"); h.last_progress -= 61; h.liveness()[0]
    False
    >>> h.progress(); h.liveness()
    (True, 'ok')
    >>> Health.readiness(Readiness(stopping=False, connected=True, assigned=2, restoring=1))
    (False, 'restoring the state of 1 partition(s)')
    """

    def __init__(self, *, max_poll_interval_ms: int, stall_timeout_s: float = 300.0) -> None:
        self.limit_s = max(HEALTH_MIN_S, max_poll_interval_ms / 1000.0)
        self.stall_s = stall_timeout_s
        self.last_tick = self.last_progress = time.monotonic()
        self._work = ""  # what waits, in words; "" when nothing does
        self._retrying = False

    def tick(self) -> None:
        """The loop iterated (or a retry is waiting on purpose)."""
        self.last_tick = time.monotonic()

    def progress(self) -> None:
        """A poll settled: its outputs were acknowledged and its offsets moved."""
        self.last_progress = time.monotonic()

    def waiting(self, work: str) -> None:
        """What work waits now, in words ("" for none: an idle loop is making progress)."""
        self._work = work
        if not work and not self._retrying:
            self.last_progress = time.monotonic()

    def retrying(self, on: bool) -> None:
        """Sends are (or are no longer) retried in a loop."""
        self._retrying = on

    def liveness(self) -> tuple[bool, str]:
        now = time.monotonic()
        idle = now - self.last_tick
        if idle > self.limit_s:
            return False, f"the loop has not iterated for {idle:.0f} s (limit {self.limit_s:.0f} s)"
        work = "sends retried in a loop" if self._retrying else self._work
        stalled = now - self.last_progress
        if work and stalled > self.stall_s:
            return False, (
                f"no progress for {stalled:.0f} s with work waiting ({work}; "
                f"limit {self.stall_s:.0f} s)"
            )
        return True, "ok"

    @staticmethod
    def readiness(facts: Readiness) -> tuple[bool, str]:
        if facts.stopping:
            return False, "stopping"
        if not facts.connected:
            return False, "not connected to Kafka"
        if not facts.broker_reachable:
            return False, "no broker reachable"
        if not facts.assigned:
            return False, "no partitions assigned"
        if facts.restoring:
            return False, f"restoring the state of {facts.restoring} partition(s)"
        return True, "ok"
