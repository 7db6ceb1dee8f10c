"""The real detector, on the embedded broker with live traffic, scraped by a real Prometheus.

Every dashboard query and every alert expression must be valid through Prometheus' HTTP API, the
dashboard's queries must return data from what the detector really exposes, and promtool must
accept the live /metrics exposition.
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from amtools import Recorder
from promtools import (
    DASHBOARD,
    RULES,
    PrometheusServer,
    dashboard_queries,
    ensure_prometheus,
    invalid_queries,
    promtool,
    queries_without_data,
    rule_queries,
)
from servicetools import (
    ThreadedDetector,
    event_json,
    make_events,
    model_dir,
    produce,
    service_config,
    wait_for,
)

from streamrnn.tools.broker import create_topics

pytestmark = [pytest.mark.kafka, pytest.mark.prometheus, pytest.mark.slow]

MALFORMED = [
    b"not json",
    b'{"key": "x", "ts": 1700000000}',
    b'{"key": "x", "ts": "soon", "value": 1}',
]


class Traffic:
    """Sends readings (with a spike per round and a few malformed messages) until stopped."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.rounds = 0

    def _run(self) -> None:
        # Bounded: at most 60 rounds of 8 keys x 40 steps, stopped by the test much sooner.
        while not self.stop_event.is_set() and self.rounds < 60:
            events = make_events(8, 40, seed=self.rounds, spikes=[(0, 35)])
            messages = [(e.key.encode(), event_json(e)) for e in events]
            messages += [(b"bad", m) for m in MALFORMED]
            produce(self.bootstrap, self.topic, messages)
            self.rounds += 1
            self.stop_event.wait(0.5)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def live(
    kafka_broker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[PrometheusServer, str]]:
    ensure_prometheus()
    tmp = tmp_path_factory.mktemp("live")
    topic = f"readings-live-{tmp.name}"
    bootstrap = kafka_broker.bootstrap_servers
    create_topics(bootstrap, {topic: 2}, timeout=30)
    raw = service_config(
        bootstrap, topic, f"g-{tmp.name}", model_dir(), tmp / "state", checkpoint_interval_s=1.0
    )
    # The traffic's spikes page a webhook, so the dashboard's alert sink panels have data too.
    receiver = Recorder().__enter__()
    raw["alerts"] = {"sinks": {"webhook": {"urls": [receiver.url]}}}
    det = ThreadedDetector(raw)
    try:
        wait_for(lambda: det.detector.metrics_port is not None, 30, "the metrics endpoint")
        target = f"127.0.0.1:{det.detector.metrics_port}"
        with (
            Traffic(bootstrap, topic),
            PrometheusServer([target], [RULES], tmp / "prom", scrape_interval="1s") as prom,
        ):
            wait_for(
                lambda: det.value("streamrnn_events_total", {"outcome": "processed"}) > 0,
                60,
                "processed events",
            )
            prom.wait_for_scrapes(n=4, timeout=60)
            yield prom, target
    finally:
        assert det.stop() == 0
        receiver.__exit__(None, None, None)


def test_detector_is_scraped_and_ready(live: tuple[PrometheusServer, str]) -> None:
    prom, _ = live
    assert [t["health"] for t in prom.targets()] == ["up"]
    assert prom.wait_for_data("streamrnn_ready == 1", timeout=30)
    assert prom.wait_for_data('streamrnn_rejected_total{reason="not_json"} > 0', timeout=30)


def test_every_dashboard_and_alert_query_is_valid(live: tuple[PrometheusServer, str]) -> None:
    prom, _ = live
    problems = invalid_queries(prom, dashboard_queries(DASHBOARD) + rule_queries(RULES))
    assert not problems, "\n".join(problems)


def test_dashboard_queries_return_data_from_the_detector(
    live: tuple[PrometheusServer, str],
) -> None:
    prom, _ = live
    missing = queries_without_data(prom, dashboard_queries(DASHBOARD), timeout=45)
    assert not missing, "dashboard queries without data:\n" + "\n".join(missing)


def test_promtool_check_metrics_on_live_exposition(
    live: tuple[PrometheusServer, str], tmp_path: Path
) -> None:
    _, target = live
    exposition = urllib.request.urlopen(f"http://{target}/metrics", timeout=10).read().decode()
    assert "streamrnn_events_total" in exposition
    result = promtool("check", "metrics", stdin=exposition)
    assert result.returncode == 0, result.stdout + result.stderr
