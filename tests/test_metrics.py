"""streamrnn.service.metrics: names, labels, updates and the HTTP endpoints."""

from __future__ import annotations

import http.client
import threading

import numpy as np
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamrnn.service.http import MetricsServer, start_http
from streamrnn.service.metrics import (
    ANOMALY_SCORE_BUCKETS,
    REJECT_REASONS,
    Metrics,
    observe_many,
)

EXPECTED_TYPES = {
    "streamrnn_events": "counter",
    "streamrnn_rejected": "counter",
    "streamrnn_anomalies": "counter",
    "streamrnn_batch_duration_seconds": "histogram",
    "streamrnn_engine_seconds": "counter",
    "streamrnn_event_lag_seconds": "histogram",
    "streamrnn_consumer_lag": "gauge",
    "streamrnn_active_keys": "gauge",
    "streamrnn_state_bytes": "gauge",
    "streamrnn_evicted_keys": "counter",
    "streamrnn_checkpoint_age_seconds": "gauge",
    "streamrnn_checkpoints": "counter",
    "streamrnn_anomaly_score": "histogram",
    "streamrnn_model_info": "gauge",
    "streamrnn_model_reloads": "counter",
    "streamrnn_imputed_values": "counter",
    "streamrnn_alerts_published": "counter",
    "streamrnn_broker_errors": "counter",
    "streamrnn_ready": "gauge",
    "streamrnn_live": "gauge",
    "streamrnn_broker_reachable": "gauge",
    "streamrnn_broker_data_loss": "counter",
    "streamrnn_producers_renewed": "counter",
    "streamrnn_dead_letters_cut": "counter",
    "streamrnn_unsendable_messages": "counter",
    "streamrnn_checkpoints_quarantined": "counter",
    "streamrnn_assigned_partitions": "gauge",
    "streamrnn_last_batch_timestamp_seconds": "gauge",
    # the alert sinks (streamrnn/alerting/metrics.py)
    "streamrnn_sink_sent": "counter",
    "streamrnn_sink_failures": "counter",
    "streamrnn_sink_dropped": "counter",
    "streamrnn_sink_collapsed": "counter",
    "streamrnn_sink_queue_depth": "gauge",
    "streamrnn_sink_request_duration_seconds": "histogram",
    "streamrnn_sink_delivery_latency_seconds": "histogram",
    "streamrnn_sink_last_success_timestamp_seconds": "gauge",
    "streamrnn_sink_last_failure_timestamp_seconds": "gauge",
    "streamrnn_sink_active_alerts": "gauge",
    "streamrnn_sink_resolved": "counter",
}


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics(registry: CollectorRegistry, clock: Clock) -> Metrics:
    return Metrics(registry, topics=["readings"], clock=clock)


def parse(text: str) -> dict:
    """Metric families by name; the text parser lists ``*_created`` samples as families of
    their own, which are dropped here (they belong to the counter or histogram of the base name)."""
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    return {n: f for n, f in fams.items() if not (n.endswith("_created") and n[:-8] in fams)}


def families(registry: CollectorRegistry) -> dict:
    return parse(generate_latest(registry).decode())


def test_exactly_the_expected_metrics_with_help(registry: CollectorRegistry, metrics: Metrics):
    fams = families(registry)
    assert {name: f.type for name, f in fams.items()} == EXPECTED_TYPES
    for f in fams.values():
        assert len(f.documentation) > 15, f.name


def test_nothing_on_the_global_registry():
    before = set(REGISTRY._names_to_collectors)
    Metrics(CollectorRegistry())
    assert set(REGISTRY._names_to_collectors) == before


def test_two_instances_on_separate_registries():
    a, b = CollectorRegistry(), CollectorRegistry()
    Metrics(a).processed(3)
    Metrics(b)
    assert a.get_sample_value("streamrnn_events_total", {"outcome": "processed"}) == 3
    assert b.get_sample_value("streamrnn_events_total", {"outcome": "processed"}) == 0


def test_labelled_children_exist_up_front(registry: CollectorRegistry, metrics: Metrics):
    get = registry.get_sample_value
    for outcome in ("processed", "rejected"):
        assert get("streamrnn_events_total", {"outcome": outcome}) == 0
    for reason in REJECT_REASONS:
        assert get("streamrnn_rejected_total", {"reason": reason}) == 0
    assert set(REJECT_REASONS) == {
        "not_json",
        "missing_key",
        "missing_value",
        "non_numeric_value",
        "bad_timestamp",
        "wrong_shape",
        "late_event",
        "non_finite_value",
        "event_time_out_of_window",
    }
    for outcome in ("ok", "error"):
        assert get("streamrnn_checkpoints_total", {"outcome": outcome}) == 0
    for outcome in ("ok", "refused", "error"):
        assert get("streamrnn_model_reloads_total", {"outcome": outcome}) == 0
    assert get("streamrnn_anomalies_total", {"topic": "readings"}) == 0
    for name in (
        "streamrnn_evicted_keys_total",
        "streamrnn_imputed_values_total",
        "streamrnn_alerts_published_total",
        "streamrnn_broker_errors_total",
        "streamrnn_active_keys",
        "streamrnn_state_bytes",
        "streamrnn_ready",
        "streamrnn_assigned_partitions",
        "streamrnn_last_batch_timestamp_seconds",
        "streamrnn_batch_duration_seconds_count",
        "streamrnn_event_lag_seconds_count",
        "streamrnn_anomaly_score_count",
    ):
        assert get(name) == 0, name


