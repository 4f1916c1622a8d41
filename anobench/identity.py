"""A cell's identity: everything that changes its numbers, the variant folder it names, its match.

The identity of a cell is
  - its dataset, method and backbone names (folders of the results tree),
  - its *variant*: the resolved config, minus the keys in NOT_IDENTITY, compared with the
    method's reference setting (`anobench run method=<m>`; for runs on the synthetic data also
    `experiment=demo method=<m>`, when that is closer); the keys that differ are its
    `overrides`, and a short hash of them (with the method and the reference) names the variant
    ("" when there are none: the reference setting keeps the plain folder),
  - its data: the synthetic data spec (if any) and a fingerprint of the files the cell reads
    (relative paths and sizes, not contents).
A weights file (`backbone.weights`) counts by the sha256 of its content, not by its path.

Every config key counts unless NOT_IDENTITY lists it, so keys added later enter identities
without anyone remembering to. The variant hashes the overrides, not the whole config, so a new
key with a backwards-compatible default changes no variant; a stored record is matched by
recomputing its overrides from its saved config against today's reference, where a key it lacks
counts as the reference's value.

API: `config_variant` (the variant of a composed config: runner and sweep records),
`cell_identity` (one class's full identity), `CellIdentity.record_fields` (what a record stores),
`mismatch` (is a stored record, or a checkpoint's identity file, this cell's?), `describe_record`
(variant, overrides and pretrained of any record, schema 1 included), `Variant.arguments` (the
overrides as command-line arguments) and `Cell.directory` (results.py: where a cell lives).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from anobench.data.mvtec import Sample
from anobench.errors import AnobenchError
from anobench.results import OVERRIDES_FILE, VARIANT_SEPARATOR, write_bytes_atomic

# Keys (and key prefixes) that do not change a cell's numbers, or are identified elsewhere.
NOT_IDENTITY: tuple[str, ...] = (
    # where results and caches go, what is printed and kept, how often to checkpoint
    "results_dir",
    "cache_dir",
    "overwrite",
    "save_maps",
    "save_model",
    "checkpoint_every",
    "latency_repeats",
    "progress",
    "debug",
    "dry_run",
    "hydra",
    # the cell within its variant (folders below it)
    "category",
    "seed",
    # the data: its content is the data identity (spec and fingerprint); the name is a folder
    "dataset.root",
    "dataset.categories",
    "dataset.synthetic",
    # the same arithmetic on another device, in another order or memory layout: like running on
    # another GPU model, these move results by float rounding only
    "hardware.device",
    "hardware.num_workers",
    "hardware.eval_batch_size",
    "hardware.gpu_from_job",
    "hardware.cache_features",
    "hardware.cpu_threads",
    "hardware.compile",
    "hardware.channels_last",
    "hardware.deterministic",
    # confidence-interval settings change intervals, never the metrics themselves
    "bootstrap_resamples",
)
WEIGHTS_KEY = "backbone.weights"  # counted as "sha256:<hex>" of the file, not as its path
# Folders of the results tree: never overrides; the dataset decides which references apply.
PATH_KEYS = ("dataset.name",)
# The reference settings a variant is measured against: the paper setting always, the others
# (the demo) only for runs on their own dataset; the closest one wins, the paper on a tie.
REFERENCES: dict[str, tuple[str, ...]] = {"paper": (), "demo": ("experiment=demo",)}
VARIANT_LENGTH = 8  # hex digits of the variant name
_PLAIN_VALUE = re.compile(r"[\w.\-/:@]+")

Flat = dict[str, Any]


def _denied(key: str) -> bool:
    return any(key == d or key.startswith(f"{d}.") for d in NOT_IDENTITY)


def _flatten(value: Any, prefix: str, out: Flat) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = list(value) if isinstance(value, tuple) else value


def _container(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The top-level nodes that can count, resolved (denied ones are never resolved)."""
    if not isinstance(cfg, DictConfig):
        return {k: v for k, v in cfg.items() if not _denied(str(k))}
    return {
        str(key): OmegaConf.to_container(cfg[key], resolve=True)
        if OmegaConf.is_config(cfg[key])
        else cfg[key]
        for key in cfg
        if not _denied(str(key))
    }


def weights_value(path: str | None, sha256: str | None) -> str | None:
    if sha256:
        return f"sha256:{sha256}"
    return f"path:{path}" if path else None


