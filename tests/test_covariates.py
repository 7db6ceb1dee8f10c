"""Covariates (issue 15): inputs that steer the forecast but are never scored.

A model without covariates scores exactly as before they existed (the shipped demo model against
figures recorded before the change); a covariate model reads its covariates beside its targets,
imputes and counts a missing one without flagging, keeps batch invariance, records its roles in
the model directory; a stream whose declared fields do not match the model is refused naming
the field. The slow tests train a small covariate model on weather-driven demand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from test_engine import run_in_batches
from test_service_codec import Rec

from streamrnn import demo_model
from streamrnn.config import ConfigError, InputConfig, load_config
from streamrnn.detector.engine import Engine, state_fields
from streamrnn.detector.model import Forecaster
from streamrnn.detector.modeldir import load_model, read_model_info, save_model
from streamrnn.service.decode import Decoder
from streamrnn.service.worker import feature_names_for
from streamrnn.tools.synth import generate

DATA = Path(__file__).parent / "data"


def _demo_scores() -> dict:
    """The demo model over three energy keys, 50 events a key per batch, every 37th missing."""
    loaded = load_model(demo_model.path())
    engine = Engine(loaded.model, loaded.config)
    s = generate("energy", 3, 400, seed=11, anomalies_per_key=2)
    keys = [x.key for x in s]
    times = s[0].epoch_seconds
    vals = np.stack([x.values for x in s], axis=1)  # (T, K)
    score: list[float] = []
    pred: list[float] = []
    flag: list[int] = []
    for t in range(0, 400, 50):
        v = vals[t : t + 50].reshape(-1, 1).copy()  # (150, 1)
        v[::37] = np.nan
        r = engine.process(keys * 50, np.repeat(times[t : t + 50], 3), v)
        score += r.score.tolist()
        pred += r.prediction[:, 0].tolist()
        flag += r.flag.astype(int).tolist()
    return {
        "version": loaded.version,
        "score": score,
        "prediction": pred,
        "flag": flag,
        "imputed": engine.imputed_total,
    }


def test_old_model_directory_scores_exactly_as_before_covariates() -> None:
    # tests/data/demo-model-scores.json was written by _demo_scores on the code before covariates.
    want = json.loads((DATA / "demo-model-scores.json").read_text())
    got = _demo_scores()
    assert got["version"] == want["version"]
    assert got["flag"] == want["flag"] and sum(got["flag"]) > 0
    assert got["imputed"] == want["imputed"] > 0
    np.testing.assert_array_equal(np.array(got["score"]), np.array(want["score"]))
    np.testing.assert_array_equal(np.array(got["prediction"]), np.array(want["prediction"]))


def test_old_model_directory_has_no_covariates_and_the_old_state_layout() -> None:
    info = read_model_info(demo_model.path())
    assert info.covariate_names == () and "covariate_names" not in info.info
    loaded = load_model(demo_model.path())
    assert loaded.model.n_covariates == 0
    fields = set(state_fields(loaded.model, loaded.config))
    assert not fields & {"cnorm", "clast", "zprev"}


def _cov_model(n_cov: int = 1, seed: int = 0) -> tuple[Forecaster, object]:
    cfg = load_config(None, overrides={"scoring.warmup": 20, "input.targets": ["demand"]})
    torch.manual_seed(seed)
    return Forecaster(cfg.model, n_values=1, n_extra=4, n_covariates=n_cov), cfg


def _cov_stream(n_keys: int = 4, n_steps: int = 240, seed: int = 0):
    rng = np.random.default_rng(seed)
    j = np.arange(n_steps)
    keys, times, values = [], [], []
    for t in j.tolist():
        for i in range(n_keys):
            temp = 15 + 8 * np.sin(2 * np.pi * t / 24) + rng.normal()
            scale = 10.0**i
            keys.append(f"meter-{i}")
            times.append(1.7e9 + 3600.0 * t)
            values.append(
                [scale * (3 + 0.1 * max(temp - 18, 0)) + 0.05 * scale * rng.normal(), temp]
            )
    return keys, np.array(times), np.array(values, dtype=np.float32)


def test_covariate_model_scores_targets_only_and_keeps_batch_invariance() -> None:
    model, cfg = _cov_model()
    keys, times, values = _cov_stream()
    values[333, 0] *= 5.0  # a demand spike, so flags and the no-learning path are exercised
    values[500, 1] = np.nan  # a missing covariate
    a = run_in_batches(Engine(model, cfg), keys, times, values, 1)
    b = run_in_batches(Engine(model, cfg), keys, times, values, 1000)
    c = run_in_batches(Engine(model, cfg), keys, times, values, 77)
    assert a.prediction.shape == (len(keys), 1) and a.scale.shape == (len(keys), 1)
    for r in (b, c):
        for name in vars(a):
            np.testing.assert_allclose(getattr(r, name), getattr(a, name), rtol=1e-5, atol=1e-5)
    assert a.flag.any()


def test_missing_covariates_are_imputed_and_counted_without_flagging() -> None:
    model, cfg = _cov_model()
    keys, times, values = _cov_stream()
    gone = values.copy()
    gone[400:, 1] = np.nan  # the temperature feed stops
    clean = run_in_batches(Engine(model, cfg), keys, times, values, 100)
    engine = Engine(model, cfg)
    r = run_in_batches(engine, keys, times, gone, 100)
    assert engine.imputed_total == len(keys) - 400
    assert not np.isnan(r.prediction[len(set(keys)) :]).any()
    assert r.flag.sum() <= clean.flag.sum()  # nothing flagged for the covariate's absence
    # The hidden state saw the key's last reading in its place, not NaN, so scores stay finite.
    assert np.isfinite(r.score).all()


def test_a_missing_target_is_imputed_and_an_event_without_targets_is_rejected() -> None:
    d = Decoder(InputConfig(), ("demand",), ("temp",))
    assert d.feature_names == ("demand", "temp") and d.n_targets == 1
    recs = [
        b'{"key": "m", "ts": 1700000000, "values": {"demand": 812.0, "temp": 31.5}}',
        b'{"key": "m", "ts": 1700003600, "values": {"demand": 790.0}}',
        b'{"key": "m", "ts": 1700007200, "values": {"temp": 30.0}}',
        b'{"key": "m", "ts": 1700010800, "values": [800.0, 29.0]}',
    ]
    records = []
    for i, raw in enumerate(recs):
        rec = Rec(raw)
        rec.offset = i
        records.append(rec)
    batch = d.decode(records)
    np.testing.assert_array_equal(batch.values[0], [812.0, 31.5])
    assert batch.values[1, 0] == 790.0 and np.isnan(batch.values[1, 1])
    np.testing.assert_array_equal(batch.values[2], [800.0, 29.0])
    assert [(r.reason, r.index) for r in batch.rejects] == [("wrong_shape", 2)]
    assert "names none of the model's targets (demand)" in batch.rejects[0].detail


def test_model_directory_records_targets_and_covariates(tmp_path: Path) -> None:
    model, cfg = _cov_model()
    cfg = load_config(None, overrides={"input.targets": ["demand"], "input.covariates": ["temp"]})
    save_model(
        tmp_path, model, cfg, feature_names=("demand",), covariate_names=("temp",),
        metrics={}, data_summary={},
    )  # fmt: skip
    info = json.loads((tmp_path / "model.json").read_text())
    assert info["feature_names"] == ["demand"] and info["covariate_names"] == ["temp"]
    loaded = load_model(tmp_path)
    assert loaded.covariate_names == ("temp",) and loaded.model.n_covariates == 1
    assert loaded.config.input.covariates == ("temp",)
    with pytest.raises(ValueError, match="covariate_names: the model takes 1 covariate"):
        save_model(tmp_path, model, cfg, feature_names=("demand",), metrics={}, data_summary={})


@pytest.mark.parametrize(
    ("inp", "message"),
    [
        (
            {"covariates": ("humidity",)},
            "input.covariates: 'humidity' is not a covariate of the model, which was trained with (temp)",
        ),
        ({"covariates": ("temp", "wind")}, "input.covariates: 'wind' is not a covariate"),
        (
            {"targets": ("load",)},
            "input.targets: 'load' is not a target of the model, which was trained with (demand)",
        ),
    ],
)
def test_a_stream_whose_fields_do_not_match_the_model_is_refused(inp: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        feature_names_for(InputConfig(**inp), ("demand",), ("temp",))


def test_covariates_the_model_lacks_or_misses_are_refused() -> None:
    with pytest.raises(
        ConfigError,
        match=r"'temp' is not a covariate of the model, which was trained with \(none\)",
    ):
        feature_names_for(InputConfig(covariates=("temp",)), ("demand",), ())
    with pytest.raises(ConfigError, match="trained with covariate 'wind', which is not named"):
        feature_names_for(InputConfig(covariates=("temp",)), ("demand",), ("temp", "wind"))
    # Empty means "the model's": a covariate model needs no declaration.
    assert feature_names_for(InputConfig(), ("demand",), ("temp",)) == ("demand",)


def test_config_rejects_a_field_that_is_both_target_and_covariate() -> None:
    with pytest.raises(ConfigError, match="input.covariates: 'demand' is also a target"):
        load_config({"input": {"targets": ["demand"], "covariates": ["demand"]}})
    with pytest.raises(ConfigError, match="input.covariates: names must be distinct"):
        load_config({"input": {"covariates": ["t", "t"]}})


# -- a trained covariate model on weather-driven demand -----------------------------------------

HOT = {"heatwave_days": (0.1, 0.2), "heatwave_c": 20.0, "lag_s": 360.0}


@pytest.fixture(scope="module")
def weather_model():
    """A small forecaster trained on 8 keys of demand driven by temperature (sharp hot spells)."""
    from streamrnn.offline.data import Series
    from streamrnn.offline.training import train
    from streamrnn.times import datetime64_texts
    from streamrnn.tools.synth import weather_demand

    series = [
        Series(
            s.key,
            f"{s.key}.csv",
            list(datetime64_texts(s.timestamps)),
            s.epoch_seconds,
            np.stack([s.demand, s.temp], axis=1).astype(np.float32),
            ("demand", "temp"),
        )  # fmt: skip
        for s in weather_demand(8, 24 * 45, seed=5, heatwaves_per_key=12, **HOT)
    ]
    cfg = load_config(
        {
            "model": {"hidden_size": 24, "num_layers": 1, "dropout": 0.0},
            "training": {"epochs": 60, "window": 96, "stride": 48},
            "input": {"covariates": ["temp"]},
        }
    )
    result = train(series, cfg, device="cpu", progress=False)
    assert result.feature_names == ("demand",) and result.covariate_names == ("temp",)
    return result


@pytest.fixture(scope="module")
def weather_dir(weather_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``weather_model`` as a model directory."""
    out = tmp_path_factory.mktemp("weather") / "model"
    r = weather_model
    save_model(
        out, r.model, r.config, feature_names=r.feature_names,
        covariate_names=r.covariate_names, metrics={}, data_summary={},
    )  # fmt: skip
    return out


