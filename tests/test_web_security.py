"""The metrics endpoint behind a Prometheus web-config file: TLS, basic auth, open probes.

The file format is Prometheus's own; a real Prometheus scrapes the endpoint over TLS with basic
auth (tests/promtools.py installs it from Debian when missing, or the test is skipped).
"""

from __future__ import annotations

import base64
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from certs import CertAuthority, bcrypt_hash, web_config_file
from prometheus_client import CollectorRegistry
from promtools import PrometheusServer

from streamrnn.config import ConfigError
from streamrnn.service.http import MetricsServer, start_http
from streamrnn.service.metrics import Metrics
from streamrnn.service.webconfig import load_web_config

SCRAPE_PASSWORD = "scrape-Pa55"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return CertAuthority.create(tmp_path_factory.mktemp("web-pki") / "ca")


def web_config(tmp_path: Path, ca: CertAuthority, **more: Any) -> Path:
    return web_config_file(tmp_path, ca, {"prometheus": SCRAPE_PASSWORD}, **more)


@pytest.fixture
def endpoint(tmp_path: Path, ca: CertAuthority) -> Iterator[tuple[MetricsServer, Path]]:
    registry = CollectorRegistry()
    Metrics(registry).events.labels(outcome="processed").inc(3)
    path = web_config(tmp_path, ca)
    server = start_http(
        registry, "127.0.0.1", 0, lambda: True, lambda: (False, "no model"), web_config=path
    )
    try:
        yield server, path
    finally:
        server.shutdown()


