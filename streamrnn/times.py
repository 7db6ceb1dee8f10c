"""Timestamps: the one place where text becomes epoch seconds and epoch seconds become text.

Every event time inside streamrnn is float64 epoch seconds, UTC. Text comes in as ISO 8601
(naive means UTC; ``Z`` or an offset otherwise) or as an epoch number, seconds or milliseconds:
a number above :data:`MS_THRESHOLD` (about year 5138 in seconds, 1973 in milliseconds) is read as
milliseconds. Text goes out as ISO 8601 UTC with a ``Z``.

>>> parse_timestamp("2024-01-01T00:00:00Z") == parse_timestamp("1704067200000")
True
>>> iso_utc(1704067200.0), iso_times(np.array([1704067200.25]))
('2024-01-01T00:00:00Z', ['2024-01-01T00:00:00.250Z'])
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np

__all__ = [
    "MS_THRESHOLD",
    "datetime64_texts",
    "iso_times",
    "iso_utc",
    "parse_iso",
    "parse_timestamp",
]

MS_THRESHOLD = 1e11  # epoch numbers above this are milliseconds
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse_iso(text: str) -> datetime:
    """An aware UTC-or-offset datetime from ISO 8601 text; naive text is taken as UTC.

    >>> parse_iso("2024-01-01 06:00:00+02:00").astimezone(timezone.utc).hour
    4
    >>> parse_iso("2024-01-01T00:00:00Z").tzinfo
    datetime.timezone.utc
    """
    s = text.strip()
    if s and s[-1] in "Zz":
        s = s[:-1] + "+00:00"
    dt = datetime.fromisoformat(s)
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)


def parse_timestamp(text: str) -> float:
    """Epoch seconds UTC from ISO 8601 text or an epoch number (seconds, or ms above 1e11).

    >>> parse_timestamp("1970-01-01T00:01:00Z"), parse_timestamp("60"), parse_timestamp("1436538240000")
    (60.0, 60.0, 1436538240.0)
    """
    s = text.strip()
    if not s:
        raise ValueError("empty timestamp")
    if s[0].isdigit() or s[0] in "+-.":
        try:
            v = float(s)
        except ValueError:
            pass
        else:
            if not math.isfinite(v):
                raise ValueError(f"timestamp must be finite, got {text!r}")
            return v / 1000.0 if abs(v) > MS_THRESHOLD else v
    return parse_iso(s).timestamp()


def iso_utc(t: float) -> str:
    """Epoch seconds as ISO 8601 UTC text with ``Z``; milliseconds only when there are some.

    >>> iso_utc(0.0), iso_utc(1704067200.25)
    ('1970-01-01T00:00:00Z', '2024-01-01T00:00:00.250Z')
    """
    ms = int(round(t * 1000.0))
    text = (_EPOCH + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{ms % 1000:03d}Z" if ms % 1000 else f"{text}Z"


def iso_times(times: np.ndarray) -> list[str]:
    """ISO 8601 UTC texts with milliseconds for epoch seconds (N,), vectorised.

    >>> iso_times(np.array([0.0, 1700000000.25]))
    ['1970-01-01T00:00:00.000Z', '2023-11-14T22:13:20.250Z']
    """
    ms = np.round(np.asarray(times, dtype=np.float64) * 1000.0).astype(np.int64)  # (N,)
    text = np.datetime_as_string(ms.astype("datetime64[ms]"), unit="ms")  # (N,)
    return [s + "Z" for s in text.tolist()]


def datetime64_texts(ts: np.ndarray) -> list[str]:
    """``YYYY-MM-DD HH:MM:SS`` texts of datetime64 times (N,), with ``.fff`` only if some are
    sub-second (the CSV files' format).

    >>> datetime64_texts(np.array(["2024-01-01T00:00:00", "2024-01-01T00:05:00"], dtype="datetime64[ms]"))
    ['2024-01-01 00:00:00', '2024-01-01 00:05:00']
    """
    ms = ts.astype("datetime64[ms]")
    whole = (ms.astype(np.int64) % 1000 == 0).all()
    text = np.datetime_as_string(ms, unit="s" if whole else "ms")
    return [t.replace("T", " ") for t in text.tolist()]
