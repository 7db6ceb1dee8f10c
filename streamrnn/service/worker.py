"""The detector's engine side: decode, step, score and encode one poll at a time.

The service is two halves (see ``docs/design.md``). The Kafka side (:mod:`.app`) polls, publishes,
commits, checkpoints and answers the group; the engine side (:class:`EngineSide`, here) owns the
model, every key's state, the decoder and which partition each key belongs to. What crosses
between them is plain data: a poll as columns (:class:`~.decode.Part`) one way, an
:class:`Outcome` (rejects by position, every message to send, encoded, and scores and times for
the metrics) the other. :mod:`.engine_process` runs this side inline or in a child process.

The engine side is built from :class:`EngineSettings`, the few settings it needs (not the
service's whole config), and loads the model itself: the model is loaded once, where it runs.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..alerting.incidents import Recovery
from ..config import AdaptConfig, Config, ConfigError, InputConfig, ScoringConfig, StateConfig
from ..detector.engine import Engine
from ..detector.modeldir import LoadedModel, load_model
from ..times import iso_times
from .alerts import Headers, Message, dead_letters, event_fields, event_messages
from .decode import Batch, Decoder, Part

__all__ = [
    "EngineSettings",
    "EngineSide",
    "ModelDirError",
    "Outcome",
    "Reload",
    "Stats",
    "feature_names_for",
]

TP = tuple[str, int]


class ModelDirError(ValueError):
    """The model directory could not be loaded; the message names ``service.model``."""


@dataclass(frozen=True)
class EngineSettings:
    """What the engine side needs: the model directory, the device, and the scoring, state,
    input and adapt sections. ``scores``: encode every event's score too (``service.scores_topic`` set).
    ``resolve_after_events``: report the events at which a key completes this many unflagged
    events in a row (0: none; set when an alert sink is configured); ``label_fields``: the
    input event's fields copied into alert messages (``alerts.labels``)."""

    model_dir: str
    device: str
    scoring: ScoringConfig
    state: StateConfig
    input: InputConfig
    adapt: AdaptConfig = AdaptConfig()
    scores: bool = False
    resolve_after_events: int = 0
    label_fields: tuple[str, ...] = ()

    @classmethod
    def of(cls, config: Config, device: torch.device | str) -> EngineSettings:
        """The settings of a service config, on the resolved ``device``."""
        sinks = config.alerts.sinks
        has_sink = bool(sinks.alertmanager.urls or sinks.webhook.urls)
        return cls(
            model_dir=config.service.model or "",
            device=str(device),
            scoring=config.scoring,
            state=config.state,
            input=config.input,
            adapt=config.adapt,
            scores=bool(config.service.scores_topic),
            resolve_after_events=config.alerts.resolve_after_events if has_sink else 0,
            label_fields=tuple(dict.fromkeys(config.alerts.labels.values())),
        )

    def engine_config(self, model_config: Config) -> Config:
        """The engine's config: the model directory's ``model`` and ``features`` sections (the
        network and the normaliser it was trained with) with these settings' sections."""
        return dataclasses.replace(
            model_config, scoring=self.scoring, state=self.state, input=self.input, adapt=self.adapt
        )


def feature_names_for(
    config: InputConfig, model_names: Sequence[str], model_covariates: Sequence[str] = ()
) -> tuple[str, ...]:
    """The target names events are read by: ``input.features`` when set, else the model's;
    raises ConfigError when they do not name as many features as the model predicts, or when
    ``input.targets`` / ``input.covariates`` name fields the model was not trained with
    (:func:`check_stream_fields`)."""
    names = tuple(config.features) or tuple(model_names)
    if len(names) != len(model_names):
        raise ConfigError(
            f"input.features: must name the model's {len(model_names)} feature(s) "
            f"({', '.join(model_names)}) in order, got {list(config.features)}"
        )
    check_stream_fields(config, model_names, model_covariates)
    return names


