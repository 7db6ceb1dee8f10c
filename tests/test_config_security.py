"""service.kafka and secrets in the config: every error message, masking, sources, environment.

Unit tests: no broker. The connections themselves are in tests/test_kafka_security.py.
"""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import pytest
import yaml

from streamrnn.config import (
    MASK,
    Config,
    ConfigError,
    KafkaConfig,
    Secret,
    SecretError,
    dump_config,
    load_config,
)
from streamrnn.configsources import resolve_config
from streamrnn.service.kafka_security import client_options, reveal

PASSWORD = "s3cr3t-Pa55w0rd"
SASL = {
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_username": "alice",
    "sasl_password": PASSWORD,
}


def kafka(**keys: object) -> Config:
    return load_config({"service": {"kafka": keys}})


# ---------------------------------------------------------------------------------------------
# Secret


def test_secret_never_shows_its_value() -> None:
    s = Secret(PASSWORD)
    for text in (repr(s), str(s), f"{s}", f"{s!r}", repr([s]), repr({"p": s})):
        assert PASSWORD not in text
        assert MASK in text
    assert s.reveal() == PASSWORD
    assert pickle.loads(pickle.dumps(s)).reveal() == PASSWORD
    assert Secret(PASSWORD) == s and Secret("other") != s and Secret(env="X") != s


def test_secret_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_PW", PASSWORD)
    assert Secret(env="KAFKA_PW").reveal() == PASSWORD
    f = tmp_path / "pw"
    f.write_text(PASSWORD + "\n")  # `echo` and most editors end the file with a newline
    assert Secret(file=str(f)).reveal() == PASSWORD
    assert repr(Secret(file=str(f))) == f"Secret({{'file': '{f}'}})"


def test_secret_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("first")
    s = Secret(file=str(f))
    assert s.reveal() == "first"
    new = tmp_path / "token.new"
    new.write_text("second")
    os.replace(new, f)  # how Kubernetes swaps a projected token: a new inode
    assert s.reveal() == "second"
    f.write_text("third!")
    assert s.reveal() == "third!"


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        (Secret(env="STREAMRNN_TEST_UNSET_VARIABLE"), "environment variable STREAMRNN_TEST_UNSET_VARIABLE must be set and not empty"),
        (Secret(file="/nonexistent/pw"), "file '/nonexistent/pw' must be readable UTF-8 text"),
    ],
)  # fmt: skip
def test_secret_errors(secret: Secret, message: str) -> None:
    with pytest.raises(SecretError, match=message):
        secret.reveal()


