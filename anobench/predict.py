"""`anobench predict`: score new images with a cell's kept model.

Per image: the anomaly map as a float32 TIFF at the image's own size (resized back as
`export-maps` does), an overlay PNG (the map in jet over the image, on the scale of the cell's
test maps), with a threshold a binary mask PNG; and one scores.csv (path, image score, decision)
with predict.json (the cell, the thresholds, the device). Images are files or folders (searched
recursively), of any size and mode: they are read, resized and batched exactly as a cell's test
images are (data/mvtec.py), so the test images of a cell get the maps its test run got.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image
from rich.console import Console

from anobench.config import hardware_config
from anobench.data.mvtec import (
    IMAGE_EXTENSIONS,
    AnomalyDataset,
    Sample,
    decode_image,
    is_image_file,
)
from anobench.data.synthetic import SyntheticSpec, spec_key
from anobench.errors import AnobenchError
from anobench.export import check_out_folder, to_original_size, write_tiff_atomic
from anobench.figures import outlined, overlay
from anobench.hardware import Hardware, create_hardware
from anobench.kept_model import (
    MODEL_FILE,
    MODEL_INFO_FILE,
    KeptModel,
    load_kept_model,
    read_model_info,
)
from anobench.per_image import PER_IMAGE_FILE, read_per_image
from anobench.progress import progress as progress_bar
from anobench.results import (
    MAPS_FILE,
    METRICS_FILE,
    DamagedMapsError,
    load_maps,
    package_versions,
    read_checked,
    split_model_folder,
    write_atomic,
    write_bytes_atomic,
    write_json_atomic,
)
from anobench.statistics import PerImage
from anobench.thresholds import Thresholds, derive, parse_rule

log = logging.getLogger("anobench")
SCORES_FILE = "scores.csv"
SUMMARY_FILE = "predict.json"
SHOWN_CANDIDATES = 20


# --- which cell ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selectors:
    """Which cell of a results folder: any field left None matches every cell."""

    dataset: str | None = None
    method: str | None = None  # `knn` (any variant) or `knn+3fa2c1d0` (that variant's folder)
    backbone: str | None = None
    category: str | None = None
    seed: int | None = None

    def match(self, cell_dir: Path) -> bool:
        """Whether a cell folder `<dataset>/<method>/<backbone>/<category>/seed<k>` matches."""
        parts = cell_dir.parts[-5:]
        if len(parts) < 5:
            return False
        dataset, folder, backbone, category, seed = parts
        method = folder if self.method and "+" in self.method else split_model_folder(folder)[0]
        wanted = (self.dataset, self.method, self.backbone, self.category)
        found = (dataset, method, backbone, category)
        if any(w is not None and w != f for w, f in zip(wanted, found, strict=True)):
            return False
        return self.seed is None or seed == f"seed{self.seed}"


def find_cell(path: Path, selectors: Selectors) -> Path:
    """The cell folder `path` is, or the one cell with a kept model under it the selectors pick."""
    if not path.is_dir():
        raise AnobenchError(f"{path} is not a folder; give a cell folder or a results folder.")
    if any((path / name).exists() for name in (MODEL_FILE, MODEL_INFO_FILE, METRICS_FILE)):
        return path
    found = {
        p.parent
        for name in (MODEL_FILE, MODEL_INFO_FILE)
        for p in path.rglob(name)
        if not any(part.startswith((".", "_")) for part in p.relative_to(path).parts[:-1])
    }
    candidates = sorted(found)
    if not candidates:
        raise AnobenchError(
            f"no cell under {path} holds a kept model ({MODEL_FILE}); run with save_model=true "
            "(the default) to keep one."
        )
    matching = [cell for cell in candidates if selectors.match(cell)]
    if len(matching) == 1:
        return matching[0]
    shown = [str(cell.relative_to(path)) for cell in (matching or candidates)]
    listing = ", ".join(shown[:SHOWN_CANDIDATES])
    if len(shown) > SHOWN_CANDIDATES:
        listing += f" and {len(shown) - SHOWN_CANDIDATES} more"
    if not matching:
        raise AnobenchError(
            f"none of the {len(candidates)} cells with a kept model under {path} matches the "
            f"selectors; the cells are: {listing}."
        )
    raise AnobenchError(
        f"{len(matching)} cells with a kept model under {path} match; pick one with --dataset, "
        f"--method, --backbone, --category and --seed, or give its folder: {listing}."
    )


# --- which images, and where their outputs go ----------------------------------------------------


@dataclass(frozen=True)
class InputImage:
    path: Path
    name: PurePosixPath  # where its outputs go under --out, without a suffix


def list_images(arguments: list[Path]) -> list[InputImage]:
    """The image files given, and the images in the folders given (recursively, sorted)."""
    images: list[InputImage] = []
    for argument in arguments:
        if argument.is_dir():
            found = sorted(
                (
                    p
                    for p in argument.rglob("*")
                    if is_image_file(p)
                    and not any(part.startswith(".") for part in p.relative_to(argument).parts)
                ),
                key=lambda p: p.relative_to(argument).parts,
            )
            for path in found:
                relative = PurePosixPath(path.relative_to(argument).as_posix())
                images.append(InputImage(path, relative.parent / relative.stem))
        elif argument.is_file():
            if argument.suffix.lower() not in IMAGE_EXTENSIONS:
                raise AnobenchError(
                    f"{argument} is not an image file ({', '.join(IMAGE_EXTENSIONS)}); give "
                    "images or folders of images."
                )
            images.append(InputImage(argument, PurePosixPath(argument.stem)))
        else:
            raise AnobenchError(f"{argument} does not exist; give image files or folders.")
    if not images:
        raise AnobenchError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(map(str, arguments))}."
        )
    first: dict[PurePosixPath, Path] = {}
    for image in images:
        if image.name in first:
            raise AnobenchError(
                f"{first[image.name]} and {image.path} would write the same outputs "
                f"({image.name}.*); predict them in separate runs with different --out folders."
            )
        first[image.name] = image.path
    return images


def dataset_folder(config: dict[str, Any]) -> Path | None:
    """The dataset folder a cell read (computed, never generated), or None when not recorded."""
    dataset = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
    if dataset.get("synthetic"):
        spec = SyntheticSpec(**dataset["synthetic"])
        return Path(str(config.get("cache_dir", "."))).expanduser() / "synthetic" / spec_key(spec)
    return Path(str(dataset["root"])).expanduser() if dataset.get("root") else None


# --- scoring and writing -------------------------------------------------------------------------


def _png(path: Path, pixels: np.ndarray) -> None:
    write_atomic(path, lambda handle: Image.fromarray(pixels).save(handle, format="PNG"))


def _overlay_pixels(
    image_path: Path,
    full_map: np.ndarray,
    scale: tuple[float, float] | None,
    mask: np.ndarray | None,
) -> np.ndarray:
    """[H, W, 3] uint8: the map in jet over the image, the mask (if any) outlined in green."""
    image = np.asarray(decode_image(image_path, "RGB"), dtype=np.float32) / 255.0
    low, high = scale if scale is not None else (float(full_map.min()), float(full_map.max()))
    scaled = np.clip((full_map - low) / max(high - low, 1e-12), 0.0, 1.0)
    pixels = outlined(overlay(image, scaled), mask)
    return (np.clip(pixels, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def _write_outputs(
    image: InputImage,
    anomaly_map: np.ndarray,
    out: Path,
    thresholds: Thresholds | None,
    scale: tuple[float, float] | None,
) -> None:
    """The TIFF map at the image's size, the overlay PNG and (with a threshold) the mask PNG."""
    full = to_original_size(anomaly_map.astype(np.float32), image.path).astype(np.float32)
    write_tiff_atomic(out / "maps" / f"{image.name}.tiff", full)
    mask = None
    if thresholds is not None and thresholds.mask is not None:
        mask = full >= thresholds.mask
        _png(out / "masks" / f"{image.name}.png", (mask * 255).astype(np.uint8))
    _png(out / "overlays" / f"{image.name}.png", _overlay_pixels(image.path, full, scale, mask))