def check_stream_fields(
    config: InputConfig, model_targets: Sequence[str], model_covariates: Sequence[str]
) -> None:
    """The stream's declared fields (``input.targets``, ``input.covariates``; empty: the
    model's) against those the model was trained with; raises ConfigError naming the first
    field that does not match."""
    for key, have, want in (
        ("targets", tuple(config.targets), tuple(model_targets)),
        ("covariates", tuple(config.covariates), tuple(model_covariates)),
    ):
        if not have or have == want:
            continue
        what = key[:-1]
        trained = f"({', '.join(want)})" if want else "(none)"
        extra = [n for n in have if n not in want]
        lacking = [n for n in want if n not in have]
        if extra:
            why = f"{extra[0]!r} is not a {what} of the model, which was trained with {trained}"
        elif lacking:
            why = f"the model was trained with {what} {lacking[0]!r}, which is not named"
        else:
            why = f"must list the model's {key} {trained} in order"
        raise ConfigError(f"input.{key}: {why}, got {list(have)}")


def load_service_model(model_dir: str, device: torch.device | str) -> LoadedModel:
    """:func:`load_model` with errors that name ``service.model`` (:class:`ModelDirError`)."""
    try:
        return load_model(model_dir, device)
    except (ValueError, OSError) as e:  # ConfigError is a ValueError
        raise ModelDirError(
            f"service.model: must be a model directory written by `streamrnn train` ({e}), "
            f"got {model_dir!r}"
        ) from None


@dataclass
class Stats:
    """The engine side's counters, sent with every outcome."""

    resident: int  # keys with state
    nbytes: int  # bytes of the state store
    imputed_total: int
    evicted_total: int
    model_version: str


@dataclass
class Outcome:
    """One poll's results, everything the Kafka side needs to publish and commit it.

    ``rejects``: ``(position in the poll, reason, detail)`` of every record to dead-letter, the
    decoder's first, then late events dropped by ``input.late_events: drop``; ``dead_letters``
    their messages. ``alerts`` and ``scores``: encoded ``(key, JSON)`` messages. ``score`` and
    ``times`` (K,): the processed events' scores and event times (the metrics' histograms).
    ``recovered``: the events at which a key completed ``resolve_after_events`` unflagged events
    in a row (for the alert sinks).
    """

    processed: int
    rejects: list[tuple[int, str, str]]
    alerts: list[tuple[bytes, bytes]]
    scores: list[tuple[bytes, bytes]]
    anomalies: dict[str, int]  # flagged events by topic
    late_scored: int
    moved: list[tuple[str, TP, TP]]  # keys seen on another partition: (key, old, new)
    score: np.ndarray
    times: np.ndarray
    stats: Stats
    seconds: float = 0.0  # the engine side's own time for this poll
    dead_letters: list[Message] = field(default_factory=list)
    recovered: list[Recovery] = field(default_factory=list)


@dataclass
class Reload:
    """What a model reload came to: ``outcome`` ok | refused | error, and why."""

    outcome: str
    detail: str = ""
    version: str = ""
    cell: str = ""
    hidden_size: int = 0
    features_changed: bool = False
    stats: Stats | None = None


@dataclass
class _Scored:
    """The engine's part of one poll's outcome (empty when nothing was accepted)."""

    alerts: list[tuple[bytes, bytes]] = field(default_factory=list)
    scores: list[tuple[bytes, bytes]] = field(default_factory=list)
    anomalies: dict[str, int] = field(default_factory=dict)
    late: list[tuple[int, str, str]] = field(default_factory=list)  # dropped late events
    late_scored: int = 0
    moved: list[tuple[str, TP, TP]] = field(default_factory=list)
    score: np.ndarray = field(default_factory=lambda: np.zeros(0))
    times: np.ndarray = field(default_factory=lambda: np.zeros(0))
    recovered: list[Recovery] = field(default_factory=list)


