"""Typed, frozen configuration loaded from YAML.

Every section is a frozen dataclass. Each field carries its rule; a value that breaks it stops
start-up with ``ConfigError("section.key: rule, got value")``. Unknown keys are errors too, so a
typo never silently falls back to a default. ``config/default.yaml`` documents every key.

Values come from four places, each winning over the next: command-line flags (``overrides``),
environment variables (``environ``), the YAML file, the defaults. An environment variable names
its key in capitals with ``__`` between levels and ``STREAMRNN_`` in front:
``STREAMRNN_SERVICE__KAFKA__SASL_USERNAME`` is ``service.kafka.sasl_username``. Its text is read
as the key's type asks: a number or ``true``/``false`` as YAML reads them, a list as
comma-separated items (or a YAML list ``[a, b]``), a string as it is; an empty text sets an
optional key to null. :func:`resolve_config` also returns where each value came from.

Passwords and tokens are :class:`Secret` values: the value itself, ``{env: NAME}`` or
``{file: PATH}``; printing a config shows ``***`` or the reference, never the value.

>>> cfg = load_config(None, overrides={"model.cell": "gru"})
>>> cfg.model.cell
'gru'
>>> load_config(None, overrides={"model.hidden_size": 0})
Traceback (most recent call last):
...
streamrnn.config.ConfigError: model.hidden_size: must be an integer >= 1, got 0
"""

from __future__ import annotations

import dataclasses
import math
import re
import string
import types
import typing
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

import yaml

from .secret import MASK, Secret, SecretError, looks_secret

__all__ = [
    "MASK",
    "Config",
    "ConfigError",
    "KafkaConfig",
    "Secret",
    "SecretError",
    "dump_config",
    "load_config",
    "read_source",
]

CellType = Literal["lstm", "gru"]
Device = str  # "auto", "cpu", "cuda", "cuda:N"
LatePolicy = Literal["score", "drop"]


class ConfigError(ValueError):
    """A configuration value breaks its rule; the message names the key, the rule and the value."""


def _rule(default: Any, check: Callable[[Any], bool] | None = None, text: str = "") -> Any:
    return field(default=default, metadata={"check": check, "text": text})


def _rule_factory(
    factory: Callable[[], Any], check: Callable[[Any], bool] | None = None, text: str = ""
) -> Any:
    return field(default_factory=factory, metadata={"check": check, "text": text})


def _pos(x: Any) -> bool:
    return x >= 1


def _nonneg(x: Any) -> bool:
    return x >= 0


def _unit_open(x: Any) -> bool:
    return 0 < x < 1


def _device_ok(x: str) -> bool:
    if x in ("auto", "cpu", "cuda"):
        return True
    return x.startswith("cuda:") and x[5:].isdigit()


@dataclass(frozen=True)
class ModelConfig:
    """The shared forecaster: one per stream class, every key owns only its state."""

    cell: CellType = "lstm"
    hidden_size: int = _rule(64, _pos, "must be an integer >= 1")
    num_layers: int = _rule(2, _pos, "must be an integer >= 1")
    # Dropout between stacked layers (training only), as in torch.nn.LSTM.
    dropout: float = _rule(0.1, lambda x: 0 <= x < 1, "must be in [0, 1)")
    # Hour of day and day of week as sin/cos inputs: energy demand needs them.
    calendar: bool = True
    # Floor on the predicted scale, in normalised units: keeps the likelihood finite on flat lines.
    min_scale: float = _rule(0.05, lambda x: x > 0, "must be > 0")


@dataclass(frozen=True)
class FeatureConfig:
    """Per-key online normalisation, shared by training and streaming."""

    # Events before the normaliser's statistics are trusted; the key is in warm-up until then.
    normalizer_warmup: int = _rule(32, _pos, "must be an integer >= 1")
    # Effective memory of the normaliser in events: cumulative at first, exponential after.
    normalizer_horizon: int = _rule(5000, _pos, "must be an integer >= 1")
    # Normalised inputs are clipped to +-clip so one wild value cannot saturate the hidden state.
    clip: float = _rule(10.0, lambda x: x > 0, "must be > 0")
    # A reading this many of the key's standard deviations from its mean (once the key has seen 8
    # readings), or beyond max_magnitude, is an outlier: scored, but imputed for the normaliser and
    # the model, so that one wild reading cannot blind a key (3e38 in warm-up did).
    outlier_factor: float = _rule(1e4, lambda x: x > 1, "must be > 1")
    max_magnitude: float = _rule(1e15, lambda x: x > 0, "must be > 0")


