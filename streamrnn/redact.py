"""Log records never carry a secret's value.

Every secret streamrnn reveals to hand to a Kafka client (:func:`streamrnn.service.kafka_security.reveal`,
the OAUTHBEARER provider's tokens) is registered here, and a log record factory replaces each
registered value with ``***`` in the message, the arguments' text, the traceback and the stack of
every record made in the process, whatever logger made it. That covers what streamrnn does not
control: kafka-python logs its configuration and, at DEBUG, the raw bytes of each request (a PLAIN
login holds the password, an OAUTHBEARER login the token).

Values are matched as text and as the escaped forms ``repr`` gives of the text and of its UTF-8
bytes. Values shorter than three characters are not matched: they would blank out ordinary words.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .secret import MASK

__all__ = ["protect", "protected", "scrub"]

_MIN_LENGTH = 3
_forms: set[str] = set()
_lock = threading.Lock()
_installed = False


def _variants(value: str) -> set[str]:
    return {value, repr(value)[1:-1], repr(value.encode())[2:-1]}


def protect(value: str) -> None:
    """From now on, ``value`` is masked in every log record of this process."""
    global _installed
    if len(value) < _MIN_LENGTH:
        return
    with _lock:
        _forms.update(v for v in _variants(value) if len(v) >= _MIN_LENGTH)
        if not _installed:
            _install()
            _installed = True


def protected(value: str) -> bool:
    with _lock:
        return value in _forms


def scrub(text: str) -> str:
    """``text`` with every protected value replaced by ``***``."""
    with _lock:
        forms = sorted(_forms, key=len, reverse=True)  # longest first: a value inside another
    for form in forms:
        if form in text:
            text = text.replace(form, MASK)
    return text


def _install() -> None:
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _scrub_record(record)
        return record

    logging.setLogRecordFactory(factory)


def _scrub_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: logging reports it later; nothing to scrub
        return
    clean = scrub(message)
    if clean != message:
        record.msg, record.args = clean, ()
    if record.exc_info and record.exc_info[0] is not None:
        record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = scrub(record.stack_info)
