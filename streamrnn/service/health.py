"""Liveness and readiness: what ``/healthz`` and ``/readyz`` answer.

* Liveness fails when the loop has not iterated for ``max(HEALTH_MIN_S, max_poll_interval_ms)``:
  the loop is stuck (the process may be restarted).
* Readiness needs a Kafka connection, an assignment and every assigned partition's state
  restored, and fails once the service is stopping.

Each check returns ``(ok, reason)``; the reason is the probe's response body.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["HEALTH_MIN_S", "Health"]

# /healthz fails when the loop has not iterated for max(this, max_poll_interval_ms)
HEALTH_MIN_S = 30.0


@dataclass(frozen=True)
class Readiness:
    """The facts readiness is decided on."""

    stopping: bool
    connected: bool
    assigned: int  # partitions
    restoring: int  # partitions whose state is not restored yet


class Health:
    """The loop's heartbeat (:meth:`tick`) and the two checks.

    >>> h = Health(max_poll_interval_ms=1000)
    >>> h.liveness()
    (True, 'ok')
    >>> Health.readiness(Readiness(stopping=False, connected=True, assigned=2, restoring=1))
    (False, 'restoring the state of 1 partition(s)')
    """

    def __init__(self, *, max_poll_interval_ms: int) -> None:
        self.limit_s = max(HEALTH_MIN_S, max_poll_interval_ms / 1000.0)
        self.last_tick = time.monotonic()

    def tick(self) -> None:
        """The loop iterated (or a retry is waiting on purpose)."""
        self.last_tick = time.monotonic()

    def liveness(self) -> tuple[bool, str]:
        idle = time.monotonic() - self.last_tick
        if idle > self.limit_s:
            return False, f"the loop has not iterated for {idle:.0f} s (limit {self.limit_s:.0f} s)"
        return True, "ok"

    @staticmethod
    def readiness(facts: Readiness) -> tuple[bool, str]:
        if facts.stopping:
            return False, "stopping"
        if not facts.connected:
            return False, "not connected to Kafka"
        if not facts.assigned:
            return False, "no partitions assigned"
        if facts.restoring:
            return False, f"restoring the state of {facts.restoring} partition(s)"
        return True, "ok"