@dataclass(frozen=True)
class AdaptConfig:
    """Online adaptation per key: a daily profile and a corrector of the forecast (adapt.py)."""

    # Off: the shared model's forecast is used as it is (the profile still feeds the level view).
    enabled: bool = True
    # Step size of the normalised least-mean-squares update of each key's corrector weights.
    rate: float = _rule(0.02, lambda x: 0 < x <= 1, "must be in (0, 1]")
    # An error beyond this many of the key's RMS errors teaches the corrector only this much.
    error_clip: float = _rule(3.0, lambda x: x > 0, "must be > 0")
    # Time-of-day bins of each key's daily profile (0 = no profile).
    profile_bins: int = _rule(48, lambda x: 0 <= x <= 1440, "must be an integer in [0, 1440]")


def _rate_ok(x: Any) -> bool:
    return 0 < x < 1


@dataclass(frozen=True)
class ScoringConfig:
    """Views of surprise, calibrated per key, combined into one score and the flag rule (scoring.py)."""

    # The false-alert budget: flags per event per key that clean data may raise. A key is flagged
    # when its combined tail probability is below this; the score is 0.5 there (at 1e-4).
    false_alert_rate: float = _rule(1e-4, _rate_ok, "must be in (0, 1)")
    # Events in a key's long-run RMS error, which each error is measured against (cumulative at first).
    error_horizon: float = _rule(1000.0, lambda x: x >= 2, "must be >= 2")
    # Events in the per-key tail statistics of each view (cumulative at first, exponential after).
    calibration_horizon: float = _rule(10000.0, lambda x: x >= 10, "must be >= 10")
    # Weight, in events, of the nominal tail every key's calibration starts from.
    calibration_prior: float = _rule(500.0, _nonneg, "must be >= 0")
    # Assumed correlation between the views' evidence when they are summed (0 = independent).
    dependence: float = _rule(0.2, lambda x: 0 <= x < 1, "must be in [0, 1)")
    # A key is not flagged (and scores 0) before it has seen this many events.
    warmup: int = _rule(150, _nonneg, "must be an integer >= 0")
    # Events after an alert during which the same key is not flagged again.
    cooldown: int = _rule(50, _nonneg, "must be an integer >= 0")

    @property
    def evidence_threshold(self) -> float:
        """-log10 of the false-alert rate: the combined evidence at which a key is flagged."""
        return -math.log10(self.false_alert_rate)

    @property
    def threshold(self) -> float:
        """The score at which a key is flagged (0.5 at a false-alert rate of 1e-4)."""
        t = self.evidence_threshold
        return t / (t + SCORE_HALF)


# The combined evidence (-log10 of a tail probability) at which the score is 0.5.
SCORE_HALF = 4.0

# Keys that existed once: a config that still sets one is told what replaced it.
REMOVED_KEYS = {
    "scoring.threshold": "replaced by scoring.false_alert_rate (flags per event per key; "
    "the old threshold 0.5 was about 1e-5)",
    "scoring.range_margin": "removed: the range check became the calibrated level view",
    "scoring.range_score": "removed: the range check became the calibrated level view",
    "scoring.short_horizon": "removed: the sustained view averages recent surprises",
    "scoring.long_horizon": "replaced by scoring.calibration_horizon",
}


