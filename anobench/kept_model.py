"""A cell's kept model: what fit() produced, written beside its record, loaded back to score.

Two files in the cell folder:
  model.safetensors  the method's `trained_state()` and the tensors of its `scoring_state()`
                     (safetensors holds tensors only: loading never unpickles anything);
  model.json         the rest of the scoring state, and the identity the model was made under:
                     the cell, its variant and resolved config, the backbone (timm name, weights
                     tag, pretrained, the weights file's sha256, a fingerprint of the frozen
                     backbone), the anobench version, the size and sha256 of model.safetensors.
A frozen backbone is never kept: loading rebuilds it from the config (timm name and weights, or
random weights drawn from the cell's seed exactly as the run drew them) and refuses one whose
fingerprint differs from what the model was trained on. A model is loaded only for the cell
whose record names the same setting, data and run, and only by the anobench version that made it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import struct
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from anobench.backbones import BackboneConfig, FeatureExtractor
from anobench.config import backbone_config, method_config
from anobench.errors import AnobenchError
from anobench.hardware import Hardware, seed_everything
from anobench.identity import identity_config, weights_sha256
from anobench.methods import Method, MethodContext, create_method, method_entry
from anobench.results import package_versions, read_record, write_bytes_atomic, write_json_atomic

MODEL_FILE = "model.safetensors"
MODEL_INFO_FILE = "model.json"
MODEL_SCHEMA = 1
TRAINED = "trained/"  # name prefixes in model.safetensors
SCORING = "scoring/"
CELL_KEYS = ("dataset", "method", "backbone", "category", "seed", "variant")


class KeptModelError(AnobenchError):
    """A kept model that is missing, damaged, or not the model of what is asked for."""


@dataclass(frozen=True)
class KeptModel:
    """A method rebuilt from a cell's kept model, with what model.json says about it."""

    method: Method
    info: dict[str, Any]  # model.json
    method_cfg: Any  # the method's config dataclass (scoring overrides applied)
    backbone_cfg: BackboneConfig


# --- writing -------------------------------------------------------------------------------------


def _modules(method: Method) -> list[nn.Module]:
    """The nn.Modules a method holds, each once (a compiled forward shares its module)."""
    found: dict[int, nn.Module] = {}
    for value in vars(method).values():
        if isinstance(value, nn.Module):
            found.setdefault(id(value), value)
    return list(found.values())


def frozen_fingerprint(method: Method) -> str | None:
    """sha256 of the frozen backbones' tensors (names, dtypes, shapes, bytes); None if none.

    A backbone counts as frozen when none of its parameters trains: it is rebuilt, not kept.
    """
    extractors: dict[int, FeatureExtractor] = {}
    for module in _modules(method):
        for sub in module.modules():
            if isinstance(sub, FeatureExtractor) and not any(
                p.requires_grad for p in sub.parameters()
            ):
                extractors.setdefault(id(sub), sub)
    if not extractors:
        return None
    digest = hashlib.sha256()
    for extractor in extractors.values():
        for name, tensor in extractor.state_dict().items():
            flat = tensor.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}\n".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _cpu(tensor: Tensor) -> Tensor:
    # a copy of its own: safetensors refuses tensors that share storage
    return tensor.detach().to("cpu", copy=True).contiguous()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_kept_model(cell_dir: Path, method: Method, header: dict[str, Any]) -> int:
    """Write model.safetensors, then model.json (atomically); return their bytes together.

    `header`: the cell fields, its identity fields (`CellIdentity.record_fields`), `started`
    (the run's start, as in its record) and the resolved `config`.
    """
    scoring = method.scoring_state()
    tensors = {TRAINED + name: _cpu(value) for name, value in method.trained_state().items()}
    tensors |= {SCORING + k: _cpu(v) for k, v in scoring.items() if isinstance(v, Tensor)}
    data = safetensors.torch.save(tensors, metadata={"format": "pt", "anobench": "kept model"})
    config = header["config"]
    backbone = config["backbone"]
    name = str(backbone["name"])
    info = {
        "schema": MODEL_SCHEMA,
        **header,
        "backbone_model": {
            "timm_name": name,
            "architecture": name.partition(".")[0],
            "weights_tag": name.partition(".")[2] or None,
            "pretrained": bool(backbone.get("pretrained", True)),
            "weights": backbone.get("weights"),
            "weights_sha256": (header.get("identity") or {}).get("weights_sha256"),
            "frozen_sha256": frozen_fingerprint(method),
        },
        "scoring": {k: v for k, v in scoring.items() if not isinstance(v, Tensor)},
        "tensors": {
            "file": MODEL_FILE,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "count": len(tensors),
        },
        "versions": package_versions(),
        "written": _now(),
    }
    write_bytes_atomic(cell_dir / MODEL_FILE, data)
    write_json_atomic(cell_dir / MODEL_INFO_FILE, info)
    return len(data) + (cell_dir / MODEL_INFO_FILE).stat().st_size