def get(
    port: int, path: str, ca: CertAuthority, auth: tuple[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(f"https://127.0.0.1:{port}{path}")
    if auth is not None:
        req.add_header(
            "Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode()
        )
    ctx = ssl.create_default_context(cafile=str(ca.cert_path))
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def test_metrics_need_basic_auth_and_probes_stay_open(
    endpoint: tuple[MetricsServer, Path], ca: CertAuthority
) -> None:
    server, _ = endpoint
    port = server.server_port
    status, headers, _ = get(port, "/metrics", ca)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert get(port, "/metrics", ca, ("prometheus", "Wr0ng"))[0] == 401
    assert get(port, "/metrics", ca, ("mallory", SCRAPE_PASSWORD))[0] == 401
    status, headers, body = get(port, "/metrics", ca, ("prometheus", SCRAPE_PASSWORD))
    assert status == 200 and 'streamrnn_events_total{outcome="processed"} 3.0' in body
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert get(port, "/healthz", ca)[0] == 200  # open by design: probes carry no credentials
    status, _, body = get(port, "/readyz", ca)
    assert (status, body.strip()) == (503, "no model")


def test_plain_http_to_the_tls_port_gets_no_metrics(
    endpoint: tuple[MetricsServer, Path],
) -> None:
    server, _ = endpoint
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5).read()


def test_users_are_read_again_when_the_file_changes(
    endpoint: tuple[MetricsServer, Path], ca: CertAuthority
) -> None:
    server, path = endpoint
    raw = yaml.safe_load(path.read_text())
    raw["basic_auth_users"] = {"grafana-agent": bcrypt_hash("other-Pa55")}
    time.sleep(0.01)
    path.write_text(yaml.safe_dump(raw))
    port = server.server_port
    assert get(port, "/metrics", ca, ("prometheus", SCRAPE_PASSWORD))[0] == 401
    assert get(port, "/metrics", ca, ("grafana-agent", "other-Pa55"))[0] == 200
    path.write_text("basic_auth_users: [\n")  # broken: the last good config stays
    assert get(port, "/metrics", ca, ("grafana-agent", "other-Pa55"))[0] == 200


def test_client_certificates_when_required(tmp_path: Path, ca: CertAuthority) -> None:
    path = web_config(tmp_path, ca, basic_auth_users=None)
    raw = yaml.safe_load(path.read_text())
    raw["tls_server_config"].update(
        client_auth_type="RequireAndVerifyClientCert", client_ca_file=str(ca.cert_path)
    )
    path.write_text(yaml.safe_dump(raw))
    client = ca.issue("scraper", client=True)
    server = start_http(
        CollectorRegistry(), "127.0.0.1", 0, lambda: True, lambda: True, web_config=path
    )
    try:
        url = f"https://127.0.0.1:{server.server_port}/metrics"
        ctx = ssl.create_default_context(cafile=str(ca.cert_path))
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            urllib.request.urlopen(url, context=ctx, timeout=5).read()
        ctx.load_cert_chain(str(client.cert), str(client.key))
        with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
            assert resp.status == 200
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"tls_server_config": {"key_file": "k"}}, "tls_server_config.cert_file: must name a PEM file, got None"),
        ({"tls_server_config": {"cert_file": "/nonexistent.pem", "key_file": "k"}}, "tls_server_config.cert_file: must be an existing file, got '/nonexistent.pem'"),
        ({"tls_server_config": {"cert": "inline", "key": "inline"}}, "tls_server_config.cert: is not supported by streamrnn (remove it)"),
        ({"tls_server_config": {"cipher_suites": ["TLS_AES_128_GCM_SHA256"]}}, "tls_server_config.cipher_suites: is not supported by streamrnn"),
        ({"tls_server_config": {"cert_file": "c", "client_auth_type": "RequireAnyClientCert"}}, "tls_server_config.client_auth_type: must verify the certificate"),
        ({"tls_server_config": {"certfile": "c"}}, "tls_server_config.certfile: unknown key (known: "),
        ({"basic_auth_users": {"prometheus": SCRAPE_PASSWORD}}, "basic_auth_users.prometheus: must be a bcrypt hash ($2y$...), got a str"),
        ({"basic_auth_users": {"prometheus": "$2y$10$short"}}, "basic_auth_users.prometheus: must be a bcrypt hash ($2y$...), got a malformed one"),
        ({"basic_auth_users": ["prometheus"]}, "basic_auth_users: must be a mapping"),
        ({"http_server_config": {"http3": True}}, "http_server_config.http3: unknown key (known: headers, http2)"),
        ({"tls_config": {}}, "tls_config: unknown key (known: tls_server_config, http_server_config, basic_auth_users)"),
    ],
)  # fmt: skip
def test_web_config_errors(tmp_path: Path, raw: dict[str, Any], message: str) -> None:
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_web_config(path)
    assert str(err.value).startswith(f"service.metrics_web_config: {path}: ")
    assert message in str(err.value)
    assert SCRAPE_PASSWORD not in str(err.value)


@pytest.mark.prometheus
def test_prometheus_scrapes_over_tls_with_basic_auth(
    endpoint: tuple[MetricsServer, Path], ca: CertAuthority, tmp_path: Path
) -> None:
    server, _ = endpoint
    target = f"127.0.0.1:{server.server_port}"
    (tmp_path / "pw").write_text(SCRAPE_PASSWORD)
    (tmp_path / "bad").write_text("Wr0ng")
    tls = {"scheme": "https", "tls_config": {"ca_file": str(ca.cert_path)}}
    jobs = {"streamrnn": [target], "intruder": [target]}
    settings = {
        "streamrnn": {
            **tls,
            "basic_auth": {"username": "prometheus", "password_file": str(tmp_path / "pw")},
        },
        "intruder": {
            **tls,
            "basic_auth": {"username": "prometheus", "password_file": str(tmp_path / "bad")},
        },
    }
    with PrometheusServer(jobs, [], tmp_path, job_settings=settings) as prom:
        prom.wait_for_data(
            'streamrnn_events_total{job="streamrnn",outcome="processed"} == 3', timeout=30
        )
        prom.wait_for_data('up{job="intruder"} == 0', timeout=30)
        intruder = [t for t in prom.targets() if t["labels"]["job"] == "intruder"]
        assert "401" in intruder[0]["lastError"]
        assert not prom.query('streamrnn_events_total{job="intruder"}')