@dataclass(frozen=True)
class TrainingConfig:
    """Truncated backpropagation through time."""

    epochs: int = _rule(30, _pos, "must be an integer >= 1")
    learning_rate: float = _rule(3e-3, lambda x: 0 < x < 1, "must be in (0, 1)")
    batch_size: int = _rule(64, _pos, "must be an integer >= 1")
    # BPTT length: gradients flow through this many steps.
    window: int = _rule(128, lambda x: x >= 2, "must be an integer >= 2")
    stride: int = _rule(64, _pos, "must be an integer >= 1")
    grad_clip: float = _rule(1.0, lambda x: x > 0, "must be > 0")
    weight_decay: float = _rule(0.0, _nonneg, "must be >= 0")
    # Fraction of each series (its tail) held out for validation and early stopping.
    val_fraction: float = _rule(0.2, lambda x: 0 <= x < 1, "must be in [0, 1)")
    patience: int = _rule(4, _pos, "must be an integer >= 1")
    seed: int = 0
    # Wall-clock budget; training stops after the epoch that crosses it (0 = none).
    max_seconds: float = _rule(0.0, _nonneg, "must be >= 0")


@dataclass(frozen=True)
class StateConfig:
    """Per-key state resident on the device."""

    device: Device = _rule("auto", _device_ok, "must be auto, cpu, cuda or cuda:N")
    # Resident keys are capped; the least recently seen are evicted (and counted) beyond this.
    max_keys: int = _rule(1_000_000, _pos, "must be an integer >= 1")
    initial_capacity: int = _rule(1024, _pos, "must be an integer >= 1")


def _iso_ok(text: str) -> bool:
    from .times import parse_iso

    try:
        return abs(parse_iso(text).timestamp()) <= 1e11
    except (TypeError, ValueError, OverflowError, OSError):
        return False


@dataclass(frozen=True)
class InputConfig:
    """How rows and events map to keys, times and values."""

    key_field: str = "key"
    time_field: str = "ts"
    value_field: str = "value"
    values_field: str = "values"
    # Names of the value features, in order. Empty: one feature named after value_field.
    features: tuple[str, ...] = ()
    # The scored, predicted fields of `values`, in order (empty: input.features, else the model's).
    targets: tuple[str, ...] = ()
    # Fields of `values` that steer the forecast but are never scored (temperature for demand);
    # empty: the model's. A missing covariate is imputed and counted, never flagged.
    covariates: tuple[str, ...] = ()
    # Events older than their key's last event: "score" them anyway, or "drop" to the DLQ.
    late_events: LatePolicy = "score"
    # Event times outside [min_event_time, max_event_time] (ISO 8601) go to the dead-letter
    # topic as event_time_out_of_window: a year -882 or 9999 reading is a broken clock.
    min_event_time: str = _rule("1970-01-01T00:00:00Z", _iso_ok, "must be an ISO 8601 time")
    max_event_time: str = _rule("2262-04-11T00:00:00Z", _iso_ok, "must be an ISO 8601 time")


OffsetReset = Literal["earliest", "latest"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]


@dataclass(frozen=True)
class KafkaConfig:
    """How every Kafka client of streamrnn connects (consumer, producer, admin, state topic).

    Files are PEM. Secrets (:class:`Secret`) are the value, ``{env: NAME}`` or ``{file: PATH}``.
    The rules between keys (a SASL protocol needs a mechanism, TLS files need a TLS protocol, ...)
    are checked by ``_check_kafka`` below; the option maps by
    :func:`streamrnn.service.kafka_security.check_options`.
    """

    security_protocol: SecurityProtocol = "PLAINTEXT"
    # CA bundle that signs the brokers' certificates; null: the system's trusted CAs.
    ssl_cafile: str | None = None
    # Client certificate and key for mutual TLS; the key may be encrypted with ssl_password.
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: Secret | None = None
    # The broker's certificate must name the host connected to (off only for a test cluster).
    ssl_check_hostname: bool = True
    # Certificate revocation list; a revoked broker certificate is refused.
    ssl_crlfile: str | None = None
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    # OAUTHBEARER: the token, usually {file: PATH}, read again whenever the file changes.
    sasl_oauth_token: Secret | None = None
    # Further kafka-python options for each client, checked against the options it knows.
    consumer_options: dict[str, Any] = _rule_factory(dict)
    producer_options: dict[str, Any] = _rule_factory(dict)
    admin_options: dict[str, Any] = _rule_factory(dict)


