"""``streamrnn alerts list`` and ``streamrnn explain`` on the embedded broker and on a replayed
file: selection by key and time, deduplication, the active rule, the printed window and the PNG.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from alerttools import alert_message, iso
from servicetools import model_dir, produce

from streamrnn.cli import main
from streamrnn.times import iso_utc

pytestmark = pytest.mark.kafka


@pytest.fixture
def alerts_topic(kafka_broker, topic_name: str) -> tuple[str, str, float]:
    """A topic of alerts: a (3 h old), b (30 and 20 min old, one published twice), c (10 s)."""
    from streamrnn.tools.broker import create_topics

    create_topics(kafka_broker.bootstrap_servers, {topic_name: 2})
    now = time.time()
    msgs = [
        (b"a", alert_message("a", 1, now - 3 * 3600)),
        (b"b", alert_message("b", 2, now - 1800, score=0.91)),
        (b"b", alert_message("b", 3, now - 1200, score=0.97)),
        (b"b", alert_message("b", 3, now - 1200, score=0.97)),  # re-published after a restart
        (b"c", alert_message("c-1", 4, now - 10)),
        (b"x", b"not an alert"),
    ]
    produce(kafka_broker.bootstrap_servers, topic_name, msgs)
    return kafka_broker.bootstrap_servers, topic_name, now


def test_alerts_list_selects_dedupes_and_summarizes(
    alerts_topic: tuple[str, str, float], capsys: pytest.CaptureFixture[str]
) -> None:
    servers, topic, _ = alerts_topic
    rc = main(["alerts", "list", "--bootstrap-servers", servers, "--topic", topic, "--since", "1h"])
    out, err = capsys.readouterr()
    assert rc == 0
    lines = out.splitlines()
    rows = [ln for ln in lines if ln.startswith("20") and "readings/" in ln]
    assert [r.split()[1] for r in rows] == ["b", "b", "c-1"]  # a is too old; b/3 once
    assert "readings/0/3" in rows[1] and "0.9700" in rows[1]
    assert "3 alert(s) of 2 key(s); 2 active (latest alert less than 3600 s old)" in out
    summary = [ln.split() for ln in lines if ln.startswith(("b ", "c-1 "))]
    assert [(s[0], s[1], s[-1]) for s in summary] == [("c-1", "1", "yes"), ("b", "2", "yes")]
    assert "1 message(s) of" in err and "are not alerts" in err


def test_alerts_list_by_key_pattern_active_rule_and_json(
    alerts_topic: tuple[str, str, float], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    servers, topic, now = alerts_topic
    config = tmp_path / "c.yaml"
    config.write_text(
        f"service:\n  bootstrap_servers: [{servers}]\n  alerts_topic: {topic}\n"
        "alerts:\n  resolve_timeout_s: 600\n"
    )
    assert main(["alerts", "list", "--config", str(config), "--since", "4h", "--active"]) == 0
    out = capsys.readouterr().out
    assert "c-1" in out and " b " not in out and "1 active" in out

    argv = ["list", "--config", str(config), "--since", "4h", "--key", "b", "--key", "c*", "--json"]
    assert main(["alerts", *argv]) == 0
    got = [orjson.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [(m["key"], m["source"]["offset"]) for m in got] == [("b", 2), ("b", 3), ("c-1", 4)]

    until = iso(now - 1500)
    argv = ["list", "--config", str(config), "--since", "4h", "--until", until, "--json"]
    assert main(["alerts", *argv]) == 0
    got = [orjson.loads(ln)["key"] for ln in capsys.readouterr().out.splitlines()]
    assert got == ["a", "b"]


def test_alerts_list_errors(kafka_broker, capsys: pytest.CaptureFixture[str]) -> None:
    servers = kafka_broker.bootstrap_servers
    argv = [
        "list",
        "--bootstrap-servers",
        servers,
        "--topic",
        "no-such-topic-x1",
        "--timeout",
        "10",
    ]
    assert main(["alerts", *argv]) == 1
    assert "topic 'no-such-topic-x1' does not exist" in capsys.readouterr().err
    assert main(["alerts", "list", "--since", "yesterday"]) == 2
    assert "must be a duration (90s, 15m, 6h, 2d, 1w), ISO 8601 time" in capsys.readouterr().err


def score_messages(key: str, n: int, spike: int, t0: float) -> list[tuple[bytes, bytes]]:
    """Score messages of ``key``: a sine with expected value and scale, one flagged spike."""
    out = []
    for i in range(n):
        expected = 10 + np.sin(i / 5)
        value = expected + (8.0 if i == spike else 0.1 * np.cos(i))
        score = 0.99 if i == spike else 0.1
        msg = alert_message(
            key, i, t0 + 60 * i, value=float(value), expected=float(expected), score=score
        )
        body = {**orjson.loads(msg), "flag": i == spike, "scale": 0.5}
        out.append((key.encode(), orjson.dumps(body)))
    return out


def png_size(path: Path) -> tuple[int, int]:
    import matplotlib.image

    image = matplotlib.image.imread(path)
    return image.shape[1], image.shape[0]


def test_explain_from_the_scores_topic_prints_and_plots(
    kafka_broker, topic_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamrnn.tools.broker import create_topics

    servers = kafka_broker.bootstrap_servers
    create_topics(servers, {topic_name: 3})
    t0 = time.time() - 3600
    produce(
        servers, topic_name, score_messages("m-1", 50, 30, t0) + score_messages("m-2", 50, 5, t0)
    )
    png = tmp_path / "m-1.png"
    argv = ["m-1", "--bootstrap-servers", servers, "--topic", topic_name, "--since", "2h"]
    rc = main(["explain", *argv, "--before", "10", "--after", "5", "--plot", str(png)])
    out = capsys.readouterr().out
    assert rc == 0
    head = out.splitlines()[0]
    assert head.startswith(f"m-1: alert at {iso_utc(t0 + 60 * 30)} (topic {topic_name})")
    expected = 10 + np.sin(30 / 5)
    assert f"expected {expected:.4g} (band {expected - 1:.4g} .. {expected + 1:.4g})" in head
    rows = [ln for ln in out.splitlines() if ln.startswith("20")]
    assert len(rows) == 16  # 10 before, the alert, 5 after
    assert rows[10].endswith("ALERT <") and sum("ALERT" in r for r in rows) == 1
    assert png_size(png) == (1260, 540)


def test_explain_replays_a_file_and_draws_the_alert(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamrnn.tools import synth

    (s,) = synth.generate("sensor", 1, 400, interval_s=300, seed=11, anomalies=(), key_prefix="m")
    values = s.values.copy()
    values[300] += 40 * s.scale
    csv = tmp_path / "meter-9.csv"
    lines = ["timestamp,value"] + [
        f"{iso(t)},{v:.6f}" for t, v in zip(s.epoch_seconds, values, strict=True)
    ]
    csv.write_text("\n".join(lines) + "\n")
    config = tmp_path / "c.yaml"
    config.write_text("scoring:\n  warmup: 30\nstate:\n  device: cpu\n")
    png = tmp_path / "explain.png"
    argv = ["meter-9", "--model", str(model_dir()), "--data", str(csv), "--config", str(config)]
    assert main(["explain", *argv, "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        f"meter-9: alert at {iso_utc(s.epoch_seconds[300])} (replay of meter-9.csv"
    )
    assert f"plot: {png}" in out
    assert png_size(png) == (1260, 540)
    assert main(["explain", "nobody", "--model", str(model_dir()), "--data", str(csv)]) == 2
    assert "key: must be a key of --data (meter-9), got 'nobody'" in capsys.readouterr().err