class EngineSide:
    """Decoder, engine and the key -> partition map; every method is one call from the Kafka side."""

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.device = torch.device(settings.device)
        loaded = load_service_model(settings.model_dir, self.device)
        self.feature_names = feature_names_for(
            settings.input, loaded.feature_names, loaded.covariate_names
        )
        self.config = settings.engine_config(loaded.config)
        self.engine = Engine(
            loaded.model, self.config, device=self.device, model_version=loaded.version
        )
        self.decoder = Decoder(settings.input, loaded.feature_names, loaded.covariate_names)
        self.key_tp: dict[str, TP] = {}
        self.tp_keys: dict[TP, set[str]] = {}

    def stats(self) -> Stats:
        store = self.engine.store
        return Stats(
            len(store),
            store.nbytes,
            self.engine.imputed_total,
            store.evicted_total,
            self.engine.model_version,
        )

    def process(
        self, parts: Sequence[Part], headers: Mapping[int, Headers] | None = None
    ) -> Outcome:
        """Decode, step and score one poll; encode its alerts (and scores) and dead letters.
        ``headers``: the records' non-empty headers by position, kept on their dead letters."""
        t0 = time.perf_counter()
        batch = self.decoder.decode_parts(parts)
        rejects = [(r.index, r.reason, r.detail) for r in batch.rejects]
        scored = self._score(batch, parts) if len(batch) else _Scored()
        rejects += scored.late
        return Outcome(
            processed=len(scored.score),
            rejects=rejects,
            alerts=scored.alerts,
            scores=scored.scores,
            anomalies=scored.anomalies,
            late_scored=scored.late_scored,
            moved=scored.moved,
            score=scored.score,
            times=scored.times,
            stats=self.stats(),
            seconds=time.perf_counter() - t0,
            dead_letters=dead_letters(parts, rejects, headers),
            recovered=scored.recovered,
        )

    def _score(self, batch: Batch, parts: Sequence[Part]) -> _Scored:
        """Step the accepted events of a poll and encode their messages."""
        res = self.engine.process(batch.keys, batch.times, batch.values)
        moved = self._track_keys(batch)
        kept = ~res.dropped  # (N,)
        late = [
            (
                int(batch.index[i]),
                "late_event",
                f"older than the key's previous event (ts {iso_times(batch.times[i : i + 1])[0]})",
            )
            for i in np.flatnonzero(res.dropped).tolist()
        ]

        def encode(
            index: np.ndarray, flag: np.ndarray | None, fields: list[dict[str, Any]] | None = None
        ) -> list[tuple[bytes, bytes]]:
            return event_messages(
                batch,
                index,
                prediction=res.prediction,
                scale=res.scale,
                score=res.score,
                flag=flag,
                threshold=self.settings.scoring.threshold,
                model_version=self.engine.model_version,
                feature_names=self.feature_names,
                fields=fields,
            )

        flagged = np.flatnonzero(res.flag & kept)
        names = self.settings.label_fields
        fields = event_fields(parts, batch.index[flagged].tolist(), names) if names else None
        return _Scored(
            alerts=encode(flagged, None, fields),
            scores=encode(np.flatnonzero(kept), res.flag) if self.settings.scores else [],
            anomalies=dict(Counter(batch.topics[i] for i in flagged.tolist())),
            late=late,
            late_scored=int((res.late & kept).sum()),
            moved=moved,
            score=res.score[kept],
            times=batch.times[kept],
            recovered=self._recovered(batch, res.since_flag, kept),
        )

    def _recovered(self, batch: Batch, since_flag: np.ndarray, kept: np.ndarray) -> list[Recovery]:
        """The events at which a key completed ``resolve_after_events`` unflagged events in a
        row: one comparison over the poll, Python only for the (few) hits."""
        n = self.settings.resolve_after_events
        if not n:
            return []
        hit = np.flatnonzero((since_flag == n) & kept)  # (R,)
        return [
            Recovery(
                batch.keys[i],
                batch.topics[i],
                int(batch.partitions[i]),
                int(batch.offsets[i]),
                float(batch.times[i]),
            )
            for i in hit.tolist()
        ]

    def _track_keys(self, batch: Batch) -> list[tuple[str, TP, TP]]:
        """Remember each key's (latest) partition: checkpoints are per partition."""
        moved = []
        key_tp = self.key_tp
        for tp, start, end in batch.spans:
            for key in dict.fromkeys(batch.keys[start:end]):  # each key once, in order
                old = key_tp.get(key)
                if old == tp:
                    continue
                if old is not None:
                    moved.append((key, old, tp))
                    if old in self.tp_keys:
                        self.tp_keys[old].discard(key)
                key_tp[key] = tp
                self.tp_keys.setdefault(tp, set()).add(key)
        return moved

    def keys_of(self, tp: TP) -> list[str]:
        """The keys of ``tp`` that still have state (evicted ones are forgotten here)."""
        store = self.engine.store
        keys = self.tp_keys.get(tp, set())
        kept = [k for k in keys if k in store]
        if len(kept) != len(keys):
            for k in keys.difference(kept):
                if self.key_tp.get(k) == tp:
                    del self.key_tp[k]
            self.tp_keys[tp] = set(kept)
        return kept

    def snapshot(self, items: Sequence[tuple[TP, dict[str, Any]]]) -> list[tuple[bytes, int]]:
        """``(data, number of keys)`` of each ``(partition, extra)``: the snapshot of the
        partition's keys, with the keys in its extra. The offset it reflects is not in it: the
        checkpoint's header holds it (:mod:`.checkpoint`)."""
        out = []
        for tp, extra in items:
            keys = self.keys_of(tp)
            out.append((self.engine.snapshot(keys, extra={**extra, "keys": keys}), len(keys)))
        return out

    def restore(self, tp: TP, data: bytes) -> dict[str, Any]:
        """Restore one partition's snapshot; its keys now belong to ``tp``. Returns its extra."""
        extra = self.engine.restore(data)
        keys = [str(k) for k in extra.get("keys", [])]
        for k in keys:
            old = self.key_tp.get(k)
            if old is not None and old != tp and old in self.tp_keys:
                self.tp_keys[old].discard(k)
            self.key_tp[k] = tp
        self.tp_keys.setdefault(tp, set()).update(keys)
        return extra

    def forget(self, tps: Sequence[TP]) -> Stats:
        """Drop the state of every key of ``tps``."""
        gone: list[str] = []
        for tp in tps:
            for k in self.tp_keys.pop(tp, set()):
                if self.key_tp.get(k) == tp:
                    del self.key_tp[k]
                    gone.append(k)
        self.engine.store.drop(gone)
        return self.stats()

    def reload(self, model_dir: str) -> Reload:
        """Swap in the model of ``model_dir`` if it fits the live state; the old one keeps serving
        otherwise."""
        try:
            loaded = load_model(model_dir, self.device)
        except Exception as e:  # a broken or half-written directory
            return Reload("error", str(e))
        n = self.decoder.n_targets
        covariates = self.decoder.feature_names[n:]
        if len(loaded.feature_names) != n:
            return Reload(
                "refused",
                f"{loaded.version} predicts {len(loaded.feature_names)} feature(s) "
                f"({', '.join(loaded.feature_names)}), the running model {n}",
            )
        if loaded.covariate_names != covariates:
            return Reload(
                "refused",
                f"{loaded.version} takes covariates ({', '.join(loaded.covariate_names)}), "
                f"the running model ({', '.join(covariates)})",
            )
        try:
            self.engine.swap_model(loaded.model, loaded.version)
        except ValueError as e:
            return Reload("refused", str(e))
        m = loaded.config.model
        return Reload(
            "ok",
            version=loaded.version,
            cell=m.cell,
            hidden_size=m.hidden_size,
            features_changed=loaded.config.features != self.config.features,
            stats=self.stats(),
        )
