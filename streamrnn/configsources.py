"""Where config values come from: the file, the environment, the flags; and printing them so.

Precedence, highest first: command-line flags (``overrides``), environment variables, the YAML
file, the defaults. A variable names its key in capitals, ``STREAMRNN_`` in front and ``__``
between levels: ``STREAMRNN_SERVICE__KAFKA__SASL_USERNAME`` is ``service.kafka.sasl_username``,
``STREAMRNN_SERVICE__KAFKA__SASL_PASSWORD__FILE`` is ``service.kafka.sasl_password: {file: ...}``
and ``STREAMRNN_SERVICE__KAFKA__CONSUMER_OPTIONS__FETCH_MIN_BYTES`` is one option of that map.
The text is read as the key's type asks: a number or ``true``/``false`` as YAML reads them, a
list as comma-separated items (or a YAML list ``[a, b]``), a string or a secret as it is; an
empty text sets an optional key to null. Variables without ``__`` are not config keys
(``STREAMRNN_TANSU`` names the broker binary), but ``STREAMRNN_SERVICE_GROUP`` is an error: it
looks like a key with one underscore too few.

>>> r = resolve_config(None, {"service.group": "g"}, {"STREAMRNN_MODEL__CELL": "gru"})
>>> r.config.model.cell, r.source("model.cell"), r.source("service.group"), r.source("model.dropout")
('gru', 'env STREAMRNN_MODEL__CELL', 'flag', 'default')
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from .config import (
    Config,
    ConfigError,
    Label,
    Secret,
    build_section,
    is_section,
    optional_of,
    parse_yaml,
    read_source,
    set_dotted,
    to_plain,
)

__all__ = ["ENV_PREFIX", "Resolved", "dump_annotated", "resolve_config"]

ENV_PREFIX = "STREAMRNN_"


@dataclass(frozen=True)
class Resolved:
    """A config and where each of its values came from.

    ``sources`` maps dotted keys (``service.kafka.sasl_username``; an option of a map as
    ``service.kafka.consumer_options.fetch_min_bytes``) to ``"file"``, ``"env NAME"`` or
    ``"flag"``; a key it does not name kept its default.
    """

    config: Any
    sources: Mapping[str, str]

    def source(self, key: str) -> str:
        return self.sources.get(key, "default")


def _label_for(sources: Mapping[str, str]) -> Label:
    def label(key: str) -> str:
        src = sources.get(key, "")
        return f"{key} (environment variable {src[4:]})" if src.startswith("env ") else key

    return label


def _file_leaves(raw: Mapping[str, Any], cls: type, prefix: str) -> list[str]:
    """The dotted keys the file sets (unknown ones included: they are reported later)."""
    hints = typing.get_type_hints(cls)
    out = []
    for k, v in raw.items():
        tp = hints.get(k)
        if tp is not None and is_section(tp) and isinstance(v, Mapping):
            out += _file_leaves(v, tp, f"{prefix}{k}.")
            continue
        out.append(f"{prefix}{k}")
        if tp is not None and typing.get_origin(tp) is dict and isinstance(v, Mapping):
            out += [f"{prefix}{k}.{opt}" for opt in v]
    return out


def _env_entries(environ: Mapping[str, str], cls: type) -> list[tuple[str, Any, str]]:
    """``(dotted key, value, variable)`` for every config variable in ``environ``, sorted."""
    sections = [f.name for f in dataclasses.fields(cls)]
    out = []
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX):
            continue
        parts = var[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) == 1:
            if any(parts[0].startswith(s + "_") for s in sections):
                raise ConfigError(
                    f"{var}: a config variable puts two underscores between levels "
                    f"(STREAMRNN_SECTION__KEY), got {var}"
                )
            continue  # not a config variable: STREAMRNN_TANSU names the broker binary
        out.append((*_env_target(cls, parts, environ[var], var), var))
    return out


def _env_target(cls: type, parts: list[str], text: str, var: str) -> tuple[str, Any]:
    tp: Any = cls
    path: list[str] = []
    for i, part in enumerate(parts):
        fields = {f.name for f in dataclasses.fields(tp)}
        if part not in fields:
            where = ".".join(path) or "the config"
            raise ConfigError(
                f"{var}: names {'.'.join([*path, part])}, an unknown key "
                f"(known in {where}: {', '.join(sorted(fields))})"
            )
        path.append(part)
        tp = typing.get_type_hints(tp)[part]
        if not is_section(tp):
            return ".".join(path), _env_value(tp, parts[i + 1 :], text, var, ".".join(path))
    raise ConfigError(f"{var}: names the section {'.'.join(path)}, not a key (add __KEY)")


def _env_value(tp: Any, below: list[str], text: str, var: str, key: str) -> Any:
    inner = optional_of(tp)
    if inner is Secret and below in ([], ["env"], ["file"]):
        return text if not below else {below[0]: text}  # the secret's text is never YAML-read
    if typing.get_origin(inner) is dict and len(below) == 1:
        # one entry, merged into the map: a label's text as it is, an option as YAML reads it
        return {below[0]: text if typing.get_args(inner)[1:] == (str,) else _yaml_text(text)}
    if below:
        raise ConfigError(f"{var}: {key} has no key {'.'.join(below)} below it")
    if text == "" and inner is not tp:
        return None
    if inner is str or typing.get_origin(inner) is Literal:
        return text
    if typing.get_origin(inner) in (tuple, list) and not text.lstrip().startswith("["):
        return [item.strip() for item in text.split(",") if item.strip()]
    return _yaml_text(text)


def _yaml_text(text: str) -> Any:
    try:
        return parse_yaml(text)
    except yaml.YAMLError:
        return text  # the key's rule reports it


def resolve_config(
    source: str | Path | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    cls: type = Config,
) -> Resolved:
    """Load and validate a config, and record where each value came from.

    ``source`` is a YAML path, an already-parsed mapping, or None for the defaults.
    ``environ`` (``os.environ`` in the commands; None reads no variables) wins over the file, and
    ``overrides`` (dotted keys to values: the CLI flags; ``None`` values are ignored) win over
    both. A bad value from a variable names the variable.
    """
    raw = read_source(source)
    sources = {k: "file" for k in _file_leaves(raw, cls, "")}
    for key, value, var in _env_entries(environ or {}, cls):
        merge = isinstance(value, dict) and typing.get_origin(_field_type(cls, key)) is dict
        set_dotted(raw, key, value, merge=merge)
        sub = f".{next(iter(value))}" if merge else ""
        sources[key + sub] = f"env {var}"
    for k, v in (overrides or {}).items():
        if v is not None:
            set_dotted(raw, k, v)
            sources[k] = "flag"
    return Resolved(build_section(cls, raw, "", _label_for(sources)), sources)


def _field_type(cls: type, dotted: str) -> Any:
    tp: Any = cls
    for part in dotted.split("."):
        tp = typing.get_type_hints(tp)[part]
    return optional_of(tp)


# ---------------------------------------------------------------------------------------------
# Printing with sources


def dump_annotated(cfg: Any, sources: Mapping[str, str]) -> str:
    """The config as YAML with each value's source as a comment (``# env NAME``), secrets masked.

    >>> print(dump_annotated(Config(), {"model.cell": "flag"}).splitlines()[1])
      cell: lstm  # flag
    """
    lines: list[str] = []
    _dump_annotated(cfg, "", 0, sources, lines)
    return "\n".join(lines) + "\n"


def _flow(value: Any) -> str:
    """One value as inline YAML (``[a, b]``, ``'x: y'``, ``null``)."""
    text = yaml.safe_dump([to_plain(value)], default_flow_style=True, width=1 << 20)
    return text.strip()[1:-1]


def _dump_annotated(
    obj: Any, prefix: str, depth: int, sources: Mapping[str, str], lines: list[str]
) -> None:
    pad = "  " * depth
    for f in dataclasses.fields(obj):
        key, value = prefix + f.name, getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            _dump_annotated(value, key + ".", depth + 1, sources, lines)
        elif isinstance(value, dict) and value:
            lines.append(f"{pad}{f.name}:")
            for opt, v in value.items():
                src = sources.get(f"{key}.{opt}", sources.get(key, "default"))
                lines.append(f"{pad}  {opt}: {_flow(v)}  # {src}")
        else:
            lines.append(f"{pad}{f.name}: {_flow(value)}  # {sources.get(key, 'default')}")
