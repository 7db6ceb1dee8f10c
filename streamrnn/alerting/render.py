"""What a notice says: times, annotations and the link, shared by the Alertmanager and webhook
sinks so that both tell a person the same thing.

>>> from streamrnn.alerting.message import Alert
>>> from streamrnn.alerting.incidents import Notice
>>> a = Alert("m 1", 1704067200.0, "2024-01-01T00:00:00.000Z", {"value": 412.0},
...           {"value": 101.25}, 0.9913, 0.8, "v7", "readings", 3, 1822)
>>> n = Notice("m 1", "firing", {}, a, a, 1, a.ts)
>>> describe(n)["summary"]
'm 1: value 412, expected 101.2, score 0.991'
>>> generator_url("https://grafana/d/x?var-key={key}&time={ts}", n)
'https://grafana/d/x?var-key=m%201&time=2024-01-01T00%3A00%3A00.000Z'
"""

from __future__ import annotations

import urllib.parse

from .incidents import Notice
from .message import format_values

__all__ = ["describe", "generator_url"]


def describe(n: Notice) -> dict[str, str]:
    """``summary`` (value, expected value, score), ``description``, and the latest flagged
    event's details one by one (``value``, ``expected``, ``score``, ``threshold``,
    ``flagged_events``, ``source`` = its topic/partition/offset, ``first_source``)."""
    last, first = n.last, n.first
    value, expected = format_values(last.values), format_values(last.expected)
    summary = f"{n.key}: value {value}, expected {expected}, score {last.score:.3f}"
    since = "" if n.flagged == 1 else f" ({n.flagged} flagged events since {first.time})"
    description = (
        f"streamrnn flagged {n.key} on {last.topic} at {last.time}{since}: value {value} where "
        f"model {last.model} expected {expected}; anomaly score {last.score:.4f} "
        f"(threshold {last.threshold:g})."
    )
    if n.status == "resolved":
        how = {
            "events": "its readings are back to expected",
            "timeout": "no flagged reading for the resolve timeout",
            "superseded": "a new alert with other labels replaces it",
        }.get(n.resolved_by or "", "")
        description += f" Resolved: {how}." if how else " Resolved."
    return {
        "summary": summary,
        "description": description,
        "value": value,
        "expected": expected,
        "score": f"{last.score:.4f}",
        "threshold": f"{last.threshold:g}",
        "flagged_events": str(n.flagged),
        "source": last.source,
        "first_source": first.source,
    }


def generator_url(template: str | None, n: Notice) -> str | None:
    """``template`` with the latest flagged event's placeholders filled in, URL-quoted."""
    if not template:
        return None
    last = n.last
    q = urllib.parse.quote
    return template.format(
        key=q(n.key, safe=""),
        topic=q(last.topic, safe=""),
        partition=last.partition,
        offset=last.offset,
        ts=q(last.time, safe=""),
        alertname=q(n.labels.get("alertname", ""), safe=""),
    )