# --- checking ------------------------------------------------------------------------------------


def _safetensors_problem(path: Path, expected_bytes: Any) -> str | None:
    """Why a safetensors file is damaged, from its size and header alone (cheap)."""
    size = path.stat().st_size
    if isinstance(expected_bytes, int) and size != expected_bytes:
        return f"is {size} bytes but {MODEL_INFO_FILE} says {expected_bytes} (truncated?)"
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > size - 8:
                return "has a header longer than the file (truncated?)"
            header = json.loads(handle.read(length))
        ends = [entry["data_offsets"][1] for k, entry in header.items() if k != "__metadata__"]
    except (OSError, struct.error, ValueError, KeyError, TypeError, IndexError) as err:
        return f"has no readable safetensors header ({type(err).__name__})"
    if 8 + length + max(ends, default=0) != size:
        return "ends before its last tensor (truncated?)"
    return None


def kept_model_problem(cell_dir: Path) -> str | None:
    """Why a cell's kept model is damaged (cheap: sizes and headers); None if whole or absent."""
    tensors, info_path = cell_dir / MODEL_FILE, cell_dir / MODEL_INFO_FILE
    if not tensors.exists() and not info_path.exists():
        return None
    if not info_path.exists():
        return f"{tensors} has no {MODEL_INFO_FILE} beside it"
    info = read_record(info_path)
    if info is None or not isinstance(info.get("tensors"), dict):
        return f"{info_path} is not a readable model description"
    if not tensors.exists():
        return f"{info_path} names {MODEL_FILE}, which is missing"
    problem = _safetensors_problem(tensors, info["tensors"].get("bytes"))
    return None if problem is None else f"{tensors} {problem}"


def _flat_differences(model: dict[str, Any], cell: dict[str, Any], sha: str | None) -> list[str]:
    ours, theirs = identity_config(model, sha), identity_config(cell, sha)
    return [
        f"{key}: {ours.get(key)!r} in the model, {theirs.get(key)!r} in the cell"
        for key in sorted(set(ours) | set(theirs))
        if ours.get(key) != theirs.get(key)
    ]


def model_mismatch(info: dict[str, Any], record: dict[str, Any] | None) -> str | None:
    """Why a model.json cannot be loaded (for the cell of `record`); None when it can."""
    if info.get("schema") != MODEL_SCHEMA:
        return f"has model schema {info.get('schema')!r}; this anobench reads {MODEL_SCHEMA}"
    made = (info.get("versions") or {}).get("anobench")
    current = metadata.version("anobench")
    if made != current:
        return (
            f"was made by anobench {made}, this is anobench {current}; load it with anobench "
            f"{made}, or rerun its cell with overwrite=true to train a model with this version"
        )
    if not isinstance(info.get("config"), dict) or not isinstance(info.get("identity"), dict):
        return "holds no config or identity"
    if record is None:
        return None
    reasons = [
        f"{key} {info.get(key)!r} in the model, {record.get(key)!r} in the cell"
        for key in CELL_KEYS
        if info.get(key) != record.get(key, "" if key == "variant" else None)
    ]
    if isinstance(record.get("config"), dict):
        sha = info["identity"].get("weights_sha256")
        reasons += _flat_differences(info["config"], record["config"], sha)
    identity = record.get("identity") if isinstance(record.get("identity"), dict) else {}
    if not reasons and info["identity"].get("hash") != identity.get("hash"):
        reasons.append("it was trained on other data than the cell's record was measured on")
    if not reasons and info.get("started") != record.get("started"):
        reasons.append(
            f"it was written by the run started {info.get('started')}, the record by the run "
            f"started {record.get('started')}"
        )
    return None if not reasons else "is not this cell's model (" + "; ".join(reasons) + ")"


def read_model_info(cell_dir: Path) -> dict[str, Any]:
    """The cell's model.json; KeptModelError when there is none or it is damaged."""
    path = cell_dir / MODEL_INFO_FILE
    if not path.exists() and not (cell_dir / MODEL_FILE).exists():
        raise KeptModelError(
            f"{cell_dir} holds no kept model ({MODEL_FILE}); rerun its cell with save_model=true "
            "overwrite=true to keep one."
        )
    problem = kept_model_problem(cell_dir)
    if problem is not None:
        raise KeptModelError(
            f"{problem}; the next `anobench run` of this cell (save_model=true) recomputes it."
        )
    info = read_record(path)
    assert info is not None  # kept_model_problem read it
    return info


