"""Figures for `anobench report --figures`: anomaly maps over test images, per-class metric bars."""

from __future__ import annotations

import io
import json
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from rich.console import Console
from scipy import ndimage

from anobench.errors import AnobenchError
from anobench.per_image import PER_IMAGE_FILE, read_per_image
from anobench.results import MAPS_FILE, Cell, DamagedMapsError, load_maps, write_bytes_atomic
from anobench.tables import (
    MEAN,
    METRIC_TITLES,
    PAPER_METRICS,
    category_order,
    class_stat,
    group_stat,
    model_labels,
    select_model,
)

DPI = 100
CELL_INCHES = 2.0  # one image of the grid
HEADER_INCHES = 1.0  # the grid's title and legend
BAR_ROW_INCHES = 2.4  # one metric of the bar chart
BAR_HEADER_INCHES = 0.8
N_ANOMALOUS = 3
GOOD = "good"
MAX_OVERLAY_ALPHA = 0.7
GT_COLOUR = "#00ff00"
GRID_LEGEND = (
    "green outline: ground truth. Each method's maps are scaled to their min-max over this "
    "class's test images: clear = low, blue to red = high; 'max' = the image's peak on that scale."
)


@dataclass(frozen=True)
class GridRow:
    """One test image of a class grid and each model's map, scaled to [0, 1]."""

    caption: str
    image: np.ndarray  # [H, W, 3] float in [0, 1]
    mask: np.ndarray | None  # [H, W] bool; None for good images
    maps: list[np.ndarray]  # per model [H, W] float in [0, 1]


def select_images(paths: Sequence[str], n_anomalous: int = N_ANOMALOUS) -> list[int]:
    """Up to n anomalous image indices (one defect type after another), then the first good one."""
    by_defect: dict[str, list[int]] = {}
    for index in sorted(range(len(paths)), key=lambda i: paths[i]):
        parts = paths[index].split("/")
        by_defect.setdefault(parts[-2] if len(parts) > 1 else "", []).append(index)
    defects = sorted(d for d in by_defect if d != GOOD)
    chosen: list[int] = []
    depth = 0
    while len(chosen) < n_anomalous and any(depth < len(by_defect[d]) for d in defects):
        for defect in defects:
            if depth < len(by_defect[defect]) and len(chosen) < n_anomalous:
                chosen.append(by_defect[defect][depth])
        depth += 1
    if GOOD in by_defect:
        chosen.append(by_defect[GOOD][0])
    return chosen


