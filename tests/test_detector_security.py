"""The detector, ``produce`` and ``demo`` against a TLS / SASL cluster, end to end.

The cluster is Tansu behind tests/kafkagate.py (TLS termination and the broker's side of SASL);
certificates come from tests/certs.py. Each test checks what a user of a secured cluster needs:
the detector consumes, publishes, checkpoints to the state topic and commits over TLS (with and
without a client certificate) and over SASL_SSL; a wrong CA, host name or password stops
``streamrnn run`` with exit status 2 and one line naming the setting; the password appears in
no log of a real connection (at DEBUG, kafka-python's included), in no ``check-config`` output,
in no metric and in no checkpoint; a real Prometheus scrapes the guarded endpoint over TLS with
basic auth, and a request without credentials gets 401.
"""

from __future__ import annotations

import base64
import io
import json
import re
import signal
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from certs import KEY_PASSWORD, Pki, web_config_file
from kafkagate import KafkaGate, SaslServer, TansuBehind, free_port, gated_broker, server_tls
from servicetools import (
    ThreadedDetector,
    TopicReader,
    committed,
    event_json,
    make_events,
    model_dir,
    produce,
    service_config,
    spawn,
    wait_for,
    write_config,
)

from streamrnn.cli import main
from streamrnn.config import load_config
from streamrnn.service.clients import Connection
from streamrnn.tools.broker import create_topics

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PASSWORD = "det-Sasl-Pa55w0rd-7f3e"  # distinctive, so that a leak is found by a plain search
SCRAPE_PASSWORD = "scrape-Pa55-91c2"
USER = "detector"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def model() -> Path:
    return model_dir()


@pytest.fixture(scope="module")
def sasl_cluster(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[KafkaGate, TansuBehind]]:
    """SASL_SSL with SCRAM-SHA-512, the setup of most company clusters."""
    sasl = SaslServer(users={USER: PASSWORD}, mechanisms=("SCRAM-SHA-512", "PLAIN"))
    gate = KafkaGate(tls=server_tls(pki.server.cert, pki.server.key), sasl=sasl)
    with gated_broker(gate, tmp_path_factory.mktemp("tansu") / "sasl.log") as cluster:
        yield cluster


def sasl_keys(pki: Pki, password: Any = PASSWORD) -> dict[str, Any]:
    return {
        "security_protocol": "SASL_SSL",
        "ssl_cafile": str(pki.ca.cert_path),
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": USER,
        "sasl_password": password,
    }


def connection(address: str, keys: dict[str, Any]) -> Connection:
    return Connection.of(address, load_config({"service": {"kafka": keys}}).service.kafka)


def names(tag: str) -> dict[str, str]:
    topic = f"{tag}-{uuid.uuid4().hex[:10]}"
    return {
        "topic": topic,
        "group": f"{topic}-g",
        "scores_topic": f"{topic}.scores",
        "state_topic": f"{topic}.state",
    }


def run_to_the_end(
    det: ThreadedDetector, conn: Connection, n: str, events: int, scores_topic: str
) -> int | None:
    """Wait until the detector processed ``events`` and their scores are in the topic; stop."""
    try:
        wait_for(
            lambda: det.value("streamrnn_events_total", {"outcome": "processed"}) >= events,
            120,
            f"{events} events processed ({n})",
        )
        reader = TopicReader(conn, scores_topic)
        try:
            reader.read_until(lambda r: len(r) >= events, 30, f"{events} scores")
        finally:
            reader.close()
    finally:
        rc = det.stop(timeout=60)
    return rc


# ---------------------------------------------------------------------------------------------
# TLS


