"""Delivery to real HTTP receivers: the webhook sink (payload, signature), collapse within the
group interval, retries with backoff, refusals, bounded queues, expiry and shutdown, all counted.

The receiver is a real HTTP server on loopback (tests/amtools.py ``Recorder``) whose answer a
test changes to play a failing or refusing target.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from alerttools import alert_message
from amtools import Recorder, wait_until
from prometheus_client import CollectorRegistry

from streamrnn.alerting import AlertSinks, Recovery, validate_alerts_config
from streamrnn.alerting.incidents import fingerprint
from streamrnn.alerting.metrics import DROP_REASONS, SinkMetrics
from streamrnn.alerting.transport import Transport, display_url
from streamrnn.alerting.webhook import verify
from streamrnn.config import ConfigError, load_config
from streamrnn.service.metrics import Metrics


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with Recorder() as r:
        yield r


def make_sinks(registry: CollectorRegistry, **alerts: Any) -> AlertSinks:
    overrides = {f"alerts.{k}": v for k, v in alerts.items()}
    sinks = AlertSinks(load_config(None, overrides=overrides).alerts, SinkMetrics(registry))
    sinks.start()
    return sinks


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, f"{name}{labels} is not exported"
    return value


def test_webhook_fires_and_resolves_with_a_signature_that_verifies(
    recorder: Recorder, tmp_path: Path
) -> None:
    secret = tmp_path / "hook.key"
    secret.write_text("s3cret-key\n")
    reg = CollectorRegistry()
    sinks = make_sinks(
        reg,
        **{
            "sinks.webhook.urls": [recorder.url],
            "sinks.webhook.secret_file": str(secret),
            "generator_url": "https://grafana.example/d/s?var-key={key}&offset={offset}",
            "labels": {"site": "site"},
            "group_interval_s": 0.2,
        },
    )
    now = time.time()
    sinks.submit([alert_message("meter 7", 41, now - 30, fields={"site": "north"})])
    (fired,) = recorder.wait_for(lambda r: r.json()["status"] == "firing")
    sinks.submit([], [Recovery("meter 7", "readings", 0, 140, now - 1)])
    (resolved,) = recorder.wait_for(lambda r: r.json()["status"] == "resolved")
    sinks.close(5.0)

    for r in (fired, resolved):
        header = r.headers["X-Streamrnn-Signature"]
        expected = "sha256=" + hmac.new(b"s3cret-key", r.body, hashlib.sha256).hexdigest()
        assert header == expected  # computed here, independently of the sink's own code
        assert verify(b"s3cret-key", r.body, header)
        assert not verify(b"other-key", r.body, header)
        assert not verify(b"s3cret-key", r.body + b" ", header)
    body = fired.json()
    assert body["id"] == fingerprint(body["labels"])
    assert body["key"] == "meter 7"
    assert body["labels"]["site"] == "north"
    assert body["labels"]["alertname"] == "StreamrnnAnomaly"
    assert body["annotations"]["summary"] == "meter 7: value 9, expected 1, score 0.950"
    assert body["generatorURL"] == "https://grafana.example/d/s?var-key=meter%207&offset=41"
    assert body["first"]["source"] == {"topic": "readings", "partition": 0, "offset": 41}
    assert body["endsAt"] is None
    done = resolved.json()
    assert done["id"] == body["id"]
    assert (done["resolvedBy"], done["flaggedEvents"]) == ("events", 1)
    assert done["endsAt"] is not None
    assert sample(reg, "streamrnn_sink_sent_total", sink="webhook", target=recorder.url) == 2
    assert sample(reg, "streamrnn_sink_resolved_total", reason="events") == 1


def test_webhook_without_secret_is_unsigned_and_send_resolved_false_sends_only_firing(
    recorder: Recorder,
) -> None:
    reg = CollectorRegistry()
    sinks = make_sinks(
        reg,
        **{
            "sinks.webhook.urls": [recorder.url],
            "sinks.webhook.send_resolved": False,
            "group_interval_s": 0.0,
        },
    )
    now = time.time()
    sinks.submit([alert_message("k", 1, now)])
    sinks.submit([], [Recovery("k", "readings", 0, 9, now)])
    sinks.submit([alert_message("k2", 10, now)])
    recorder.wait_for(lambda r: r.json()["key"] == "k2")
    sinks.close(5.0)
    got = recorder.requests()
    assert [r.json()["status"] for r in got] == ["firing", "firing"]
    assert all("X-Streamrnn-Signature" not in r.headers for r in got)
    assert sample(reg, "streamrnn_sink_resolved_total", reason="events") == 1


def test_a_keys_notifications_collapse_within_the_group_interval(recorder: Recorder) -> None:
    reg = CollectorRegistry()
    sinks = make_sinks(reg, **{"sinks.webhook.urls": [recorder.url], "group_interval_s": 1.5})
    now = time.time()
    sinks.submit([alert_message("k", 1, now - 5)])
    recorder.wait_for(lambda r: True)
    t_first = recorder.requests()[0].at
    for off in (2, 3, 4):
        sinks.submit([alert_message("k", off, now - 5 + off)])
    sinks.submit([alert_message("other", 7, now)])  # its own first: at once
    (update,) = recorder.wait_for(
        lambda r: r.json()["key"] == "k" and r.json()["flaggedEvents"] > 1
    )
    sinks.close(5.0)
    keys = [r.json()["key"] for r in recorder.requests()]
    assert keys.count("k") == 2 and keys.count("other") == 1
    assert update.json()["flaggedEvents"] == 4
    assert update.json()["last"]["source"]["offset"] == 4
    assert update.at - t_first >= 1.5 - 0.05  # held for the group interval
    other = next(r for r in recorder.requests() if r.json()["key"] == "other")
    assert other.at < update.at
    assert sample(reg, "streamrnn_sink_collapsed_total", sink="webhook", target=recorder.url) == 2


def test_failing_target_is_retried_with_backoff_and_delivers_when_back(recorder: Recorder) -> None:
    recorder.status = 503
    reg = CollectorRegistry()
    sinks = make_sinks(
        reg,
        **{
            "sinks.webhook.urls": [recorder.url],
            "delivery.retry_backoff_max_s": 0.4,
        },
    )
    now = time.time()
    sinks.submit([alert_message(f"k{i}", i, now) for i in range(20)])
    labels = {"sink": "webhook", "target": recorder.url}
    wait_until(
        "three failures",
        lambda: reg.get_sample_value("streamrnn_sink_failures_total", labels) >= 3,
    )
    failed_requests = len(recorder.requests())
    assert failed_requests < 20  # the target pauses after a failure: not one request per alert
    assert sample(reg, "streamrnn_sink_last_failure_timestamp_seconds", **labels) > 0
    assert sample(reg, "streamrnn_sink_queue_depth", **labels) == 20
    recorder.status = 200
    wait_until(
        "all delivered", lambda: reg.get_sample_value("streamrnn_sink_sent_total", labels) == 20
    )
    sinks.close(5.0)
    delivered = {r.json()["key"] for r in recorder.requests()[failed_requests:]}
    assert delivered == {f"k{i}" for i in range(20)}
    assert sample(reg, "streamrnn_sink_queue_depth", **labels) == 0
    assert sample(reg, "streamrnn_sink_last_success_timestamp_seconds", **labels) > sample(
        reg, "streamrnn_sink_last_failure_timestamp_seconds", **labels
    )
    for reason in DROP_REASONS:
        assert sample(reg, "streamrnn_sink_dropped_total", reason=reason, **labels) == 0


def test_refused_payloads_are_dropped_not_retried(recorder: Recorder) -> None:
    recorder.status = 400
    reg = CollectorRegistry()
    sinks = make_sinks(reg, **{"sinks.webhook.urls": [recorder.url]})
    sinks.submit([alert_message("k", 1, time.time())])
    labels = {"sink": "webhook", "target": recorder.url}
    wait_until(
        "a rejected drop",
        lambda: reg.get_sample_value(
            "streamrnn_sink_dropped_total", {**labels, "reason": "rejected"}
        ),
    )
    time.sleep(0.5)  # a retry would come within the first backoff (0.1 s)
    sinks.close(5.0)
    assert len(recorder.requests()) == 1
    assert sample(reg, "streamrnn_sink_failures_total", **labels) == 1
    assert sample(reg, "streamrnn_sink_sent_total", **labels) == 0


def test_full_queue_expiry_and_shutdown_drops_are_counted(recorder: Recorder) -> None:
    recorder.status = 500
    reg = CollectorRegistry()
    sinks = make_sinks(
        reg,
        **{
            "sinks.webhook.urls": [recorder.url],
            "delivery.queue_size": 3,
            "delivery.max_age_s": 1.0,
            "delivery.retry_backoff_max_s": 0.2,
        },
    )
    labels = {"sink": "webhook", "target": recorder.url}

    def dropped(reason: str) -> float:
        return sample(reg, "streamrnn_sink_dropped_total", reason=reason, **labels)

    now = time.time()
    sinks.submit([alert_message(f"k{i}", i, now) for i in range(5)])
    wait_until("queue_full drops", lambda: dropped("queue_full") == 2)
    wait_until("expired drops", lambda: dropped("expired") == 3, timeout=10)
    sinks.submit([alert_message("late", 9, now)])
    wait_until("queued again", lambda: sample(reg, "streamrnn_sink_queue_depth", **labels) == 1)
    sinks.close(0.3)
    assert dropped("shutdown") == 1
    assert sample(reg, "streamrnn_sink_sent_total", **labels) == 0


def test_timeout_superseded_overflow_and_malformed_reach_the_receiver_or_the_counts(
    recorder: Recorder,
) -> None:
    reg = CollectorRegistry()
    sinks = make_sinks(
        reg,
        **{
            "sinks.webhook.urls": [recorder.url],
            "resolve_timeout_s": 1.0,
            "max_active": 2,
            "group_interval_s": 0.0,
        },
    )
    now = time.time()
    sinks.submit([alert_message("quiet", 1, now - 5)])
    sinks.submit([alert_message("reloaded", 2, now - 4, model="v1")])
    sinks.submit([alert_message("reloaded", 3, now - 3, model="v2")])
    sinks.submit([alert_message("one-too-many", 4, now - 2)])
    sinks.submit([b"{not json"])
    timed_out = recorder.wait_for(
        lambda r: r.json()["key"] == "quiet" and r.json()["status"] == "resolved"
    )
    assert timed_out[0].json()["resolvedBy"] == "timeout"
    sinks.close(5.0)
    got = [
        (r.json()["key"], r.json()["status"], r.json()["labels"]["model"])
        for r in recorder.requests()
    ]
    assert ("reloaded", "resolved", "v1") in got and ("reloaded", "firing", "v2") in got
    # The superseded alert's page went out before its resolution, which never overtakes it.
    assert got.index(("reloaded", "firing", "v1")) < got.index(("reloaded", "resolved", "v1"))
    assert all(k != "one-too-many" for k, _, _ in got)
    labels = {"sink": "webhook", "target": recorder.url}
    assert sample(reg, "streamrnn_sink_dropped_total", reason="overflow", **labels) == 1
    assert sample(reg, "streamrnn_sink_dropped_total", reason="malformed", **labels) == 1
    assert sample(reg, "streamrnn_sink_resolved_total", reason="timeout") >= 1
    assert sample(reg, "streamrnn_sink_resolved_total", reason="superseded") == 1


def test_every_sink_series_exists_before_the_first_alert() -> None:
    reg = CollectorRegistry()
    sinks = AlertSinks(
        load_config(
            None,
            overrides={
                "alerts.sinks.alertmanager.urls": ["http://am-0:9093", "http://am-1:9093/"],
                "alerts.sinks.webhook.urls": ["https://user:pw@hooks.example/in?token=x"],
            },
        ).alerts,
        Metrics(reg).sinks,  # built with the service's other metrics
    )
    targets = [
        ("alertmanager", "http://am-0:9093"),
        ("alertmanager", "http://am-1:9093/"),
        ("webhook", "https://hooks.example/in"),
    ]
    for sink, target in targets:
        labels = {"sink": sink, "target": target}
        for name in (
            "streamrnn_sink_sent_total",
            "streamrnn_sink_failures_total",
            "streamrnn_sink_collapsed_total",
            "streamrnn_sink_queue_depth",
            "streamrnn_sink_request_duration_seconds_count",
            "streamrnn_sink_delivery_latency_seconds_count",
            "streamrnn_sink_last_success_timestamp_seconds",
        ):
            assert sample(reg, name, **labels) == 0
        for reason in DROP_REASONS:
            assert sample(reg, "streamrnn_sink_dropped_total", reason=reason, **labels) == 0
    assert sample(reg, "streamrnn_sink_active_alerts") == 0
    assert sinks.enabled


def test_no_sink_configured_is_a_no_op() -> None:
    sinks = AlertSinks(load_config(None).alerts, SinkMetrics(CollectorRegistry()))
    assert not sinks.enabled
    sinks.start()
    sinks.submit([alert_message("k", 1, time.time())])
    sinks.close(1.0)


def test_credentials_are_sent_and_never_shown(recorder: Recorder, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    port_url = recorder.url.replace("http://", "http://bot:pa%3Ass@")
    t = Transport(port_url, timeout_s=5.0)
    assert t.display == recorder.url
    t.request("POST", "", b"{}")
    Transport(recorder.url, timeout_s=5.0, bearer_token=b"tok-123").request("POST", "", b"{}")
    basic, bearer = recorder.requests()
    assert basic.headers["Authorization"] == "Basic " + base64.b64encode(b"bot:pa:ss").decode()
    assert bearer.headers["Authorization"] == "Bearer tok-123"
    assert display_url(port_url) == recorder.url


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"alerts.sinks.webhook.secret_file": "/nonexistent/key"},
            "alerts.sinks.webhook.secret_file: must be a readable file (No such file or "
            "directory), got '/nonexistent/key'",
        ),
        (
            {"alerts.sinks.webhook.bearer_token_file": "EMPTY"},
            "alerts.sinks.webhook.bearer_token_file: must be a file holding the secret, got an "
            "empty file",
        ),
        (
            {"alerts.sinks.webhook.ca_file": "/nonexistent/ca.pem"},
            "alerts.sinks.webhook.ca_file: must be a readable file, got '/nonexistent/ca.pem'",
        ),
        (
            {"alerts.sinks.webhook.urls": ["http://h/x", "http://u:p@h/x"]},
            "alerts.sinks.webhook.urls: must not repeat a URL, got 'http://h/x' twice",
        ),
    ],
)
def test_unusable_sink_settings_stop_start_up(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    overrides = {k: str(empty) if v == "EMPTY" else v for k, v in overrides.items()}
    overrides.setdefault("alerts.sinks.webhook.urls", ["http://h/x"])
    with pytest.raises(ConfigError) as err:
        AlertSinks(load_config(None, overrides=overrides).alerts, SinkMetrics(CollectorRegistry()))
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"alerts.sinks.alertmanager.urls": ["alertmanager:9093"]},
            "alerts.sinks.alertmanager.urls: must be a list of http:// or https:// URLs, got "
            "['alertmanager:9093']",
        ),
        ({"alerts.labels": {"key": "meter"}}, "alerts.labels: must map label names"),
        ({"alerts.labels": {"site": 3}}, "alerts.labels: must be a mapping of strings to strings"),
        (
            {"alerts.resolve_after_events": 0},
            "alerts.resolve_after_events: must be an integer >= 1, got 0",
        ),
        ({"alerts.group_interval_s": -1}, "alerts.group_interval_s: must be >= 0, got -1"),
        (
            {"alerts.delivery.queue_size": 0},
            "alerts.delivery.queue_size: must be an integer >= 1, got 0",
        ),
        ({"alerts.severity": " "}, "alerts.severity: must not be empty, got ' '"),
        (
            {"alerts.generator_url": "http://g/?k={meter}"},
            "alerts.generator_url: must be a URL template whose placeholders are among {key}",
        ),
        (
            {"alerts.sinks.webhook.signature_header": "X Sig"},
            "alerts.sinks.webhook.signature_header: must be an HTTP header name",
        ),
        (
            {"alerts.sinks.slack": {}},
            "alerts.sinks.slack: unknown key (known: alertmanager, webhook)",
        ),
    ],
)
def test_bad_alerts_config_names_key_rule_and_value(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides=overrides)
    assert message in str(err.value)


def test_resolve_after_events_must_outlast_the_cooldown_when_a_sink_is_set() -> None:
    quiet = load_config(None, overrides={"alerts.resolve_after_events": 10})
    validate_alerts_config(quiet)  # no sink: nothing to flap
    cfg = load_config(
        None,
        overrides={
            "alerts.resolve_after_events": 50,
            "alerts.sinks.webhook.urls": ["http://h/x"],
        },
    )
    with pytest.raises(ConfigError) as err:
        validate_alerts_config(cfg)
    assert str(err.value) == (
        "alerts.resolve_after_events: must be greater than scoring.cooldown (50) so that a "
        "sustained anomaly stays one alert, got 50"
    )


def test_the_logging_receiver_prints_pages_and_checks_signatures(tmp_path: Path) -> None:
    from streamrnn.alerting.receiver import Receiver
    from streamrnn.alerting.transport import Rejected

    lines: list[str] = []
    secret = tmp_path / "key"
    secret.write_text("k3y\n")
    receiver = Receiver("127.0.0.1", 0, secret=b"k3y", emit=lines.append).start()
    url = f"http://127.0.0.1:{receiver.server_port}/hook"
    try:
        reg = CollectorRegistry()
        sinks = make_sinks(
            reg,
            **{
                "sinks.webhook.urls": [url],
                "sinks.webhook.secret_file": str(secret),
                "labels": {"site": "site"},
            },
        )
        sinks.submit([alert_message("m1", 3, time.time(), fields={"site": "n"})])
        wait_until("a line", lambda: lines)
        sinks.close(2.0)
        assert lines == [
            "firing StreamrnnAnomaly key=m1 model=v1 severity=warning site=n "
            "topic=readings: m1: value 9, expected 1, score 0.950"
        ]
        page = {
            "status": "firing",
            "alerts": [
                {"status": "resolved", "labels": {"alertname": "X", "key": "k"}, "annotations": {}}
            ],
        }
        Transport(url, timeout_s=5).request("POST", "", orjson.dumps(page))
        assert lines[-1] == "resolved X key=k"
        notice = {"version": "1", "id": "f", "status": "firing", "labels": {}}
        with pytest.raises(Rejected) as err:
            Transport(url, timeout_s=5).request("POST", "", orjson.dumps(notice))
        assert err.value.status == 401
        assert lines[-1].endswith("bad or no signature")
        with pytest.raises(Rejected) as err:
            Transport(url, timeout_s=5).request("POST", "", b"[1, 2]")
        assert err.value.status == 400
    finally:
        receiver.stop()