def test_no_label_carries_a_key(registry: CollectorRegistry, metrics: Metrics):
    allowed = {"outcome", "reason", "topic", "partition", "version", "cell", "hidden", "device"}
    allowed |= {"kind", "cause"}
    metrics.set_consumer_lag("readings", 0, 5)
    metrics.set_model("v1", "lstm", 64, "cpu")
    for fam in families(registry).values():
        for sample in fam.samples:
            assert set(sample.labels) - {"le"} <= allowed, sample


def test_custom_reasons(registry: CollectorRegistry):
    m = Metrics(registry, reasons=("not_json", "too_big"))
    assert registry.get_sample_value("streamrnn_rejected_total", {"reason": "too_big"}) == 0
    assert registry.get_sample_value("streamrnn_rejected_total", {"reason": "late_event"}) is None
    m.reject("too_big", 2)
    assert registry.get_sample_value("streamrnn_rejected_total", {"reason": "too_big"}) == 2
    with pytest.raises(TypeError):
        Metrics(CollectorRegistry(), reasons="not_json")


def test_events_and_rejects(registry: CollectorRegistry, metrics: Metrics):
    metrics.processed(10)
    metrics.processed(0)
    metrics.reject("not_json")
    metrics.reject("late_event", 3)
    get = registry.get_sample_value
    assert get("streamrnn_events_total", {"outcome": "processed"}) == 10
    assert get("streamrnn_events_total", {"outcome": "rejected"}) == 4
    assert get("streamrnn_rejected_total", {"reason": "not_json"}) == 1
    assert get("streamrnn_rejected_total", {"reason": "late_event"}) == 3
    with pytest.raises(ValueError, match="unknown reject reason"):
        metrics.reject("made_up")
    assert get("streamrnn_events_total", {"outcome": "rejected"}) == 4


def test_anomalies_by_topic(registry: CollectorRegistry, metrics: Metrics):
    metrics.anomaly("readings")
    metrics.anomaly("other", 2)
    get = registry.get_sample_value
    assert get("streamrnn_anomalies_total", {"topic": "readings"}) == 1
    assert get("streamrnn_anomalies_total", {"topic": "other"}) == 2


def test_histograms_and_buckets(registry: CollectorRegistry, metrics: Metrics, clock: Clock):
    metrics.batch_done(0.02)
    metrics.batch_done(3.0, at=42.0)
    metrics.event_lag.observe(0.5)
    metrics.observe_scores([0.05, 0.5, 0.995, 0.99995, 1.0, float("nan")])
    get = registry.get_sample_value
    assert get("streamrnn_batch_duration_seconds_count") == 2
    assert get("streamrnn_batch_duration_seconds_bucket", {"le": "0.001"}) == 0
    assert get("streamrnn_batch_duration_seconds_bucket", {"le": "0.025"}) == 1
    assert get("streamrnn_batch_duration_seconds_bucket", {"le": "10.0"}) == 2
    assert get("streamrnn_last_batch_timestamp_seconds") == 42.0
    assert get("streamrnn_event_lag_seconds_bucket", {"le": "0.01"}) == 0
    assert get("streamrnn_event_lag_seconds_bucket", {"le": "3600.0"}) == 1
    assert get("streamrnn_anomaly_score_count") == 5
    assert get("streamrnn_anomaly_score_bucket", {"le": "0.1"}) == 1
    assert get("streamrnn_anomaly_score_bucket", {"le": "0.99"}) == 2
    assert get("streamrnn_anomaly_score_bucket", {"le": "0.999"}) == 3
    assert get("streamrnn_anomaly_score_bucket", {"le": "0.9999"}) == 3
    assert get("streamrnn_anomaly_score_bucket", {"le": "1.0"}) == 5
    for le in (0.1, 0.5, 0.9, 0.95, 0.99, 0.999, 0.9999):
        assert le in ANOMALY_SCORE_BUCKETS