def identity_config(cfg: DictConfig | Mapping[str, Any], weights_sha256: str | None) -> Flat:
    """The resolved config as dotted keys, without NOT_IDENTITY, the weights file as its hash."""
    flat: Flat = {}
    container = _container(cfg)
    _flatten(container, "", flat)
    flat = {k: v for k, v in flat.items() if not _denied(k)}
    backbone = container.get("backbone") or {}
    flat[WEIGHTS_KEY] = weights_value(backbone.get("weights"), weights_sha256)
    return flat


def reference_configs(method: str) -> dict[str, Flat]:
    """The identity configs of the method's reference settings (see REFERENCES)."""
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from anobench.config import register_configs
    from anobench.sweeps import _hydra_compose

    register_configs()
    references = {}
    try:
        with _hydra_compose():
            for name, overrides in REFERENCES.items():
                cfg = compose("config", overrides=[*overrides, f"method={method}"])
                references[name] = identity_config(cfg, None)
    except (HydraException, OmegaConfBaseException) as err:
        raise AnobenchError(
            f"cannot compose the reference setting of method {method!r} "
            f"({str(err).splitlines()[0]}); is it a registered method?"
        ) from err
    return references


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def _diff(flat: Flat, reference: Flat) -> Flat:
    """Keys whose value differs from the reference; a key `flat` lacks takes the reference's."""
    out = {}
    for key in sorted(set(flat) | set(reference)):
        if key in PATH_KEYS:
            continue
        if key not in reference or not _same(flat.get(key, reference[key]), reference[key]):
            out[key] = flat[key]
    return out


def format_value(value: Any) -> str:
    """A value as one would type it in a Hydra override."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    text = repr(value) if isinstance(value, float) else str(value)
    return text if _PLAIN_VALUE.fullmatch(text) else "'" + text.replace("'", "\\'") + "'"


@dataclass(frozen=True)
class Variant:
    """A setting of a method relative to its reference: the overrides and their short hash."""

    method: str
    reference: str  # a key of REFERENCES
    overrides: tuple[tuple[str, Any], ...]  # sorted (dotted key, value); () = the reference

    @property
    def name(self) -> str:
        """ "" for the reference setting; else a short hash of reference and overrides."""
        if not self.overrides:
            return ""
        payload = json.dumps(
            {
                "method": self.method,
                "reference": self.reference,
                "overrides": dict(self.overrides),
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:VARIANT_LENGTH]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.overrides)

    def arguments(self) -> list[str]:
        """What to add to `anobench run method=<m>` for this setting (data and cells aside)."""
        preset = list(REFERENCES[self.reference]) if self.reference in REFERENCES else []
        return [*preset, *(f"{key}={format_value(value)}" for key, value in self.overrides)]


def variant_of(flat: Flat, references: Mapping[str, Flat]) -> Variant:
    """The variant of an identity config: its overrides against the closest reference."""
    best: Variant | None = None
    for index, (name, reference) in enumerate(references.items()):
        if index > 0 and reference.get("dataset.name") != flat.get("dataset.name"):
            continue
        diff = _diff(flat, reference)
        if best is None or len(diff) < len(best.overrides):
            best = Variant(str(flat.get("method.name")), name, tuple(diff.items()))
    if best is None:
        raise ValueError("no reference settings to compare with")
    return best


def pretrained_of(cfg: DictConfig | Mapping[str, Any]) -> bool:
    """Whether the backbone starts from trained weights (a weights file or `pretrained`)."""
    backbone = cfg.get("backbone") or {}
    return bool(backbone.get("weights")) or bool(backbone.get("pretrained", True))


# --- files: weights hash and data fingerprint ----------------------------------------------------


def weights_sha256(path: Path, cache_dir: Path | None = None) -> str:
    """The sha256 of a weights file, cached in cache_dir by (path, size, mtime)."""
    path = Path(path).expanduser()
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    cached = None if cache_dir is None else cache_dir / "hashes" / f"{key.hexdigest()[:32]}.sha256"
    if cached is not None and cached.is_file():
        text = cached.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{64}", text):
            return text
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if cached is not None:
        with contextlib.suppress(OSError):  # a read-only cache: hash again next time
            write_bytes_atomic(cached, digest.hexdigest().encode())
    return digest.hexdigest()


def data_fingerprint(class_dir: Path, samples: Iterable[Sample]) -> dict[str, Any]:
    """Relative paths and sizes of the files a cell reads, per folder, and one hash of all."""
    files = set()
    for sample in samples:
        files.add(sample.image_path)
        if sample.mask_path is not None:
            files.add(sample.mask_path)
    entries = sorted((p.relative_to(class_dir).as_posix(), p.stat().st_size) for p in files)
    folders: dict[str, dict[str, Any]] = {}
    for relative, size in entries:
        folder = relative.rsplit("/", 1)[0]
        entry = folders.setdefault(folder, {"files": 0, "bytes": 0, "sha256": hashlib.sha256()})
        entry["files"] += 1
        entry["bytes"] += size
        entry["sha256"].update(f"{relative}\t{size}\n".encode())
    listing = "".join(f"{relative}\t{size}\n" for relative, size in entries)
    return {
        "sha256": hashlib.sha256(listing.encode()).hexdigest(),
        "folders": {
            name: {**entry, "sha256": entry["sha256"].hexdigest()[:16]}
            for name, entry in sorted(folders.items())
        },
    }


def _fingerprint_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed between two fingerprints, per folder."""
    old_folders, new_folders = old.get("folders", {}), new.get("folders", {})
    changes = []
    for folder in sorted(set(old_folders) | set(new_folders)):
        before, after = old_folders.get(folder), new_folders.get(folder)
        if before is None:
            changes.append(f"{folder} is new")
        elif after is None:
            changes.append(f"{folder} is gone")
        elif before.get("files") != after.get("files"):
            changes.append(f"{folder}: {before.get('files')} -> {after.get('files')} files")
        elif before.get("bytes") != after.get("bytes"):
            changes.append(f"{folder}: {before.get('bytes')} -> {after.get('bytes')} bytes")
        elif before.get("sha256") != after.get("sha256"):
            changes.append(f"{folder}: file names changed")
    return changes or ["file list changed"]


