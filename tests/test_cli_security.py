"""The command lines' security settings without a broker: the flags of run, produce and demo,
their precedence over the environment, check-config's masking and sources, and the errors a
command stops with before it connects."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from streamrnn.cli import main
from streamrnn.cli import run as run_cmd
from streamrnn.config import Secret, load_config

PASSWORD = "cli-Sasl-Pa55w0rd-5e1a"
OTHER_PASSWORD = "env-Sasl-Pa55w0rd-c41d"


def sasl_file(tmp_path: Path) -> Path:
    raw = {"service": {"kafka": {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                                 "sasl_username": "detector", "sasl_password": PASSWORD}}}  # fmt: skip
    path = tmp_path / "service.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_check_config_masks_the_password_and_names_its_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = sasl_file(tmp_path)  # the password inline: the worst case
    monkeypatch.delenv("STREAMRNN_SERVICE__KAFKA__SASL_PASSWORD", raising=False)
    assert main(["check-config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "    sasl_password: '***'  # file\n" in out
    assert "    sasl_username: detector  # file\n" in out
    assert "    ssl_check_hostname: true  # default\n" in out
    monkeypatch.setenv("STREAMRNN_SERVICE__KAFKA__SASL_PASSWORD", OTHER_PASSWORD)
    assert main(["check-config", str(config)]) == 0
    out += capsys.readouterr().out
    assert "    sasl_password: '***'  # env STREAMRNN_SERVICE__KAFKA__SASL_PASSWORD\n" in out
    monkeypatch.setenv("STREAMRNN_SERVICE__KAFKA__SASL_PASSWORD__FILE", "/run/secrets/pw")
    monkeypatch.delenv("STREAMRNN_SERVICE__KAFKA__SASL_PASSWORD")
    assert main(["check-config", str(config)]) == 0
    out += capsys.readouterr().out
    assert (
        "    sasl_password: {file: /run/secrets/pw}  # env "
        "STREAMRNN_SERVICE__KAFKA__SASL_PASSWORD__FILE\n" in out
    )
    assert PASSWORD not in out and OTHER_PASSWORD not in out
    assert main(["check-config", "--no-env", str(config)]) == 0
    assert "    sasl_password: '***'  # file\n" in capsys.readouterr().out


def test_check_config_error_names_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMRNN_SERVICE__KAFKA__SECURITY_PROTOCOL", "TLS")
    assert main(["check-config"]) == 2
    assert capsys.readouterr().err == (
        "error: service.kafka.security_protocol (environment variable "
        "STREAMRNN_SERVICE__KAFKA__SECURITY_PROTOCOL): must be one of 'PLAINTEXT', 'SSL', "
        "'SASL_PLAINTEXT', 'SASL_SSL', got 'TLS'\n"
    )


def run_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    run_cmd.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_run_flags_win_over_the_environment_and_the_file(tmp_path: Path) -> None:
    config = sasl_file(tmp_path)
    args = run_args("--config", str(config), "--sasl-username", "from-flag",
                    "--sasl-password-file", "/run/pw", "--ssl-cafile", "/etc/ca.pem",
                    "--metrics-web-config", "/etc/web.yml")  # fmt: skip
    env = {"STREAMRNN_SERVICE__KAFKA__SASL_USERNAME": "from-env",
           "STREAMRNN_SERVICE__KAFKA__SASL_MECHANISM": "PLAIN"}  # fmt: skip
    cfg = load_config(args.config, overrides=run_cmd.overrides_from(args), environ=env)
    k = cfg.service.kafka
    assert (k.sasl_username, k.sasl_mechanism, k.security_protocol) == (
        "from-flag",
        "PLAIN",
        "SASL_SSL",
    )
    assert k.sasl_password == Secret(file="/run/pw") and k.ssl_cafile == "/etc/ca.pem"
    assert cfg.service.metrics_web_config == "/etc/web.yml"
    # Flags not given leave the file's values.
    cfg = load_config(args.config, overrides=run_cmd.overrides_from(run_args()), environ={})
    assert cfg.service.kafka.sasl_password == Secret(PASSWORD)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--security-protocol", "SSL", "--ssl-cafile", "/nonexistent/ca.pem"],
         "error: service.kafka.ssl_cafile: must be a PEM file of CA certificates (No such file or directory), got '/nonexistent/ca.pem'\n"),
        (["--security-protocol", "SASL_SSL", "--sasl-mechanism", "PLAIN", "--sasl-username", "u",
          "--sasl-password-file", "/nonexistent/pw"],
         "error: service.kafka.sasl_password: file '/nonexistent/pw' must be readable UTF-8 text ([Errno 2] No such file or directory: '/nonexistent/pw'), got Secret({'file': '/nonexistent/pw'})\n"),
        (["--security-protocol", "SASL_SSL", "--sasl-username", "u"],
         "error: service.kafka.sasl_mechanism: must be PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER when security_protocol is SASL_SSL, got None\n"),
        (["--ssl-cafile", "/etc/ca.pem"],
         "error: service.kafka.ssl_cafile: needs security_protocol SSL or SASL_SSL, not PLAINTEXT (it would be ignored), got '/etc/ca.pem'\n"),
    ],
)  # fmt: skip
def test_produce_stops_before_connecting(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """No broker listens on port 1: each of these is found before a connection is tried."""
    rc = main(["produce", "--bootstrap-servers", "127.0.0.1:1", "--topic", "t", "--synthetic",
               "sensor", "--steps", "3", *argv])  # fmt: skip
    assert (rc, capsys.readouterr().err) == (2, message)


def test_produce_takes_the_connection_from_a_service_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--config gives the servers and service.kafka; a variable wins over it, as in run."""
    raw = {"service": {"bootstrap_servers": ["127.0.0.1:1"],
                       "kafka": {"security_protocol": "SSL", "ssl_cafile": "/nonexistent/a.pem"}}}  # fmt: skip
    path = tmp_path / "service.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("STREAMRNN_SERVICE__KAFKA__SSL_CAFILE", "/nonexistent/b.pem")
    assert main(["produce", "--config", str(path), "--synthetic", "sensor", "--steps", "3"]) == 2
    assert capsys.readouterr().err == (
        "error: service.kafka.ssl_cafile: must be a PEM file of CA certificates (No such file or "
        "directory), got '/nonexistent/b.pem'\n"
    )


def test_demo_security_flags_need_an_external_broker(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--security-protocol", "SSL"]) == 2
    assert capsys.readouterr().err == (
        "error: --security-protocol: needs --bootstrap-servers (the embedded broker speaks "
        "PLAINTEXT only), got --security-protocol without it\n"
    )
    assert main(["demo", "--config", "service.yaml"]) == 2
    assert capsys.readouterr().err.startswith("error: --config: needs --bootstrap-servers")


def test_help_lists_the_security_flags(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("run", "produce", "demo"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert "Kafka security" in out and "--sasl-password-file" in out, command
        assert "--sasl-password " not in out  # a password is never a flag's value
