"""The Alertmanager sink: notices as alerts of Alertmanager's API v2.

Each notice becomes one alert of ``POST /api/v2/alerts`` (up to :data:`BATCH_MAX` a request):
``labels`` (:func:`~.incidents.label_set`: its identity), ``annotations``
(:func:`~.render.describe`), ``startsAt`` (the first flagged event's time), ``endsAt`` and
``generatorURL`` (``alerts.generator_url``, when set).

``endsAt`` of a firing alert is ``4 x resend_interval_s`` after it was sent, and the dispatcher
sends every active alert again each ``resend_interval_s``, as Prometheus does with its alerts:
Alertmanager keeps a live alert firing without ever resolving it on its own, and resolves the
alerts of a detector that died within four intervals. A resolved alert carries its resolution
time as ``endsAt``. Labels make the identity, so sending again is idempotent: Alertmanager updates
the alert and groups, silences and inhibits it by its own configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from ..config import AlertsConfig
from ..times import iso_utc
from .incidents import Notice
from .render import describe, generator_url
from .transport import Transport

__all__ = ["BATCH_MAX", "VALIDITY_INTERVALS", "AlertmanagerSink"]

BATCH_MAX = 256  # alerts a request, as Prometheus batches them
VALIDITY_INTERVALS = 4  # a firing alert's endsAt is this many resend intervals ahead
API_PATH = "/api/v2/alerts"


class AlertmanagerSink:
    """Renders and posts alerts; one instance serves every Alertmanager URL."""

    name = "alertmanager"
    batch_max = BATCH_MAX

    def __init__(self, config: AlertsConfig) -> None:
        self.config = config
        self.resend_interval_s = config.sinks.alertmanager.resend_interval_s
        # Probed when no request went out for this long: a broken route shows before a page.
        self.probe_interval_s: float | None = self.resend_interval_s

    def postable(self, n: Notice, now: float) -> dict[str, Any]:
        """One alert of the API's ``postableAlerts``; ``now`` is the wall time of sending."""
        if n.status == "resolved" and n.ends_at is not None:
            ends = n.ends_at
        else:
            ends = now + VALIDITY_INTERVALS * self.resend_interval_s
        alert: dict[str, Any] = {
            "labels": dict(n.labels),
            "annotations": describe(n),
            "startsAt": iso_utc(n.starts_at),
            "endsAt": iso_utc(ends),
        }
        url = generator_url(self.config.generator_url, n)
        if url:
            alert["generatorURL"] = url
        return alert

    def send(
        self, transport: Transport, notices: Sequence[Notice], now: float, timeout_s: float
    ) -> None:
        body = orjson.dumps([self.postable(n, now) for n in notices])
        transport.request(
            "POST", API_PATH, body, {"Content-Type": "application/json"}, timeout_s=timeout_s
        )

    def probe(self, transport: Transport, timeout_s: float) -> None:
        transport.request("GET", "/-/healthy", timeout_s=timeout_s)
