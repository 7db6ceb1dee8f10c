"""The Alertmanager sink against a real Alertmanager (Debian's prometheus-alertmanager, installed
when missing and root, else skipped): labels and times as Alertmanager stores them, resolution,
re-sending, silences, an Alertmanager that goes away and comes back, an HA pair.

Alertmanager routes everything to a recording webhook receiver (the "pager") with one-second
group wait and interval, so each test sees what a person would be paged with.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from alerttools import alert_message
from amtools import (
    AlertmanagerServer,
    Recorder,
    amtool,
    pages,
    wait_until,
)
from prometheus_client import CollectorRegistry

from streamrnn.alerting import AlertSinks, Recovery
from streamrnn.alerting.metrics import SinkMetrics
from streamrnn.config import load_config

pytestmark = pytest.mark.alertmanager


def start_sinks(urls: list[str], registry: CollectorRegistry, **alerts: Any) -> AlertSinks:
    overrides: dict[str, Any] = {
        "alerts.sinks.alertmanager.urls": urls,
        "alerts.group_interval_s": 0.2,
        **{f"alerts.{k}": v for k, v in alerts.items()},
    }
    sinks = AlertSinks(load_config(None, overrides=overrides).alerts, SinkMetrics(registry))
    sinks.start()
    return sinks


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_alert_reaches_alertmanager_with_its_labels_and_resolves(
    am: AlertmanagerServer, pager: Recorder
) -> None:
    reg = CollectorRegistry()
    sinks = start_sinks(
        [am.url],
        reg,
        labels={"site": "site"},
        severity="page",
        generator_url="http://grafana.example/d/streamrnn?var-key={key}",
    )
    t0 = time.time() - 120
    sinks.submit(
        [
            alert_message(
                "meter-17",
                1822,
                t0,
                value=412.0,
                expected=101.25,
                score=0.9913,
                partition=3,
                fields={"site": "north"},
            )
        ]
    )
    (got,) = wait_until("the alert in Alertmanager", lambda: am.alerts(key="meter-17"))
    assert got["labels"] == {
        "alertname": "StreamrnnAnomaly",
        "key": "meter-17",
        "topic": "readings",
        "model": "v1",
        "severity": "page",
        "site": "north",
    }
    ann = got["annotations"]
    assert ann["summary"] == "meter-17: value 412, expected 101.2, score 0.991"
    assert ann["source"] == "readings/3/1822"
    assert "412" in ann["description"] and "101.2" in ann["description"]
    assert got["generatorURL"] == "http://grafana.example/d/streamrnn?var-key=meter-17"
    assert abs(parse_time(got["startsAt"]) - t0) < 0.01  # the event time
    # Valid for four resend intervals (60 s by default).
    assert 200 < parse_time(got["endsAt"]) - time.time() <= 240
    assert got["status"]["state"] == "active"
    wait_until("a firing page", lambda: pages(pager, "meter-17") == ["firing"])

    sinks.submit([], [Recovery("meter-17", "readings", 3, 1922, t0 + 100)])
    wait_until("resolved in Alertmanager", lambda: not am.alerts(key="meter-17"))
    wait_until("a resolved page", lambda: pages(pager, "meter-17") == ["firing", "resolved"])
    sinks.close(5.0)
    labels = {"sink": "alertmanager", "target": am.url}
    assert reg.get_sample_value("streamrnn_sink_sent_total", labels) == 2
    assert reg.get_sample_value("streamrnn_sink_failures_total", labels) == 0


def test_active_alerts_are_resent_and_expire_once_nobody_sends_them(
    am: AlertmanagerServer, pager: Recorder
) -> None:
    reg = CollectorRegistry()
    sinks = start_sinks([am.url], reg, **{"sinks.alertmanager.resend_interval_s": 1.0})
    sinks.submit([alert_message("k", 1, time.time() - 5)])
    (first,) = wait_until("the alert", lambda: am.alerts(key="k"))
    ends = parse_time(first["endsAt"])
    assert 3 < ends - time.time() <= 4
    later = wait_until(
        "a later endsAt",
        lambda: [a for a in am.alerts(key="k") if parse_time(a["endsAt"]) > ends + 1.5],
        timeout=15,
    )
    assert later[0]["startsAt"] == first["startsAt"]  # the same alert, kept alive
    assert pages(pager, "k") == ["firing"]  # re-sending is not a new page
    sinks.close(2.0)  # the detector is gone: nobody re-sends
    wait_until("expired in Alertmanager", lambda: not am.alerts(key="k"), timeout=15)
    wait_until("a resolved page", lambda: pages(pager, "k") == ["firing", "resolved"])


def test_a_silence_mutes_the_page(am: AlertmanagerServer, pager: Recorder) -> None:
    silence = am.silence(key="quiet-1", comment="maintenance")
    reg = CollectorRegistry()
    sinks = start_sinks([am.url], reg)
    now = time.time()
    sinks.submit([alert_message("quiet-1", 1, now), alert_message("loud-1", 2, now)])
    wait_until("a page for loud-1", lambda: pages(pager, "loud-1"))
    (muted,) = wait_until("quiet-1 in Alertmanager", lambda: am.alerts(key="quiet-1"))
    assert muted["status"]["state"] == "suppressed"
    assert muted["status"]["silencedBy"] == [silence]
    time.sleep(2.0)  # group wait and interval are one second: a page would have come
    assert pages(pager, "quiet-1") == []
    sinks.close(2.0)
    labels = {"sink": "alertmanager", "target": am.url}
    assert reg.get_sample_value("streamrnn_sink_sent_total", labels) == 2  # delivered, muted there


def test_alertmanager_away_costs_queue_space_then_counted_drops_and_delivery_resumes(
    am: AlertmanagerServer, pager: Recorder
) -> None:
    reg = CollectorRegistry()
    sinks = start_sinks(
        [am.url],
        reg,
        **{
            "delivery.queue_size": 4,
            "delivery.retry_backoff_max_s": 0.5,
            "sinks.alertmanager.resend_interval_s": 2.0,
        },
    )
    labels = {"sink": "alertmanager", "target": am.url}
    now = time.time()
    sinks.submit([alert_message("before", 1, now)])
    wait_until("delivered", lambda: am.alerts(key="before"))
    am.stop()
    t0 = time.monotonic()
    sinks.submit([alert_message(f"during-{i}", 10 + i, now) for i in range(6)])
    assert time.monotonic() - t0 < 0.5  # handing over never waits for the sink
    wait_until(
        "failures counted",
        lambda: reg.get_sample_value("streamrnn_sink_failures_total", labels) >= 2,
    )
    dropped = reg.get_sample_value(
        "streamrnn_sink_dropped_total", {**labels, "reason": "queue_full"}
    )
    assert dropped is not None and dropped >= 2  # 6 new keys (and re-sends) for 4 places
    failing = reg.get_sample_value("streamrnn_sink_last_failure_timestamp_seconds", labels)
    assert failing > reg.get_sample_value("streamrnn_sink_last_success_timestamp_seconds", labels)

    am.start()  # the same port: back
    # What was queued is delivered; what was dropped comes back with the next re-send of the
    # active alerts, so every active alert is in Alertmanager again.
    keys = {"before"} | {f"during-{i}" for i in range(6)}
    wait_until(
        "every active alert in Alertmanager",
        lambda: {a["labels"]["key"] for a in am.alerts()} >= keys,
        timeout=20,
    )
    sinks.close(2.0)
    assert reg.get_sample_value("streamrnn_sink_last_success_timestamp_seconds", labels) > failing


def test_every_member_of_an_alertmanager_pair_gets_the_alert(tmp_path: Path) -> None:
    with (
        AlertmanagerServer(tmp_path / "a") as am_a,
        AlertmanagerServer(tmp_path / "b") as am_b,
    ):
        reg = CollectorRegistry()
        sinks = start_sinks([am_a.url, am_b.url], reg)
        sinks.submit([alert_message("pair", 5, time.time())])
        wait_until("in both", lambda: am_a.alerts(key="pair") and am_b.alerts(key="pair"))
        am_b.stop()
        sinks.submit([alert_message("pair-2", 6, time.time())])
        wait_until("in the one left", lambda: am_a.alerts(key="pair-2"))
        sinks.close(1.0)
        assert (
            reg.get_sample_value(
                "streamrnn_sink_sent_total", {"sink": "alertmanager", "target": am_a.url}
            )
            == 2
        )


def test_an_idle_alertmanager_target_is_probed_so_a_broken_path_shows_before_a_page(
    tmp_path: Path,
) -> None:
    from promtools import free_port

    reg = CollectorRegistry()
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens
    sinks = start_sinks([url], reg, **{"sinks.alertmanager.resend_interval_s": 0.5})
    labels = {"sink": "alertmanager", "target": url}
    wait_until(
        "a failed probe",
        lambda: reg.get_sample_value("streamrnn_sink_last_failure_timestamp_seconds", labels),
        timeout=10,
    )
    assert reg.get_sample_value("streamrnn_sink_last_success_timestamp_seconds", labels) == 0
    assert reg.get_sample_value("streamrnn_sink_sent_total", labels) == 0
    sinks.close(1.0)
    with AlertmanagerServer(tmp_path) as am:
        reg = CollectorRegistry()
        sinks = start_sinks([am.url], reg, **{"sinks.alertmanager.resend_interval_s": 0.5})
        labels = {"sink": "alertmanager", "target": am.url}
        wait_until(
            "a successful probe",
            lambda: reg.get_sample_value("streamrnn_sink_last_success_timestamp_seconds", labels),
            timeout=10,
        )
        sinks.close(1.0)


SHIPPED = Path(__file__).resolve().parent.parent / "deploy" / "alertmanager" / "alertmanager.yml"


def test_the_shipped_alertmanager_config_is_valid_and_routes_to_the_receiver_that_logs() -> None:
    result = amtool("check-config", str(SHIPPED))
    assert result.returncode == 0, result.stdout + result.stderr
    for alertname in ("StreamrnnAnomaly", "StreamrnnAlertSinkFailing", "StreamrnnDown"):
        routed = amtool(
            "config", "routes", "test", f"--config.file={SHIPPED}", f"alertname={alertname}"
        )
        assert routed.stdout.strip() == "log", routed.stdout + routed.stderr


def test_the_shipped_route_pages_an_anomaly(tmp_path: Path, pager: Recorder) -> None:
    config = yaml.safe_load(SHIPPED.read_text())
    (receiver,) = config["receivers"]
    assert receiver["webhook_configs"][0]["url"] == "http://alert-log:9095/"
    receiver["webhook_configs"][0]["url"] = pager.url  # the compose service's stand-in
    with AlertmanagerServer(tmp_path, config=config) as am:
        reg = CollectorRegistry()
        sinks = start_sinks([am.url], reg)
        sinks.submit([alert_message("meter-3", 7, time.time())])
        wait_until("the page (group_wait 10 s)", lambda: pages(pager, "meter-3"), timeout=30)
        sinks.close(1.0)
