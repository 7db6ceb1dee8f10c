"""The secured deployment assets: deploy/secure/make-secrets.sh, deploy/compose.secure.yaml,
deploy/prometheus/prometheus.secure.yml and the Kubernetes manifests' credentials.

Docker cannot run here, so the stack is checked by parts: the script runs (openssl) and what it
writes works with real peers (the broker certificate and the SCRAM password through
tests/kafkagate.py with ``streamrnn produce`` given the overlay's own producer flags; the
metrics certificate and web config with the detector's endpoint); the overlay's files, paths,
listeners and user names agree with each other and with what the script writes; the detector's
settings in the overlay and in the ConfigMap load as a valid config.
"""

from __future__ import annotations

import base64
import os
import shutil
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from streamrnn.config import Secret, load_config
from streamrnn.configsources import resolve_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SCRIPT = DEPLOY / "secure" / "make-secrets.sh"
OVERLAY = DEPLOY / "compose.secure.yaml"
PROMETHEUS_SECURE = DEPLOY / "prometheus" / "prometheus.secure.yml"
K8S = DEPLOY / "k8s"


class _ComposeLoader(yaml.SafeLoader):
    """YAML with compose's merge tags (``!override``, ``!reset``) read as plain values."""


def _tagged(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


for _tag in ("!override", "!reset"):
    _ComposeLoader.add_constructor(_tag, _tagged)


@pytest.fixture(scope="module")
def overlay() -> dict[str, Any]:
    return yaml.load(OVERLAY.read_text(), Loader=_ComposeLoader)  # noqa: S506 - a SafeLoader


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What make-secrets.sh writes (it needs openssl; python3 with bcrypt comes from .venv)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (apt-get install openssl)")
    out = tmp_path_factory.mktemp("compose-secrets") / "generated"
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    again = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True,
                           env=env, timeout=120)  # fmt: skip
    assert again.returncode == 1 and "--force" in again.stderr  # never overwritten silently
    return out


def container_files(overlay: dict[str, Any], service: str, secrets: Path) -> dict[str, Path]:
    """Container path -> the file or directory make-secrets.sh wrote that appears there."""
    generated = (DEPLOY / "secure" / "generated").resolve()
    svc = overlay["services"][service]
    out: dict[str, Path] = {}
    for entry in svc.get("secrets", []):
        source = overlay["secrets"][entry["source"]]["file"]
        host = (DEPLOY / source).resolve()
        out[f"/run/secrets/{entry.get('target', entry['source'])}"] = secrets / host.relative_to(
            generated
        )
    for vol in svc.get("volumes", []):
        src, dst = vol.split(":")[:2]
        host = (DEPLOY / src).resolve()
        if host.is_relative_to(generated):
            out[dst] = secrets / host.relative_to(generated)
    return out


def resolve_path(files: dict[str, Path], path: str) -> Path:
    """A container path through the mounts of :func:`container_files`."""
    for dst, src in sorted(files.items(), key=lambda kv: -len(kv[0])):
        if path == dst:
            return src
        if path.startswith(dst + "/"):
            return src / PurePosixPath(path).relative_to(dst)
    raise AssertionError(f"{path} is not mounted (mounts: {sorted(files)})")


def detector_config(overlay: dict[str, Any], files: dict[str, Path]) -> Any:
    """The detector's config in the overlay: config/default.yaml (what compose mounts, less the
    model and topics), the overlay's environment, its --bootstrap-servers; container paths
    mapped to the generated files."""
    svc = overlay["services"]["streamrnn"]
    cmd = [str(c) for c in svc["command"]]
    env = {k: str(v) for k, v in svc["environment"].items()}
    for key in ("STREAMRNN_SERVICE__KAFKA__SSL_CAFILE", "STREAMRNN_SERVICE__METRICS_WEB_CONFIG",
                "STREAMRNN_SERVICE__KAFKA__SASL_PASSWORD__FILE"):  # fmt: skip
        env[key] = str(resolve_path(files, env[key]))
    servers = cmd[cmd.index("--bootstrap-servers") + 1]
    overrides = {"service.bootstrap_servers": [servers]}
    return resolve_config(ROOT / "config" / "default.yaml", overrides, env)


