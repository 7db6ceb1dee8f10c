"""Structural checks of the deployment assets: compose, Kubernetes, Dockerfile, Grafana, rules.

Docker cannot run on the development machines, so nothing here starts a container: the files are
parsed and checked against each other and against the metrics the detector exports.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from promtools import (
    DASHBOARD,
    PROMETHEUS_CONFIG,
    RULES,
    RULES_TEST,
    dashboard_exprs,
    expand_grafana,
    exposed_series_names,
    iter_panels,
    metric_names,
    rule_exprs,
)

from streamrnn.service.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
GRAFANA = DEPLOY / "grafana"

ALERTS = {
    "StreamrnnDown",
    "StreamrnnNotReady",
    "StreamrnnStalled",
    "StreamrnnBrokerUnreachable",
    "StreamrnnConsumerLagGrowing",
    "StreamrnnAnomalyRateHigh",
    "StreamrnnDeadLettersHigh",
    "StreamrnnCheckpointStale",
    "StreamrnnBatchLatencyHigh",
    "StreamrnnAlertSinkFailing",
    "StreamrnnAlertsDropped",
}
TOPICS = {"readings": 4, "streamrnn.alerts": None, "streamrnn.scores": None, "streamrnn.dlq": None}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def exported_names() -> set[str]:
    """Series names a scrape of a fresh ``Metrics`` can produce, plus Prometheus' own ``up``."""
    registry = CollectorRegistry()
    Metrics(registry)
    return exposed_series_names(generate_latest(registry).decode()) | {"up"}


# ---------------------------------------------------------------------------------------------
# compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def command_of(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def binds(service: dict[str, Any]) -> dict[str, tuple[Path, bool]]:
    """container path -> (host path resolved against deploy/, read-only) for bind mounts."""
    out: dict[str, tuple[Path, bool]] = {}
    for vol in service.get("volumes", []):
        if isinstance(vol, dict):
            src, dst, ro = vol.get("source", ""), vol["target"], bool(vol.get("read_only"))
            if vol.get("type") != "bind":
                continue
        else:
            parts = vol.split(":")
            src, dst = parts[0], parts[1]
            ro = len(parts) > 2 and "ro" in parts[2].split(",")
        if src.startswith((".", "/")):
            out[str(PurePosixPath(dst))] = ((COMPOSE.parent / src).resolve(), ro)
    return out


def ports_of(service: dict[str, Any]) -> set[str]:
    return {str(p) for p in service.get("ports", [])}


def test_compose_services(services: dict[str, Any]):
    assert {"kafka", "kafka-init", "streamrnn", "producer", "prometheus", "grafana"} <= set(
        services
    )
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        image = svc.get("image", "")
        if "build" not in svc:
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag"


def test_compose_kafka_kraft(services: dict[str, Any]):
    kafka = services["kafka"]
    assert kafka["image"] == "apache/kafka:3.9.0"
    env = env_of(kafka)
    assert not any("ZOOKEEPER" in k for k in env)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node_id = env["KAFKA_NODE_ID"]
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert len(voters) == 1
    voter_id, voter_addr = voters[0].split("@")
    assert voter_id == node_id
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = dict(
        re.match(r"(\w+)://(.*)", item).groups() for item in env["KAFKA_LISTENERS"].split(",")
    )
    advertised = dict(
        re.match(r"(\w+)://(.*)", item).groups()
        for item in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    )
    assert set(listeners) <= set(protocols) and set(advertised) <= set(listeners)
    assert controller in listeners and controller not in advertised
    assert listeners[controller].rsplit(":", 1)[1] == voter_addr.rsplit(":", 1)[1]
    # In-network clients (detector, producer, kafka-init) use kafka:9092.
    assert "kafka:9092" in advertised.values()
    inter = env.get("KAFKA_INTER_BROKER_LISTENER_NAME", "PLAINTEXT")
    assert advertised[inter] == "kafka:9092"
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
    ):
        assert env[key] == "1", key
    assert "healthcheck" in kafka