@dataclass(frozen=True)
class ServiceConfig:
    """The Kafka detector daemon (`streamrnn run`)."""

    bootstrap_servers: tuple[str, ...] = ("localhost:9092",)
    # Topics to consume; or a regular expression in topic_pattern (one of the two is required to run).
    topics: tuple[str, ...] = ()
    topic_pattern: str | None = None
    group: str = "streamrnn"
    # Model directory written by `streamrnn train` (required to run).
    model: str | None = None
    alerts_topic: str = "streamrnn.alerts"
    dlq_topic: str = "streamrnn.dlq"
    # Every event's score, when set.
    scores_topic: str | None = None
    # Local directory for per-partition checkpoints.
    state_dir: str = "state"
    # Optional compacted Kafka topic holding checkpoints, so state follows a partition to another host.
    state_topic: str | None = None
    checkpoint_interval_s: float = _rule(30.0, lambda x: x > 0, "must be > 0")
    metrics_host: str = "0.0.0.0"
    metrics_port: int = _rule(9108, lambda x: 0 <= x <= 65535, "must be a port in [0, 65535]")
    max_poll_records: int = _rule(5000, _pos, "must be an integer >= 1")
    # Decode, model and scoring in a child process, overlapping the Kafka client's work (a second
    # core on CPU; the process that owns the GPU); false keeps everything in one process.
    engine_process: bool = True
    # Read fetched record batches with streamrnn's own loop (service/records.py, about twice the
    # records a second of kafka-python's); false, or a kafka-python it does not recognise, keeps
    # kafka-python's reader.
    fast_record_reader: bool = True
    poll_timeout_ms: int = _rule(200, _pos, "must be an integer >= 1")
    # How long the broker may hold a fetch with no new data: bounds the latency at low rates.
    fetch_max_wait_ms: int = _rule(50, _nonneg, "must be an integer >= 0")
    # Bytes fetched per partition and request: smaller mixes partitions within one poll, so a
    # batch spans more keys and the engine runs fewer, wider waves.
    max_partition_fetch_bytes: int = _rule(
        65_536, lambda x: x >= 1024, "must be an integer >= 1024"
    )
    # kafka-python's retry_backoff_ms: the consumer's wait before retrying after an error, and
    # also how long its poll sleeps when no fetch is in flight (100 ms by kafka-python's default:
    # a 100 ms stall for events that arrive meanwhile).
    client_retry_backoff_ms: int = _rule(10, _pos, "must be an integer >= 1")
    # kafka-python's rebalance timeout is max_poll_interval_ms: a group's first join waits for it.
    max_poll_interval_ms: int = _rule(300_000, lambda x: x >= 1000, "must be an integer >= 1000")
    session_timeout_ms: int = _rule(10_000, lambda x: x >= 1000, "must be an integer >= 1000")
    heartbeat_interval_ms: int = _rule(3000, _pos, "must be an integer >= 1")
    auto_offset_reset: OffsetReset = "earliest"
    # Bound on a graceful shutdown (finish the batch, flush, commit, checkpoint).
    shutdown_timeout_s: float = _rule(30.0, lambda x: x > 0, "must be > 0")
    # /healthz fails after this long without progress (a poll settled) while work waits
    # (unacknowledged polls, consumer lag, sends retried in a loop): a stuck pod gets restarted.
    stall_timeout_s: float = _rule(300.0, lambda x: x > 0, "must be > 0")
    # How often to look for a changed model directory (0 = only on SIGHUP).
    model_poll_interval_s: float = _rule(10.0, _nonneg, "must be >= 0")
    # Longest pause between retries while the broker is unreachable.
    retry_backoff_max_s: float = _rule(30.0, lambda x: x > 0, "must be > 0")
    # Prometheus web-config file (tls_server_config, basic_auth_users) guarding the HTTP endpoint.
    metrics_web_config: str | None = None
    # TLS and SASL of every Kafka client (the consumer, producer, admin and state-topic clients).
    kafka: KafkaConfig = field(default_factory=KafkaConfig)