def test_make_secrets_writes_what_the_overlay_mounts(
    overlay: dict[str, Any], secrets: Path
) -> None:
    for name, spec in overlay["secrets"].items():
        path = secrets / (DEPLOY / spec["file"]).resolve().relative_to(
            (DEPLOY / "secure" / "generated").resolve()
        )
        assert path.is_file() and path.stat().st_size > 0, name
    kafka = overlay["services"]["kafka"]
    env = {k: str(v) for k, v in kafka["environment"].items()}
    mounted = container_files(overlay, "kafka", secrets)["/etc/kafka/secrets"]
    for key in ("KAFKA_SSL_KEYSTORE_FILENAME", "KAFKA_SSL_KEYSTORE_CREDENTIALS",
                "KAFKA_SSL_KEY_CREDENTIALS"):  # fmt: skip
        assert (mounted / env[key]).is_file(), key  # the image's start script requires them
    jaas = env["KAFKA_OPTS"].split("java.security.auth.login.config=")[1].split()[0]
    text = (mounted / PurePosixPath(jaas).relative_to("/etc/kafka/secrets")).read_text()
    assert "KafkaServer" in text and "ScramLoginModule required" in text
    assert "password" not in text  # SCRAM credentials live in the cluster's metadata
    ca = ssl.create_default_context(cafile=str(secrets / "ca.crt"))
    assert ca.cert_store_stats()["x509_ca"] == 1