@pytest.mark.parametrize("client_cert", [False, True], ids=["tls", "mutual-tls"])
def test_detector_consumes_publishes_and_commits_over_tls(
    client_cert: bool, pki: Pki, model: Path, tmp_path: Path
) -> None:
    """With a client certificate the gate requires one (mutual TLS); without, it asks none."""
    tls = server_tls(pki.server.cert, pki.server.key, pki.ca.cert_path if client_cert else None,
                     require=client_cert)  # fmt: skip
    gate = KafkaGate(tls=tls)
    keys: dict[str, Any] = {"security_protocol": "SSL", "ssl_cafile": str(pki.ca.cert_path)}
    if client_cert:
        key_password = tmp_path / "key-password"
        key_password.write_text(KEY_PASSWORD + "\n")
        keys.update(ssl_certfile=str(pki.client.cert), ssl_keyfile=str(pki.client.key),
                    ssl_password={"file": str(key_password)})  # fmt: skip
    n = names("tls")
    with gated_broker(gate, tmp_path / "tansu.log"):
        conn = connection(gate.address, keys)
        create_topics(conn, {n["topic"]: 2})
        events = make_events(3, 40, seed=4)
        produce(conn, n["topic"], [(e.key.encode(), event_json(e)) for e in events])
        raw = service_config(gate.address, n["topic"], n["group"], model, tmp_path / "state",
                             scores_topic=n["scores_topic"], state_topic=n["state_topic"],
                             engine_process=False, kafka=keys)  # fmt: skip
        rc = run_to_the_end(ThreadedDetector(raw), conn, n["topic"], len(events), n["scores_topic"])
        assert rc == 0
        offsets = committed(conn, n["group"], n["topic"], [0, 1])
        assert sum(v or 0 for v in offsets.values()) == len(events), offsets
        state = TopicReader(conn, n["state_topic"])
        try:
            state.read_until(lambda r: len(r) >= 2, 30, "checkpoints in the state topic")
        finally:
            state.close()
    seen = set(gate.client_certs)
    assert seen == ({"commonName=client"} if client_cert else {None}), seen