def overlay(image: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Jet heat over the image, opaque where the map is high and clear where it is low."""
    heat = colormaps["jet"](score)[..., :3]
    alpha = MAX_OVERLAY_ALPHA * score[..., None]
    return image * (1 - alpha) + heat * alpha


def grid_size(n_rows: int, n_models: int, aspect: float = 1.0) -> tuple[int, int]:
    """(width, height) in pixels of a class grid whose images are `aspect` (height / width)."""
    return (
        round(CELL_INCHES * (n_models + 1) * DPI),
        round((CELL_INCHES * aspect * n_rows + HEADER_INCHES) * DPI),
    )


def map_grid(rows: Sequence[GridRow], models: Sequence[str], title: str) -> Figure:
    """Rows of test images: the image with its ground-truth outline, then one overlay per model."""
    aspect = rows[0].image.shape[0] / rows[0].image.shape[1] if rows else 1.0
    width, height = grid_size(len(rows), len(models), aspect)
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    figure.suptitle(title, fontsize=10, y=1 - 0.08 / (height / DPI), va="top")
    legend = textwrap.fill(GRID_LEGEND, width=int(width / DPI * 15))
    figure.text(0.5, 1 - 0.32 / (height / DPI), legend, fontsize=7, ha="center", va="top")
    axes = figure.subplots(len(rows), len(models) + 1, squeeze=False)
    figure.subplots_adjust(
        left=0.01,
        right=0.99,
        bottom=0.01,
        top=1 - HEADER_INCHES / (height / DPI),
        wspace=0.04,
        hspace=0.18,
    )
    for r, row in enumerate(rows):
        panels = [row.image] + [overlay(row.image, score) for score in row.maps]
        titles = [row.caption] + [
            f"{model}\nmax {score.max():.2f}" if r == 0 else f"max {score.max():.2f}"
            for model, score in zip(models, row.maps, strict=True)
        ]
        for c, (panel, panel_title) in enumerate(zip(panels, titles, strict=True)):
            ax = axes[r][c]
            ax.imshow(np.clip(panel, 0, 1), interpolation="nearest")
            if row.mask is not None and row.mask.any():
                ax.contour(row.mask.astype(float), levels=[0.5], colors=[GT_COLOUR], linewidths=1.0)
            ax.set_title(panel_title, fontsize=7, pad=2)
            ax.set_xticks([])
            ax.set_yticks([])
    return figure


def bar_size(n_categories: int, n_models: int, n_metrics: int) -> tuple[int, int]:
    """(width, height) in pixels of a metric bar chart (classes plus the mean)."""
    width = max(6.0, 1.5 + (n_categories + 1) * (0.25 * n_models + 0.3))
    return round(width * DPI), round((BAR_ROW_INCHES * n_metrics + BAR_HEADER_INCHES) * DPI)


def metric_bars(frame: pd.DataFrame, metrics: Sequence[str] = PAPER_METRICS) -> Figure:
    """Grouped bars per class (and the mean) for each metric: mean over seeds, std as whiskers."""
    metrics = [m for m in metrics if m in set(frame["metric"])]
    frame = frame.assign(value=frame["value"] * 100)
    categories = category_order(frame["category"].unique())
    labels = model_labels(frame)
    width, height = bar_size(len(categories), len(labels), len(metrics))
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    axes = figure.subplots(len(metrics), 1, squeeze=False)[:, 0]
    figure.subplots_adjust(
        left=0.6 / (width / DPI),
        right=0.99,
        bottom=0.6 / (height / DPI),
        top=1 - BAR_HEADER_INCHES / (height / DPI),
        hspace=0.35,
    )
    positions = np.arange(len(categories) + 1)
    bar = 0.8 / max(len(labels), 1)
    colours = colormaps["tab10"].colors
    low = 100.0
    for ax, metric in zip(axes, metrics, strict=True):
        values = frame[frame["metric"] == metric]
        for i, (key, label) in enumerate(labels.items()):
            model = select_model(values, key)
            stats = [class_stat(model.loc[model["category"] == c, "value"]) for c in categories]
            stats.append(group_stat(model, categories))
            means = [np.nan if s.mean is None else s.mean for s in stats]
            stds = [np.nan if s.std is None else s.std for s in stats]
            offset = (i - (len(labels) - 1) / 2) * bar
            whiskers = None if np.isnan(stds).all() else np.nan_to_num(stds)
            ax.bar(
                positions + offset,
                means,
                bar,
                yerr=whiskers,
                label=label,
                color=colours[i % len(colours)],
                error_kw={"elinewidth": 0.8, "capsize": 1.5},
            )
            low = min([low, *(m for m in means if not np.isnan(m))])
        ax.set_ylabel(f"{METRIC_TITLES.get(metric, metric)} (%)", fontsize=8)
        ax.set_xticks(positions, [*categories, MEAN], fontsize=7, rotation=30, ha="right")
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", linewidth=0.4, alpha=0.5)
        ax.axvline(len(categories) - 0.5, color="grey", linewidth=0.6)
    floor = max(0.0, min(50.0, 10 * np.floor((low - 5) / 10)))
    for ax in axes:  # one scale for every metric, so bars compare across panels
        ax.set_ylim(floor, 100.0)
    dataset = frame["dataset"].iloc[0]
    figure.suptitle(
        f"Per-class metrics on {dataset} (mean over seeds, whiskers: std)",
        fontsize=9,
        y=1 - 0.1 / (height / DPI),
        va="top",
    )
    figure.legend(
        *axes[0].get_legend_handles_labels(),
        loc="upper center",
        ncols=len(labels),
        fontsize=7,
        frameon=False,
        bbox_to_anchor=(0.5, 1 - 0.35 / (height / DPI)),
    )
    return figure


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


# --- reading the results and the images ---------------------------------------------------------


def _dataset_root(config: dict[str, Any]) -> Path:
    """The dataset folder a record's run read, resolved as the runner resolved it."""
    from omegaconf import OmegaConf

    from anobench.config import dataset_config
    from anobench.runner import dataset_root

    cfg = OmegaConf.create({"dataset": config["dataset"]})
    return dataset_root(dataset_config(cfg), Path(config["cache_dir"]).expanduser())


def _load_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    with Image.open(path) as image:
        image = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.float32) / 255.0


