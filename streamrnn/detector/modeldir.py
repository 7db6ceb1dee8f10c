"""The model directory: what training writes and replay / the service load.

Layout::

    MODEL_DIR/
      weights.pt          the forecaster's state_dict (loadable with torch.load(weights_only=True))
      config.yaml         the resolved configuration the model was trained with
      model.json          version id, creation time, architecture, feature (target) names,
                          covariate names (absent: none), training metrics
      normalization.json  the online normaliser's settings and the training data's mean/std

The version id is ``<cell>-<12 hex>``: the cell type and a short sha256 over the weights file's
bytes and the config text, so the same weights trained with the same config get the same id.
``model.json`` also records the sha256 of ``weights.pt``; loading checks it, so weights that do
not belong to the rest of the directory are refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..config import Config, ConfigError, dump_config, load_config, read_yaml
from .features import N_CALENDAR, STD_ABS_FLOOR, STD_REL_FLOOR
from .model import Forecaster

logger = logging.getLogger(__name__)

WEIGHTS = "weights.pt"
CONFIG = "config.yaml"
# What a model directory's config.yaml contributes: the network, its inputs and how it was trained.
MODEL_SECTIONS = ("model", "features", "training", "input")
INFO = "model.json"
NORMALIZATION = "normalization.json"
FORMAT = 1


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` (cuda when available, else cpu), ``cpu``, ``cuda`` or ``cuda:N`` as a torch device."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(
                f"state.device: cuda requested but no CUDA device is available, got {name!r}"
            )
        if name != "cuda" and int(name[5:]) >= torch.cuda.device_count():
            raise ValueError(
                f"state.device: only {torch.cuda.device_count()} CUDA device(s) available, got {name!r}"
            )
        return torch.device(name)
    raise ValueError(f"state.device: must be auto, cpu, cuda or cuda:N, got {name!r}")


def _weights_bytes(model: Forecaster) -> bytes:
    buf = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, buf)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _json_safe(x: Any) -> Any:
    """Non-finite floats become null (JSON has no NaN); tuples become lists."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def save_model(
    out_dir: str | Path,
    model: Forecaster,
    config: Config,
    *,
    feature_names: Sequence[str],
    metrics: Mapping[str, Any],
    data_summary: Mapping[str, Any],
    covariate_names: Sequence[str] = (),
) -> str:
    """Write the model directory (created when missing; our files replaced). Returns the version id.

    ``data_summary`` is stored in model.json under ``data``; its ``feature_mean`` and
    ``feature_std`` (feature name -> number) go to normalization.json for reference.
    ``feature_names`` are the targets the model predicts; ``covariate_names`` the inputs it
    takes beside them (recorded in model.json only when there are any, so a directory without
    covariates reads as before).
    """
    names = tuple(feature_names)
    covariates = tuple(covariate_names)
    if len(names) != model.n_values:
        raise ValueError(
            f"feature_names: the model predicts {model.n_values} feature(s), got {list(names)}"
        )
    if len(covariates) != model.n_covariates:
        raise ValueError(
            f"covariate_names: the model takes {model.n_covariates} covariate(s), "
            f"got {list(covariates)}"
        )
    if model.cell_type != config.model.cell or model.hidden_size != config.model.hidden_size:
        raise ValueError(
            f"model ({model.cell_type}, hidden {model.hidden_size}) does not match config.model "
            f"({config.model.cell}, hidden {config.model.hidden_size})"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = _weights_bytes(model)
    config_text = dump_config(config)
    digest = hashlib.sha256(weights + b"\0" + config_text.encode()).hexdigest()
    version = f"{config.model.cell}-{digest[:12]}"
    info = {
        "format": FORMAT,
        "version": version,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "streamrnn_version": __version__,
        "cell": config.model.cell,
        "hidden_size": config.model.hidden_size,
        "num_layers": config.model.num_layers,
        "feature_names": list(names),
        **({"covariate_names": list(covariates)} if covariates else {}),
        "n_extra": N_CALENDAR if config.model.calendar else 0,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "metrics": dict(metrics),
        "data": dict(data_summary),
    }
    means = data_summary.get("feature_mean") or {}
    stds = data_summary.get("feature_std") or {}
    norm = {
        "method": "online",
        "warmup": config.features.normalizer_warmup,
        "horizon": config.features.normalizer_horizon,
        "clip": config.features.clip,
        "std_floor": {"relative": STD_REL_FLOOR, "absolute": STD_ABS_FLOOR},
        "training_data": {
            n: {"mean": means.get(n), "std": stds.get(n)} for n in names + covariates
        },
    }
    _write(out / WEIGHTS, weights)
    _write(out / CONFIG, config_text.encode())
    _write(out / NORMALIZATION, (json.dumps(_json_safe(norm), indent=2) + "\n").encode())
    _write(out / INFO, (json.dumps(_json_safe(info), indent=2) + "\n").encode())
    logger.info("saved model %s to %s", version, out)
    return version


@dataclass
class ModelInfo:
    """What a model directory says about its model, read without loading the weights."""

    path: Path
    config: Config
    version: str
    feature_names: tuple[str, ...]
    info: dict[str, Any]
    # The inputs beside the targets, in order; empty for a model without covariates.
    covariate_names: tuple[str, ...]


@dataclass
class LoadedModel(ModelInfo):
    """A forecaster ready for inference, with what it was trained with."""

    model: Forecaster


def read_model_info(model_dir: str | Path) -> ModelInfo:
    """Check a model directory's files and read its config and ``model.json`` (not the weights);
    raises ValueError (or ConfigError for its config.yaml) naming the file and what is wrong."""
    d = Path(model_dir)
    if not d.is_dir():
        raise ValueError(f"model directory {str(d)!r}: not found")
    for name in (WEIGHTS, CONFIG, INFO):
        if not (d / name).is_file():
            raise ValueError(f"model directory {str(d)!r}: missing {name}")
    try:
        # The sections that define the model; scoring, state and the service are the user's.
        raw = read_yaml(d / CONFIG)
        config = load_config({k: raw[k] for k in MODEL_SECTIONS if k in raw})
    except ConfigError as e:
        raise ConfigError(f"{d / CONFIG}: {e}") from e
    try:
        info = json.loads((d / INFO).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{d / INFO}: corrupt model.json ({e})") from e
    if not isinstance(info, dict):
        raise ValueError(f"{d / INFO}: corrupt model.json (must be an object)")
    names = info.get("feature_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(
            f"{d / INFO}: feature_names must be a non-empty list of strings, got {names!r}"
        )
    covs = info.get("covariate_names", [])
    if not isinstance(covs, list) or not all(isinstance(n, str) and n for n in covs):
        raise ValueError(f"{d / INFO}: covariate_names must be a list of names, got {covs!r}")
    clash = sorted(set(covs) & set(names)) or sorted({n for n in covs if covs.count(n) > 1})
    if clash:
        raise ValueError(f"{d / INFO}: covariate {clash[0]!r} named twice or also a target")
    version = info.get("version")
    if not isinstance(version, str) or not version:
        raise ValueError(f"{d / INFO}: version must be a non-empty string, got {version!r}")
    for key, want in (
        ("cell", config.model.cell),
        ("hidden_size", config.model.hidden_size),
        ("num_layers", config.model.num_layers),
    ):
        if key in info and info[key] != want:
            raise ValueError(
                f"{d}: model.json says {key}={info[key]!r} but config.yaml says {want!r}"
            )
    return ModelInfo(d, config, version, tuple(names), info, tuple(covs))


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model directory written by :func:`save_model`; the model is in eval mode on ``device``."""
    meta = read_model_info(model_dir)
    d, config, version, names, info = (
        meta.path,
        meta.config,
        meta.version,
        meta.feature_names,
        meta.info,
    )
    dev = resolve_device(device)

    raw = (d / WEIGHTS).read_bytes()
    want_sha = info.get("weights_sha256")
    if want_sha is not None and hashlib.sha256(raw).hexdigest() != want_sha:
        raise ValueError(f"{d / WEIGHTS}: corrupt or replaced (sha256 does not match model.json)")
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged archive
        raise ValueError(f"{d / WEIGHTS}: corrupt weights file ({e})") from e
    if not isinstance(state, dict):
        raise ValueError(f"{d / WEIGHTS}: corrupt weights file (not a state_dict)")

    n_extra = N_CALENDAR if config.model.calendar else 0
    model = Forecaster(
        config.model, n_values=len(names), n_extra=n_extra, n_covariates=len(meta.covariate_names)
    )
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{d / WEIGHTS}: weights do not fit the configured model ({e})") from e
    model.to(dev).eval()
    logger.info("loaded model %s from %s on %s", version, d, dev)
    return LoadedModel(**vars(meta), model=model)