def test_observe_many_equals_one_by_one():
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [rng.uniform(0, 1, 5000), [0.0, 0.1, 0.99, 0.999, 1.0, 1.5, np.nan, np.inf, -np.inf]]
    )
    r1, r2 = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("h", "h", buckets=ANOMALY_SCORE_BUCKETS, registry=r1)
    h2 = Histogram("h", "h", buckets=ANOMALY_SCORE_BUCKETS, registry=r2)
    assert observe_many(h1, values) == 5006
    for v in values:
        if np.isfinite(v):
            h2.observe(float(v))
    for le in [*map(str, ANOMALY_SCORE_BUCKETS), "+Inf"]:
        a = r1.get_sample_value("h_bucket", {"le": le})
        b = r2.get_sample_value("h_bucket", {"le": le})
        assert a == b, le
    assert r1.get_sample_value("h_count") == r2.get_sample_value("h_count") == 5006
    assert r1.get_sample_value("h_sum") == pytest.approx(r2.get_sample_value("h_sum"))
    assert observe_many(h1, []) == 0


def test_event_lags_batch(registry: CollectorRegistry, metrics: Metrics):
    assert metrics.observe_event_lags(np.array([-2.0, 0.005, 0.3, 7200.0, np.nan])) == 4
    get = registry.get_sample_value
    assert get("streamrnn_event_lag_seconds_count") == 4
    assert get("streamrnn_event_lag_seconds_bucket", {"le": "0.01"}) == 2  # -2 counts as 0
    assert get("streamrnn_event_lag_seconds_bucket", {"le": "3600.0"}) == 3
    assert get("streamrnn_event_lag_seconds_sum") == pytest.approx(7200.305)


def test_consumer_lag_follows_assignment(registry: CollectorRegistry, metrics: Metrics):
    get = registry.get_sample_value
    metrics.set_assignment([("readings", 0), ("readings", 1)])
    assert get("streamrnn_assigned_partitions") == 2
    assert get("streamrnn_consumer_lag", {"topic": "readings", "partition": "0"}) == 0
    metrics.set_consumer_lag("readings", 1, 120)
    assert get("streamrnn_consumer_lag", {"topic": "readings", "partition": "1"}) == 120
    metrics.set_assignment([("readings", 1), ("readings", 3)])
    assert get("streamrnn_assigned_partitions") == 2
    assert get("streamrnn_consumer_lag", {"topic": "readings", "partition": "0"}) is None
    assert get("streamrnn_consumer_lag", {"topic": "readings", "partition": "1"}) == 120
    assert get("streamrnn_consumer_lag", {"topic": "readings", "partition": "3"}) == 0
    metrics.set_assignment([])
    assert get("streamrnn_assigned_partitions") == 0
    assert get("streamrnn_consumer_lag", {"topic": "readings", "partition": "1"}) is None


def test_state_gauges(registry: CollectorRegistry, metrics: Metrics):
    metrics.set_state(active_keys=1234, state_bytes=5_000_000)
    metrics.evicted_keys.inc(7)
    metrics.imputed_values.inc(3)
    metrics.alerts_published.inc()
    metrics.broker_errors.inc(2)
    get = registry.get_sample_value
    assert get("streamrnn_active_keys") == 1234
    assert get("streamrnn_state_bytes") == 5_000_000
    assert get("streamrnn_evicted_keys_total") == 7
    assert get("streamrnn_imputed_values_total") == 3
    assert get("streamrnn_alerts_published_total") == 1
    assert get("streamrnn_broker_errors_total") == 2


def test_checkpoint_age(registry: CollectorRegistry, metrics: Metrics, clock: Clock):
    get = registry.get_sample_value
    # Before the first checkpoint the age counts from start-up.
    assert get("streamrnn_checkpoint_age_seconds") == 0
    clock.t += 90
    assert get("streamrnn_checkpoint_age_seconds") == 90
    metrics.checkpoint(ok=True)
    assert get("streamrnn_checkpoint_age_seconds") == 0
    assert get("streamrnn_checkpoints_total", {"outcome": "ok"}) == 1
    clock.t += 30
    metrics.checkpoint(ok=False)  # a failed checkpoint does not reset the age
    assert get("streamrnn_checkpoint_age_seconds") == 30
    assert get("streamrnn_checkpoints_total", {"outcome": "error"}) == 1
    metrics.checkpoint(ok=True, at=clock.t - 5)
    assert get("streamrnn_checkpoint_age_seconds") == 5