def _write_csv(path: Path, header: str, timestamps: np.ndarray, *columns: np.ndarray) -> None:
    """A CSV of ``timestamp`` and the columns (NaN as an empty cell)."""
    from streamrnn.times import datetime64_texts

    with path.open("w") as fh:
        fh.write(header + "\n")
        for ts, *row in zip(datetime64_texts(timestamps), *columns, strict=True):
            cells = ["" if np.isnan(x) else repr(float(x)) for x in row]
            fh.write(",".join([ts, *cells]) + "\n")


def _stream(result, keys, demand: list[np.ndarray], temp: list[np.ndarray]):
    """Every key one event per batch, as the service sees them; flags and scores (T, K)."""
    engine = Engine(result.model, result.config)
    names = [s.key for s in keys]
    times = keys[0].epoch_seconds
    d, t = np.stack(demand, axis=1), np.stack(temp, axis=1)  # (T, K)
    flags = np.zeros(d.shape, dtype=bool)
    scores = np.zeros(d.shape)
    for i in range(len(times)):
        r = engine.process(names, np.full(len(keys), times[i]), np.stack([d[i], t[i]], axis=1))
        flags[i] = r.flag
        scores[i] = r.score
    return flags, scores, engine


@pytest.mark.slow
def test_a_demand_spike_explained_by_temperature_is_not_flagged_and_is_without_it(
    weather_model,
) -> None:
    from streamrnn.tools.synth import weather_demand

    keys = weather_demand(4, 24 * 30, seed=77, heatwaves_per_key=2, **HOT)
    demand = [s.demand for s in keys]
    explained, _, _ = _stream(weather_model, keys, demand, [s.temp for s in keys])
    flat, _, _ = _stream(weather_model, keys, demand, [s.without_heatwaves() for s in keys])
    for k, s in enumerate(keys):
        hot = np.zeros(len(s), dtype=bool)
        for lo, hi in s.heatwaves:
            hot[lo:hi] = True
        assert not explained[hot, k].any(), f"{s.key}: flagged a spike the temperature explains"
        assert flat[hot, k].any(), f"{s.key}: the same spike, temperature flat, not flagged"
    assert not explained.any()


