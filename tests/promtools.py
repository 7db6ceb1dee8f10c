"""Test helpers for a real Prometheus: finding (or installing) it, running it, querying it.

Used by tests/test_prometheus.py and meant for re-use by live tests (the detector as the scrape
target instead of a fed exporter)::

    prometheus, promtool = ensure_prometheus()          # skips the test when unavailable
    with PrometheusServer(["127.0.0.1:9108"], [RULES], tmp_path) as prom:
        prom.wait_for_data('up{job="streamrnn"} == 1', timeout=20)
        for panel, ref, expr in dashboard_exprs(DASHBOARD):
            prom.wait_for_data(expand_grafana(expr), timeout=10)

The pure functions (``dashboard_exprs``, ``rule_exprs``, ``metric_names``, ``expand_grafana``,
``exposed_series_names``) need no Prometheus and are shared with tests/test_deploy.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "streamrnn.json"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RULES = DEPLOY / "prometheus" / "rules" / "streamrnn.yml"
RULES_TEST = DEPLOY / "prometheus" / "rules" / "streamrnn_test.yml"

# ---------------------------------------------------------------------------------------------
# Finding or installing Prometheus

_FOUND: tuple[str, str] | None = None
_INSTALL_LOCK = Path("/tmp/streamrnn-prometheus-install.lock")  # one apt-get at a time
T = TypeVar("T")
S = TypeVar("S", bound="ServerProcess")


def _which(name: str) -> str | None:
    path = shutil.which(name)
    if path:
        return path
    candidate = Path("/usr/bin") / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return None


def _find() -> tuple[str, str] | None:
    prometheus, promtool = _which("prometheus"), _which("promtool")
    if prometheus and promtool:
        return prometheus, promtool
    return None


def _apt(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(
        ["apt-get", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ensure_prometheus() -> tuple[str, str]:
    """Paths of ``prometheus`` and ``promtool``; installs Debian's package when missing.

    Looks on PATH and in /usr/bin. When absent and running as root with apt-get available it
    runs ``apt-get install -y prometheus`` (``apt-get update`` first if that fails). Otherwise,
    or when the install fails, the calling test is skipped.
    """
    global _FOUND
    if _FOUND is None:
        _FOUND = ensure_debian_package("prometheus", _find)
    return _FOUND


def ensure_debian_package(package: str, find: Callable[[], T | None]) -> T:
    """What ``find`` returns, after ``apt-get install -y PACKAGE`` when it returns None.

    The install needs root and apt-get (``apt-get update`` first if the install fails); without
    them, or when the install fails or ``find`` still finds nothing, the calling test is skipped.
    """
    found = find()
    if found is not None:
        return found
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip(f"{package} not installed and not root (apt-get install {package})")
    if shutil.which("apt-get") is None:
        pytest.skip(f"{package} not installed and no apt-get to install it")
    return _install(package, find)


def _install(package: str, find: Callable[[], T | None]) -> T:
    import fcntl  # POSIX only; imported here so the module imports everywhere

    with open(_INSTALL_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time (pytest-xdist workers)
        try:
            found = find()
            if found is not None:
                return found
            install = ("install", "-y", "--no-install-recommends", package)
            result = _apt(*install)
            if result.returncode != 0:
                update = _apt("update")
                if update.returncode != 0:
                    pytest.skip(f"apt-get update failed: {update.stderr.strip()[-500:]}")
                result = _apt(*install)
            found = find()
            if result.returncode != 0 or found is None:
                pytest.skip(f"apt-get install {package} failed: {result.stderr.strip()[-500:]}")
            return found
        except subprocess.TimeoutExpired:
            pytest.skip(f"apt-get install {package} timed out")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def promtool(
    *args: str | os.PathLike[str], stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``promtool`` (installing it if needed) with ``stdin`` as its input; the result."""
    _, tool = ensure_prometheus()
    return subprocess.run(
        [tool, *map(str, args)],
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# ---------------------------------------------------------------------------------------------
# A real Prometheus server


class PromQLError(RuntimeError):
    """The HTTP API answered an error for a query (``error_type`` is e.g. ``bad_data``)."""

    def __init__(self, expr: str, status: int, error_type: str, message: str) -> None:
        super().__init__(f"{error_type} ({status}): {message} in {expr!r}")
        self.expr = expr
        self.status = status
        self.error_type = error_type
        self.message = message


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server binary on a free loopback port, its data and log under ``dir``; the base of
    :class:`PrometheusServer` and tests/amtools.py's ``AlertmanagerServer``.

    Subclasses name the binary and its arguments (:meth:`command`) and write their config in
    :meth:`prepare`. :meth:`start` may be called again after :meth:`stop`: it keeps the port
    (unless it is taken) and the data directory.
    """

    name = "server"

    def __init__(self, directory: Path, startup_timeout: float = 30.0) -> None:
        self.dir = directory
        self.startup_timeout = startup_timeout
        self.port = 0
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def prepare(self) -> None:
        """Write the config (called by :meth:`start`, ``dir`` exists)."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self: S) -> S:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        last_error = ""
        for attempt in range(3):  # the free port may be taken between probe and bind
            if attempt or not self.port:
                self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self._log = open(self.dir / f"{self.name}.log", "ab")  # noqa: SIM115 - closed in stop()
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            if self._wait_ready():
                return self
            last_error = self.log_tail()
            self.stop()
        raise RuntimeError(f"{self.name} did not become ready:\n{last_error}")

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, chars: int = 4000) -> str:
        path = self.dir / f"{self.name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PrometheusServer(ServerProcess):
    """A Prometheus process on a free loopback port, with a generated config.

    ``scrape_targets`` is a list of ``host:port`` (job ``streamrnn``, the job the alert rules
    and dashboard expect) or a mapping ``{job: [host:port, ...]}``. ``rule_files`` are loaded
    and evaluated every ``scrape_interval``. Data lives under ``tmp_path``. Use as a context
    manager; the process is stopped (and its log kept in ``tmp_path``) on exit.
    ``job_settings`` adds scrape settings per job (``scheme``, ``tls_config``, ``basic_auth``).
    """

    name = "prometheus"

    def __init__(
        self,
        scrape_targets: Sequence[str] | Mapping[str, Sequence[str]],
        rule_files: Iterable[str | os.PathLike[str]] = (),
        tmp_path: str | os.PathLike[str] | None = None,
        scrape_interval: str = "1s",
        *,
        evaluation_interval: str | None = None,
        metrics_path: str = "/metrics",
        startup_timeout: float = 30.0,
        job_settings: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        if tmp_path is None:
            raise ValueError("tmp_path is required (Prometheus keeps its TSDB and log there)")
        super().__init__(Path(tmp_path) / "prometheus", startup_timeout)
        if isinstance(scrape_targets, Mapping):
            self.jobs = {job: list(t) for job, t in scrape_targets.items()}
        else:
            self.jobs = {"streamrnn": list(scrape_targets)}
        self.rule_files = [str(Path(p).resolve()) for p in rule_files]
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval or scrape_interval
        self.metrics_path = metrics_path
        self.job_settings = {job: dict(v) for job, v in (job_settings or {}).items()}

    # -- lifecycle ----------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "rule_files": self.rule_files,
            "scrape_configs": [
                {
                    "job_name": job,
                    "metrics_path": self.metrics_path,
                    "static_configs": [{"targets": targets}],
                    **self.job_settings.get(job, {}),
                }
                for job, targets in self.jobs.items()
            ],
        }

    def prepare(self) -> None:
        config_path = self.dir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))

    def command(self) -> list[str]:
        binary, _ = ensure_prometheus()
        return [
            binary,
            f"--config.file={self.dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1d",
            "--log.level=warn",
        ]

    # -- HTTP API -----------------------------------------------------------------------------

    def api(self, path: str, params: Mapping[str, str] | None = None, timeout: float = 10) -> Any:
        """GET ``/api/v1/<path>``; returns ``data`` or raises :class:`PromQLError`."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                status, body = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        try:
            payload = json.loads(body)
        except ValueError:
            raise PromQLError(
                str(params), status, "not_json", body[:200].decode("replace")
            ) from None
        if payload.get("status") != "success":
            expr = (params or {}).get("query", path)
            raise PromQLError(expr, status, payload.get("errorType", "?"), payload.get("error", ""))
        return payload["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query; the result list (vector or matrix; a scalar becomes one entry)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = repr(at)
        data = self.api("query", params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def validate(self, expr: str) -> None:
        """Raise :class:`PromQLError` unless the API accepts ``expr`` (invalid PromQL: 400)."""
        self.api("query", {"query": expr})

    def is_valid(self, expr: str) -> tuple[bool, str]:
        try:
            self.validate(expr)
        except PromQLError as e:
            return False, str(e)
        return True, ""

    def wait_for_data(self, expr: str, timeout: float = 20.0, interval: float = 0.25) -> list:
        """Poll an instant query until it returns at least one series; the result.

        Raises ``AssertionError`` naming the expression when nothing came within ``timeout``,
        and :class:`PromQLError` at once for an invalid expression.
        """
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() >= deadline:
                raise AssertionError(f"no data within {timeout:.0f}s for {expr!r}")
            time.sleep(interval)

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets")["activeTargets"]

    def rule_groups(self) -> list[dict[str, Any]]:
        return self.api("rules")["groups"]

    def wait_for_scrapes(self, n: int = 2, timeout: float = 20.0) -> None:
        """Wait until every target has been scraped at least ``n`` times and is up."""
        deadline = time.monotonic() + timeout
        for job, targets in self.jobs.items():
            sel = f'up{{job="{job}"}}'
            expr = f"count(count_over_time({sel}[1h]) >= {n} and {sel} == 1)"
            while True:
                result = self.query(expr)
                if result and float(result[0]["value"][1]) >= len(targets):
                    break
                if time.monotonic() >= deadline:
                    raise AssertionError(f"targets of {job} not scraped {n}x: {self.targets()}")
                time.sleep(0.25)


# ---------------------------------------------------------------------------------------------
# Grafana variables and PromQL names (no Prometheus needed)

#: Values used for Grafana's built-in variables when a dashboard query runs outside Grafana.
GRAFANA_DEFAULTS: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

_VAR = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")


def expand_grafana(
    expr: str,
    variables: Mapping[str, str] | None = None,
    *,
    rate_interval: str = "1m",
    interval: str | None = None,
) -> str:
    """Substitute Grafana variables (``$v``, ``${v}``, ``${v:fmt}``, ``[[v]]``) in a query.

    Built-ins default to :data:`GRAFANA_DEFAULTS` (``$__rate_interval`` = ``rate_interval``);
    ``variables`` adds or overrides. An unknown variable raises ``KeyError``, so a query that
    would not run outside Grafana is noticed.
    """
    values = dict(GRAFANA_DEFAULTS)
    values["__rate_interval"] = rate_interval
    if interval is not None:
        values["__interval"] = interval
    values.update(variables or {})

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise KeyError(f"Grafana variable ${name} has no value (in {expr!r})")
        return values[name]

    return _VAR.sub(sub, expr)


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_IDENT = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(?![\w:])")
_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan", "start", "end",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (function names, labels and keywords left out).

    A light tokenizer, not a full parser: strings, label matchers, grouping clauses, range
    selectors and durations are removed; an identifier followed by ``(`` is a function.
    """
    s = _STRING.sub('""', expr)
    s = re.sub(r"#[^\n]*", " ", s)  # comments
    s = re.sub(r"\{[^{}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\[\]]*\]", " ", s)  # ranges and subqueries
    s = _GROUPING.sub(" ", s)
    names: set[str] = set()
    for m in _IDENT.finditer(s):
        word = m.group(1)
        rest = s[m.end() :].lstrip()
        if rest.startswith("("):  # a function call
            continue
        if word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def dashboard_exprs(path: str | os.PathLike[str] = DASHBOARD) -> list[tuple[str, str, str]]:
    """``(panel title, refId, expr)`` for every target of every panel (rows included)."""
    dashboard = json.loads(Path(path).read_text())
    out: list[tuple[str, str, str]] = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                out.append((panel.get("title", "?"), target.get("refId", "?"), target["expr"]))
    return out


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def rule_exprs(path: str | os.PathLike[str] = RULES) -> list[tuple[str, str]]:
    """``(alert or record name, expr)`` for every rule of a Prometheus rules file."""
    doc = yaml.safe_load(Path(path).read_text())
    return [
        (rule.get("alert") or rule.get("record"), rule["expr"])
        for group in doc["groups"]
        for rule in group["rules"]
    ]


