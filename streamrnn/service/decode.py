"""Decoding: one poll's records in, the engine's arrays and the rejects (with reasons) out.

Decoding
--------
:meth:`Decoder.decode` turns one poll's records into the engine's arrays in one pass (orjson per
record, results written straight into preallocated NumPy arrays). An event is a JSON object; the
field names come from ``config.input``:

* key: ``key`` (a string, or an integer taken as its decimal text); when the field is absent or
  null, the Kafka message key (UTF-8).
* time: ``ts`` as ISO 8601 text (naive = UTC), or epoch seconds, or epoch milliseconds (numbers
  above 1e11, as text or number); when absent or null, the record's own timestamp.
* values: ``value`` (one number; only for a single-feature model) or ``values``: an object of
  named numbers (the names of ``config.input.features``, else the model's feature names, then
  the model's covariates; a name that is absent is a missing value; names the model does not
  know are ignored), or a list of exactly F + C numbers in that order. A row is the F targets,
  then the C covariates: ``{"demand": 812.0, "temp": 31.5}``.

Number policy, per value:

================================  =========================================================
``12.5``, ``"12.5"``              the number (numeric text is accepted in JSON's own number
                                  syntax only: ``"1_000"``, ``" 1"``, ``"0x10"`` are not)
``null``, ``"NaN"``, absent name  missing: the engine imputes it with the key's own prediction
                                  and counts it (``streamrnn_imputed_values_total``); so do
                                  ``"value": null``, ``"values": null`` and ``"values": {}``
``"abc"``, ``true``               rejected: ``non_numeric_value``
``"inf"``, ``1e39`` (> float32)   rejected: ``non_finite_value``
================================  =========================================================

A rejected record goes to the dead-letter topic with one reason from
:data:`streamrnn.service.metrics.REJECT_REASONS`, checked in this order: ``not_json`` (not
UTF-8 JSON, or an empty/tombstone message), ``wrong_shape`` (not an object; both ``value`` and
``values``; ``value`` for a multi-feature model; ``values`` of the wrong type or length, or an
object naming none of the model's targets (covariates alone); a nested container as a number), ``missing_key``,
``missing_value`` (neither field), ``non_numeric_value``,
``non_finite_value``, ``bad_timestamp`` (unparseable, not finite, beyond year 5138, or no
``ts`` and no record timestamp), ``event_time_out_of_window`` (a time outside
``input.min_event_time`` .. ``input.max_event_time``, by default 1970 to 2262).

Late events
-----------
An event older than its key's previous event is *late*. The engine decides, per
``config.input.late_events``: with ``score`` (the default) it is scored like any other event
(its time only feeds the calendar inputs) and counted in the service log; with ``drop`` the
engine leaves the key's state untouched and the service sends the record to the dead-letter
topic with reason ``late_event``. Either way no record disappears silently.

The messages the service sends (alerts, scores, dead letters) are built in :mod:`.alerts`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from ..config import InputConfig
from ..times import MS_THRESHOLD, iso_utc, parse_iso, parse_timestamp

__all__ = ["Batch", "Decoder", "Part", "Reject"]

_MAX_SECONDS = 1e11  # |time| beyond this (year 5138) is rejected: it cannot be formatted back
_F32_MAX = float(np.finfo(np.float32).max)
_DETAIL_MAX = 300  # characters of a reject detail
_NUMBER_OR_NONE = {int, float, type(None)}
# Numeric text: JSON's number syntax, nothing else Python's float() would take ("1_000", " 1").
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_NAN_TEXT = {"nan", "+nan", "-nan"}
_INF_TEXT = {"inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}


@dataclass
class Reject:
    """A record that will not reach the model: where it is, and why in a metric label and in words."""

    index: int  # position in the decoded poll
    reason: str
    detail: str
    record: Any = None  # the record itself, when :meth:`Decoder.decode` was given records


_RECORD_FIELDS = {"offset", "timestamp", "key", "value", "headers"}


@dataclass
class Part:
    """One partition's records of a poll, as columns: what crosses to the engine process.

    ``offsets``, ``timestamps`` (ms, or None/negative when absent), ``keys`` and ``values`` (raw
    bytes, or None) are sequences of the same length, in offset order.
    """

    topic: str
    partition: int
    offsets: Sequence[int]
    timestamps: Sequence[int | None]
    keys: Sequence[bytes | None]
    values: Sequence[bytes | None]

    @classmethod
    def of(cls, topic: str, partition: int, records: Sequence[Any]) -> Part:
        """The columns of records of one partition (kafka-python ``ConsumerRecord``s or alike)."""
        return cls.split(topic, partition, records)[0]

    @classmethod
    def split(
        cls, topic: str, partition: int, records: Sequence[Any]
    ) -> tuple[Part, Sequence[Any]]:
        """The columns of records of one partition, and their headers as one more column.

        Named tuples (kafka-python's ``ConsumerRecord``) are transposed in one ``zip``; other
        records are read attribute by attribute."""
        first = records[0] if records else None
        fields = getattr(type(first), "_fields", None)
        if isinstance(first, tuple) and fields is not None and set(fields) >= _RECORD_FIELDS:
            cols = list(zip(*records, strict=True))
            at = fields.index
            return cls(
                topic,
                partition,
                cols[at("offset")],
                cols[at("timestamp")],
                cols[at("key")],
                cols[at("value")],
            ), cols[at("headers")]
        return cls(
            topic,
            partition,
            [r.offset for r in records],
            [r.timestamp for r in records],
            [r.key for r in records],
            [r.value for r in records],
        ), [getattr(r, "headers", None) for r in records]

    def __len__(self) -> int:
        return len(self.offsets)


@dataclass
class Batch:
    """A poll's accepted events as engine arrays, their sources, and the rejects.

    ``keys`` (N,), ``times`` (N,) float64 epoch seconds, ``values`` (N, F) float32 with NaN where
    missing; ``index`` (N,) int64 their positions in the poll (all parts' records in order);
    ``topics`` (N,), ``partitions`` (N,) int32 and ``offsets`` (N,) int64 their sources.
    ``next_offsets`` maps each ``(topic, partition)`` of the poll (accepted or rejected) to the
    offset after its last record.
    """

    keys: list[str]
    times: np.ndarray
    values: np.ndarray
    index: np.ndarray
    topics: list[str]
    partitions: np.ndarray
    offsets: np.ndarray
    rejects: list[Reject] = field(default_factory=list)
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    # ((topic, partition), start, end): each part's accepted events are keys[start:end]
    spans: list[tuple[tuple[str, int], int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def missing(self) -> int:
        """Missing values (NaN) among the accepted events."""
        return int(np.isnan(self.values).sum())


class _Bad(Exception):
    """One record's reject reason and detail (internal control flow of the decoder)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail[:_DETAIL_MAX]


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(x: Any, name: str) -> float:
    """One value by the number policy of the module docstring; NaN = missing."""
    if x is None:
        return math.nan
    if isinstance(x, bool):
        raise _Bad("non_numeric_value", f"{name}: must be a number, got {_short(x)}")
    if isinstance(x, (int, float)):
        v = float(x)
    elif isinstance(x, str):
        low = x.lower()
        if low in _NAN_TEXT:
            return math.nan
        if low in _INF_TEXT:
            raise _Bad("non_finite_value", f"{name}: must be finite in float32, got {_short(x)}")
        if _JSON_NUMBER.fullmatch(x) is None:
            raise _Bad(
                "non_numeric_value", f"{name}: must be a number in JSON's syntax, got {_short(x)}"
            )
        v = float(x)
    elif isinstance(x, (list, dict)):
        raise _Bad("wrong_shape", f"{name}: must be a number, got {type(x).__name__} {_short(x)}")
    else:  # pragma: no cover - orjson yields only the JSON types
        raise _Bad("non_numeric_value", f"{name}: must be a number, got {_short(x)}")
    if not -_F32_MAX <= v <= _F32_MAX:
        raise _Bad("non_finite_value", f"{name}: must be finite in float32, got {_short(x)}")
    return v


def _time(x: Any, ts: int | None, name: str, window: tuple[float, float]) -> float:
    """Epoch seconds from the event's time field, else from the record's timestamp ``ts`` (ms)."""
    if x is None:
        if ts is None or ts < 0:
            raise _Bad("bad_timestamp", f"{name}: absent and the record has no timestamp")
        return _in_window(float(ts) / 1000.0, name, window, ts)
    if isinstance(x, bool):
        raise _Bad(
            "bad_timestamp", f"{name}: must be ISO 8601 or epoch seconds/ms, got {_short(x)}"
        )
    if isinstance(x, (int, float)):
        v = float(x)
        if not math.isfinite(v):
            raise _Bad("bad_timestamp", f"{name}: must be finite, got {_short(x)}")
        t = v / 1000.0 if abs(v) > MS_THRESHOLD else v
    elif isinstance(x, str):
        try:
            t = parse_timestamp(x)
        except (ValueError, OverflowError, OSError):
            raise _Bad(
                "bad_timestamp", f"{name}: must be ISO 8601 or epoch seconds/ms, got {_short(x)}"
            ) from None
    else:
        raise _Bad(
            "bad_timestamp", f"{name}: must be ISO 8601 or epoch seconds/ms, got {_short(x)}"
        )
    if not abs(t) <= _MAX_SECONDS:
        raise _Bad("bad_timestamp", f"{name}: out of range, got {_short(x)}")
    if not window[0] <= t <= window[1]:
        raise _Bad(
            "event_time_out_of_window",
            f"{name}: {_when(t)} is outside input.min_event_time .. max_event_time "
            f"({_when(window[0])} .. {_when(window[1])}), got {_short(x)}",
        )
    return t


def _when(t: float) -> str:
    """ISO text of epoch seconds, or the number where a calendar cannot hold it (year < 1)."""
    try:
        return iso_utc(t)
    except (OverflowError, ValueError):
        return f"epoch {t:g} s"


def _in_window(t: float, name: str, window: tuple[float, float], ts: int) -> float:
    """A record timestamp's time, when it lies in the window."""
    if not window[0] <= t <= window[1]:
        raise _Bad(
            "event_time_out_of_window",
            f"{name}: absent, and the record's timestamp {_when(t)} is outside "
            f"input.min_event_time .. max_event_time, got {ts}",
        )
    return t


class Decoder:
    """Decodes records into engine arrays by ``config.input`` for a model of ``feature_names``
    (its targets) and ``covariates``: a row holds the targets, then the covariates."""

    def __init__(
        self, config: InputConfig, feature_names: Sequence[str], covariates: Sequence[str] = ()
    ) -> None:
        targets = tuple(config.features) or tuple(feature_names)
        if not targets:
            raise ValueError("feature_names: need at least one feature")
        names = targets + tuple(covariates)
        self.config = config
        self.feature_names = names
        self.n_targets = len(targets)
        self.n_features = len(names)
        self._index = {n: i for i, n in enumerate(names)}
        self._targets = frozenset(targets)
        self.window = (
            parse_iso(config.min_event_time).timestamp(),
            parse_iso(config.max_event_time).timestamp(),
        )

    def decode(self, records: Iterable[Any]) -> Batch:
        """Decode records (each with topic, partition, offset, key, value, timestamp) in order.

        Rejects are returned, never raised; each carries its record."""
        recs = list(records)
        parts: list[Part] = []
        start = 0
        for i in range(1, len(recs) + 1):
            if i == len(recs) or (recs[i].topic, recs[i].partition) != (
                recs[start].topic,
                recs[start].partition,
            ):
                parts.append(Part.of(recs[start].topic, recs[start].partition, recs[start:i]))
                start = i
        batch = self.decode_parts(parts)
        for rej in batch.rejects:
            rej.record = recs[rej.index]
        return batch

    def decode_parts(self, parts: Sequence[Part]) -> Batch:
        """Decode one poll given as columns, part after part; positions count across parts."""
        n, f = sum(len(p) for p in parts), self.n_features
        times = np.empty(n, dtype=np.float64)  # (n,)
        values = np.empty((n, f), dtype=np.float32)  # (n, F)
        index = np.empty(n, dtype=np.int64)  # (n,)
        partitions = np.empty(n, dtype=np.int32)  # (n,)
        offsets = np.empty(n, dtype=np.int64)  # (n,)
        keys: list[str] = []
        topics: list[str] = []
        rejects: list[Reject] = []
        next_offsets: dict[tuple[str, int], int] = {}
        spans: list[tuple[tuple[str, int], int, int]] = []
        i = j = 0
        for part in parts:
            if len(part):
                tp = (part.topic, part.partition)
                next_offsets[tp] = max(next_offsets.get(tp, -1), max(part.offsets) + 1)
            j0 = j
            fast = self._decode_fast(part)
            if fast is not None:
                k, t, v = fast
                m = len(k)
                keys.extend(k)
                times[j : j + m] = t
                values[j : j + m] = v
                index[j : j + m] = np.arange(i, i + m)
                i += m
                j += m
            else:
                i, j = self._decode_slow(part, i, j, keys, times, values, index, rejects)
            if j > j0:
                pos = index[j0:j] - (i - len(part))  # positions within the part
                offsets[j0:j] = np.asarray(part.offsets, dtype=np.int64)[pos]
                partitions[j0:j] = part.partition
                topics.extend([part.topic] * (j - j0))
                spans.append(((part.topic, part.partition), j0, j))
        return Batch(
            keys=keys,
            times=times[:j],
            values=values[:j],
            index=index[:j],
            topics=topics,
            partitions=partitions[:j],
            offsets=offsets[:j],
            rejects=rejects,
            next_offsets=next_offsets,
            spans=spans,
        )

    def _decode_fast(self, part: Part) -> tuple[list[str], np.ndarray, np.ndarray] | None:
        """The whole part at once when every record is the common shape: a JSON object with a
        non-empty string key, a numeric time, one numeric (or null) value and no ``values``.
        Returns None (the record-by-record path decides) at the first record that is not."""
        cfg = self.config
        if self.n_features != 1 or not len(part):
            return None
        loads = orjson.loads
        try:
            objs = [loads(v) for v in part.values]  # type: ignore[arg-type]  # None: TypeError
        except (orjson.JSONDecodeError, TypeError):
            return None
        if set(map(type, objs)) != {dict}:
            return None
        try:
            keys = [o[cfg.key_field] for o in objs]
            ts = [o[cfg.time_field] for o in objs]
            vals = [o[cfg.value_field] for o in objs]
        except KeyError:
            return None
        vsf = cfg.values_field
        if any(vsf in o for o in objs):
            return None
        if set(map(type, keys)) != {str} or "" in keys:
            return None
        if not set(map(type, ts)) <= {int, float} or not set(map(type, vals)) <= _NUMBER_OR_NONE:
            return None
        t = np.array(ts, dtype=np.float64)  # (m,)
        if not np.isfinite(t).all():
            return None
        t = np.where(np.abs(t) > MS_THRESHOLD, t / 1000.0, t)
        if not ((t >= self.window[0]) & (t <= self.window[1])).all():
            return None
        v = np.array(vals, dtype=np.float64)  # (m,) null -> NaN
        with np.errstate(invalid="ignore"):
            if (np.abs(v) > _F32_MAX).any():
                return None
        return keys, t, v.astype(np.float32)[:, None]

    def _decode_slow(
        self,
        part: Part,
        i: int,
        j: int,
        keys: list[str],
        times: np.ndarray,
        values: np.ndarray,
        index: np.ndarray,
        rejects: list[Reject],
    ) -> tuple[int, int]:
        """Record by record, with a reason for each reject; returns the advanced ``i`` and ``j``."""
        row = np.empty(self.n_features, dtype=np.float64)  # (F,) scratch
        decode_one = self._decode_one
        for raw, mkey, ts in zip(part.values, part.keys, part.timestamps, strict=True):
            try:
                t = decode_one(raw, mkey, ts, row)
            except _Bad as bad:
                rejects.append(Reject(i, bad.reason, bad.detail))
                i += 1
                continue
            keys.append(t[0])
            times[j] = t[1]
            values[j] = row
            index[j] = i
            i += 1
            j += 1
        return i, j

    def _decode_one(
        self, raw: bytes | None, mkey: bytes | None, ts: int | None, row: np.ndarray
    ) -> tuple[str, float]:
        """Key and time of one record (value ``raw``, message key ``mkey``, timestamp ``ts`` ms);
        its values are written into ``row`` (F,)."""
        cfg = self.config
        if not raw:
            raise _Bad("not_json", "empty message (tombstone)")
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise _Bad("not_json", f"not valid JSON: {e}") from None
        if not isinstance(obj, dict):
            raise _Bad("wrong_shape", f"event must be a JSON object, got {type(obj).__name__}")

        has_value, vals = self._check_shape(obj)
        key = self._key(obj, mkey)
        self._values(obj, has_value, vals, row)
        t = _time(obj.get(cfg.time_field), ts, cfg.time_field, self.window)
        return key, t

    def _check_shape(self, obj: dict[str, Any]) -> tuple[bool, Any]:
        """Whether the event has ``value``, and its ``values``; raises for a wrong shape."""
        cfg = self.config
        has_value = cfg.value_field in obj
        has_values = cfg.values_field in obj
        if has_value and has_values:
            raise _Bad(
                "wrong_shape",
                f"event has both {cfg.value_field!r} and {cfg.values_field!r}; send one",
            )
        if has_value and self.n_features != 1:
            raise _Bad(
                "wrong_shape",
                f"{cfg.value_field}: the model takes {self.n_features} features "
                f"({', '.join(self.feature_names)}); send {cfg.values_field!r}",
            )
        vals = obj.get(cfg.values_field)
        if has_values and vals is not None and not isinstance(vals, (dict, list)):
            raise _Bad(
                "wrong_shape",
                f"{cfg.values_field}: must be an object of named numbers or a list of "
                f"{self.n_features}, got {type(vals).__name__} {_short(vals)}",
            )
        if isinstance(vals, list) and len(vals) != self.n_features:
            raise _Bad(
                "wrong_shape",
                f"{cfg.values_field}: must list {self.n_features} numbers "
                f"({', '.join(self.feature_names)}), got {len(vals)}",
            )
        if isinstance(vals, dict) and vals and not any(k in self._targets for k in vals):
            raise _Bad(
                "wrong_shape",
                f"{cfg.values_field}: names none of the model's targets "
                f"({', '.join(self.feature_names[: self.n_targets])}), got {_short(sorted(vals))}",
            )
        return has_value, vals

    def _key(self, obj: dict[str, Any], mkey: bytes | None) -> str:
        """The event's key: its key field, else the message key (UTF-8)."""
        cfg = self.config
        key = obj.get(cfg.key_field)
        if key is None:
            if mkey is None:
                raise _Bad("missing_key", f"no {cfg.key_field!r} field and no message key")
            try:
                key = mkey.decode("utf-8") if isinstance(mkey, bytes) else str(mkey)
            except UnicodeDecodeError:
                raise _Bad("missing_key", "the message key is not UTF-8") from None
        elif isinstance(key, int) and not isinstance(key, bool):
            key = str(key)
        elif not isinstance(key, str):
            raise _Bad("missing_key", f"{cfg.key_field}: must be a string, got {_short(key)}")
        if not key:
            raise _Bad("missing_key", f"{cfg.key_field}: must not be empty")
        return key

    def _values(self, obj: dict[str, Any], has_value: bool, vals: Any, row: np.ndarray) -> None:
        """The event's values into ``row`` (F,), by the number policy."""
        cfg = self.config
        has_values = cfg.values_field in obj
        if not has_value and not has_values:
            raise _Bad("missing_value", f"no {cfg.value_field!r} or {cfg.values_field!r} field")
        if has_value:
            row[0] = _number(obj[cfg.value_field], cfg.value_field)
        elif isinstance(vals, list):
            for i, (name, x) in enumerate(zip(self.feature_names, vals, strict=True)):
                row[i] = _number(x, f"{cfg.values_field}[{i}] ({name})")
        else:  # an object by name; null or {} is every feature missing
            got = vals or {}
            for i, name in enumerate(self.feature_names):
                row[i] = _number(got.get(name), f"{cfg.values_field}.{name}")