#: Labels every alert carries; ``alerts.labels`` adds others and may not redefine these.
ALERT_LABELS: tuple[str, ...] = ("alertname", "key", "topic", "model", "severity")
#: Placeholders of ``alerts.generator_url``.
GENERATOR_URL_FIELDS: tuple[str, ...] = ("key", "topic", "partition", "offset", "ts", "alertname")
_LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _urls_ok(urls: tuple[str, ...]) -> bool:
    for u in urls:
        try:
            parts = urllib.parse.urlsplit(u)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
    return True


def _labels_ok(labels: dict[str, str]) -> bool:
    return all(
        _LABEL_NAME.match(name) and not name.startswith("__") and name not in ALERT_LABELS and field
        for name, field in labels.items()
    )


def _template_ok(text: str | None) -> bool:
    if not text:
        return True
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError:
        return False
    return all(n in GENERATOR_URL_FIELDS for n in names)


def _nonempty(x: str) -> bool:
    return bool(x.strip())


@dataclass(frozen=True)
class DeliveryConfig:
    """How notifications reach each sink's targets: off the hot path, bounded, retried."""

    # Notifications waiting per target URL; a new key's notification beyond it is dropped (counted).
    queue_size: int = _rule(10_000, _pos, "must be an integer >= 1")
    # Seconds one HTTP request may take.
    timeout_s: float = _rule(10.0, lambda x: x > 0, "must be > 0")
    # Longest pause between retries of a failing target (exponential from 0.5 s).
    retry_backoff_max_s: float = _rule(30.0, lambda x: x > 0, "must be > 0")
    # A notification still undelivered this long after it was queued is dropped (counted).
    max_age_s: float = _rule(600.0, lambda x: x > 0, "must be > 0")


@dataclass(frozen=True)
class AlertmanagerSinkConfig:
    """``POST /api/v2/alerts`` to every URL (each member of an Alertmanager cluster)."""

    # Base URLs, e.g. http://alertmanager:9093; empty: no Alertmanager sink.
    urls: tuple[str, ...] = _rule((), _urls_ok, "must be a list of http:// or https:// URLs")
    # Active alerts are sent again this often, each valid (endsAt) for 4 intervals, as Prometheus
    # does: Alertmanager neither resolves a live one nor keeps one whose detector died.
    resend_interval_s: float = _rule(60.0, lambda x: x > 0, "must be > 0")
    # File holding a bearer token sent as "Authorization: Bearer ..." (never logged).
    bearer_token_file: str | None = None
    # CA bundle for https URLs (default: the system's).
    ca_file: str | None = None


@dataclass(frozen=True)
class WebhookSinkConfig:
    """A JSON POST per notification, for systems without Alertmanager."""

    urls: tuple[str, ...] = _rule((), _urls_ok, "must be a list of http:// or https:// URLs")
    # File holding the HMAC-SHA256 key; each body is signed into signature_header (never logged).
    secret_file: str | None = None
    signature_header: str = _rule(
        "X-Streamrnn-Signature",
        lambda x: re.fullmatch(r"[A-Za-z0-9-]+", x) is not None,
        "must be an HTTP header name (A-Z a-z 0-9 -)",
    )
    # Also POST when an alert resolves.
    send_resolved: bool = True
    bearer_token_file: str | None = None
    ca_file: str | None = None


@dataclass(frozen=True)
class SinksConfig:
    alertmanager: AlertmanagerSinkConfig = field(default_factory=AlertmanagerSinkConfig)
    webhook: WebhookSinkConfig = field(default_factory=WebhookSinkConfig)