def test_compose_kafka_init_creates_topics(services: dict[str, Any]):
    init = services["kafka-init"]
    assert init["image"] == services["kafka"]["image"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert str(init.get("restart", "no")) == "no"
    script = "\n".join(command_of(init)).replace("$$", "$")
    assert "/opt/kafka/bin/kafka-topics.sh" in script
    assert "--bootstrap-server kafka:9092" in script
    assert "--create" in script and "--if-not-exists" in script
    created = dict(re.findall(r"^\s*create\s+(\S+)\s+(\d+)\s*$", script, re.M))
    for topic, partitions in TOPICS.items():
        assert topic in created, f"kafka-init does not create {topic}"
        if partitions is not None:
            assert int(created[topic]) == partitions


def test_compose_detector(services: dict[str, Any]):
    det = services["streamrnn"]
    build = det["build"]
    context = (COMPOSE.parent / (build["context"] if isinstance(build, dict) else build)).resolve()
    assert context == ROOT
    assert (
        context
        / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
    ).is_file()
    assert det["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    cmd = command_of(det)
    assert cmd[0] == "run"
    assert cmd[cmd.index("--config") + 1] == "/etc/streamrnn/config.yaml"
    assert cmd[cmd.index("--bootstrap-servers") + 1] == "kafka:9092"
    mounts = binds(det)
    assert mounts["/etc/streamrnn"][0] == ROOT / "config"
    assert mounts["/etc/streamrnn"][1], "config should be mounted read-only"
    assert any(p.startswith("9108:") or p == "9108" for p in ports_of(det))


def test_compose_producer_is_demo_only(services: dict[str, Any]):
    prod = services["producer"]
    assert prod["profiles"] == ["demo"]
    assert prod.get("image") == services["streamrnn"].get("image")
    assert command_of(prod) == shlex.split(
        "produce --bootstrap-servers kafka:9092 --topic readings --synthetic energy "
        "--keys 200 --rate 200"
    )
    assert prod["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    for name, svc in services.items():
        if name != "producer":
            assert "demo" not in svc.get("profiles", []), name


def test_compose_prometheus(services: dict[str, Any]):
    prom = services["prometheus"]
    assert prom["image"].startswith("prom/prometheus:")
    assert "9090:9090" in ports_of(prom)
    mounts = binds(prom)
    assert mounts["/etc/prometheus"][0] == DEPLOY / "prometheus"
    cmd = command_of(prom)
    config_flag = next(c for c in cmd if c.startswith("--config.file="))
    assert config_flag.split("=", 1)[1] == "/etc/prometheus/prometheus.yml"
    # The scrape target is the detector service on its metrics port.
    config = load_yaml(PROMETHEUS_CONFIG)
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    targets = [t for sc in jobs["streamrnn"]["static_configs"] for t in sc["targets"]]
    assert targets == ["streamrnn:9108"]
    assert "streamrnn" in services


def test_compose_alertmanager_and_the_receiver_that_logs(services: dict[str, Any]):
    am = services["alertmanager"]
    assert am["image"].startswith("prom/alertmanager:")
    assert "9093:9093" in ports_of(am)
    assert binds(am)["/etc/alertmanager"] == (DEPLOY / "alertmanager", True)
    cmd = command_of(am)
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in cmd
    # Every route ends at the receiver that logs: the alert-log service's port.
    log = services["alert-log"]
    assert log.get("image") == services["streamrnn"].get("image")
    assert command_of(log) == ["alerts", "receive", "--port", "9095"]
    config = load_yaml(DEPLOY / "alertmanager" / "alertmanager.yml")
    urls = [w["url"] for r in config["receivers"] for w in r.get("webhook_configs", [])]
    assert urls == ["http://alert-log:9095/"]
    # Prometheus and the detector both point at it.
    prom = load_yaml(PROMETHEUS_CONFIG)
    targets = [
        t
        for am_ in prom["alerting"]["alertmanagers"]
        for sc in am_["static_configs"]
        for t in sc["targets"]
    ]
    assert targets == ["alertmanager:9093"]
    from streamrnn.config import load_config

    detector = load_config(ROOT / "config" / "config.yaml")
    assert detector.alerts.sinks.alertmanager.urls == ("http://alertmanager:9093",)


def test_compose_grafana(services: dict[str, Any]):
    graf = services["grafana"]
    assert graf["image"].startswith("grafana/grafana:")
    assert "3000:3000" in ports_of(graf)
    mounts = binds(graf)
    assert mounts["/etc/grafana/provisioning"][0] == GRAFANA / "provisioning"
    provider = load_yaml(GRAFANA / "provisioning" / "dashboards" / "streamrnn.yml")["providers"][0]
    dash_dir = provider["options"]["path"]
    assert mounts[dash_dir][0] == GRAFANA / "dashboards"
    home = env_of(graf).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert PurePosixPath(home).parent == PurePosixPath(dash_dir)
        assert (GRAFANA / "dashboards" / PurePosixPath(home).name).is_file()
    ds = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert [d["uid"] for d in ds] == ["prometheus"]
    assert ds[0]["type"] == "prometheus"
    assert ds[0]["url"] == "http://prometheus:9090"


def test_compose_bind_mount_sources_exist(services: dict[str, Any]):
    for name, svc in services.items():
        for dst, (src, _) in binds(svc).items():
            assert src.exists(), f"{name}: {src} (mounted at {dst}) does not exist"


def test_compose_config_file_for_the_detector():
    path = ROOT / "config" / "config.yaml"
    if not path.is_file():
        pytest.skip(
            "config/config.yaml is missing: compose mounts ../config/ at /etc/streamrnn/ and the "
            "image runs --config /etc/streamrnn/config.yaml"
        )
    config = pytest.importorskip("streamrnn.config")
    cfg = config.load_config(path)
    assert "readings" in cfg.service.topics or cfg.service.topic_pattern


# ---------------------------------------------------------------------------------------------
# Kubernetes


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    docs = {}
    for name in ("deployment.yaml", "configmap.yaml", "service.yaml"):
        for doc in load_all(K8S / name):
            docs[doc["kind"]] = doc
    assert set(docs) == {"Deployment", "ConfigMap", "Service"}
    return docs


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "streamrnn")


def quantity(q: str | int) -> float:
    units = {
        "m": 1e-3,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
    }
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    assert m, q
    return float(m.group(1)) * units.get(m.group(2), 1)


def test_k8s_probes(k8s: dict[str, Any]):
    c = container(k8s["Deployment"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["metrics"] == 9108
    # HTTPS: the endpoint has a web config (configmap.yaml); the probes' paths stay open.
    https = {"port": "metrics", "scheme": "HTTPS"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", **https}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", **https}
    if "startupProbe" in c:
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_k8s_resources(k8s: dict[str, Any]):
    res = container(k8s["Deployment"])["resources"]
    for kind in ("cpu", "memory"):
        assert quantity(res["requests"][kind]) <= quantity(res["limits"][kind]), kind


def test_k8s_config_from_configmap(k8s: dict[str, Any]):
    dep, cm = k8s["Deployment"], k8s["ConfigMap"]
    pod = dep["spec"]["template"]["spec"]
    c = container(dep)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/etc/streamrnn")
    assert volumes[mount["name"]]["configMap"]["name"] == cm["metadata"]["name"]
    args = c.get("args", [])
    assert args[0] == "run" and args[args.index("--config") + 1] == "/etc/streamrnn/config.yaml"
    assert "config.yaml" in cm["data"]
    assert "state" in volumes and any(m["name"] == "state" for m in c["volumeMounts"])


def test_k8s_configmap_is_a_valid_config(k8s: dict[str, Any]):
    config = pytest.importorskip("streamrnn.config")
    raw = yaml.safe_load(k8s["ConfigMap"]["data"]["config.yaml"])
    cfg = config.load_config(raw)
    service = getattr(cfg, "service", None)
    if service is None:
        pytest.skip("streamrnn.config has no service section")
    assert service.metrics_port == 9108
    assert service.metrics_host in ("0.0.0.0", "::")
    assert "readings" in service.topics
    grace = k8s["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert service.shutdown_timeout_s < grace


def test_k8s_graceful_shutdown_and_security(k8s: dict[str, Any]):
    dep = k8s["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 60
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == dockerfile_uid()
    assert dep["spec"]["replicas"] <= TOPICS["readings"]


def test_k8s_labels_and_service(k8s: dict[str, Any]):
    dep, svc = k8s["Deployment"], k8s["Service"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    for key, value in dep["spec"]["selector"]["matchLabels"].items():
        assert pod_labels[key] == value
    for key, value in svc["spec"]["selector"].items():
        assert pod_labels[key] == value
    ann = svc["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == "9108"
    assert ann["prometheus.io/path"] == "/metrics"
    port = next(p for p in svc["spec"]["ports"] if p["name"] == "metrics")
    assert port["port"] == 9108 and port["targetPort"] in ("metrics", 9108)


def test_k8s_readme_explains_scaling():
    text = (K8S / "README.md").read_text().lower()
    for word in ("consumer group", "partitions", "replicas", "checkpoint", "rebalance"):
        assert word in text, word


# ---------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        instr, _, args = current.partition(" ")
        out.append((instr.upper(), args.strip()))
        current = ""
    return out


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instr, args in dockerfile_instructions():
        if instr == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instr, args))
    return stages


def dockerfile_uid() -> int:
    final = dockerfile_stages()[-1]
    users = [args for instr, args in final if instr == "USER"]
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "use a numeric USER so runAsNonRoot can verify it"
    return int(uid)


def test_dockerfile_multi_stage_non_root():
    instrs = dockerfile_instructions()
    froms = [a for i, a in instrs if i == "FROM"]
    assert len(froms) >= 2
    assert any("COPY --from=" in f"{i} {a}" for i, a in instrs)
    uid = dockerfile_uid()
    assert uid != 0
    final_user = [a for i, a in dockerfile_stages()[-1] if i == "USER"][-1]
    assert final_user.split(":")[0] not in ("root", "0")


def test_dockerfile_base_and_torch_args():
    instrs = dockerfile_instructions()
    args = dict(a.split("=", 1) if "=" in a else (a, "") for i, a in instrs if i == "ARG")
    assert args["BASE_IMAGE"] == "python:3.11-slim"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    froms = [a for i, a in instrs if i == "FROM"]
    assert froms[0].startswith("${BASE_IMAGE}") or froms[0].startswith("$BASE_IMAGE")
    runs = " ".join(a for i, a in instrs if i == "RUN")
    assert "-c constraints.txt" in runs
    assert re.search(r"--(extra-)?index-url\s+\"?\$\{?TORCH_INDEX_URL", runs)
    copies = [a for i, a in instrs if i == "COPY"]
    assert any("constraints.txt" in c for c in copies)
    assert re.search(r"^torch==\S+", (ROOT / "constraints.txt").read_text(), re.M)
    # Everything the build copies from the context exists and is not excluded.
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for c in copies:
        if "--from=" in c:
            continue
        for src in c.split()[:-1]:
            if src.startswith("--") or "*" in src:
                continue
            assert (ROOT / src).exists(), src
            assert src not in ignored, f"{src} is excluded by .dockerignore"
    assert ".git" in ignored


def test_dockerfile_runtime_contract():
    final = dockerfile_stages()[-1]
    get = {i: a for i, a in final}
    assert json.loads(get["ENTRYPOINT"]) == ["streamrnn"]
    assert json.loads(get["CMD"]) == ["run", "--config", "/etc/streamrnn/config.yaml"]
    assert "9108" in get["EXPOSE"].split()
    health = get["HEALTHCHECK"]
    assert "http://127.0.0.1:9108/healthz" in health
    assert "python" in health and "curl" not in health


# ---------------------------------------------------------------------------------------------
# Grafana dashboard


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_identity(dashboard: dict[str, Any]):
    assert dashboard["uid"] == "streamrnn"
    assert dashboard["title"] == "streamrnn"
    text = DASHBOARD.read_text()
    assert "DS_PROMETHEUS" not in text and "__inputs" not in dashboard


def test_dashboard_panels_have_queries(dashboard: dict[str, Any]):
    panels = list(iter_panels(dashboard))
    assert len(panels) >= 12
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["type"] != "row", "no row panels: every panel carries queries"
        assert p["targets"], p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": "prometheus"}, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t.get("expr", "").strip(), f"{p['title']} {t.get('refId')}: no expr"
            assert t.get("datasource", {}).get("uid", "prometheus") == "prometheus"
            expand_grafana(t["expr"])  # only variables that exist


def test_dashboard_layout(dashboard: dict[str, Any]):
    cells: dict[tuple[int, int], str] = {}
    for p in iter_panels(dashboard):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_dashboard_covers_the_topics(dashboard: dict[str, Any]):
    exprs = [(title, e) for title, _, e in dashboard_exprs(DASHBOARD)]
    panels = {p["title"]: p for p in iter_panels(dashboard)}

    def uses(metric: str) -> list[str]:
        return [t for t, e in exprs if metric in metric_names(e)]

    assert any("outcome" in e for _, e in exprs if "streamrnn_events_total" in metric_names(e))
    for metric in (
        "streamrnn_events_total",
        "streamrnn_batch_duration_seconds_bucket",
        "streamrnn_event_lag_seconds_bucket",
        "streamrnn_consumer_lag",
        "streamrnn_anomalies_total",
        "streamrnn_anomaly_score_bucket",
        "streamrnn_rejected_total",
        "streamrnn_active_keys",
        "streamrnn_state_bytes",
        "streamrnn_evicted_keys_total",
        "streamrnn_checkpoint_age_seconds",
        "streamrnn_model_info",
    ):
        assert uses(metric), f"no panel shows {metric}"
    for metric in ("streamrnn_batch_duration_seconds_bucket", "streamrnn_event_lag_seconds_bucket"):
        quantiles = {
            m.group(1)
            for _, e in exprs
            if metric in metric_names(e)
            for m in re.finditer(r"histogram_quantile\(\s*([0-9.]+)", e)
        }
        assert {"0.5", "0.99"} <= quantiles, metric
    lag = [e for _, e in exprs if "streamrnn_consumer_lag" in metric_names(e)]
    assert any("partition" in e for e in lag)
    assert any("topic" in e for _, e in exprs if "streamrnn_anomalies_total" in metric_names(e))
    score = [panels[t] for t in uses("streamrnn_anomaly_score_bucket")]
    assert any(p["type"] in ("heatmap", "bargauge") for p in score)
    assert any("reason" in e for _, e in exprs if "streamrnn_rejected_total" in metric_names(e))


def test_every_exported_metric_is_on_the_dashboard():
    used = {n for _, _, e in dashboard_exprs(DASHBOARD) for n in metric_names(e)}
    registry = CollectorRegistry()
    Metrics(registry)
    from prometheus_client.parser import text_string_to_metric_families

    families = {
        f.name
        for f in text_string_to_metric_families(generate_latest(registry).decode())
        if not f.name.endswith("_created")
    }
    missing = {f for f in families if not any(u == f or u.startswith(f + "_") for u in used)}
    assert not missing, f"metrics on no dashboard panel: {sorted(missing)}"


# ---------------------------------------------------------------------------------------------
# Metric names in queries


@pytest.mark.parametrize(
    "expr, names",
    [
        ('up{job="streamrnn"} == 0', {"up"}),
        (
            "histogram_quantile(0.99, sum by (job, le) (rate(streamrnn_batch_duration_seconds_bucket[5m]))) > 1",
            {"streamrnn_batch_duration_seconds_bucket"},
        ),
        (
            "time() - max(streamrnn_last_batch_timestamp_seconds)",
            {"streamrnn_last_batch_timestamp_seconds"},
        ),
        ("a / on(job) group_left(instance) b offset 5m", {"a", "b"}),
        ("sum without (topic, partition) (x_total) > bool 1e3", {"x_total"}),
        ('label_replace(x, "dst", "$1", "src", "(.*)")', {"x"}),
        ("max_over_time(deriv(y[10m])[1h:1m]) > -Inf", {"y"}),
        ('{__name__="z"}', set()),
        ("sum(rate(m[$__rate_interval])) and count(n) unless o", {"m", "n", "o"}),
    ],
)
def test_metric_names_parser(expr: str, names: set[str]):
    assert metric_names(expr) == names


def test_expand_grafana():
    assert expand_grafana("rate(x[$__rate_interval])") == "rate(x[1m])"
    assert expand_grafana("rate(x[${__interval}])", interval="30s") == "rate(x[30s])"
    assert expand_grafana("increase(x[$__range]) * $f", {"f": "2"}) == "increase(x[1h]) * 2"
    assert expand_grafana("x[[[__interval]]]") == "x[15s]"
    with pytest.raises(KeyError):
        expand_grafana('x{instance=~"$instance"}')


def test_queries_only_use_exported_metrics():
    exported = exported_names()
    used: dict[str, set[str]] = {}
    for title, ref, expr in dashboard_exprs(DASHBOARD):
        for name in metric_names(expand_grafana(expr)):
            used.setdefault(name, set()).add(f"dashboard panel {title!r} {ref}")
    for alert, expr in rule_exprs(RULES):
        for name in metric_names(expr):
            used.setdefault(name, set()).add(f"rule {alert}")
    unknown = {n: sorted(w) for n, w in used.items() if n not in exported}
    assert not unknown, f"metric names not exported by streamrnn: {unknown}"
    assert "streamrnn_events_total" in used and "up" in used


# ---------------------------------------------------------------------------------------------
# Prometheus config and rules


def test_prometheus_config_loads_the_rules():
    config = load_yaml(PROMETHEUS_CONFIG)
    files = [PROMETHEUS_CONFIG.parent / f for f in config["rule_files"]]
    matched = {p.resolve() for f in files for p in f.parent.glob(f.name)}
    assert RULES.resolve() in matched
    assert RULES_TEST.resolve() not in matched, "the promtool test file is not a rules file"
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "streamrnn")
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_alert_rules_shape():
    doc = load_yaml(RULES)
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} == ALERTS
    for r in rules:
        assert r["labels"]["severity"] in ("critical", "warning", "info"), r["alert"]
        assert r["annotations"]["summary"].strip(), r["alert"]
        assert r["annotations"]["description"].strip(), r["alert"]
    by_name = {r["alert"]: r for r in rules}
    assert by_name["StreamrnnDown"]["for"] == "2m"
    assert by_name["StreamrnnNotReady"]["for"] == "5m"
    assert (
        "deriv(" in by_name["StreamrnnConsumerLagGrowing"]["expr"]
        or "delta(" in by_name["StreamrnnConsumerLagGrowing"]["expr"]
    )
    assert "[1d]" in by_name["StreamrnnAnomalyRateHigh"]["expr"]
    assert "histogram_quantile(0.99" in by_name["StreamrnnBatchLatencyHigh"]["expr"]
    assert "600" in by_name["StreamrnnCheckpointStale"]["expr"]
    assert by_name["StreamrnnAlertSinkFailing"]["labels"]["severity"] == "critical"
    assert "streamrnn_sink_dropped_total" in by_name["StreamrnnAlertsDropped"]["expr"]


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    doc = load_yaml(RULES_TEST)
    assert [str((RULES_TEST.parent / f).resolve()) for f in doc["rule_files"]] == [
        str(RULES.resolve())
    ]
    fires: set[str] = set()
    quiet: set[str] = set()
    for test in doc["tests"]:
        for case in test.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert fires == ALERTS, f"no firing case for {ALERTS - fires}"
    assert quiet == ALERTS, f"no quiet case for {ALERTS - quiet}"