def exposed_series_names(exposition: str) -> set[str]:
    """Every series name a scrape of this exposition can produce, by metric type.

    Counter ``x``: ``x_total``, ``x_created``; histogram ``x``: ``x_bucket``, ``x_count``,
    ``x_sum``, ``x_created``; summary: ``x``, ``x_count``, ``x_sum``, ``x_created``; gauge and
    untyped: ``x``; info: ``x_info``. Families without samples (labelled metrics not yet used)
    count too, since their series appear once used.
    """
    from prometheus_client.parser import text_string_to_metric_families

    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
        "summary": ("", "_count", "_sum", "_created"),
        "info": ("_info",),
        "stateset": ("",),
    }
    names: set[str] = set()
    for fam in text_string_to_metric_families(exposition):
        names.update(fam.name + sfx for sfx in suffixes.get(fam.type, ("",)))
        names.update(sample.name for sample in fam.samples)
    return names


# ---------------------------------------------------------------------------------------------
# Checks of many queries at once (shared by the fed-exporter test and live tests)


def invalid_queries(prom: PrometheusServer, exprs: Iterable[tuple[str, str]]) -> list[str]:
    """``"<where>: <error>"`` for each ``(where, expr)`` the HTTP API rejects."""
    problems = []
    for where, expr in exprs:
        ok, error = prom.is_valid(expr)
        if not ok:
            problems.append(f"{where}: {error}")
    return problems


def queries_without_data(
    prom: PrometheusServer, exprs: Iterable[tuple[str, str]], timeout: float = 20.0
) -> list[str]:
    """``"<where>: <expr>"`` for each query still returning nothing after ``timeout`` seconds.

    All queries share the one deadline; those that returned data are not asked again.
    """
    pending = dict(exprs)
    deadline = time.monotonic() + timeout
    while pending:
        for where, expr in list(pending.items()):
            try:
                if prom.query(expr):
                    del pending[where]
            except PromQLError:
                pass  # reported by invalid_queries; keep it pending here
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    return [f"{where}: {expr}" for where, expr in pending.items()]


def dashboard_queries(
    path: str | os.PathLike[str] = DASHBOARD, variables: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """``(panel/refId, expr with Grafana variables expanded)`` for every dashboard target."""
    return [
        (f"panel {title!r} {ref}", expand_grafana(expr, variables))
        for title, ref, expr in dashboard_exprs(path)
    ]


def rule_queries(path: str | os.PathLike[str] = RULES) -> list[tuple[str, str]]:
    return [(f"rule {name}", expr) for name, expr in rule_exprs(path)]
