"""Every message the service sends: alerts, scores and dead letters, built in one place.

Alerts and scores
-----------------
:func:`event_messages` builds one JSON message per alert (or per scored event for the scores
topic), keyed by the event key: ``key``, ``ts`` (ISO 8601, UTC, milliseconds), ``value`` (or
``values``: an object by feature name), ``expected`` (the prediction, same shape, null before a
key's first prediction), ``score``, ``threshold``, ``model`` (version id) and ``source``
(``{topic, partition, offset}``, the message's identity: consumers dedupe on it after a restart
re-publishes), and ``scale`` (the prediction's standard deviation, same shape as ``expected``:
``expected`` +- 2 ``scale`` is the band ``streamrnn explain`` draws). Score messages add ``flag``.
With ``alerts.labels`` set, alert messages add ``fields``: those fields of the input event
(:func:`event_fields`), which the alert sinks make labels of.

Dead letters
------------
:func:`dead_letters` gives one message per rejected record: the original key and value bytes,
the original headers, then :func:`dlq_headers`: ``streamrnn.reason``, ``streamrnn.detail`` and
the source's ``streamrnn.source.topic`` / ``.partition`` / ``.offset``.

All of them are built on the engine side (:mod:`.worker`), so the Kafka side only sends.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from ..times import iso_times
from .decode import Batch, Part

__all__ = ["Headers", "Message", "dead_letters", "dlq_headers", "event_fields", "event_messages"]

Headers = list[tuple[str, bytes]]
#: A message to send, without its topic: (key, value, headers or None).
Message = tuple[bytes | None, bytes | None, Headers | None]


def _shape(row: list[float], names: Sequence[str]) -> float | None | dict[str, float | None]:
    """One number (single feature) or an object by feature name; NaN becomes null."""
    clean = [None if v is None or math.isnan(v) else v for v in row]
    if len(names) == 1:
        return clean[0]
    return dict(zip(names, clean, strict=True))


def event_messages(
    batch: Batch,
    index: np.ndarray,
    *,
    prediction: np.ndarray,
    scale: np.ndarray,
    score: np.ndarray,
    flag: np.ndarray | None,
    threshold: float,
    model_version: str,
    feature_names: Sequence[str],
    fields: Sequence[Mapping[str, Any]] | None = None,
) -> list[tuple[bytes, bytes]]:
    """``(key, JSON)`` messages for the batch events at ``index`` (K,).

    ``prediction``, ``scale`` (N, F) and ``score`` (N,) are the engine's results for the whole
    batch; ``flag`` (N,) is added to each message when given (the scores topic); ``fields`` (K,),
    when given, the input events' fields for the alert's labels.
    """
    idx = np.asarray(index, dtype=np.int64)
    if len(idx) == 0:
        return []
    ts = iso_times(batch.times[idx])
    # The targets only: covariates steer the forecast but are not what an alert is about.
    vals = batch.values[idx, : len(feature_names)].astype(np.float64).tolist()
    preds = np.asarray(prediction, dtype=np.float64)[idx].tolist()
    scales = np.asarray(scale, dtype=np.float64)[idx].tolist()
    scores = np.asarray(score, dtype=np.float64)[idx].tolist()
    flags = np.asarray(flag)[idx].tolist() if flag is not None else None
    parts = batch.partitions[idx].tolist()
    offs = batch.offsets[idx].tolist()
    value_name = "value" if len(feature_names) == 1 else "values"
    out: list[tuple[bytes, bytes]] = []
    for j, i in enumerate(idx.tolist()):
        key = batch.keys[i]
        msg: dict[str, Any] = {
            "key": key,
            "ts": ts[j],
            value_name: _shape(vals[j], feature_names),
            "expected": _shape(preds[j], feature_names),
            "score": scores[j],
            "threshold": threshold,
            "model": model_version,
            "source": {"topic": batch.topics[i], "partition": parts[j], "offset": offs[j]},
            "scale": _shape(scales[j], feature_names),
        }
        if flags is not None:
            msg["flag"] = bool(flags[j])
        if fields is not None:
            msg["fields"] = fields[j]
        out.append((key.encode("utf-8"), orjson.dumps(msg)))
    return out


def dlq_headers(reason: str, detail: str, topic: str, partition: int, offset: int) -> Headers:
    """Headers of a dead letter: why, and where the original came from.

    >>> [name for name, _ in dlq_headers("not_json", "bad", "t", 0, 7)][:2]
    ['streamrnn.reason', 'streamrnn.detail']
    """
    return [
        ("streamrnn.reason", reason.encode()),
        ("streamrnn.detail", detail.encode("utf-8", "replace")),
        ("streamrnn.source.topic", topic.encode()),
        ("streamrnn.source.partition", str(partition).encode()),
        ("streamrnn.source.offset", str(offset).encode()),
    ]


def dead_letters(
    parts: Sequence[Part],
    rejects: Sequence[tuple[int, str, str]],
    headers: Mapping[int, Headers] | None = None,
) -> list[Message]:
    """The dead letters of a poll's ``rejects`` ``(position in the poll, reason, detail)``.

    Positions count the records of ``parts`` in order; ``headers`` are the records' own
    non-empty headers by position, kept in front of the dead-letter headers.

    >>> p = Part("t", 0, [5, 6], [None, None], [b"k", None], [b"{", b"x"])
    >>> [(key, value, hdrs[0]) for key, value, hdrs in dead_letters([p], [(1, "not_json", "x")])]
    [(None, b'x', ('streamrnn.reason', b'not_json'))]
    """
    if not rejects:
        return []
    out: list[Message] = []
    places = _locate(parts, [i for i, _, _ in rejects])
    for (i, reason, detail), (src, pos) in zip(rejects, places, strict=True):
        own = list((headers or {}).get(i) or [])
        out.append(
            (
                src.keys[pos],
                src.values[pos],
                own + dlq_headers(reason, detail, src.topic, src.partition, src.offsets[pos]),
            )
        )
    return out


def _locate(parts: Sequence[Part], positions: Sequence[int]) -> list[tuple[Part, int]]:
    """``(part, position in it)`` of each position in the poll (the records of ``parts`` in
    order)."""
    starts = np.cumsum([0] + [len(p) for p in parts])  # (parts + 1,)
    ks = np.searchsorted(starts, np.asarray(positions, dtype=np.int64), side="right") - 1  # (K,)
    return [(parts[k], i - int(starts[k])) for i, k in zip(positions, ks.tolist(), strict=True)]


def event_fields(
    parts: Sequence[Part], positions: Sequence[int], names: Sequence[str]
) -> list[dict[str, Any]]:
    """The top-level fields ``names`` of the input events at ``positions`` of the poll (absent
    ones are left out): what an alert's labels are made of. Only flagged events are read again,
    so this costs nothing per unflagged event.

    >>> p = Part("t", 0, [5, 6], [None, None], [None, None], [b'{"site": "n", "v": 1}', b"{}"])
    >>> event_fields([p], [0, 1], ["site", "floor"])
    [{'site': 'n'}, {}]
    """
    out: list[dict[str, Any]] = []
    for src, pos in _locate(parts, positions):
        try:
            obj = orjson.loads(src.values[pos] or b"")
        except orjson.JSONDecodeError:  # the decoder accepted it, so this cannot happen
            obj = None
        out.append({n: obj[n] for n in names if n in obj} if isinstance(obj, dict) else {})
    return out
