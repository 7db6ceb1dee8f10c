"""The detector end to end with its alert sinks: the embedded broker, a real Alertmanager (Debian's
prometheus-alertmanager, installed when missing and root, else skipped) and a recording webhook.

* a spike becomes an alert in Alertmanager's ``GET /api/v2/alerts`` with the right labels, and
  resolves once the key has recovered;
* a silence created through Alertmanager's API mutes the page, and the Kafka alert is still
  written;
* an Alertmanager stopped mid-run costs no Kafka progress; the drops are counted, and delivery
  resumes when it is back;
* the webhook's HMAC signature verifies.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from amtools import (
    AlertmanagerServer,
    Recorder,
    pages,
    wait_until,
)
from servicetools import (
    Event,
    ThreadedDetector,
    TopicReader,
    committed,
    make_events,
    model_dir,
    produce,
    reference,
    service_config,
)

from streamrnn.tools.broker import EmbeddedBroker, create_topics

pytestmark = [pytest.mark.kafka, pytest.mark.alertmanager, pytest.mark.slow]

RESOLVE_AFTER = 40  # unflagged events of a key before its alert resolves (> the cooldown below)


def site(key: str) -> str:
    return "north" if key.endswith("0") else "south"


def messages(events: list[Event]) -> list[tuple[bytes, bytes]]:
    """The events as readings carrying a ``site`` field, keyed by their key."""
    return [
        (
            e.key.encode(),
            orjson.dumps({"key": e.key, "ts": e.ts, "value": e.value, "site": site(e.key)}),
        )
        for e in events
    ]


def raw_config(bs: str, topic: str, tmp_path: Path, **alerts: Any) -> dict[str, Any]:
    raw = service_config(bs, topic, topic, model_dir(), tmp_path / "state", engine_process=False)
    # One alert per spike: no cooldown longer than the tests' streams.
    raw["scoring"].update({"cooldown": 10})
    raw["alerts"] = {
        "resolve_after_events": RESOLVE_AFTER,
        "labels": {"site": "site"},
        # Longer than the test Alertmanager's group_wait (1 s): an alert that resolves at once
        # still pages first.
        "group_interval_s": 2.0,
        **alerts,
    }
    return raw


def flags_of(raw: dict[str, Any], events: list[Event]) -> dict[str, list[int]]:
    """The steps each key is flagged at in an uninterrupted run (the engine, as configured)."""
    _, _, flag = reference(raw, events)
    out: dict[str, list[int]] = {}
    keys = list(dict.fromkeys(e.key for e in events))
    for i in np.flatnonzero(flag).tolist():
        out.setdefault(events[i].key, []).append(i // len(keys))
    return out


def test_a_spike_pages_through_alertmanager_with_its_labels_and_resolves(
    kafka_broker: EmbeddedBroker,
    topic_name: str,
    tmp_path: Path,
    am: AlertmanagerServer,
    pager: Recorder,
) -> None:
    bs = kafka_broker.bootstrap_servers
    create_topics(bs, {topic_name: 2})
    events = make_events(3, 300, seed=21, spikes=[(0, 200)])
    k0 = events[0].key
    raw = raw_config(bs, topic_name, tmp_path, sinks={"alertmanager": {"urls": [am.url]}})
    raw["service"]["engine_process"] = True  # the recoveries cross the process boundary
    flags = flags_of(raw, events)
    assert 200 in flags[k0] and flags[k0][-1] <= 300 - RESOLVE_AFTER - 1  # it fires, then recovers

    first = [e for e in events if e.ts <= events[3 * 205].ts]
    sources = produce(bs, topic_name, messages(first))
    det = ThreadedDetector(raw)
    try:
        (alert,) = wait_until("the spike in Alertmanager", lambda: am.alerts(key=k0), timeout=60)
        assert alert["labels"] == {
            "alertname": "StreamrnnAnomaly",
            "key": k0,
            "topic": topic_name,
            "model": det.detector.model_version,
            "severity": "warning",
            "site": "north",
        }
        partition, offset = sources[3 * 200]
        assert alert["annotations"]["source"] == f"{topic_name}/{partition}/{offset}"
        assert alert["annotations"]["value"] == f"{events[3 * 200].value:.4g}"
        assert alert["status"]["state"] == "active"
        wait_until("a page", lambda: pages(pager, k0) == ["firing"])

        produce(bs, topic_name, messages(events[len(first) :]))
        wait_until("resolved in Alertmanager", lambda: not am.alerts(key=k0), timeout=60)
        wait_until("a resolved page", lambda: pages(pager, k0)[-1:] == ["resolved"])
        assert det.value("streamrnn_sink_resolved_total", {"reason": "events"}) >= 1
    finally:
        assert det.stop() == 0
    reader = TopicReader(bs, f"{topic_name}.alerts")
    try:
        recs = reader.read_until(lambda r: len(r) >= 1, 20, "the spike's alert")
    finally:
        reader.close()
    spike = [
        orjson.loads(r.value) for r in recs if orjson.loads(r.value)["source"]["offset"] == offset
    ]
    assert spike and spike[0]["fields"] == {"site": "north"}


def test_a_silence_mutes_the_page_and_the_kafka_alert_is_still_written(
    kafka_broker: EmbeddedBroker,
    topic_name: str,
    tmp_path: Path,
    am: AlertmanagerServer,
    pager: Recorder,
) -> None:
    bs = kafka_broker.bootstrap_servers
    create_topics(bs, {topic_name: 2})
    events = make_events(2, 260, seed=23, spikes=[(0, 200), (1, 200)])
    k0, k1 = events[0].key, events[1].key
    silence = am.silence(key=k0, comment="maintenance of meter 0")
    raw = raw_config(bs, topic_name, tmp_path, sinks={"alertmanager": {"urls": [am.url]}})
    flags = flags_of(raw, events)
    assert 200 in flags[k0] and 200 in flags[k1]
    produce(bs, topic_name, messages(events))
    det = ThreadedDetector(raw)
    try:
        wait_until("the page of the key not silenced", lambda: pages(pager, k1), timeout=60)
        (muted,) = wait_until("the silenced alert", lambda: am.alerts(key=k0))
        assert muted["status"]["state"] == "suppressed"
        assert muted["status"]["silencedBy"] == [silence]
        time.sleep(2.0)  # Alertmanager groups for one second: a page would have come by now
        assert pages(pager, k0) == []
    finally:
        assert det.stop() == 0
    reader = TopicReader(bs, f"{topic_name}.alerts")
    try:
        recs = reader.read_until(
            lambda r: any(orjson.loads(x.value)["key"] == k0 for x in r), 20, "k0's Kafka alert"
        )
    finally:
        reader.close()
    assert any(orjson.loads(r.value)["key"] == k0 for r in recs)


def test_alertmanager_away_costs_no_kafka_progress_drops_are_counted_delivery_resumes(
    kafka_broker: EmbeddedBroker, topic_name: str, tmp_path: Path, am: AlertmanagerServer
) -> None:
    bs = kafka_broker.bootstrap_servers
    create_topics(bs, {topic_name: 2})
    events = make_events(3, 400, seed=25, spikes=[(0, 100), (1, 250)])
    k0, k1 = events[0].key, events[1].key
    raw = raw_config(
        bs,
        topic_name,
        tmp_path,
        resolve_after_events=1000,  # both stay active to the end: re-sent, never resolved
        sinks={"alertmanager": {"urls": [am.url], "resend_interval_s": 1.0}},
        delivery={"max_age_s": 1.0, "retry_backoff_max_s": 0.5},
    )
    flags = flags_of(raw, events)
    assert 100 in flags[k0] and 250 in flags[k1]
    half = 3 * 150
    produce(bs, topic_name, messages(events[:half]))
    det = ThreadedDetector(raw)
    labels = {"sink": "alertmanager", "target": am.url}
    try:
        wait_until("k0 in Alertmanager", lambda: am.alerts(key=k0), timeout=60)
        am.stop()
        sources = produce(bs, topic_name, messages(events[half:]))
        ends: dict[int, int] = {}
        for p, o in sources:
            ends[p] = max(ends.get(p, 0), o + 1)
        # Kafka progress goes on: every event scored and committed while Alertmanager is away.
        wait_until(
            "every event committed",
            lambda: committed(bs, topic_name, topic_name, list(ends)) == ends,
            timeout=60,
        )
        assert det.value("streamrnn_events_total", {"outcome": "processed"}) == len(events)
        wait_until(
            "drops counted",
            lambda: det.value("streamrnn_sink_dropped_total", {**labels, "reason": "expired"}) >= 1,
            timeout=30,
        )
        assert det.value("streamrnn_sink_failures_total", labels) >= 1
        assert det.value("streamrnn_sink_last_failure_timestamp_seconds", labels) > det.value(
            "streamrnn_sink_last_success_timestamp_seconds", labels
        )
        am.start()
        # Delivery resumes: both active alerts are re-sent, the one raised while it was away too.
        wait_until(
            "both alerts in Alertmanager again",
            lambda: am.alerts(key=k0) and am.alerts(key=k1),
            timeout=30,
        )
        assert det.value("streamrnn_sink_last_success_timestamp_seconds", labels) > det.value(
            "streamrnn_sink_last_failure_timestamp_seconds", labels
        )
    finally:
        assert det.stop() == 0


def test_the_webhook_signature_verifies(
    kafka_broker: EmbeddedBroker, topic_name: str, tmp_path: Path, pager: Recorder
) -> None:
    bs = kafka_broker.bootstrap_servers
    create_topics(bs, {topic_name: 1})
    events = make_events(2, 240, seed=26, spikes=[(1, 200)])
    k1 = events[1].key
    key_file = tmp_path / "webhook.key"
    key_file.write_bytes(b"a-long-random-key\n")
    raw = raw_config(
        bs,
        topic_name,
        tmp_path,
        sinks={"webhook": {"urls": [pager.url], "secret_file": str(key_file)}},
    )
    assert 200 in flags_of(raw, events)[k1]
    produce(bs, topic_name, messages(events))
    det = ThreadedDetector(raw)
    try:
        got = pager.wait_for(lambda r: r.json()["key"] == k1, timeout=60)
    finally:
        assert det.stop() == 0
    body = got[0].body
    expected = "sha256=" + hmac.new(b"a-long-random-key", body, hashlib.sha256).hexdigest()
    assert got[0].headers["X-Streamrnn-Signature"] == expected
    notice = orjson.loads(body)
    assert notice["status"] == "firing" and notice["labels"]["site"] == "south"
    assert notice["first"]["key"] == k1 and notice["first"]["fields"] == {"site": "south"}