def _load_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    with Image.open(path) as mask:
        mask = mask.convert("L").resize(size, Image.Resampling.NEAREST)
        return np.asarray(mask) > 127


def _resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if values.shape[::-1] == size:
        return values
    return np.asarray(Image.fromarray(values, mode="F").resize(size, Image.Resampling.BILINEAR))


@dataclass(frozen=True)
class _ModelMaps:
    label: str
    maps: np.ndarray  # [N, H, W] float32
    paths: list[str]
    record: dict[str, Any]
    folder: Path  # the cell's folder


def _record_model(record: dict[str, Any]) -> tuple:
    """The model (report.MODEL_COLUMNS) of a record."""
    return (
        record["method"],
        record["backbone"],
        record.get("variant") or "",
        record.get("pretrained"),
    )


def _maps_path(results_dir: Path, record: dict[str, Any]) -> Path:
    """A cell's maps.npz; a schema 1 record of a variant still lies in the plain folder."""
    path = Cell.of(record).directory(results_dir) / MAPS_FILE
    if not path.is_file() and record.get("schema", 1) == 1:
        return Cell.of({**record, "variant": ""}).directory(results_dir) / MAPS_FILE
    return path


def _class_models(
    results_dir: Path,
    records: list[dict[str, Any]],
    labels: dict[tuple, str],
    console: Console,
) -> list[_ModelMaps]:
    """Each model's maps of one class, from its lowest seed with readable maps."""
    found = []
    for key, label in labels.items():
        mine = sorted((r for r in records if _record_model(r) == key), key=lambda r: r["seed"])
        for record in mine:
            path = _maps_path(results_dir, record)
            if not path.is_file():
                continue
            try:
                maps, paths = load_maps(path)
            except DamagedMapsError as err:
                console.print(f"figures: skipped damaged maps: {err}", markup=False)
                continue
            found.append(_ModelMaps(label, maps.astype(np.float32), paths, record, path.parent))
            break
    return found


def display_size(models: Sequence[_ModelMaps], image_path: Path | None) -> tuple[int, int]:
    """(width, height) to show a class at: the maps' width, the test image's aspect ratio (the
    methods see square inputs; a 600 x 800 image is shown 600 x 800, not squashed)."""
    width = max(m.maps.shape[2] for m in models)
    height = max(m.maps.shape[1] for m in models)
    if image_path is not None:
        with Image.open(image_path) as image:
            height = max(1, round(width * image.height / image.width))
    return width, height


def class_grid(models: list[_ModelMaps], root: Path, category: str, title: str) -> Figure:
    """The grid of one class from the models' maps and the test images under root."""
    from anobench.data.mvtec import index_split

    samples = {s.relative_path: s for s in index_split(root, category, "test")}
    common = [p for p in models[0].paths if all(p in m.paths for m in models) and p in samples]
    size = display_size(models, samples[common[0]].image_path if common else None)
    scales = [(float(np.nanmin(m.maps)), float(np.nanmax(m.maps))) for m in models]
    rows = []
    for index in select_images(common):
        path = common[index]
        sample = samples[path]
        scaled = []
        for model, (low, high) in zip(models, scales, strict=True):
            values = _resize_map(model.maps[model.paths.index(path)], size)
            scaled.append(np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0))
        mask = _load_mask(sample.mask_path, size) if sample.mask_path else None
        caption = f"{sample.defect} / {sample.image_path.name}"
        rows.append(GridRow(caption, _load_image(sample.image_path, size), mask, scaled))
    return map_grid(rows, [m.label for m in models], title)


def write_figures(
    results_dir: Path,
    records: list[dict[str, Any]],
    frame: pd.DataFrame,
    out_dir: Path,
    console: Console,
) -> list[Path]:
    """Per dataset a metric bar chart, per class a grid of maps; returns the PNGs written."""
    written = []
    for dataset, data in frame.groupby("dataset", sort=True):
        path = out_dir / f"metrics_{dataset}.png"
        write_bytes_atomic(path, png_bytes(metric_bars(data)))
        written.append(path)
    for pictures in class_pictures(results_dir, records, frame, console):
        path = out_dir / pictures.dataset / f"{pictures.category}.png"
        write_bytes_atomic(path, png_bytes(pictures.grid))
        written.append(path)
    return written


