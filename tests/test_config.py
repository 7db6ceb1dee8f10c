"""Config: defaults, overrides, and every kind of error message (key, rule, value)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamrnn.cli import main
from streamrnn.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_default_yaml_documents_exactly_the_defaults() -> None:
    assert load_config(ROOT / "config" / "default.yaml") == Config()


def test_overrides_win_and_none_is_ignored(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  cell: gru\n  hidden_size: 32\n")
    cfg = load_config(f, overrides={"model.hidden_size": 16, "model.num_layers": None})
    assert (cfg.model.cell, cfg.model.hidden_size, cfg.model.num_layers) == ("gru", 16, 2)


def test_config_is_frozen() -> None:
    cfg = load_config(None)
    with pytest.raises(AttributeError):
        cfg.model.cell = "gru"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("model:\n  hidden_size: 0\n", "model.hidden_size: must be an integer >= 1, got 0"),
        ("model:\n  hidden_size: 1.5\n", "model.hidden_size: must be an integer, got 1.5"),
        ("model:\n  cell: rnn\n", "model.cell: must be one of 'lstm', 'gru', got 'rnn'"),
        ("model:\n  dropout: 1.0\n", "model.dropout: must be in [0, 1), got 1.0"),
        ("model:\n  calendar: 'yes'\n", "model.calendar: must be true or false, got 'yes'"),
        ("model:\n  hiden_size: 8\n", "model.hiden_size: unknown key (known: "),
        ("modle:\n  cell: gru\n", "modle: unknown key (known: "),
        ("model: 3\n", "model: must be a mapping, got 3"),
        (
            "scoring:\n  false_alert_rate: 1.5\n",
            "scoring.false_alert_rate: must be in (0, 1), got 1.5",
        ),
        (
            "scoring:\n  threshold: 0.8\n",
            "scoring.threshold: replaced by scoring.false_alert_rate (flags per event per key",
        ),
        ("scoring:\n  range_score: 0.99\n", "scoring.range_score: removed: the range check"),
        ("scoring:\n  warmup: -1\n", "scoring.warmup: must be an integer >= 0, got -1"),
        ("training:\n  learning_rate: 0\n", "training.learning_rate: must be in (0, 1), got 0"),
        ("training:\n  window: 1\n", "training.window: must be an integer >= 2, got 1"),
        ("state:\n  device: tpu\n", "state.device: must be auto, cpu, cuda or cuda:N, got 'tpu'"),
        ("state:\n  max_keys: 0\n", "state.max_keys: must be an integer >= 1, got 0"),
        (
            "input:\n  late_events: keep\n",
            "input.late_events: must be one of 'score', 'drop', got 'keep'",
        ),
        ("input:\n  features: 3\n", "input.features: must be a list of strings, got 3"),
        ("- a\n- b\n", "config: must be a mapping at the top level, got ['a', 'b']"),
        ("model: [\n", "config file: must be valid YAML"),
    ],
)
def test_error_names_key_rule_and_value(tmp_path: Path, yaml_text: str, message: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert message in str(err.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file: must exist, got '/nonexistent.yaml'"):
        load_config("/nonexistent.yaml")


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("model:\n  cell: gru\n")
    assert main(["check-config", str(good)]) == 0
    assert "cell: gru" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("scoring:\n  cooldown: -5\n")
    assert main(["check-config", str(bad)]) == 2
    assert "scoring.cooldown: must be an integer >= 0, got -5" in capsys.readouterr().err


def test_a_false_alert_rate_in_exponent_notation_is_a_number(tmp_path: Path) -> None:
    """YAML 1.1 reads ``1e-4`` as text; the config reads it as the number it looks like."""
    f = tmp_path / "c.yaml"
    f.write_text("scoring:\n  false_alert_rate: 1e-4\n")
    sc = load_config(f).scoring
    assert sc.false_alert_rate == 1e-4
    assert sc.evidence_threshold == pytest.approx(4.0)
    assert sc.threshold == pytest.approx(0.5)  # the score at which a key is flagged