def test_model_info_replaces_previous_labels(registry: CollectorRegistry, metrics: Metrics):
    get = registry.get_sample_value
    assert not [s for s in families(registry)["streamrnn_model_info"].samples]
    v1 = {"version": "v1", "cell": "lstm", "hidden": "64", "device": "cpu"}
    v2 = {"version": "v2", "cell": "gru", "hidden": "128", "device": "cuda:0"}
    metrics.set_model("v1", "lstm", 64, "cpu")
    assert get("streamrnn_model_info", v1) == 1
    metrics.set_model("v2", "gru", 128, "cuda:0")
    assert get("streamrnn_model_info", v2) == 1
    assert get("streamrnn_model_info", v1) is None
    assert len(families(registry)["streamrnn_model_info"].samples) == 1
    metrics.set_model("v2", "gru", 128, "cuda:0")
    assert get("streamrnn_model_info", v2) == 1


def test_model_reloads_and_ready(registry: CollectorRegistry, metrics: Metrics):
    get = registry.get_sample_value
    metrics.model_reload("ok")
    metrics.model_reload("refused")
    metrics.model_reload("refused")
    assert get("streamrnn_model_reloads_total", {"outcome": "ok"}) == 1
    assert get("streamrnn_model_reloads_total", {"outcome": "refused"}) == 2
    assert get("streamrnn_model_reloads_total", {"outcome": "error"}) == 0
    with pytest.raises(ValueError):
        metrics.model_reload("maybe")
    assert get("streamrnn_ready") == 0
    metrics.set_ready(True)
    assert get("streamrnn_ready") == 1
    metrics.set_ready(False)
    assert get("streamrnn_ready") == 0


# ---------------------------------------------------------------------------------------------
# HTTP


class Flags:
    def __init__(self) -> None:
        self.healthy = True
        self.ready = False


def fetch(server: MetricsServer, path: str, method: str = "GET", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type"), resp.read()
    finally:
        conn.close()


@pytest.fixture
def server(registry: CollectorRegistry, metrics: Metrics):
    flags = Flags()
    srv = start_http(registry, "127.0.0.1", 0, lambda: flags.healthy, lambda: flags.ready)
    srv.flags = flags
    try:
        yield srv
    finally:
        srv.shutdown()


def test_http_metrics(server: MetricsServer, metrics: Metrics):
    assert server.server_port > 0
    metrics.processed(5)
    status, ctype, body = fetch(server, "/metrics")
    assert status == 200
    assert ctype.startswith("text/plain")
    text = body.decode()
    assert 'streamrnn_events_total{outcome="processed"} 5.0' in text
    assert "# HELP streamrnn_consumer_lag " in text
    assert set(parse(text)) == set(EXPECTED_TYPES)


def test_http_metrics_openmetrics(server: MetricsServer):
    status, ctype, body = fetch(
        server, "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert status == 200
    assert ctype.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_http_health_and_ready(server: MetricsServer):
    flags = server.flags
    assert fetch(server, "/healthz")[::2] == (200, b"ok\n")
    status, _, body = fetch(server, "/readyz")
    assert status == 503 and body.strip() == b"not ready"
    flags.ready = True
    assert fetch(server, "/readyz")[::2] == (200, b"ok\n")
    flags.healthy = False
    status, ctype, body = fetch(server, "/healthz")
    assert status == 503 and body.strip() == b"not healthy"
    assert ctype.startswith("text/plain")
    assert fetch(server, "/healthz", method="HEAD")[::2] == (503, b"")


def test_http_probe_reasons_and_errors(registry: CollectorRegistry):
    def broken() -> bool:
        raise RuntimeError("boom")

    srv = start_http(registry, "127.0.0.1", 0, broken, lambda: (False, "restoring state"))
    try:
        status, _, body = fetch(srv, "/healthz")
        assert status == 503 and b"RuntimeError" in body
        status, _, body = fetch(srv, "/readyz")
        assert status == 503 and body.strip() == b"restoring state"
    finally:
        srv.shutdown()


def test_http_unknown_path_and_query_string(server: MetricsServer):
    assert fetch(server, "/nope")[0] == 404
    assert fetch(server, "/metrics?name[]=streamrnn_ready")[0] == 200
    assert fetch(server, "/healthz/")[0] == 200


def test_http_concurrent_requests(server: MetricsServer):
    results: list[int] = []

    def worker() -> None:
        for _ in range(10):
            results.append(fetch(server, "/metrics")[0])

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 80


def test_http_shutdown_frees_port(registry: CollectorRegistry):
    srv = MetricsServer.start_http(registry, "127.0.0.1", 0, lambda: True, lambda: True)
    port = srv.server_port
    assert fetch(srv, "/healthz")[0] == 200
    srv.shutdown()
    srv.shutdown()  # idempotent
    with pytest.raises(OSError):
        http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/healthz")
    # The same port can be bound again straight away.
    again = start_http(registry, "127.0.0.1", port, lambda: True, lambda: True)
    try:
        assert again.server_port == port
        assert fetch(again, "/healthz")[0] == 200
    finally:
        again.shutdown()