# --- galleries of the worst-ranked images --------------------------------------------------------


@dataclass(frozen=True)
class Thumbnail:
    """One test image with its ground truth outlined and a model's map over it."""

    caption: str
    pixels: np.ndarray  # [H, W, 3] float in [0, 1]


@dataclass(frozen=True)
class Gallery:
    """A model's worst-ranked test images of one class by its image score."""

    label: str
    false_positives: list[Thumbnail]  # good images, highest score first
    false_negatives: list[Thumbnail]  # defective images, lowest score first
    note: str = ""  # why a gallery is empty


@dataclass(frozen=True)
class ClassPictures:
    dataset: str
    category: str
    grid: Figure
    galleries: list[Gallery]


def outlined(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is None or not mask.any():
        return image
    edge = ndimage.binary_dilation(mask ^ ndimage.binary_erosion(mask))
    image = image.copy()
    image[edge] = (0.0, 1.0, 0.0)
    return image


def class_galleries(
    models: list[_ModelMaps], root: Path, category: str, n_images: int = N_ANOMALOUS
) -> list[Gallery]:
    """Per model the good images it scores highest and the defective ones it scores lowest."""
    from anobench.data.mvtec import index_split

    samples = {s.relative_path: s for s in index_split(root, category, "test")}
    size = display_size(models, next(iter(samples.values())).image_path if samples else None)
    galleries = []
    for model in models:
        per_image = read_per_image(model.folder / PER_IMAGE_FILE)
        if per_image is None:
            galleries.append(Gallery(model.label, [], [], f"no {PER_IMAGE_FILE} (older run)"))
            continue
        low, high = float(np.nanmin(model.maps)), float(np.nanmax(model.maps))
        ranks = np.argsort(np.argsort(-per_image.scores, kind="stable"), kind="stable") + 1
        by_score = np.argsort(-per_image.scores, kind="stable")
        good = [i for i in by_score if not per_image.labels[i]][:n_images]
        missed = [i for i in by_score[::-1] if per_image.labels[i]][:n_images]
        thumbnails = []
        for chosen in (good, missed):
            row = []
            for index in chosen:
                path = per_image.paths[index]
                if path not in samples or path not in model.paths:
                    continue
                sample = samples[path]
                values = _resize_map(model.maps[model.paths.index(path)], size)
                scaled = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)
                mask = _load_mask(sample.mask_path, size) if sample.mask_path else None
                pixels = outlined(overlay(_load_image(sample.image_path, size), scaled), mask)
                caption = (
                    f"{path} · score {per_image.scores[index]:.4g} · "
                    f"rank {ranks[index]} of {len(per_image.paths)}"
                )
                row.append(Thumbnail(caption, np.clip(pixels, 0.0, 1.0)))
            thumbnails.append(row)
        galleries.append(Gallery(model.label, *thumbnails))
    return galleries


def class_pictures(
    results_dir: Path,
    records: list[dict[str, Any]],
    frame: pd.DataFrame,
    console: Console,
    galleries: bool = False,
) -> Iterator[ClassPictures]:
    """Per dataset and class the grid of maps (and with `galleries` each model's worst-ranked
    images); classes without maps or test images are named on the console and skipped."""
    for dataset, data in frame.groupby("dataset", sort=True):
        labels = model_labels(data)
        roots: dict[str, Path] = {}
        for category in category_order(data["category"].unique()):
            mine = [r for r in records if (r["dataset"], r["category"]) == (dataset, category)]
            models = _class_models(results_dir, mine, labels, console)
            if not models:
                console.print(f"figures: no {MAPS_FILE} for {dataset}/{category} (save_maps=false)")
                continue
            config = models[0].record.get("config") or {}
            key = json.dumps([config.get("dataset"), config.get("cache_dir")], sort_keys=True)
            try:
                if key not in roots:
                    roots[key] = _dataset_root(config)
                figure = class_grid(models, roots[key], category, f"{dataset} / {category}")
                found = class_galleries(models, roots[key], category) if galleries else []
            except (AnobenchError, KeyError, OSError) as err:
                console.print(f"figures: skipped {dataset}/{category}: {err}", markup=False)
                continue
            yield ClassPictures(str(dataset), category, figure, found)