def predict_images(
    kept: KeptModel,
    images: list[InputImage],
    out: Path,
    *,
    thresholds: Thresholds | None,
    batch_size: int,
    scale: tuple[float, float] | None = None,
    progress: bool = True,
) -> list[float]:
    """Score the images in batches, write each one's outputs; return the image scores."""
    cfg = kept.method_cfg
    scores: list[float] = []
    bar = progress_bar(total=len(images), desc="predict", unit="image", enabled=progress)
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        samples = [Sample(i.path, None, 0, "", i.name.as_posix()) for i in chunk]
        dataset = AnomalyDataset(samples, cfg.image_size, cfg.resize)  # as a cell's test images
        batch = torch.stack([dataset[index]["image"] for index in range(len(dataset))])
        predicted = kept.method.predict(batch)
        maps = predicted.anomaly_maps.float().cpu().numpy()  # [B, S, S]
        for image, anomaly_map in zip(chunk, maps, strict=True):
            _write_outputs(image, anomaly_map, out, thresholds, scale)
        scores.extend(float(s) for s in predicted.image_scores.float().cpu())
        bar.update(len(chunk))
    bar.close()
    return scores


def _scores_csv(images: list[InputImage], scores: list[float], threshold: float | None) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "score", *(["anomalous"] if threshold is not None else [])])
    for image, score in zip(images, scores, strict=True):
        decision = [str(score >= threshold).lower()] if threshold is not None else []
        writer.writerow([str(image.path), repr(score), *decision])
    return buffer.getvalue().encode()