@dataclass(frozen=True)
class AlertsConfig:
    """Alerts that reach a person: labels, resolution, grouping and the sinks (streamrnn/alerts)."""

    alertname: str = _rule("StreamrnnAnomaly", _nonempty, "must not be empty")
    severity: str = _rule("warning", _nonempty, "must not be empty")
    # More labels, each from a field of the flagged input event: {label: event field}.
    labels: dict[str, str] = _rule_factory(
        dict,
        _labels_ok,
        "must map label names ([A-Za-z_][A-Za-z0-9_]*, not __*, not "
        + ", ".join(ALERT_LABELS)
        + ") to event field names",
    )
    # Link in every alert; placeholders: {key} {topic} {partition} {offset} {ts} {alertname}.
    generator_url: str | None = _rule(
        None,
        _template_ok,
        "must be a URL template whose placeholders are among "
        + ", ".join("{" + f + "}" for f in GENERATOR_URL_FIELDS),
    )
    # An alert resolves after this many unflagged events of its key in a row (more than
    # scoring.cooldown, so a sustained anomaly flagged once per cooldown stays one alert) ...
    resolve_after_events: int = _rule(100, _pos, "must be an integer >= 1")
    # ... or this many seconds after its key's last flagged event (a key that went quiet).
    resolve_timeout_s: float = _rule(3600.0, lambda x: x > 0, "must be > 0")
    # A key's notifications after its first wait until this long after its previous one and
    # collapse into one, as Alertmanager groups within its group_interval; a resolution follows
    # its page at least this late, so keep it above Alertmanager's group_wait (30 s by default).
    group_interval_s: float = _rule(60.0, _nonneg, "must be >= 0")
    # Active alerts tracked at most; a new one beyond is dropped (counted), never queued.
    max_active: int = _rule(10_000, _pos, "must be an integer >= 1")
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    sinks: SinksConfig = field(default_factory=SinksConfig)


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    state: StateConfig = field(default_factory=StateConfig)
    input: InputConfig = field(default_factory=InputConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(dataclasses.asdict(self))


def to_plain(x: Any) -> Any:
    if isinstance(x, Secret):
        return x.describe()
    if isinstance(x, dict):
        return {k: to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_plain(v) for v in x]
    return x


# ---------------------------------------------------------------------------------------------
# Types and their rules

_SECRET_TEXT = "must be the secret as text, {env: NAME} or {file: PATH}"


def optional_of(tp: Any) -> Any:
    """``X`` for ``X | None``; ``tp`` itself otherwise."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _holds_secret(tp: Any) -> bool:
    return optional_of(tp) is Secret


def is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _shape(value: Any) -> str:
    """How an error shows a value that may be a secret: its shape, never its text."""
    if isinstance(value, Mapping):
        return f"a mapping with keys {sorted(str(k) for k in value)}"
    if isinstance(value, str):
        return "an empty string" if not value else f"a string of {len(value)} characters"
    return f"a value of type {type(value).__name__}"


def _dict_of_str(tp: Any) -> bool:
    """``dict[str, str]`` (label maps), as against ``dict[str, Any]`` (option maps)."""
    args = typing.get_args(tp)
    return len(args) == 2 and args[1] is str


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is Secret:
        return _SECRET_TEXT
    if origin is Literal:
        return "must be one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if tp is bool:
        return "must be true or false"
    if tp is int:
        return "must be an integer"
    if tp is float:
        return "must be a number"
    if tp is str:
        return "must be a string"
    if origin in (tuple, list):
        return "must be a list of strings"
    if origin is dict:
        if _dict_of_str(tp):
            return "must be a mapping of strings to strings"
        return "must be a mapping of option names to values"
    if origin in (typing.Union, types.UnionType):
        return (
            " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None))
            + " or null"
        )
    return f"must be {tp}"


def _secret(value: Any, key: str) -> Secret:
    if isinstance(value, Secret):
        return value
    if isinstance(value, str) and value:
        return Secret(value)
    if isinstance(value, Mapping) and len(value) == 1:
        ((form, ref),) = value.items()
        if form in ("env", "file") and isinstance(ref, str) and ref:
            return Secret(env=ref) if form == "env" else Secret(file=ref)
    raise ConfigError(f"{key}: {_SECRET_TEXT}, got {_shape(value)}")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    shown = _shape(value) if _holds_secret(tp) else repr(value)
    bad = ConfigError(f"{key}: {_describe(tp)}, got {shown}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, key)
            except ConfigError:
                continue
        raise bad
    if tp is Secret:
        return _secret(value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise bad
        return tuple(value)
    if origin is dict:
        strings = _dict_of_str(tp)
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and (isinstance(v, str) or not strings) for k, v in value.items()
        ):
            raise bad
        return dict(value)
    raise bad  # pragma: no cover - a field type this loader does not know


def _unknown_key(key: str, known: str, value: Any) -> ConfigError:
    # A typo of a secret's key is still a secret: no value for such names, nor in service.kafka.
    shown = _shape(value) if looks_secret(key) or ".kafka." in key else repr(value)
    return ConfigError(f"{key}: unknown key (known: {known}), got {shown}")


Label = Callable[[str], str]


def build_section(cls: type, data: Mapping[str, Any] | None, prefix: str, label: Label) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if f"{prefix}{k}" in REMOVED_KEYS:
            raise ConfigError(
                f"{label(f'{prefix}{k}')}: {REMOVED_KEYS[f'{prefix}{k}']}, got {data[k]!r}"
            )
        if k not in fields:
            raise _unknown_key(label(f"{prefix}{k}"), ", ".join(sorted(fields)), data[k])
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        tp = hints[name]
        if is_section(tp):
            kwargs[name] = build_section(tp, data.get(name), key + ".", label)
            continue
        if name not in data:
            continue
        value = _coerce(tp, data[name], label(key))
        check = f.metadata.get("check")
        if check is not None and value is not None and not check(value):
            raise ConfigError(f"{label(key)}: {f.metadata['text']}, got {data[name]!r}")
        kwargs[name] = value
    section = cls(**kwargs)
    section_check = _SECTION_CHECKS.get(cls)
    if section_check is not None:
        section_check(section, prefix, label)
    return section


# ---------------------------------------------------------------------------------------------
# Rules between keys

_TLS_KEYS = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password", "ssl_crlfile")
_SASL_KEYS = ("sasl_mechanism", "sasl_username", "sasl_password", "sasl_oauth_token")


def _check_kafka(k: KafkaConfig, prefix: str, label: Label) -> None:
    """Rules between the keys of ``service.kafka``: nothing set that would be ignored, nothing
    missing that the protocol and mechanism need."""
    proto = k.security_protocol
    tls, sasl = proto in ("SSL", "SASL_SSL"), proto.startswith("SASL_")

    def fail(key: str, rule: str, value: Any) -> NoReturn:
        raise ConfigError(f"{label(prefix + key)}: {rule}, got {value!r}")

    ignored = f"not {proto} (it would be ignored)"
    for key in _TLS_KEYS if not tls else ():
        if getattr(k, key) is not None:
            fail(key, f"needs security_protocol SSL or SASL_SSL, {ignored}", getattr(k, key))
    if not tls and not k.ssl_check_hostname:
        fail("ssl_check_hostname", f"needs security_protocol SSL or SASL_SSL, not {proto}", False)
    if k.ssl_certfile is None:
        for key in ("ssl_keyfile", "ssl_password"):
            if getattr(k, key) is not None:
                fail(key, "needs ssl_certfile (the client certificate) as well", getattr(k, key))
    for key in _SASL_KEYS if not sasl else ():
        if getattr(k, key) is not None:
            fail(
                key,
                f"needs security_protocol SASL_PLAINTEXT or SASL_SSL, {ignored}",
                getattr(k, key),
            )
    if sasl:
        _check_sasl(k, prefix, fail)
    from .service.kafka_security import check_options  # imports kafka-python: only when needed

    roles: tuple[Literal["consumer", "producer", "admin"], ...] = ("consumer", "producer", "admin")
    for role in roles:
        check_options(role, getattr(k, f"{role}_options"), _option_label(label, prefix, role))


def _option_label(label: Label, prefix: str, role: str) -> Label:
    return lambda opt: label(f"{prefix}{role}_options.{opt}")


def _check_sasl(k: KafkaConfig, prefix: str, fail: Callable[[str, str, Any], None]) -> None:
    mech = k.sasl_mechanism
    if mech is None:
        mechs = "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER"
        fail(
            "sasl_mechanism",
            f"must be {mechs} when security_protocol is {k.security_protocol}",
            None,
        )
    if mech == "OAUTHBEARER":
        if k.sasl_oauth_token is None:
            fail("sasl_oauth_token", "must be set for OAUTHBEARER (usually {file: PATH})", None)
        for key in ("sasl_username", "sasl_password"):
            if getattr(k, key) is not None:
                fail(
                    key,
                    "is for PLAIN and SCRAM, not OAUTHBEARER (it would be ignored)",
                    getattr(k, key),
                )
        return
    if not k.sasl_username:
        fail("sasl_username", f"must be set for {mech}", k.sasl_username)
    if k.sasl_password is None:
        fail("sasl_password", f"must be set for {mech}", None)
    if k.sasl_oauth_token is not None:
        fail(
            "sasl_oauth_token",
            f"is for OAUTHBEARER, not {mech} (it would be ignored)",
            k.sasl_oauth_token,
        )


def _check_input(c: InputConfig, prefix: str, label: Label) -> None:
    """The event-time window is not empty; targets and covariates are distinct names."""
    from .times import parse_iso

    for name in ("features", "targets", "covariates"):
        names = getattr(c, name)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(
                f"{label(prefix + name)}: names must be distinct, got {dup[0]!r} twice"
            )
    targets = c.targets or c.features
    if c.targets and c.features and c.targets != c.features:
        raise ConfigError(
            f"{label(prefix + 'targets')}: must equal {prefix}features when both are set, "
            f"got {list(c.targets)} and {list(c.features)}"
        )
    both = [n for n in c.covariates if n in targets]
    if both:
        raise ConfigError(
            f"{label(prefix + 'covariates')}: {both[0]!r} is also a target; a field is one or the other"
        )

    if parse_iso(c.max_event_time) <= parse_iso(c.min_event_time):
        raise ConfigError(
            f"{label(prefix + 'max_event_time')}: must be after {prefix}min_event_time "
            f"({c.min_event_time}), got {c.max_event_time!r}"
        )


_SECTION_CHECKS: dict[type, Callable[[Any, str, Label], None]] = {
    KafkaConfig: _check_kafka,
    InputConfig: _check_input,
}


def set_dotted(raw: dict[str, Any], dotted: str, value: Any, *, merge: bool = False) -> None:
    parts = dotted.split(".")
    node = raw
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = {}
            node[p] = child
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {p} is not a section, got {child!r}")
        node = child
    old = node.get(parts[-1])
    if merge and isinstance(old, dict) and isinstance(value, dict):
        node[parts[-1]] = {**old, **value}
    else:
        node[parts[-1]] = value


class YamlLoader(yaml.SafeLoader):
    """YAML's safe loader, reading ``1e-4`` as the number it looks like (YAML 1.1 needs ``1.0e-4``)."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    """Parse YAML text with :class:`YamlLoader`."""
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file: must exist, got {str(p)!r}")
    try:
        raw = parse_yaml(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file: must be valid YAML, got {str(p)!r} ({e})") from e
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config: must be a mapping at the top level, got {raw!r}")
    return raw


def load_config(
    source: str | Path | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    cls: type = Config,
    environ: Mapping[str, str] | None = None,
) -> Any:
    """Load and validate a config.

    ``source`` is a YAML path, an already-parsed mapping, or None for the defaults.
    ``overrides`` maps dotted keys (``"model.cell"``) to values and wins over the file: this is
    how CLI flags override config keys. ``None`` values in ``overrides`` are ignored.
    ``environ`` (``os.environ`` in the commands; None reads no variables) sits between the two.
    :func:`streamrnn.configsources.resolve_config` also tells where each value came from.
    """
    from .configsources import resolve_config

    return resolve_config(source, overrides, environ, cls).config


def read_source(source: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    """The raw mapping of a YAML path, a mapping (copied) or None."""
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return _deep_copy(source)
    return read_yaml(source)


def _deep_copy(m: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in m.items()}


# ---------------------------------------------------------------------------------------------
# Printing


def dump_config(cfg: Any, sources: Mapping[str, str] | None = None) -> str:
    """The config as YAML, secrets masked; with ``sources``, each value says where it came from
    (:func:`streamrnn.configsources.dump_annotated`)."""
    if sources is None:
        return yaml.safe_dump(to_plain(dataclasses.asdict(cfg)), sort_keys=False)
    from .configsources import dump_annotated

    return dump_annotated(cfg, sources)