@pytest.mark.slow
def test_a_covariate_spike_alone_is_not_flagged(weather_model) -> None:
    from streamrnn.tools.synth import weather_demand

    keys = weather_demand(4, 24 * 30, seed=78, heatwaves_per_key=0, **HOT)
    temps = []
    for s in keys:
        t = s.temp.copy()
        t[400] += 25.0  # one absurd reading: a sensor glitch, demand does not move
        t[550:553] -= 30.0  # and a short cold one
        temps.append(t)
    flags, _, engine = _stream(weather_model, keys, [s.demand for s in keys], temps)
    assert not flags.any()
    assert engine.imputed_total == 0  # within the outlier factor: read, normalised, not scored


@pytest.mark.slow
def test_replay_with_covariates_agrees_with_live_event_by_event(
    weather_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import csv

    from streamrnn.cli import main
    from streamrnn.tools.synth import weather_demand

    model_dir = weather_dir
    keys = weather_demand(3, 24 * 20, seed=79, heatwaves_per_key=1, **HOT)
    data = tmp_path / "data"
    data.mkdir()
    temps = []
    for s in keys:
        t = s.temp.copy()
        t[100:110] = np.nan  # the feed drops out for a while
        temps.append(t)
        _write_csv(data / f"{s.key}.csv", "timestamp,temp_c,load", s.timestamps, t, s.demand)
    out = tmp_path / "out"
    argv = ["replay", "--model", str(model_dir), "--data", str(data), "--out", str(out)]
    roles = ["--target-columns", "load", "--covariate-columns", "temp_c", "--batch-size", "50"]
    assert main([*argv, *roles]) == 0
    live, scores, engine = _stream(
        load_model(model_dir), keys, [s.demand.astype(np.float32) for s in keys], temps
    )
    assert engine.imputed_total == 30
    for k, s in enumerate(keys):
        with (out / f"{s.key}.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        assert "prediction" in rows[0] and "prediction_temp_c" not in rows[0]
        assert [int(r["is_anomaly"]) for r in rows] == live[:, k].astype(int).tolist()
        got = np.array([float(r["score"]) for r in rows])
        np.testing.assert_allclose(got, scores[:, k], atol=2e-6)
        assert got.max() > 0
    # The counts must match the model's roles; the flag is named.
    assert main([*argv, "--covariate-columns", "temp_c,load"]) == 2
    assert "--covariate-columns: the model takes 1 covariates (temp)" in capsys.readouterr().err


def test_produce_csv_sends_targets_and_covariates_in_values(tmp_path: Path) -> None:
    import argparse

    from streamrnn.cli import produce as produce_cli

    (tmp_path / "site-3.csv").write_text(
        "timestamp,humidity,temp,demand\n"
        "2026-07-14 15:00:00,40,31.5,812.0\n"
        "2026-07-14 16:00:00,41,,790.0\n"
    )
    parser = argparse.ArgumentParser()
    produce_cli.add_arguments(parser)
    base = ["--topic", "t", "--csv", str(tmp_path)]
    args = parser.parse_args([*base, "--target-columns", "demand", "--covariate-columns", "temp"])
    messages, _, _ = produce_cli._source(args)
    got = [orjson.loads(v) for _, v in messages]
    assert [m["values"] for m in got] == [
        {"demand": 812.0, "temp": 31.5},
        {"demand": 790.0, "temp": None},
    ]
    with pytest.raises(ValueError, match="--covariate-columns: needs --target-columns"):
        produce_cli._source(parser.parse_args([*base, "--covariate-columns", "temp"]))


def test_alerts_carry_the_targets_only() -> None:
    from streamrnn.service.alerts import event_messages
    from streamrnn.service.decode import Batch

    batch = Batch(
        keys=["site-3"], times=np.array([1.7e9]), values=np.array([[812.0, 31.5]], np.float32),
        index=np.array([0]), topics=["t"], partitions=np.array([0], np.int32),
        offsets=np.array([5]),
    )  # fmt: skip
    (_, raw), = event_messages(
        batch, np.array([0]), prediction=np.array([[700.0]]), scale=np.array([[20.0]]),
        score=np.array([0.99]), flag=None, threshold=0.5, model_version="m",
        feature_names=("demand",),
    )  # fmt: skip
    msg = orjson.loads(raw)
    assert (msg["value"], msg["expected"], msg["scale"]) == (812.0, 700.0, 20.0)
    assert "temp" not in raw.decode() and "31.5" not in raw.decode()


def test_the_service_refuses_covariates_its_model_was_not_trained_with(tmp_path: Path) -> None:
    from servicetools import model_dir, service_config

    from streamrnn.service.app import Detector

    raw = service_config("127.0.0.1:9", "t", "g", model_dir(), tmp_path / "state")
    raw["input"] = {"covariates": ["temp"]}
    with pytest.raises(
        ConfigError, match=r"input.covariates: 'temp' is not a covariate of the model"
    ):
        Detector(load_config(raw))


@pytest.mark.slow
def test_a_reload_to_a_model_of_other_covariates_is_refused(
    weather_dir: Path, tmp_path: Path
) -> None:
    from servicetools import model_dir, service_config

    from streamrnn.service.app import Detector
    from streamrnn.service.worker import EngineSide

    cov_dir = weather_dir
    raw = service_config("127.0.0.1:9", "t", "g", cov_dir, tmp_path / "state")
    raw["input"] = {"targets": ["demand"], "covariates": ["temp"]}
    side = EngineSide(Detector(load_config(raw)).settings)
    assert side.decoder.feature_names == ("demand", "temp")
    r = side.reload(str(model_dir()))  # one target, no covariates
    assert r.outcome == "refused" and "takes covariates ()" in r.detail and "(temp)" in r.detail
    assert side.reload(str(cov_dir)).outcome == "ok"


def test_train_cli_records_targets_and_covariates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamrnn.cli import main
    from streamrnn.tools.synth import weather_demand

    s = weather_demand(1, 24 * 12, seed=2)[0]
    humidity = np.full(len(s), 50.0)
    _write_csv(
        tmp_path / "site.csv",
        "timestamp,humidity,temp,demand",
        s.timestamps,
        humidity,
        s.temp,
        s.demand,
    )
    out = tmp_path / "model"
    base = ["train", "--data", str(tmp_path / "site.csv"), "--out", str(out), "--epochs", "1"]
    base += ["--hidden-size", "8", "--no-progress", "--target-columns", "demand"]
    assert main([*base, "--covariate-columns", "temp"]) == 0
    assert "features demand, covariates temp" in capsys.readouterr().out
    info = json.loads((out / "model.json").read_text())
    assert info["feature_names"] == ["demand"] and info["covariate_names"] == ["temp"]
    assert load_model(out).config.input.covariates == ("temp",)
    assert main([*base, "--covariate-columns", "wind"]) == 2
    assert "value column(s) ['wind'] not found" in capsys.readouterr().err
    # Without --target-columns every other column is a target; a covariate must exist.
    assert main([*base[:-2], "--covariate-columns", "wind", "--value-columns", "temp,demand"]) == 2
    assert "input.covariates: column 'wind' is not in the data" in capsys.readouterr().err


@pytest.mark.slow
def test_explain_replays_a_covariate_model_with_its_covariates(
    weather_dir: Path, tmp_path: Path
) -> None:
    from streamrnn.alerting.explain import replay_trace
    from streamrnn.tools.synth import weather_demand

    model_dir = weather_dir
    s = weather_demand(1, 24 * 10, seed=80, **HOT)[0]
    path = tmp_path / f"{s.key}.csv"
    _write_csv(path, "timestamp,demand,temp", s.timestamps, s.demand, s.temp)
    trace = replay_trace(s.key, str(model_dir), [str(path)])
    assert trace.feature == "demand" and len(trace.times) == len(s)
    assert np.isfinite(trace.expected[1:]).all()


@pytest.mark.kafka
@pytest.mark.slow
def test_live_over_kafka_agrees_with_one_engine_run_with_covariates(
    weather_dir: Path, kafka_broker, topic_name: str, tmp_path: Path
) -> None:
    """Events with demand and temperature (some temperatures missing, one event with no target)
    through the broker and the detector: every score is the uninterrupted engine run's."""
    from servicetools import ThreadedDetector, TopicReader, produce, service_config, wait_for

    from streamrnn.service.app import Detector
    from streamrnn.service.worker import EngineSide
    from streamrnn.tools.broker import create_topics
    from streamrnn.tools.synth import weather_demand

    model_dir = weather_dir
    keys = weather_demand(3, 24 * 8, seed=81, heatwaves_per_key=1, **HOT)
    events = []
    for i in range(len(keys[0])):
        for s in keys:
            temp = None if i % 17 == 5 else float(s.temp[i])
            events.append((s.key, float(s.epoch_seconds[i]), float(s.demand[i]), temp))
    messages = [
        (k.encode(), orjson.dumps({"key": k, "ts": t, "values": {"demand": d, "temp": x}}))
        for k, t, d, x in events
    ]
    messages.append((b"x", orjson.dumps({"key": "x", "ts": 1.7e9, "values": {"temp": 3.0}})))
    bs = kafka_broker.bootstrap_servers
    create_topics(bs, {topic_name: 2})
    sources = produce(bs, topic_name, messages)
    raw = service_config(
        bs, topic_name, f"g-{topic_name}", model_dir, tmp_path / "state",
        scores_topic=f"{topic_name}.scores", engine_process=False,
    )  # fmt: skip
    raw["input"] = {"covariates": ["temp"]}
    engine = EngineSide(Detector(load_config(raw)).settings).engine
    vals = np.array([[d, np.nan if x is None else x] for _, _, d, x in events], np.float32)
    ref = engine.process([e[0] for e in events], np.array([e[1] for e in events]), vals)

    det = ThreadedDetector(raw)
    try:
        wait_for(
            lambda: (
                det.value("streamrnn_events_total", {"outcome": "processed"}) == len(events)
                and det.value("streamrnn_events_total", {"outcome": "rejected"}) == 1
            ),
            60,
            "every event processed, the one without its target rejected",
        )
        reader = TopicReader(bs, f"{topic_name}.scores")
        recs = reader.read_until(lambda r: len(r) >= len(events), 30, "scores")
        reader.close()
        missing = sum(x is None for *_, x in events)
        wait_for(
            lambda: det.value("streamrnn_imputed_values_total") == missing,
            10,
            f"{missing} missing temperatures counted as imputed",
        )
    finally:
        det.stop(timeout=60)
    by_source = {
        (m["source"]["partition"], m["source"]["offset"]): m
        for m in (orjson.loads(r.value) for r in recs)
    }
    got = np.array([by_source[src]["score"] for src in sources[: len(events)]])
    np.testing.assert_allclose(got, ref.score, atol=1e-6)
    first = by_source[sources[0]]
    assert (
        first["value"] == pytest.approx(events[0][2]) and "temp" not in orjson.dumps(first).decode()
    )