def streamrnn(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Any:
    """``python -m streamrnn ARGS``, run to its end."""
    import os
    import sys

    return subprocess.run(
        [sys.executable, "-m", "streamrnn", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=Path(__file__).resolve().parent.parent,
    )


@pytest.mark.parametrize(
    ("case", "line"),
    [
        ("wrong_ca", r"error: service\.kafka\.ssl_cafile: does not hold the CA that signed the certificate of the broker at 127\.0\.0\.1:\d+ \(unable to get local issuer certificate\), got '.*other/ca\.pem'"),
        ("hostname", r"error: service\.bootstrap_servers: the certificate of the broker at 127\.0\.0\.1:\d+ does not name '127\.0\.0\.1' \(IP address mismatch.*\); connect by a name it holds .*, got '127\.0\.0\.1:\d+'"),
        ("password", r"error: service\.kafka\.sasl_password: the broker at 127\.0\.0\.1:\d+ refused the SCRAM-SHA-512 login of user 'detector' \(.*a wrong password or an unknown user\), got Secret\(\{'file': '.*wrong-password'\}\)"),
    ],
)  # fmt: skip
def test_refused_configuration_stops_start_up_with_one_line(
    case: str,
    line: str,
    pki: Pki,
    model: Path,
    sasl_cluster: tuple[KafkaGate, TansuBehind],
    tmp_path: Path,
) -> None:
    """Exit status 2 and one line naming the setting and the cause; no retries: the command
    ends (a retry loop would run into the timeout)."""
    gate, behind = sasl_cluster
    wrong = tmp_path / "wrong-password"
    wrong.write_text("Wr0ng-Pa55-66ab\n")
    keys = sasl_keys(pki, {"file": str(wrong)} if case == "password" else PASSWORD)
    extra = None
    if case == "wrong_ca":
        keys["ssl_cafile"] = str(pki.other.cert_path)
    elif case == "hostname":
        extra = KafkaGate(tls=server_tls(pki.wrong_name.cert, pki.wrong_name.key))
        extra.upstream_port = behind.port
        extra.start()
    address = extra.address if extra is not None else gate.address
    n = names(case)
    raw = service_config(address, n["topic"], n["group"], model, tmp_path / "state",
                         engine_process=False, kafka=keys)  # fmt: skip
    config = write_config(tmp_path / "service.yaml", raw)
    try:
        done = streamrnn("--log-level", "WARNING", "run", "--config", str(config))
    finally:
        if extra is not None:
            extra.stop()
    assert done.returncode == 2, done.stderr
    errors = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and re.fullmatch(line, errors[0]), done.stderr
    assert PASSWORD not in done.stderr + done.stdout and "Wr0ng-Pa55-66ab" not in done.stderr


# ---------------------------------------------------------------------------------------------
# SASL_SSL end to end: produce, the service, its endpoint, Prometheus, and no secret anywhere


def https_get(port: int, path: str, ca: Path, password: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(f"https://127.0.0.1:{port}{path}")
    if password is not None:
        token = base64.b64encode(f"prometheus:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, ""


def processed(port: int, ca: Path) -> float:
    status, body = https_get(port, "/metrics", ca, SCRAPE_PASSWORD)
    m = re.search(r'^streamrnn_events_total\{outcome="processed"\} (\S+)$', body, re.M)
    return float(m.group(1)) if status == 200 and m else 0.0


def no_secret_in_checkpoints(state_dir: Path, state_records: list[Any]) -> int:
    """Search every local checkpoint (raw, header and the decoded snapshot) and every record of
    the state topic for the password; returns how many checkpoints were searched."""
    import torch

    from streamrnn.service.checkpoint import decode

    files = sorted(state_dir.rglob("*.ckpt"))
    for path in files:
        raw = path.read_bytes()
        assert PASSWORD.encode() not in raw, path
        ck = decode(raw, where=str(path))
        payload = torch.load(io.BytesIO(ck.data), weights_only=True)
        assert PASSWORD not in repr(ck) + repr(payload), path
    for r in state_records:
        assert PASSWORD.encode() not in (r.key or b"") + (r.value or b"")
    return len(files) + len(state_records)


def test_service_over_sasl_ssl_scraped_over_tls_and_no_secret_leaks(
    pki: Pki, model: Path, sasl_cluster: tuple[KafkaGate, TansuBehind], tmp_path: Path
) -> None:
    from promtools import PrometheusServer, ensure_prometheus

    ensure_prometheus()  # before the service starts: skips cleanly when it cannot be had
    gate, _ = sasl_cluster
    n = names("sasl")
    password_file = tmp_path / "kafka-password"
    password_file.write_text(PASSWORD + "\n")
    flags = ["--bootstrap-servers", gate.address, "--security-protocol", "SASL_SSL",
             "--ssl-cafile", str(pki.ca.cert_path), "--sasl-mechanism", "SCRAM-SHA-512",
             "--sasl-username", USER, "--sasl-password-file", str(password_file)]  # fmt: skip
    # streamrnn produce over SASL_SSL, creating the topic: 4 keys x 60 readings.
    assert main(["produce", *flags, "--topic", n["topic"], "--synthetic", "sensor", "--keys", "4",
                 "--steps", "60", "--rate", "0", "--partitions", "2"]) == 0  # fmt: skip
    events = 240
    port = free_port()
    web = web_config_file(tmp_path, pki.ca, {"prometheus": SCRAPE_PASSWORD})
    raw = service_config(gate.address, n["topic"], n["group"], model, tmp_path / "state",
                         scores_topic=n["scores_topic"], state_topic=n["state_topic"],
                         metrics_port=port, metrics_web_config=str(web), engine_process=False,
                         checkpoint_interval_s=2.0, kafka=sasl_keys(pki))  # fmt: skip
    config = write_config(tmp_path / "service.yaml", raw)
    log = tmp_path / "service.log"
    logins_before = len(gate.logins)
    proc = spawn(["--log-level", "DEBUG", "run", "--config", str(config)], log)
    try:
        wait_for(lambda: processed(port, pki.ca.cert_path) >= events, 120, "240 processed",
                 interval=0.5)  # fmt: skip
        status, body = https_get(port, "/metrics", pki.ca.cert_path)
        assert status == 401 and "streamrnn_" not in body
        assert https_get(port, "/metrics", pki.ca.cert_path, "Wr0ng")[0] == 401
        assert https_get(port, "/healthz", pki.ca.cert_path) == (200, "ok\n")  # open: probes
        status, metrics = https_get(port, "/metrics", pki.ca.cert_path, SCRAPE_PASSWORD)
        assert status == 200 and PASSWORD not in metrics and SCRAPE_PASSWORD not in metrics
        (tmp_path / "scrape-password").write_text(SCRAPE_PASSWORD)
        scrape = {"scheme": "https", "tls_config": {"ca_file": str(pki.ca.cert_path)},
                  "basic_auth": {"username": "prometheus",
                                 "password_file": str(tmp_path / "scrape-password")}}  # fmt: skip
        target = {"streamrnn": [f"127.0.0.1:{port}"]}
        with PrometheusServer(target, [], tmp_path, job_settings={"streamrnn": scrape}) as prom:
            prom.wait_for_data(
                f'streamrnn_events_total{{job="streamrnn",outcome="processed"}} == {events}', 60
            )
            series = prom.api("series", {"match[]": '{job="streamrnn"}'})
            assert len(series) > 20 and PASSWORD not in json.dumps(series)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=90)
    text = log.read_text(errors="replace")
    assert rc == 0, text[-3000:]
    # The log of a real connection at DEBUG: kafka-python's configuration dump and requests.
    assert "sasl_plain_password" in text and "SaslAuthenticate" in text, text[-3000:]
    assert PASSWORD not in text
    logins = gate.logins[logins_before:]
    assert logins and all(x.ok and x.principal == USER for x in logins), logins
    conn = connection(gate.address, sasl_keys(pki, {"file": str(password_file)}))
    offsets = committed(conn, n["group"], n["topic"], [0, 1])
    assert sum(v or 0 for v in offsets.values()) == events, offsets
    state = TopicReader(conn, n["state_topic"])
    try:
        records = state.read_until(lambda r: len(r) >= 2, 30, "checkpoints in the state topic")
    finally:
        state.close()
    assert no_secret_in_checkpoints(tmp_path / "state", records) >= 4
    # streamrnn alerts list reads the alerts topic with the same service.kafka.
    assert main(["alerts", "list", "--config", str(config), "--since", "4w", "--json"]) == 0


def test_produce_with_a_wrong_password_stops_with_one_line(
    pki: Pki, sasl_cluster: tuple[KafkaGate, TansuBehind], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    gate, _ = sasl_cluster
    wrong = tmp_path / "pw"
    wrong.write_text("Wr0ng-Pa55-66ab")
    rc = main(["produce", "--bootstrap-servers", gate.address, "--security-protocol", "SASL_SSL",
               "--ssl-cafile", str(pki.ca.cert_path), "--sasl-mechanism", "PLAIN",
               "--sasl-username", USER, "--sasl-password-file", str(wrong), "--topic", "t",
               "--synthetic", "sensor", "--steps", "5"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert re.fullmatch(
        r"error: service\.kafka\.sasl_password: the broker at 127\.0\.0\.1:\d+ refused the PLAIN "
        r"login of user 'detector' \(.*\), got Secret\(\{'file': '.*pw'\}\)\n",
        err,
    ), err
    assert "Wr0ng-Pa55-66ab" not in err


def test_demo_against_a_tls_cluster(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``streamrnn demo --bootstrap-servers`` with TLS flags: the run's own topics, the tour,
    and the topics deleted at the end."""
    gate = KafkaGate(tls=server_tls(pki.server.cert, pki.server.key))
    with gated_broker(gate, tmp_path / "tansu.log"):
        rc = main(["demo", "--seconds", "20", "--keys", "10", "--rate", "300",
                   "--metrics-port", "0", "--bootstrap-servers", gate.address,
                   "--security-protocol", "SSL", "--ssl-cafile", str(pki.ca.cert_path)])  # fmt: skip
        out = capsys.readouterr().out
        assert rc == 0, out
        m = re.search(
            r"Kafka cluster on 127\.0\.0\.1:\d+ \(SSL, .*topics (streamrnn-demo-\w+)\.readings \(4\)",
            out,
        )
        assert m, out
        assert (
            f"detector ready: consuming {m.group(1)}.readings as group {m.group(1)}.detector" in out
        )
        processed_events = int(re.search(r"events processed\s+(\d+)", out).group(1))
        assert processed_events > 0, out
        assert f"deleted the demo's topics: {m.group(1)}.readings" in out, out
        left = Connection.of(gate.address, load_config({"service": {"kafka": {
            "security_protocol": "SSL", "ssl_cafile": str(pki.ca.cert_path)}}}).service.kafka)  # fmt: skip
        from streamrnn.service.clients import admin_client

        admin = admin_client(left, "test")
        try:
            assert not [t for t in admin.list_topics() if t.startswith(m.group(1))]
        finally:
            admin.close()
    assert len(gate.client_certs) >= 4 and gate.connections >= 4