# --- cell identity -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellIdentity:
    """Everything that makes a cell's numbers what they are (see the module docstring)."""

    dataset: str
    method: str
    backbone: str
    variant: Variant
    synthetic: dict[str, Any] | None  # the synthetic data spec, None for data on disk
    fingerprint: dict[str, Any]  # data_fingerprint of the class
    weights_sha256: str | None
    pretrained: bool

    @property
    def hash(self) -> str:
        payload = {
            "dataset": self.dataset,
            "method": self.method,
            "backbone": self.backbone,
            "reference": self.variant.reference,
            "overrides": self.variant.as_dict(),
            "synthetic": self.synthetic,
            "data": self.fingerprint.get("sha256"),
        }
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def record_fields(self) -> dict[str, Any]:
        """The fields a record stores about its identity."""
        return {
            "variant": self.variant.name,
            "reference": self.variant.reference,
            "overrides": self.variant.as_dict(),
            "pretrained": self.pretrained,
            "identity": {
                "hash": self.hash,
                "weights_sha256": self.weights_sha256,
                "data": {"synthetic": self.synthetic, "fingerprint": self.fingerprint},
            },
        }


@dataclass(frozen=True)
class PlanIdentity:
    """What a run shares across its cells: the variant, its references, the weights hash."""

    references: dict[str, Flat]
    variant: Variant
    weights_sha256: str | None
    pretrained: bool


def config_variant(
    cfg: DictConfig | Mapping[str, Any],
    cache_dir: Path | None,
    references: dict[str, Flat] | None = None,
) -> PlanIdentity:
    """The variant of a composed config (references composed unless given)."""
    backbone = cfg.get("backbone") or {}
    weights = backbone.get("weights")
    sha = None
    if weights and Path(str(weights)).expanduser().is_file():
        sha = weights_sha256(Path(str(weights)), cache_dir)
    method = str((cfg.get("method") or {}).get("name"))
    references = reference_configs(method) if references is None else references
    variant = variant_of(identity_config(cfg, sha), references)
    return PlanIdentity(references, variant, sha, pretrained_of(cfg))


def cell_identity(
    shared: PlanIdentity,
    names: tuple[str, str, str],
    synthetic: dict[str, Any] | None,
    class_dir: Path,
    samples: Sequence[Sample],
) -> CellIdentity:
    """The identity of one class's cell: the run's variant and the class's data."""
    dataset, method, backbone = names
    return CellIdentity(
        dataset,
        method,
        backbone,
        shared.variant,
        synthetic,
        data_fingerprint(class_dir, samples),
        shared.weights_sha256,
        shared.pretrained,
    )


def stored_variant(record: dict[str, Any], references: Mapping[str, Flat]) -> Variant | None:
    """A record's variant recomputed from its saved config against today's references."""
    config = record.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("method"), dict):
        return None
    identity = record.get("identity") if isinstance(record.get("identity"), dict) else {}
    return variant_of(identity_config(config, identity.get("weights_sha256")), references)