def map_scale(per_image: PerImage | None, cell_dir: Path) -> tuple[float, float] | None:
    """The lowest and highest value of the cell's test maps: the overlays' common scale."""
    if per_image is not None and per_image.pixels is not None:
        thresholds = per_image.pixels.thresholds  # descending, the last the lowest score
        return float(thresholds[-1]), float(thresholds[0])
    if (cell_dir / MAPS_FILE).is_file():
        try:
            maps, _ = load_maps(cell_dir / MAPS_FILE)
        except DamagedMapsError:
            return None
        return float(maps.min()), float(maps.max())
    return None


def predict_hardware(info: dict[str, Any], device: str, precision: str | None) -> Hardware:
    """The hardware to predict on: `device` (auto: a GPU when present), the cell's precision."""
    recorded = hardware_config(OmegaConf.create({"hardware": info["config"]["hardware"]}))
    return create_hardware(
        device,
        precision or recorded.precision,
        channels_last=recorded.channels_last,
        tf32=recorded.tf32,
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def selectors_of(ns: argparse.Namespace) -> Selectors:
    return Selectors(ns.dataset, ns.method, ns.backbone, ns.category, ns.seed)


def cell_record(cell_dir: Path) -> dict[str, Any] | None:
    """The cell's metrics.json (None when there is none); AnobenchError when it is damaged."""
    record, problem = read_checked(cell_dir / METRICS_FILE)
    if problem is not None:
        raise AnobenchError(
            f"{cell_dir / METRICS_FILE} {problem}; the next `anobench run` of the cell "
            "recomputes it."
        )
    return record


def predict_command(ns: argparse.Namespace) -> int:
    """`anobench predict`: find the cell, load its model, score the images, write the outputs."""
    cell_dir = find_cell(Path(ns.cell), selectors_of(ns))
    record = cell_record(cell_dir)
    info = read_model_info(cell_dir)
    rule = parse_rule(ns.threshold) if ns.threshold is not None else None
    arguments = [Path(p) for p in ns.images]
    images = list_images(arguments)
    out = Path(ns.out)
    roots = [(p, "the image folder") for p in arguments if p.is_dir()]
    dataset = dataset_folder(info["config"])
    check_out_folder(out, [*roots, *([(dataset, "the cell's dataset root")] if dataset else [])])
    per_image = read_per_image(cell_dir / PER_IMAGE_FILE) if record is not None else None
    thresholds = None
    if rule is not None:
        thresholds = derive(rule, per_image, ns.mask_threshold)
    elif ns.mask_threshold is not None:
        thresholds = Thresholds(f"{ns.mask_threshold:g}", None, ns.mask_threshold)
    hardware = predict_hardware(info, ns.device, ns.precision)
    weights = Path(ns.weights) if ns.weights else None
    kept = load_kept_model(cell_dir, hardware, record=record, weights=weights)
    batch_size = ns.batch_size or int(info["config"]["hardware"].get("eval_batch_size", 16))
    scale = map_scale(per_image, cell_dir)
    scores = predict_images(
        kept, images, out, thresholds=thresholds, batch_size=batch_size, scale=scale
    )
    image_threshold = thresholds.image if thresholds is not None else None
    write_bytes_atomic(out / SCORES_FILE, _scores_csv(images, scores, image_threshold))
    summary = {
        "cell": str(cell_dir),
        **{key: info.get(key) for key in ("dataset", "method", "variant", "backbone")},
        **{key: info.get(key) for key in ("category", "seed", "started")},
        "threshold": None if thresholds is None else dataclasses.asdict(thresholds),
        "overlay_scale": scale,
        "images": len(images),
        "flagged": None if image_threshold is None else sum(s >= image_threshold for s in scores),
        "batch_size": batch_size,
        "device": hardware.describe(),
        "precision": hardware.precision,
        "versions": package_versions(),
        "finished": _now(),
    }
    write_json_atomic(out / SUMMARY_FILE, summary)
    flagged = "" if image_threshold is None else f", {summary['flagged']} above the threshold"
    Console().print(f"predicted {len(images)} image(s){flagged}: {out / SCORES_FILE}, maps/, ...")
    return 0