def test_empty_secret_file(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("\n")
    with pytest.raises(SecretError, match="must not be empty"):
        Secret(file=str(f)).reveal()


def test_reveal_names_the_key_and_refuses_the_mask() -> None:
    with pytest.raises(ConfigError) as err:
        reveal(Secret(env="STREAMRNN_TEST_UNSET_VARIABLE"), "service.kafka.sasl_password")
    assert str(err.value).startswith("service.kafka.sasl_password: environment variable")
    with pytest.raises(ConfigError, match="is '\\*\\*\\*', the mask streamrnn prints"):
        reveal(Secret(MASK), "service.kafka.sasl_password")


# ---------------------------------------------------------------------------------------------
# service.kafka: forms, masking and every rule


def test_secret_forms_in_yaml(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    cfg = kafka(**{**SASL, "sasl_password": {"file": str(pw)}})
    assert cfg.service.kafka.sasl_password == Secret(file=str(pw))
    cfg = kafka(**{**SASL, "sasl_password": {"env": "KAFKA_PW"}})
    assert cfg.service.kafka.sasl_password == Secret(env="KAFKA_PW")
    assert kafka(**SASL).service.kafka.sasl_password.reveal() == PASSWORD


def test_dump_masks_secrets_and_keeps_references() -> None:
    cfg = kafka(**SASL, ssl_certfile="c.pem", ssl_password={"env": "KEY_PW"})
    text = dump_config(cfg)
    assert PASSWORD not in text
    dumped = yaml.safe_load(text)["service"]["kafka"]
    assert dumped["sasl_password"] == MASK
    assert dumped["ssl_password"] == {"env": "KEY_PW"}
    assert PASSWORD not in repr(cfg) and PASSWORD not in str(cfg.to_dict())


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"security_protocol": "TLS"}, "service.kafka.security_protocol: must be one of 'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT', 'SASL_SSL', got 'TLS'"),
        ({"ssl_cafile": "ca.pem"}, "service.kafka.ssl_cafile: needs security_protocol SSL or SASL_SSL, not PLAINTEXT (it would be ignored), got 'ca.pem'"),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "a", "sasl_password": "p", "ssl_certfile": "c.pem"}, "service.kafka.ssl_certfile: needs security_protocol SSL or SASL_SSL, not SASL_PLAINTEXT"),
        ({"ssl_check_hostname": False}, "service.kafka.ssl_check_hostname: needs security_protocol SSL or SASL_SSL, not PLAINTEXT, got False"),
        ({"security_protocol": "SSL", "ssl_keyfile": "k.pem"}, "service.kafka.ssl_keyfile: needs ssl_certfile (the client certificate) as well, got 'k.pem'"),
        ({"security_protocol": "SSL", "ssl_password": PASSWORD}, "service.kafka.ssl_password: needs ssl_certfile (the client certificate) as well, got Secret('***')"),
        ({"security_protocol": "SSL", "sasl_username": "alice"}, "service.kafka.sasl_username: needs security_protocol SASL_PLAINTEXT or SASL_SSL, not SSL (it would be ignored), got 'alice'"),
        ({"security_protocol": "SASL_SSL"}, "service.kafka.sasl_mechanism: must be PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER when security_protocol is SASL_SSL, got None"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"}, "service.kafka.sasl_mechanism: must be one of 'PLAIN', 'SCRAM-SHA-256', 'SCRAM-SHA-512', 'OAUTHBEARER' or null, got 'GSSAPI'"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_password": "p"}, "service.kafka.sasl_username: must be set for PLAIN, got None"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "a"}, "service.kafka.sasl_password: must be set for SCRAM-SHA-512, got None"),
        ({**SASL, "sasl_oauth_token": "t"}, "service.kafka.sasl_oauth_token: is for OAUTHBEARER, not SCRAM-SHA-512 (it would be ignored), got Secret('***')"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"}, "service.kafka.sasl_oauth_token: must be set for OAUTHBEARER (usually {file: PATH}), got None"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER", "sasl_oauth_token": {"file": "t"}, "sasl_password": PASSWORD}, "service.kafka.sasl_password: is for PLAIN and SCRAM, not OAUTHBEARER (it would be ignored), got Secret('***')"),
        ({**SASL, "sasl_password": 12345678}, "service.kafka.sasl_password: must be the secret as text, {env: NAME} or {file: PATH} or null, got a value of type int"),
        ({**SASL, "sasl_password": {"path": PASSWORD}}, "service.kafka.sasl_password: must be the secret as text, {env: NAME} or {file: PATH} or null, got a mapping with keys ['path']"),
        ({**SASL, "sasl_password": ""}, "got an empty string"),
        ({**SASL, "sasl_pasword": PASSWORD}, "service.kafka.sasl_pasword: unknown key (known: "),
        ({"consumer_options": [1]}, "service.kafka.consumer_options: must be a mapping of option names to values, got [1]"),
    ],
)  # fmt: skip
def test_kafka_rules(keys: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        kafka(**keys)
    assert message in str(err.value)
    assert PASSWORD not in str(err.value)


def test_every_protocol_and_mechanism_that_is_complete_loads() -> None:
    assert kafka().service.kafka == KafkaConfig()
    kafka(security_protocol="SSL", ssl_cafile="ca.pem", ssl_certfile="c.pem", ssl_keyfile="k.pem")
    for mech in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        kafka(**{**SASL, "sasl_mechanism": mech, "security_protocol": "SASL_PLAINTEXT"})
    kafka(
        security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER", sasl_oauth_token={"file": "t"}
    )


# ---------------------------------------------------------------------------------------------
# Pass-through options


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"consumer_options": {"fetch_min_byte": 1}}, "service.kafka.consumer_options.fetch_min_byte: must be an option of kafka-python's KafkaConsumer; did you mean 'fetch_min_bytes'?, got 1"),
        ({"producer_options": {"isolation_level": "read_committed"}}, "service.kafka.producer_options.isolation_level: must be an option of kafka-python's KafkaProducer"),
        ({"consumer_options": {"group_id": "x"}}, "service.kafka.consumer_options.group_id: cannot be passed through (set in service.group), got 'x'"),
        ({"consumer_options": {"enable_auto_commit": True}}, "cannot be passed through (streamrnn commits offsets only after their alerts are acknowledged)"),
        ({"producer_options": {"acks": 1}}, "service.kafka.producer_options.acks: cannot be passed through (streamrnn's producer needs acks=all"),
        ({"admin_options": {"sasl_plain_password": PASSWORD}}, "service.kafka.admin_options.sasl_plain_password: cannot be passed through (set in service.kafka.sasl_password), got ***"),
        ({"consumer_options": {"bootstrap_servers": "k:9092"}}, "cannot be passed through (set in service.bootstrap_servers)"),
        ({"consumer_options": {"value_deserializer": "json"}}, "service.kafka.consumer_options.value_deserializer: takes a Python object, which a config file cannot give, got 'json'"),
        ({"consumer_options": {"fetch_min_bytes": "1k"}}, "service.kafka.consumer_options.fetch_min_bytes: must be an integer (kafka-python's default is 1), got '1k'"),
        ({"consumer_options": {"check_crcs": "yes"}}, "must be true or false (kafka-python's default is True), got 'yes'"),
        ({"producer_options": {"retries": "forever"}}, "service.kafka.producer_options.retries: must be a number (kafka-python's default is unbounded), got 'forever'"),
    ],
)  # fmt: skip
def test_passthrough_rules(keys: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        kafka(**keys)
    assert message in str(err.value)
    assert PASSWORD not in str(err.value)


def test_passthrough_reaches_the_client_arguments() -> None:
    cfg = kafka(
        consumer_options={"fetch_min_bytes": 1024, "isolation_level": "read_committed"},
        producer_options={"compression_type": "gzip", "linger_ms": 20},
        admin_options={"api_version": [2, 8]},
    ).service.kafka
    consumer = client_options(cfg, "consumer")
    assert consumer == {"security_protocol": "PLAINTEXT", "fetch_min_bytes": 1024, "isolation_level": "read_committed"}  # fmt: skip
    assert client_options(cfg, "producer")["compression_type"] == "gzip"
    assert client_options(cfg, "admin")["api_version"] == (2, 8)


def test_client_options_carry_a_masked_password() -> None:
    cfg = kafka(**{**SASL, "security_protocol": "SASL_PLAINTEXT"}).service.kafka
    opts = client_options(cfg, "producer")
    assert opts["sasl_mechanism"] == "SCRAM-SHA-512" and opts["sasl_plain_username"] == "alice"
    assert opts["sasl_plain_password"] == PASSWORD  # the text kafka-python logs in with ...
    assert PASSWORD not in repr(opts)  # ... which its DEBUG dump of the options does not show
    assert PASSWORD.encode() in opts["sasl_plain_password"].encode()


# ---------------------------------------------------------------------------------------------
# The environment, its precedence and the sources


def test_precedence_flags_env_file_defaults(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        "service:\n  group: from-file\n  alerts_topic: file-alerts\n  dlq_topic: file-dlq\n"
    )
    env = {"STREAMRNN_SERVICE__GROUP": "from-env", "STREAMRNN_SERVICE__ALERTS_TOPIC": "env-alerts"}
    r = resolve_config(f, {"service.group": "from-flag"}, env)
    svc = r.config.service
    assert (svc.group, svc.alerts_topic, svc.dlq_topic, svc.scores_topic) == (
        "from-flag", "env-alerts", "file-dlq", None,
    )  # fmt: skip
    assert r.source("service.group") == "flag"
    assert r.source("service.alerts_topic") == "env STREAMRNN_SERVICE__ALERTS_TOPIC"
    assert r.source("service.dlq_topic") == "file"
    assert r.source("service.scores_topic") == "default"


def test_env_text_is_read_as_the_key_type(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    env = {
        "STREAMRNN_SERVICE__BOOTSTRAP_SERVERS": "k1:9093, k2:9093",
        "STREAMRNN_SERVICE__METRICS_PORT": "9200",
        "STREAMRNN_SERVICE__ENGINE_PROCESS": "false",
        "STREAMRNN_SCORING__FALSE_ALERT_RATE": "1e-3",  # a number as YAML 1.2 reads it
        "STREAMRNN_SERVICE__SCORES_TOPIC": "",
        "STREAMRNN_SERVICE__KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "STREAMRNN_SERVICE__KAFKA__SASL_MECHANISM": "PLAIN",
        "STREAMRNN_SERVICE__KAFKA__SASL_USERNAME": "007",
        "STREAMRNN_SERVICE__KAFKA__SASL_PASSWORD__FILE": str(pw),
        "STREAMRNN_SERVICE__KAFKA__CONSUMER_OPTIONS__FETCH_MIN_BYTES": "2048",
        "STREAMRNN_ALERTS__LABELS__SITE": "0042",  # a map of strings: the text as it is
        "STREAMRNN_TANSU": "/usr/local/bin/tansu",  # not a config variable
    }
    f = tmp_path / "c.yaml"
    f.write_text(
        "service:\n  scores_topic: s\n  kafka:\n    consumer_options: {check_crcs: false}\n"
    )
    r = resolve_config(f, None, env)
    svc = r.config.service
    assert svc.bootstrap_servers == ("k1:9093", "k2:9093")
    assert (svc.metrics_port, svc.engine_process, svc.scores_topic) == (9200, False, None)
    assert r.config.scoring.false_alert_rate == 1e-3
    assert svc.kafka.sasl_username == "007"  # a string key keeps its text
    assert svc.kafka.sasl_password == Secret(file=str(pw))
    assert svc.kafka.consumer_options == {"check_crcs": False, "fetch_min_bytes": 2048}
    assert r.source("service.kafka.consumer_options.fetch_min_bytes").startswith("env ")
    assert r.source("service.kafka.consumer_options.check_crcs") == "file"
    assert r.config.alerts.labels == {"site": "0042"}


def test_env_secret_is_taken_as_text() -> None:
    env = {f"STREAMRNN_SERVICE__KAFKA__{k.upper()}": v for k, v in SASL.items()}
    env["STREAMRNN_SERVICE__KAFKA__SASL_PASSWORD"] = "true"  # not YAML's boolean
    cfg = resolve_config(None, None, env).config
    assert cfg.service.kafka.sasl_password.reveal() == "true"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STREAMRNN_SERVICE__METRICS_PORT": "70000"}, "service.metrics_port (environment variable STREAMRNN_SERVICE__METRICS_PORT): must be a port in [0, 65535], got 70000"),
        ({"STREAMRNN_SERVICE__METRICS_PORT": "http"}, "service.metrics_port (environment variable STREAMRNN_SERVICE__METRICS_PORT): must be an integer, got 'http'"),
        ({"STREAMRNN_SERVICE__KAFKA__SASL_USERNAM": "a"}, "STREAMRNN_SERVICE__KAFKA__SASL_USERNAM: names service.kafka.sasl_usernam, an unknown key (known in service.kafka: "),
        ({"STREAMRNN_SERVCE__GROUP": "g"}, "STREAMRNN_SERVCE__GROUP: names servce, an unknown key (known in the config: adapt, alerts, features, input, model, scoring, service, state, training)"),
        ({"STREAMRNN_SERVICE_GROUP": "g"}, "STREAMRNN_SERVICE_GROUP: a config variable puts two underscores between levels (STREAMRNN_SECTION__KEY), got STREAMRNN_SERVICE_GROUP"),
        ({"STREAMRNN_SERVICE__KAFKA": "x"}, "STREAMRNN_SERVICE__KAFKA: names the section service.kafka, not a key (add __KEY)"),
        ({"STREAMRNN_SERVICE__GROUP__NAME": "x"}, "STREAMRNN_SERVICE__GROUP__NAME: service.group has no key name below it"),
        ({"STREAMRNN_SERVICE__KAFKA__SASL_USERNAME": "bob"}, "service.kafka.sasl_username (environment variable STREAMRNN_SERVICE__KAFKA__SASL_USERNAME): needs security_protocol SASL_PLAINTEXT or SASL_SSL, not PLAINTEXT"),
        ({"STREAMRNN_SERVICE__KAFKA__CONSUMER_OPTIONS__GROUP_ID": "x"}, "service.kafka.consumer_options.group_id (environment variable STREAMRNN_SERVICE__KAFKA__CONSUMER_OPTIONS__GROUP_ID): cannot be passed through"),
    ],
)  # fmt: skip
def test_env_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_config(None, None, env)
    assert message in str(err.value)


