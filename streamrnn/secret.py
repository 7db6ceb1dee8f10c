"""Secrets in the config: passwords and tokens that never show their value.

A :class:`Secret` is written in YAML as the value itself, as ``{env: NAME}`` or as
``{file: PATH}``. Printing it (``str``, ``repr``, a config dump, a log line, ``check-config``)
shows ``***`` or the reference; only :meth:`Secret.reveal` gives the value, and the code that
hands it to a Kafka client is the only caller.
"""

from __future__ import annotations

import hmac
import os
import re
import threading
from typing import Any

__all__ = ["MASK", "Secret", "SecretError", "looks_secret"]

# Names whose values an error message must not show even when the name is unknown (a typo of a
# secret's key is still a secret): pass, pw, secret, token, credential, sasl, and a key's password.
_SECRET_NAME = re.compile(r"pas|pw|secret|token|cred|sasl|auth", re.IGNORECASE)


def looks_secret(name: str) -> bool:
    """Whether a config or option name may hold a secret (then errors show no value).

    >>> looks_secret("sasl_pasword"), looks_secret("fetch_min_bytes")
    (True, False)
    """
    return _SECRET_NAME.search(name) is not None


class SecretError(ValueError):
    """A secret could not be read (its variable is unset, its file unreadable or empty)."""


#: What a secret given as its value prints instead of itself.
MASK = "***"


class Secret:
    """A password or token that never shows itself.

    Three forms: the value itself, ``Secret(env="NAME")`` (read from the environment variable when
    revealed) or ``Secret(file="PATH")`` (read from the file, one trailing newline dropped, and
    read again whenever the file changes: rotated Kubernetes Secrets and projected tokens).
    ``str``, ``repr`` and the config's dump show ``***`` or the reference; :meth:`reveal` is the
    only way to the value.

    >>> s = Secret("hunter2")
    >>> s, str(s), s.describe()
    (Secret('***'), '***', '***')
    >>> s.reveal()
    'hunter2'
    >>> Secret(env="KAFKA_PASSWORD").describe()
    {'env': 'KAFKA_PASSWORD'}
    """

    __slots__ = ("_cache", "_lock", "_value", "env", "file")

    def __init__(
        self, value: str | None = None, *, env: str | None = None, file: str | None = None
    ) -> None:
        if sum(x is not None for x in (value, env, file)) != 1:
            raise ValueError("Secret takes exactly one of a value, env= or file=")
        self._value = value
        self.env = env
        self.file = file
        self._cache: tuple[tuple[int, int, int], str] | None = None
        self._lock = threading.Lock()

    def reveal(self) -> str:
        """The secret's value; raises :class:`SecretError` (never showing a value) when unreadable."""
        if self._value is not None:
            return self._value
        if self.env is not None:
            text = os.environ.get(self.env)
            if not text:
                raise SecretError(f"environment variable {self.env} must be set and not empty")
            return text
        return self._read_file()

    def _read_file(self) -> str:
        path = str(self.file)
        with self._lock:
            try:
                st = os.stat(path)
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
                if self._cache is not None and self._cache[0] == stamp:
                    return self._cache[1]
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except (OSError, UnicodeDecodeError) as e:
                raise SecretError(f"file {path!r} must be readable UTF-8 text ({e})") from None
            text = text[:-1] if text.endswith("\n") else text
            text = text[:-1] if text.endswith("\r") else text
            if not text:
                raise SecretError(f"file {path!r} must not be empty")
            self._cache = (stamp, text)
            return text

    def describe(self) -> Any:
        """What printing shows: ``***`` for a value, the ``{env: ...}`` or ``{file: ...}`` reference."""
        if self.env is not None:
            return {"env": self.env}
        if self.file is not None:
            return {"file": self.file}
        return MASK

    def _key(self) -> tuple[str | None, str | None, str | None]:
        return (self._value, self.env, self.file)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        mine, theirs = self._key(), other._key()
        if mine[1:] != theirs[1:]:
            return False
        return hmac.compare_digest((mine[0] or "").encode(), (theirs[0] or "").encode())

    def __hash__(self) -> int:
        return hash((self.env, self.file))

    def __repr__(self) -> str:
        return f"Secret({self.describe()!r})"

    def __str__(self) -> str:
        return str(self.describe())

    def __getstate__(self) -> dict[str, Any]:
        return {"_value": self._value, "env": self.env, "file": self.file}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["_value"], env=state["env"], file=state["file"])  # type: ignore[misc]

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self  # immutable: dataclasses.asdict and copies share it
