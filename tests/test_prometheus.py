"""The Prometheus side against a real Prometheus and promtool (Debian's 2.42 is enough).

promtool checks the config, the rules and their unit tests, and lints the exposition; then a real
Prometheus scrapes a metrics endpoint fed with values and every dashboard and alert query runs
through its HTTP API. A live test can do the same with the detector as the scrape target, using
the helpers in tests/promtools.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from promtools import (
    DASHBOARD,
    PROMETHEUS_CONFIG,
    RULES,
    RULES_TEST,
    PrometheusServer,
    PromQLError,
    dashboard_queries,
    ensure_prometheus,
    invalid_queries,
    promtool,
    queries_without_data,
    rule_exprs,
    rule_queries,
)

from streamrnn.service.http import MetricsServer, start_http
from streamrnn.service.metrics import REJECT_REASONS, Metrics

pytestmark = pytest.mark.prometheus


@pytest.fixture(scope="module", autouse=True)
def _prometheus_installed() -> None:
    ensure_prometheus()


def run_ok(*args: str, stdin: str | None = None) -> str:
    result = promtool(*args, stdin=stdin)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def test_promtool_check_config():
    # Also checks that the rule files it names exist and parse.
    out = run_ok("check", "config", str(PROMETHEUS_CONFIG))
    assert "SUCCESS" in out
    assert "1 rule files found" in out or "rule files found" in out


def test_promtool_check_rules():
    out = run_ok("check", "rules", str(RULES))
    assert f"{len(rule_exprs(RULES))} rules found" in out


def test_promtool_test_rules():
    out = run_ok("test", "rules", str(RULES_TEST))
    assert "SUCCESS" in out


def feed(metrics: Metrics, rounds: int = 1) -> None:
    """Touch every metric, as a busy detector would."""
    for _ in range(rounds):
        metrics.processed(200)
        for reason in REJECT_REASONS[:3]:
            metrics.reject(reason)
        metrics.anomaly("readings")
        metrics.anomaly("meters", 2)
        metrics.batch_done(0.02)
        metrics.batch_done(0.3)
        metrics.observe_event_lags([0.05, 0.4, 2.0])
        metrics.observe_scores([0.05, 0.3, 0.7, 0.96, 0.995, 0.9995])
        metrics.set_assignment([("readings", 0), ("readings", 1)])
        metrics.set_consumer_lag("readings", 0, 120)
        metrics.set_consumer_lag("readings", 1, 80)
        metrics.set_state(active_keys=200, state_bytes=200 * 2048)
        metrics.evicted_keys.inc()
        metrics.imputed_values.inc(3)
        metrics.alerts_published.inc()
        metrics.broker_errors.inc()
        metrics.checkpoint(ok=True)
        metrics.checkpoint(ok=False)
        metrics.model_reload("ok")
        metrics.set_model("20250101-abcdef", "lstm", 64, "cpu")
        metrics.set_ready(True)
        feed_sinks(metrics)


def feed_sinks(metrics: Metrics) -> None:
    """The alert sinks' metrics, as a healthy detector paging through Alertmanager and a webhook
    shows them (a failed request retried with success since, nothing dropped)."""
    now = time.time()
    for sink, target in (("alertmanager", "http://alertmanager:9093"), ("webhook", "https://h/in")):
        t = metrics.sinks.target(sink, target)
        t.sent.inc(2)
        t.failures.inc()
        t.collapsed.inc()
        t.queue_depth.set(1)
        t.request_seconds.observe(0.01)
        t.delivery_seconds.observe(0.4)
        t.last_failure.set(now - 60)
        t.last_success.set(now)
    metrics.sinks.active.set(3)
    metrics.sinks.resolved.labels(reason="events").inc()


def test_promtool_check_metrics():
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    feed(metrics)
    exposition = generate_latest(registry).decode()
    run_ok("check", "metrics", stdin=exposition)


class FedExporter:
    """A MetricsServer whose Metrics are fed continuously from a background thread."""

    def __init__(self, interval: float = 0.1) -> None:
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry, topics=["readings"])
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.server: MetricsServer | None = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            feed(self.metrics)

    def __enter__(self) -> FedExporter:
        feed(self.metrics)
        self.server = start_http(self.registry, "127.0.0.1", 0, lambda: True, lambda: True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.server is not None:
            self.server.shutdown()

    @property
    def target(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.server_port}"


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    with (
        FedExporter() as exporter,
        PrometheusServer(
            [exporter.target], [RULES], tmp_path_factory.mktemp("prom"), scrape_interval="1s"
        ) as server,
    ):
        server.wait_for_scrapes(n=3, timeout=30)
        yield server


def test_scrape_is_up(prom: PrometheusServer):
    targets = prom.targets()
    assert [t["health"] for t in targets] == ["up"], targets
    assert targets[0]["labels"]["job"] == "streamrnn"
    assert prom.query('streamrnn_ready{job="streamrnn"} == 1')


def test_api_rejects_invalid_promql(prom: PrometheusServer):
    with pytest.raises(PromQLError) as err:
        prom.validate("sum(rate(streamrnn_events_total[5m])")
    assert err.value.status == 400 and err.value.error_type == "bad_data"
    assert prom.is_valid("sum(rate(streamrnn_events_total[5m]))") == (True, "")


def test_helpers_report_missing_data(prom: PrometheusServer):
    assert queries_without_data(prom, [("q", "streamrnn_never_exported")], timeout=0.5) == [
        "q: streamrnn_never_exported"
    ]
    assert invalid_queries(prom, [("q", "rate(x[5m]")])[0].startswith("q: bad_data (400)")
    with pytest.raises(AssertionError, match="no data"):
        prom.wait_for_data("streamrnn_never_exported", timeout=0.3)


def test_dashboard_and_alert_queries_are_valid(prom: PrometheusServer):
    problems = invalid_queries(prom, dashboard_queries(DASHBOARD) + rule_queries(RULES))
    assert not problems, "\n".join(problems)


def test_dashboard_queries_return_data(prom: PrometheusServer):
    missing = queries_without_data(prom, dashboard_queries(DASHBOARD), timeout=20)
    assert not missing, "dashboard queries without data:\n" + "\n".join(missing)


def test_rules_load_and_evaluate(prom: PrometheusServer):
    expected = {name for name, _ in rule_exprs(RULES)}
    deadline = time.monotonic() + 15
    while True:
        rules = [r for g in prom.rule_groups() for r in g["rules"]]
        health = {r["name"]: (r.get("health"), r.get("lastError", "")) for r in rules}
        if set(health) == expected and all(h == "ok" for h, _ in health.values()):
            break
        if time.monotonic() >= deadline:
            pytest.fail(f"rules not all evaluated ok: {health}")
        time.sleep(0.25)
    # The fed exporter is healthy: nothing about it should be firing.
    firing = [a for a in prom.api("alerts")["alerts"] if a["state"] == "firing"]
    assert not firing, firing