def _variant_changes(old: Variant, new: Variant) -> str:
    before, after = old.as_dict(), new.as_dict()

    def shown(values: dict[str, Any], key: str) -> str:
        return format_value(values[key]) if key in values else "the reference value"

    changed = [
        f"{key}: {shown(before, key)} -> {shown(after, key)}"
        for key in sorted(set(before) | set(after))
        if key not in before or key not in after or not _same(before[key], after[key])
    ]
    if old.reference != new.reference:
        changed.insert(0, f"reference {old.reference} -> {new.reference}")
    return ", ".join(changed)


def mismatch(
    record: dict[str, Any], identity: CellIdentity, references: Mapping[str, Flat]
) -> str | None:
    """Why a stored record (or a checkpoint's identity file) is not this cell's; None if it is.

    Settings are compared by recomputing the record's overrides from its saved config against
    today's references. A schema 1 record has no data fingerprint: it is trusted on its data
    (rerun with overwrite=true if the files changed since).
    """
    reasons = []
    names = tuple(record.get(key) for key in ("dataset", "method", "backbone"))
    if names != (identity.dataset, identity.method, identity.backbone):
        reasons.append(f"it belongs to {'/'.join(map(str, names))}")
    variant = stored_variant(record, references)
    if variant is None and isinstance(record.get("overrides"), dict):
        overrides = tuple(sorted(record["overrides"].items()))
        variant = Variant(
            str(record.get("method")), str(record.get("reference", "paper")), overrides
        )
    if variant is None:
        reasons.append("its settings were not saved")
    elif variant != identity.variant:
        reasons.append(f"other settings ({_variant_changes(variant, identity.variant)})")
    stored = record.get("identity") if isinstance(record.get("identity"), dict) else {}
    data = stored.get("data")
    if isinstance(data, dict):
        if data.get("synthetic") != identity.synthetic:
            reasons.append("the synthetic data spec changed")
        fingerprint = data.get("fingerprint") if isinstance(data.get("fingerprint"), dict) else {}
        if fingerprint.get("sha256") != identity.fingerprint.get("sha256"):
            changes = _fingerprint_changes(fingerprint, identity.fingerprint)
            reasons.append(f"the dataset files changed ({', '.join(changes)})")
    return "; ".join(reasons) or None


def describe_record(
    record: dict[str, Any], references: dict[str, dict[str, Flat] | None]
) -> dict[str, Any]:
    """A record with `variant`, `reference`, `overrides` and `pretrained` filled in.

    Schema 2 records carry them; for schema 1 records they are derived from the saved config
    (`references` caches the reference settings per method; None where one cannot be composed).
    """
    if all(key in record for key in ("variant", "reference", "overrides", "pretrained")):
        return record
    method = str(record.get("method"))
    if method not in references:
        try:
            references[method] = reference_configs(method)
        except AnobenchError:
            references[method] = None
    found = references[method]
    variant = None if found is None else stored_variant(record, found)
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    filled = {
        "variant": "" if variant is None else variant.name,
        "reference": "paper" if variant is None else variant.reference,
        "overrides": {} if variant is None else variant.as_dict(),
        "pretrained": pretrained_of(config) if isinstance(config.get("backbone"), dict) else None,
    }
    return {**filled, **record}


def record_arguments(record: dict[str, Any]) -> list[str]:
    """A (described) record's setting as arguments to `anobench run method=<m>`."""
    overrides = record.get("overrides") if isinstance(record.get("overrides"), dict) else {}
    reference = str(record.get("reference", "paper"))
    variant = Variant(str(record.get("method")), reference, tuple(sorted(overrides.items())))
    return variant.arguments()


def overrides_yaml(method: str, variant: Variant) -> str:
    """overrides.yaml: how this variant differs from its reference, as a user would type it."""
    reference = " ".join([*REFERENCES.get(variant.reference, ()), f"method={method}"])
    command = " ".join(["anobench run", f"method={method}", *variant.arguments()])
    header = (
        f"# {method}{VARIANT_SEPARATOR}{variant.name}: the settings that differ from the "
        f"reference `anobench run {reference}`\n# this setting: {command}\n"
    )
    body = yaml.safe_dump(
        {"reference": reference, "overrides": variant.as_dict()},
        sort_keys=False,
        default_flow_style=False,
    )
    return header + body


def write_overrides(cell_dir: Path, method: str, variant: Variant) -> None:
    """overrides.yaml beside the cell's records and in its variant's folder, for browsing."""
    if not variant.name:
        return
    text = overrides_yaml(method, variant).encode()
    write_bytes_atomic(cell_dir / OVERRIDES_FILE, text)
    write_bytes_atomic(cell_dir.parents[2] / OVERRIDES_FILE, text)
