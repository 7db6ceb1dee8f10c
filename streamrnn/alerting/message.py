"""Reading the detector's alert and score messages back: one parser for the sinks, ``alerts
list`` and ``explain``.

The messages are JSON objects (see the service's codec): ``key``, ``ts`` (ISO 8601 UTC),
``value`` (one number or null) or ``values`` (an object by feature name), ``expected`` (same
shape), ``score``, ``threshold``, ``model``, ``source`` (``{topic, partition, offset}``). Score
messages add ``flag``; the optional ``scale`` (the prediction's standard deviation, same shape
as ``expected``) draws the prediction band; the optional ``fields`` object carries fields of the
input event copied for the alert's labels. Fields added later are kept in :attr:`Alert.raw`.

>>> a = Alert.parse(b'{"key": "m1", "ts": "2024-01-01T00:00:00.000Z", "value": 9.5, '
...     b'"expected": 2.0, "score": 0.97, "threshold": 0.8, "model": "v1", '
...     b'"source": {"topic": "readings", "partition": 2, "offset": 41}}')
>>> a.key, a.ts, a.values, a.source
('m1', 1704067200.0, {'value': 9.5}, 'readings/2/41')
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..times import parse_timestamp

__all__ = ["Alert", "MessageError", "format_values"]

Values = dict[str, float | None]


class MessageError(ValueError):
    """A message is not an alert or score message; the text says which field is wrong."""


def _values(x: Any, name: str, what: str) -> Values:
    """One number (named ``name``) or an object of named numbers; NaN / null is None."""
    if x is None or isinstance(x, (int, float)) and not isinstance(x, bool):
        v = None if x is None or math.isnan(float(x)) else float(x)
        return {name: v}
    if isinstance(x, Mapping):
        out: Values = {}
        for k, v in x.items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise MessageError(f"{what}.{k}: must be a number or null, got {v!r}")
            out[str(k)] = None if v is None or math.isnan(float(v)) else float(v)
        return out
    raise MessageError(f"{what}: must be a number, null or an object of numbers, got {x!r}")


def format_values(values: Mapping[str, float | None], single: bool | None = None) -> str:
    """``412`` for one feature, ``temp=21.5, rh=40`` for several (4 significant digits).

    >>> format_values({"value": 412.04}), format_values({"t": 1.5, "rh": None})
    ('412', 't=1.5, rh=null')
    """

    def num(v: float | None) -> str:
        return "null" if v is None else f"{v:.4g}"

    if single if single is not None else len(values) == 1:
        return num(next(iter(values.values()), None))
    return ", ".join(f"{k}={num(v)}" for k, v in values.items())


@dataclass(frozen=True)
class Alert:
    """One alert (or score) message, parsed; :attr:`raw` is the message as published."""

    key: str
    ts: float  # event time, epoch seconds
    time: str  # event time as published (ISO 8601)
    values: Values
    expected: Values
    score: float
    threshold: float
    model: str
    topic: str
    partition: int
    offset: int
    flag: bool | None = None  # score messages only
    scale: Values | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def source(self) -> str:
        """``topic/partition/offset``: the message's identity."""
        return f"{self.topic}/{self.partition}/{self.offset}"

    @classmethod
    def parse(cls, data: bytes | str | Mapping[str, Any]) -> Alert:
        """Parse a message (bytes, text or an already decoded object); :class:`MessageError`
        names the field that is wrong."""
        if isinstance(data, (bytes, bytearray, memoryview, str)):
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError as e:
                raise MessageError(f"not JSON: {e}") from None
        else:
            obj = data
        if not isinstance(obj, Mapping):
            raise MessageError(f"must be a JSON object, got {type(obj).__name__}")
        try:
            return cls._from(obj)
        except KeyError as e:
            raise MessageError(f"{e.args[0]}: missing") from None
        except (TypeError, ValueError) as e:
            if isinstance(e, MessageError):
                raise
            raise MessageError(str(e)) from None

    @classmethod
    def _from(cls, obj: Mapping[str, Any]) -> Alert:
        key = obj["key"]
        if not isinstance(key, str) or not key:
            raise MessageError(f"key: must be a non-empty string, got {key!r}")
        time_text = obj["ts"]
        if not isinstance(time_text, str):
            raise MessageError(f"ts: must be ISO 8601 text, got {time_text!r}")
        single = "values" not in obj
        values = _values(obj["value"] if single else obj["values"], "value", "values")
        name = next(iter(values)) if single else "value"
        src = obj["source"]
        if not isinstance(src, Mapping):
            raise MessageError(f"source: must be an object, got {src!r}")
        flag = obj.get("flag")
        scale = obj.get("scale")
        fields = obj.get("fields") or {}
        if not isinstance(fields, Mapping):
            raise MessageError(f"fields: must be an object, got {fields!r}")
        return cls(
            key=key,
            ts=parse_timestamp(time_text),
            time=time_text,
            values=values,
            expected=_values(obj.get("expected"), name, "expected"),
            score=float(obj["score"]),
            threshold=float(obj.get("threshold", math.nan)),
            model=str(obj.get("model", "")),
            topic=str(src["topic"]),
            partition=int(src["partition"]),
            offset=int(src["offset"]),
            flag=None if flag is None else bool(flag),
            scale=None if scale is None else _values(scale, name, "scale"),
            fields=fields,
            raw=obj,
        )