def test_the_secured_broker_listener_and_the_clients_agree(overlay: dict[str, Any]) -> None:
    services = overlay["services"]
    env = {k: str(v) for k, v in services["kafka"]["environment"].items()}
    listeners = dict(x.split("://") for x in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocols = dict(x.split(":") for x in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert listeners["SASL_SSL"] == "kafka:9094" and protocols["SASL_SSL"] == "SASL_SSL"
    assert listeners["SASL_SSL_HOST"] == "localhost:29094"
    assert protocols["SASL_SSL_HOST"] == "SASL_SSL"
    # Only the SASL_SSL host listener leaves the compose network.
    assert services["kafka"]["ports"] == ["29094:29094"]
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    detector = {k: str(v) for k, v in services["streamrnn"]["environment"].items()}
    assert detector["STREAMRNN_SERVICE__KAFKA__SASL_MECHANISM"] == "SCRAM-SHA-512"
    cmd = [str(c) for c in services["streamrnn"]["command"]]
    assert cmd[cmd.index("--bootstrap-servers") + 1] == listeners["SASL_SSL"]
    user = detector["STREAMRNN_SERVICE__KAFKA__SASL_USERNAME"]
    users_job = services["kafka-users"]["command"][0]
    assert f"--entity-name {user}" in users_job and "/run/secrets/kafka-password" in users_job
    producer = [str(c) for c in services["producer"]["command"]]
    assert producer[producer.index("--bootstrap-servers") + 1] == listeners["SASL_SSL"]
    assert producer[producer.index("--sasl-username") + 1] == user
    # No credential as a value anywhere: passwords are files.
    for name, svc in services.items():
        for key, value in (svc.get("environment") or {}).items():
            assert not key.endswith(("PASSWORD", "_TOKEN")), (name, key, value)
        assert "--sasl-password " not in " ".join(str(c) for c in svc.get("command", []))


def test_the_detector_config_of_the_overlay_loads(overlay: dict[str, Any], secrets: Path) -> None:
    from streamrnn.service.clients import Connection
    from streamrnn.service.webconfig import WebGuard

    files = container_files(overlay, "streamrnn", secrets)
    resolved = detector_config(overlay, files)
    svc = resolved.config.service
    assert svc.kafka.security_protocol == "SASL_SSL"
    assert svc.kafka.sasl_password == Secret(file=str(secrets / "kafka-password"))
    assert resolved.source("service.kafka.sasl_password").startswith("env STREAMRNN_")
    conn = Connection.of(svc.bootstrap_servers, svc.kafka)  # the CA loads, the password reads
    assert conn.security["sasl_plain_password"] == (secrets / "kafka-password").read_text().strip()
    guard = WebGuard(str(svc.metrics_web_config))  # the certificate and key load
    assert guard.tls and guard.needs_auth("/metrics") and not guard.needs_auth("/healthz")


def metrics_cert_names(secrets: Path) -> set[str]:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((secrets / "metrics" / "tls.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n) for n in san.get_values_for_type(x509.DNSName)}


def test_prometheus_scrapes_the_secured_endpoint_as_configured(
    overlay: dict[str, Any], secrets: Path
) -> None:
    """prometheus.secure.yml against the overlay: the CA and password files it names are
    mounted, its server_name is in the detector's certificate, its target is the detector."""
    prom = overlay["services"]["prometheus"]
    config_flag = next(c for c in prom["command"] if c.startswith("--config.file="))
    assert PurePosixPath(config_flag.split("=", 1)[1]).name == PROMETHEUS_SECURE.name
    job = next(j for j in yaml.safe_load(PROMETHEUS_SECURE.read_text())["scrape_configs"]
               if j["job_name"] == "streamrnn")  # fmt: skip
    assert job["scheme"] == "https"
    files = container_files(overlay, "prometheus", secrets)
    ca = resolve_path(files, job["tls_config"]["ca_file"])
    assert ca.read_bytes() == (secrets / "ca.crt").read_bytes()
    password = resolve_path(files, job["basic_auth"]["password_file"]).read_text().strip()
    assert job["tls_config"]["server_name"] in metrics_cert_names(secrets)
    assert job["static_configs"][0]["targets"] == ["streamrnn:9108"]
    # The generated web config takes that password and no other.
    from streamrnn.service.webconfig import WebGuard

    guard = WebGuard(str(secrets / "metrics" / "web.yml"))
    header = "Basic " + base64.b64encode(f"prometheus:{password}".encode()).decode()
    assert guard.authorized(header) and not guard.authorized(header[:-2] + "AA")


def test_the_secured_prometheus_config_differs_only_in_the_detector_scrape() -> None:
    plain = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    secure = yaml.safe_load(PROMETHEUS_SECURE.read_text())
    jobs = {j["job_name"]: j for j in secure.pop("scrape_configs")}
    for job in plain.pop("scrape_configs"):
        if job["job_name"] == "streamrnn":
            job.update(scheme="https", tls_config=jobs["streamrnn"]["tls_config"],
                       basic_auth=jobs["streamrnn"]["basic_auth"])  # fmt: skip
        assert jobs.pop(job["job_name"]) == job
    assert not jobs and secure == plain


@pytest.mark.prometheus
def test_promtool_checks_the_secured_prometheus_config() -> None:
    from promtools import promtool

    done = promtool("check", "config", str(PROMETHEUS_SECURE))
    assert done.returncode == 0 and "SUCCESS" in done.stdout + done.stderr, done.stderr


@pytest.mark.kafka
@pytest.mark.slow
def test_the_generated_secrets_work_with_real_clients(
    overlay: dict[str, Any], secrets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The broker certificate (from its PKCS#12 keystore) in front of the test broker with the
    SCRAM user, and ``streamrnn produce`` with the overlay producer's own flags; the metrics
    certificate and web config on the detector's endpoint, reached as Prometheus would."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12
    from kafkagate import KafkaGate, SaslServer, gated_broker, server_tls
    from prometheus_client import CollectorRegistry

    from streamrnn.cli import main
    from streamrnn.service.http import start_http

    kafka_dir = secrets / "kafka"
    key, cert, _ = pkcs12.load_key_and_certificates(
        (kafka_dir / "kafka.p12").read_bytes(),
        (kafka_dir / "keystore-password").read_text().strip().encode(),
    )
    assert key is not None and cert is not None
    (tmp_path / "broker.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))  # fmt: skip
    (tmp_path / "broker.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    password = (secrets / "kafka-password").read_text().strip()
    gate = KafkaGate(
        tls=server_tls(tmp_path / "broker.crt", tmp_path / "broker.key"),
        sasl=SaslServer(users={"streamrnn": password}, mechanisms=("SCRAM-SHA-512",)),
    )
    files = container_files(overlay, "producer", secrets)
    with gated_broker(gate, tmp_path / "tansu.log"):
        argv = [str(c) for c in overlay["services"]["producer"]["command"]]
        argv[argv.index("--bootstrap-servers") + 1] = gate.address
        for flag in ("--ssl-cafile", "--sasl-password-file"):
            argv[argv.index(flag) + 1] = str(resolve_path(files, argv[argv.index(flag) + 1]))
        argv[argv.index("--rate") + 1] = "0"
        rc = main([*argv, "--steps", "5", "--keys", "3", "--partitions", "1"])
    assert rc == 0, capsys.readouterr().err
    assert "sent 15 message(s)" in capsys.readouterr().out
    assert gate.logins and all(x.ok and x.principal == "streamrnn" for x in gate.logins)

    server = start_http(CollectorRegistry(), "127.0.0.1", 0, lambda: True, lambda: True,
                        web_config=secrets / "metrics" / "web.yml")  # fmt: skip
    try:
        ctx = ssl.create_default_context(cafile=str(secrets / "ca.crt"))
        scrape = (secrets / "scrape-password").read_text().strip()
        req = urllib.request.Request(f"https://localhost:{server.server_port}/metrics")
        token = base64.b64encode(f"prometheus:{scrape}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            assert resp.status == 200
    finally:
        server.shutdown()


# ---------------------------------------------------------------------------------------------
# Kubernetes


def k8s_docs() -> dict[str, dict[str, Any]]:
    docs = {}
    for name in ("deployment.yaml", "configmap.yaml", "service.yaml"):
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


def test_k8s_credentials_come_from_secrets_as_files() -> None:
    docs = k8s_docs()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    c = next(x for x in pod["containers"] if x["name"] == "streamrnn")
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret_mounts = {m["mountPath"]: volumes[m["name"]]["secret"] for m in c["volumeMounts"]
                     if "secret" in volumes[m["name"]]}  # fmt: skip
    assert {s["secretName"] for s in secret_mounts.values()} == {
        "streamrnn-kafka",
        "streamrnn-metrics",
    }
    assert all(s["defaultMode"] == 0o440 for s in secret_mounts.values())
    assert all(m.get("readOnly") for m in c["volumeMounts"] if m["mountPath"] in secret_mounts)
    cfg = load_config(yaml.safe_load(docs["ConfigMap"]["data"]["config.yaml"]))
    kafka = cfg.service.kafka

    def under_a_secret(path: str) -> str:
        parent = str(PurePosixPath(path).parent)
        assert parent in secret_mounts, f"{path} is in no Secret's mount ({sorted(secret_mounts)})"
        return secret_mounts[parent]["secretName"]

    assert kafka.security_protocol == "SASL_SSL" and isinstance(kafka.sasl_password, Secret)
    assert kafka.sasl_password.file is not None  # a file of the Secret, not a value
    assert under_a_secret(kafka.sasl_password.file) == "streamrnn-kafka"
    assert under_a_secret(str(kafka.ssl_cafile)) == "streamrnn-kafka"
    assert under_a_secret(str(cfg.service.metrics_web_config)) == "streamrnn-metrics"
    assert not [e for e in c.get("env", []) if "PASSWORD" in e["name"] or "TOKEN" in e["name"]]
    annotations = docs["Service"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scheme"] == "https"


def test_k8s_readme_shows_the_secrets_and_the_scrape() -> None:
    text = (K8S / "README.md").read_text()
    for needle in ("kubectl create secret generic streamrnn-kafka", "kubectl create secret generic streamrnn-metrics",
                   "basic_auth:", "password_file:", "tls_config:", "scheme: https"):  # fmt: skip
        assert needle in text, needle
