"""Messages the broker will never take: which send errors are worth retrying, and what replaces
a message that cannot be sent as it is.

Every failed send is classified (:func:`classify`):

* ``retriable``: the broker is away or busy (timeouts, lost connections, leader changes,
  anything not named below). Sent again with backoff, as before.
* ``fatal``: the message itself can never succeed (:data:`FATAL_TO_MESSAGE`: too large,
  invalid or corrupt record, invalid topic). Retrying it would stall its partition for good,
  so it is replaced at once (:func:`remedy`) and the partition moves on.
* ``producer``: the producer's idempotence state is gone from the broker (the broker lost its
  data, or expired the producer id): no send of this producer will succeed again, but a new
  producer's will. The publisher asks for a new producer, then sends again.

What replaces a message that cannot be sent:

* a dead letter is cut to fit (:func:`cut`): its value is shortened, and the headers
  ``streamrnn.truncated: true`` and ``streamrnn.original_size`` say so; a dead letter that is
  refused again is cut to a quarter, and at last sent without a value;
* an alert or score message becomes a dead letter (reason ``unpublishable``, its intended
  topic in ``streamrnn.topic``), cut the same way.

Each replacement is counted by the error's reason (:data:`FATAL_REASONS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "FATAL_REASONS",
    "Kind",
    "classify",
    "cut",
    "fatal_reason",
    "record_size",
    "remedy",
]

Kind = Literal["retriable", "fatal", "producer"]
Headers = list[tuple[str, bytes]]
#: (topic, key, value, headers): one message to send.
Message = tuple[str, bytes | None, bytes | None, Headers | None]

#: kafka-python's error class names fatal to one message, and the reason each is counted under.
FATAL_TO_MESSAGE: dict[str, str] = {
    "MessageSizeTooLargeError": "message_too_large",
    "RecordListTooLargeError": "message_too_large",
    "InvalidRecordError": "invalid_record",
    "CorruptRecordError": "invalid_record",
    "InvalidTopicError": "invalid_topic",
}
#: Label values of ``streamrnn_unsendable_messages_total``.
FATAL_REASONS: tuple[str, ...] = tuple(dict.fromkeys(FATAL_TO_MESSAGE.values()))
#: Errors after which this producer cannot send again (its producer id is unknown to the broker).
PRODUCER_STATE: frozenset[str] = frozenset(
    {
        "UnknownProducerIdError",
        "OutOfOrderSequenceNumberError",
        "InvalidProducerEpochError",
        "InvalidProducerIdMappingError",
        "ProducerFencedError",
    }
)
# A dead letter refused even without a value cannot be sent at all; below this a cut value is
# dropped entirely rather than quartered again.
_MIN_VALUE = 1024
# Room left for what a cut adds (two headers) and for the record's varint lengths.
_SLACK = 256


def _names(error: BaseException | None) -> set[str]:
    return {c.__name__ for c in type(error).__mro__} if error is not None else set()


def classify(error: BaseException | None) -> Kind:
    """How a failed send is handled.

    >>> from kafka.errors import MessageSizeTooLargeError, KafkaTimeoutError, UnknownProducerIdError
    >>> classify(MessageSizeTooLargeError()), classify(KafkaTimeoutError()), classify(None)
    ('fatal', 'retriable', 'retriable')
    >>> classify(UnknownProducerIdError())
    'producer'
    """
    names = _names(error)
    if names & FATAL_TO_MESSAGE.keys():
        return "fatal"
    if names & PRODUCER_STATE or "InitProducerId" in str(error):
        return "producer"
    return "retriable"


def fatal_reason(error: BaseException | None) -> str:
    """The counted reason of a fatal error (``message_too_large``, ...)."""
    for name in _names(error):
        if name in FATAL_TO_MESSAGE:
            return FATAL_TO_MESSAGE[name]
    return "invalid_record"


def record_size(key: bytes | None, value: bytes | None, headers: Headers | None) -> int:
    """The size kafka-python checks against ``max_request_size`` (an upper bound)."""
    from kafka.record.default_records import DefaultRecordBatchBuilder

    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers or []))


def _header(headers: Headers | None, name: str) -> bytes | None:
    return next((v for k, v in headers or [] if k == name), None)


def cut(msg: Message, limit: int) -> Message:
    """``msg`` with its value shortened so that the record fits ``limit`` bytes; unchanged when it
    fits already. The first cut adds ``streamrnn.truncated`` and ``streamrnn.original_size``.

    >>> m = cut(("dlq", b"k", b"x" * 5000, [("streamrnn.reason", b"not_json")]), 2000)
    >>> len(m[2]) < 2000, [name for name, _ in m[3]]
    (True, ['streamrnn.reason', 'streamrnn.truncated', 'streamrnn.original_size'])
    """
    topic, key, value, headers = msg
    if record_size(key, value, headers) <= limit:
        return msg
    hdrs = list(headers or [])
    if _header(hdrs, "streamrnn.truncated") is None:
        size = len(value) if value is not None else 0
        hdrs += [("streamrnn.truncated", b"true"), ("streamrnn.original_size", str(size).encode())]
    room = limit - record_size(key, b"", hdrs) - _SLACK
    if value is None or room < _MIN_VALUE:
        return (topic, key, None, hdrs)
    return (topic, key, value[:room], hdrs)


@dataclass
class Remedy:
    """What replaces a message the broker refused for good; ``message`` None: nothing can."""

    message: Message | None
    reason: str


def remedy(msg: Message, error: BaseException | None, *, dlq_topic: str, limit: int) -> Remedy:
    """The replacement of ``msg``, refused with the fatal ``error``: a dead letter cut smaller
    (down to no value), or an alert or score message as a dead letter of reason
    ``unpublishable``. ``limit`` is the producer's ``max_request_size``.

    >>> from kafka.errors import MessageSizeTooLargeError
    >>> r = remedy(("alerts", b"k", b"x" * 9000, None), MessageSizeTooLargeError(), dlq_topic="dlq", limit=4000)
    >>> r.reason, r.message[0], dict(r.message[3])["streamrnn.reason"], len(r.message[2]) < 4000
    ('message_too_large', 'dlq', b'unpublishable', True)
    """
    topic, key, value, headers = msg
    reason = fatal_reason(error)
    if topic != dlq_topic:
        detail = f"{topic} refused the message: {error!r}"[:300]
        hdrs = list(headers or []) + [
            ("streamrnn.reason", b"unpublishable"),
            ("streamrnn.detail", detail.encode("utf-8", "replace")),
            ("streamrnn.topic", topic.encode()),
        ]
        return Remedy(cut((dlq_topic, key, value, hdrs), limit), reason)
    if value is None:
        return Remedy(None, reason)  # refused without a value: the dead-letter topic is unusable
    shorter = len(value) // 4
    hdrs = list(headers or [])
    if _header(hdrs, "streamrnn.truncated") is None:
        hdrs += [
            ("streamrnn.truncated", b"true"),
            ("streamrnn.original_size", str(len(value)).encode()),
        ]
    return Remedy((topic, key, value[:shorter] if shorter >= _MIN_VALUE else None, hdrs), reason)


def max_request_size(producer: Any, default: int = 1_048_576) -> int:
    """The producer's ``max_request_size`` (kafka-python's config), else ``default``."""
    config = getattr(producer, "config", None)
    try:
        return int(config["max_request_size"]) if config is not None else default
    except (KeyError, TypeError, ValueError):
        return default