# --- loading -------------------------------------------------------------------------------------


def _scored_config(info: dict[str, Any], scoring: dict[str, Any]) -> dict[str, Any]:
    """The model's config with method scoring keys changed (only keys the method allows)."""
    config = copy.deepcopy(info["config"])
    name = str(config["method"]["name"])
    allowed = method_entry(name).scoring_keys
    for key, value in scoring.items():
        if key not in allowed:
            shown = ", ".join(f"method.{k}" for k in allowed) or "none"
            raise KeptModelError(
                f"method.{key} cannot change without retraining {name}; its scoring keys are "
                f"{shown}."
            )
        config["method"][key] = value
    return config


def _check_weights(backbone: BackboneConfig, info: dict[str, Any]) -> None:
    recorded = info["identity"].get("weights_sha256")
    if not backbone.weights:
        return
    path = Path(backbone.weights).expanduser()
    if not path.is_file():
        raise KeptModelError(
            f"backbone.weights={backbone.weights}, the weights file this model's backbone was "
            "built from, does not exist here; give the same file with --weights PATH."
        )
    if recorded and weights_sha256(path) != recorded:
        raise KeptModelError(
            f"backbone.weights={path} is not the file this model was trained with (its sha256 "
            f"differs from {recorded[:12]}...); give that file with --weights PATH."
        )


def _read_tensors(cell_dir: Path, info: dict[str, Any]) -> dict[str, Tensor]:
    data = (cell_dir / MODEL_FILE).read_bytes()
    if hashlib.sha256(data).hexdigest() != info["tensors"].get("sha256"):
        raise KeptModelError(
            f"{cell_dir / MODEL_FILE} does not have the sha256 {MODEL_INFO_FILE} records (a "
            "damaged or replaced file); the next `anobench run` of this cell recomputes it."
        )
    return safetensors.torch.load(data)


def load_kept_model(
    cell_dir: Path,
    hardware: Hardware,
    *,
    record: dict[str, Any] | None = None,
    scoring: dict[str, Any] | None = None,
    weights: Path | None = None,
    progress: bool = False,
) -> KeptModel:
    """Rebuild the method of a cell's kept model on `hardware`, ready to predict.

    Args:
        record: the cell's metrics.json, when there is one: the model must be of that cell.
        scoring: method keys to change (only its scoring keys), e.g. {"image_score": "max"}.
        weights: the backbone's weights file at another path than the one recorded.
    """
    info = read_model_info(cell_dir)
    reason = model_mismatch(info, record)
    if reason is not None:
        raise KeptModelError(f"{cell_dir / MODEL_INFO_FILE} {reason}.")
    cfg = OmegaConf.create(_scored_config(info, scoring or {}))
    method_cfg = method_config(cfg)
    backbone_cfg = backbone_config(cfg)
    if weights is not None:
        backbone_cfg = replace(backbone_cfg, weights=str(weights))
    _check_weights(backbone_cfg, info)
    seed = int(info["seed"])
    seed_everything(seed)  # random backbone weights are drawn as the run drew them
    context = MethodContext(
        hardware=hardware,
        backbone=backbone_cfg,
        seed=seed,
        category=info.get("category"),
        progress=progress,
        cache_features=False,
    )
    method = create_method(str(info["method"]), method_cfg, context)
    expected = (info.get("backbone_model") or {}).get("frozen_sha256")
    found = frozen_fingerprint(method)
    if found != expected:
        raise KeptModelError(
            f"the rebuilt backbone {backbone_cfg.name} is not the one the model in {cell_dir} "
            f"was trained with (frozen weights {str(found)[:12]} here, {str(expected)[:12]} "
            "then): the hub's weights for that tag changed, or another torch/timm version draws "
            "random weights differently; use the versions model.json lists."
        )
    tensors = _read_tensors(cell_dir, info)
    trained = {k.removeprefix(TRAINED): v for k, v in tensors.items() if k.startswith(TRAINED)}
    state = dict(info.get("scoring") or {})
    state |= {k.removeprefix(SCORING): v for k, v in tensors.items() if k.startswith(SCORING)}
    try:
        method.load_state(trained, state)
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        raise KeptModelError(
            f"{cell_dir / MODEL_FILE} does not fit the {info['method']} network its config "
            f"builds ({str(err).splitlines()[0][:200]}); rerun the cell with overwrite=true."
        ) from err
    return KeptModel(method, info, method_cfg, backbone_cfg)