def test_env_is_read_only_when_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMRNN_MODEL__CELL", "gru")
    assert load_config(None).model.cell == "lstm"  # model directories never read the environment
    assert load_config(None, environ=os.environ).model.cell == "gru"


def test_dump_with_sources(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        "model:\n  cell: gru\nservice:\n  kafka:\n    consumer_options: {fetch_min_bytes: 8}\n"
    )
    env = {f"STREAMRNN_SERVICE__KAFKA__{k.upper()}": v for k, v in SASL.items()}
    r = resolve_config(f, {"service.group": "g"}, env)
    text = dump_config(r.config, r.sources)
    assert PASSWORD not in text
    lines = text.splitlines()
    assert "  cell: gru  # file" in lines
    assert "  hidden_size: 64  # default" in lines
    assert "  group: g  # flag" in lines
    assert "    sasl_password: '***'  # env STREAMRNN_SERVICE__KAFKA__SASL_PASSWORD" in lines
    assert "      fetch_min_bytes: 8  # file" in lines
    assert yaml.safe_load(text)["service"]["kafka"]["sasl_username"] == "alice"  # still YAML


def test_unknown_secretish_key_hides_its_value() -> None:
    with pytest.raises(ConfigError) as err:
        load_config({"service": {"kafka_password": PASSWORD}})
    assert PASSWORD not in str(err.value)
    assert "got a string of 15 characters" in str(err.value)


def test_token_file_is_read_at_every_login(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("token-1")
    cfg = kafka(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER",
                sasl_oauth_token={"file": str(token)}, ssl_check_hostname=False).service.kafka  # fmt: skip
    provider = client_options(cfg, "consumer")["sasl_oauth_token_provider"]
    assert provider.token() == "token-1"
    time.sleep(0.01)
    token.write_text("token-2")
    assert provider.token() == "token-2"
    assert "token-" not in repr(provider)
