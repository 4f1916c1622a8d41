"""Records to tables: the tidy frame of results.csv and the paper-style tables built from it.

The one home of the table helpers that every output shares (terminal, CSV, Markdown, LaTeX,
figures): data flows records -> tables -> renderers, never back.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

import pandas as pd

from anobench.data.mvtec import MVTEC_CATEGORIES, OBJECTS, TEXTURES
from anobench.identity import record_arguments
from anobench.metrics import METRIC_IDS
from anobench.results import RECORD_COLUMNS, VARIANT_SEPARATOR
from anobench.statistics import mean_interval

PAPER_METRICS = ("image_auroc", "pixel_auroc", "pro")
METRIC_TITLES = {
    "image_auroc": "Image AUROC",
    "pixel_auroc": "Pixel AUROC",
    "pro": "PRO",
    "image_ap": "Image AP",
    "pixel_ap": "Pixel AP",
    "image_f1_max": "Image F1-max",
    "pixel_f1_max": "Pixel F1-max",
}
COST_FIELDS = (
    "params_trainable",
    "params_total",
    "gflops_per_image",
    "train_seconds",
    "test_seconds",
    "test_images_per_second",
    "latency_ms_p50",
    "latency_ms_p95",
    "peak_gpu_memory_bytes_train",
    "peak_gpu_memory_bytes_test",
    "model_bytes",
)
_INTEGER_FIELDS = (
    "params_trainable",
    "params_total",
    "peak_gpu_memory_bytes_train",
    "peak_gpu_memory_bytes_test",
    "model_bytes",
)
KEY_COLUMNS = (*RECORD_COLUMNS, "metric")
INTERVAL_COLUMNS = ("ci_low", "ci_high")  # the cell's bootstrap interval of the value
IDENTITY_COLUMNS = ("pretrained", "overrides")
CSV_COLUMNS = (
    *KEY_COLUMNS,
    "value",
    *IDENTITY_COLUMNS,
    "device",
    "precision",
    "git_commit",
    *COST_FIELDS,
    *INTERVAL_COLUMNS,
)
# A model of a table: a method setting (variant) with a backbone and its weights.
MODEL_COLUMNS = ("method", "backbone", "variant", "pretrained")
# Keys of the evaluation protocol: a variant that changes one is not compared with papers.
PROTOCOL_KEYS = ("pro_fpr_limit",)
PUBLISHED_DATASET = "mvtec"
DATASET_TITLES = {"mvtec": "MVTec AD"}
MISSING = "—"
NOT_PUBLISHED = "n/p"
TEXTURES_MEAN, OBJECTS_MEAN, MEAN = "Textures mean", "Objects mean", "Mean"
# The classes a mean row of the published tables averages over.
GROUP_CLASSES = {TEXTURES_MEAN: TEXTURES, OBJECTS_MEAN: OBJECTS, MEAN: MVTEC_CATEGORIES}
INTERVAL_NOTE = (
    "[low, high]: 95% interval; one seed: bootstrap over the test images; 3 or more seeds: "
    "Student-t interval of the seed mean"
)


@dataclass(frozen=True)
class Stat:
    """A table entry in percent: mean, std over seeds (None: one seed) and seed count."""

    mean: float | None
    std: float | None = None
    n: int | None = None  # None: not a seed statistic (a published number, a difference)
    signed: bool = False
    interval: tuple[float, float] | None = None  # 95% interval, shown by `report --ci`


Entry = Stat | str


@dataclass
class TextTable:
    """A table independent of its output format; `rules` are rows preceded by a line."""

    title: str
    header: list[str]
    rows: list[list[Entry]]
    bold: list[set[int]] = field(default_factory=list)
    rules: set[int] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    n_seeds: int = 1


@dataclass(frozen=True)
class _Row:
    label: str
    classes: tuple[str, ...]
    group: bool


# --- records to frames -------------------------------------------------------------------------


def category_order(categories: Iterable[str]) -> list[str]:
    """MVTec classes in the papers' order (textures, then objects), then any others sorted."""
    categories = set(categories)
    return [c for c in MVTEC_CATEGORIES if c in categories] + sorted(
        c for c in categories if c not in MVTEC_CATEGORIES
    )


def _sort_key(column: pd.Series) -> pd.Series:
    orders = {"category": MVTEC_CATEGORIES, "metric": METRIC_IDS}
    if column.name not in orders:
        return column
    order = orders[column.name]
    return column.map(lambda v: f"{order.index(v) if v in order else len(order):03d}{v}")


def sort_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows by dataset, method, backbone, class (papers' order), seed and metric."""
    by = [c for c in KEY_COLUMNS if c in frame.columns]
    return frame.sort_values(by, key=_sort_key, kind="stable").reset_index(drop=True)


def records_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Finished records as the tidy frame of results.csv: one row per cell and metric."""
    rows = []
    for record in records:
        cost = record.get("cost") or {}
        base = {key: record.get(key) for key in RECORD_COLUMNS}
        base["variant"] = record.get("variant") or ""
        base["pretrained"] = record.get("pretrained")
        base["overrides"] = " ".join(record_arguments(record))
        base |= {key: record.get(key) for key in ("device", "precision", "git_commit")}
        base |= {name: cost.get(name) for name in COST_FIELDS}
        intervals = record.get("intervals") or {}
        for metric, value in (record.get("metrics") or {}).items():
            low, high = intervals.get(metric) or (None, None)
            rows.append({**base, "metric": metric, "value": value, "ci_low": low, "ci_high": high})
    frame = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    for column in ("value", *COST_FIELDS, *INTERVAL_COLUMNS):
        frame[column] = pd.to_numeric(frame[column]).astype(float)
    for column in _INTEGER_FIELDS:
        frame[column] = frame[column].round().astype("Int64")
    frame["seed"] = frame["seed"].astype(int)
    return sort_frame(frame)


def _models_of_rows(frame: pd.DataFrame) -> list[tuple]:
    """Each row's model (MODEL_COLUMNS; missing columns: reference setting, unknown weights)."""
    missing = {c: "" if c == "variant" else None for c in MODEL_COLUMNS if c not in frame.columns}
    return list(frame.assign(**missing)[list(MODEL_COLUMNS)].itertuples(index=False, name=None))


def model_keys(frame: pd.DataFrame) -> list[tuple]:
    """The models (MODEL_COLUMNS tuples) of a frame, sorted."""
    return sorted(set(_models_of_rows(frame)), key=lambda k: tuple(str(v) for v in k))


def select_model(frame: pd.DataFrame, key: tuple) -> pd.DataFrame:
    """The rows of one model (a MODEL_COLUMNS tuple)."""
    return frame[[model == key for model in _models_of_rows(frame)]]


def model_labels(frame: pd.DataFrame) -> dict[tuple, str]:
    """Model -> column label: the method (with `+variant`), the backbone if the method ran
    with several, and `random weights` when the backbone was not pretrained."""
    keys = model_keys(frame)
    backbones = _backbones_per_method(keys)
    labels = {}
    for key in keys:
        method, backbone, variant, pretrained = key
        name = f"{method}{VARIANT_SEPARATOR}{variant}" if variant else method
        details = [backbone] if len(backbones[method]) > 1 else []
        details += ["random weights"] if pretrained is False else []
        labels[key] = f"{name} ({', '.join(details)})" if details else name
    return labels


def _variant_notes(frame: pd.DataFrame) -> list[str]:
    """One note per model whose setting is not the paper's: the overrides that make it."""
    if "overrides" not in frame.columns:
        return []
    labels = model_labels(frame)
    notes = []
    for key, label in labels.items():
        overrides = select_model(frame, key)["overrides"].dropna().unique()
        if len(overrides) and overrides[0]:
            notes.append(f"{label} = method={key[0]} {overrides[0]}")
    return notes


def _standard_protocol(frame: pd.DataFrame, key: tuple) -> bool:
    """Whether a model was evaluated as the papers were (no protocol key overridden)."""
    if "overrides" not in frame.columns:
        return True
    texts = select_model(frame, key)["overrides"].dropna()
    return not any(f"{k}=" in text for text in texts for k in PROTOCOL_KEYS)


def load_published() -> pd.DataFrame:
    """The published per-class numbers (percent) shipped with the package, with their source."""
    text = resources.files("anobench").joinpath("published", "mvtec_published.csv").read_text()
    return pd.read_csv(io.StringIO(text))


# --- statistics ----------------------------------------------------------------------------------


def nan_to_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def class_stat(values: pd.Series) -> Stat:
    """Mean and sample std (ddof=1) over seeds of one class; None entries are skipped."""
    values = values.dropna()
    std = values.std(ddof=1) if len(values) > 1 else None
    return Stat(nan_to_none(values.mean()) if len(values) else None, std, len(values))


def group_stat(values: pd.DataFrame, classes: Sequence[str]) -> Stat:
    """Mean over classes of the per-class seed means; std over seeds of the per-seed averages.

    `values` holds columns category, seed and value; only seeds with every class count for the std.
    """
    values = values[values["category"].isin(classes)].dropna(subset=["value"])
    if values.empty:
        return Stat(None, None, 0)
    mean = values.groupby("category")["value"].mean().mean()
    wide = values.pivot_table(index="seed", columns="category", values="value", aggfunc="mean")
    complete = wide.dropna()
    std = complete.mean(axis=1).std(ddof=1) if len(complete) > 1 else None
    return Stat(float(mean), nan_to_none(std) if std is not None else None, len(complete))


def row_layout(categories: Iterable[str]) -> list[_Row]:
    """Class rows in the papers' order, then the Textures, Objects and overall mean rows."""
    ordered = category_order(categories)
    rows = [_Row(c, (c,), False) for c in ordered]
    textures = tuple(c for c in ordered if c in TEXTURES)
    objects = tuple(c for c in ordered if c in OBJECTS)
    if textures:
        rows.append(_Row(TEXTURES_MEAN, textures, True))
    if objects:
        rows.append(_Row(OBJECTS_MEAN, objects, True))
    rows.append(_Row(MEAN, tuple(ordered), True))
    return rows


def _rules(layout: list[_Row]) -> set[int]:
    """Lines after the textures, after the objects, and before the mean rows."""
    rules = set()
    for index in range(1, len(layout)):
        before, here = layout[index - 1], layout[index]
        kind = [_kind(before), _kind(here)]
        if kind[0] != kind[1]:
            rules.add(index)
    return rules


def _kind(row: _Row) -> str:
    if row.group:
        return "mean"
    if row.label in TEXTURES:
        return "texture"
    return "object" if row.label in OBJECTS else "other"


def row_stat(values: pd.DataFrame, row: _Row, intervals: bool = False) -> Stat:
    if row.group:
        stat = group_stat(values, row.classes)
    else:
        stat = class_stat(values.loc[values["category"] == row.label, "value"])
    return _with_interval(stat, values, row) if intervals else stat


def _with_interval(stat: Stat, values: pd.DataFrame, row: _Row) -> Stat:
    """The entry with its 95% interval: one seed's bootstrap interval over the test images, or
    with >= 3 seeds the Student-t interval of the seed mean (of the per-seed class averages)."""
    if stat.mean is None:
        return stat
    values = values[values["category"].isin(row.classes)].dropna(subset=["value"])
    if row.group:
        wide = values.pivot_table(index="seed", columns="category", values="value", aggfunc="mean")
        seed_values = wide.dropna().mean(axis=1)
    else:
        seed_values = values["value"]
        if len(values) == 1 and values[list(INTERVAL_COLUMNS)].notna().all(axis=None):
            low, high = values[list(INTERVAL_COLUMNS)].iloc[0]
            return replace(stat, interval=(float(low), float(high)))
    interval = mean_interval(list(seed_values))
    return replace(stat, interval=None if interval is None else (interval[0], interval[1]))


def published_value(published: pd.DataFrame, method: str, metric: str, label: str) -> float | None:
    """The published number of a class or mean row; a mean row falls back to the class mean."""
    rows = published[(published["method"] == method) & (published["metric"] == metric)]
    values = dict(zip(rows["category"], rows["value"], strict=True))
    if label in values:
        return float(values[label])
    if label == MEAN and "mean" in values:
        return float(values["mean"])
    classes = GROUP_CLASSES.get(label)
    if classes and all(c in values for c in classes):
        return float(sum(values[c] for c in classes) / len(classes))
    return None


def _difference(measured: Stat, published: float | None, row: _Row) -> Entry:
    """measured - published; on a mean row only when every class of the paper's mean was run."""
    if published is None or measured.mean is None:
        return MISSING
    if row.group and not set(GROUP_CLASSES.get(row.label, ())) <= set(row.classes):
        return MISSING
    return Stat(measured.mean - published, signed=True)


def _published_entries(
    published: pd.DataFrame, method: str, metric: str, row: _Row, measured: Stat
) -> list[Entry]:
    value = published_value(published, method, metric, row.label)
    shown: Entry = NOT_PUBLISHED if value is None else Stat(value)
    return [shown, _difference(measured, value, row)]


def _percent(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["value"] = frame["value"] * 100
    for column in INTERVAL_COLUMNS:
        if column in frame.columns:
            frame[column] = frame[column] * 100
    return frame


def _common_n(stats: Iterable[Entry]) -> int:
    counts = [s.n for s in stats if isinstance(s, Stat) and s.n]
    return max(counts, default=1)


def _notes(frame: pd.DataFrame, table: TextTable, with_published: bool) -> list[str]:
    notes = []
    flat = [entry for row in table.rows for entry in row]
    if table.n_seeds > 1:
        notes.append(f"mean ± std (sample, ddof=1) over {table.n_seeds} seeds")
    if any(isinstance(e, Stat) and e.n and e.n != table.n_seeds for e in flat):
        notes.append("(n=k): only k seeds finished")
    if with_published:
        notes.append(f"pub.: published number; Δ = measured − published; {NOT_PUBLISHED}: none")
    if any(isinstance(e, Stat) and e.interval for e in flat):
        notes.append(INTERVAL_NOTE)
    devices = sorted(d for d in frame["device"].dropna().unique())
    notes.append("hardware: " + ("; ".join(devices) if devices else "not recorded"))
    return notes


def _best_columns(row: list[Entry], columns: list[int]) -> set[int]:
    """Columns holding the highest value at the printed precision (ties all bold)."""
    shown = {
        c: round(row[c].mean, 1)
        for c in columns
        if isinstance(row[c], Stat) and row[c].mean is not None
    }
    if len(shown) < 2:
        return set()
    best = max(shown.values())
    return {c for c, v in shown.items() if v == best}


def _dataset_title(dataset: str, categories: Iterable[str] = ()) -> str:
    """MVTec AD only when every class is one of it; else the dataset's own name."""
    if dataset == PUBLISHED_DATASET and not set(categories) <= set(MVTEC_CATEGORIES):
        return dataset
    return DATASET_TITLES.get(dataset, dataset)


# --- tables --------------------------------------------------------------------------------------


def metric_table(
    frame: pd.DataFrame,
    metric: str,
    published: pd.DataFrame | None = None,
    intervals: bool = False,
) -> TextTable:
    """One metric of one dataset: classes as rows, models (+ published, Δ) as columns."""
    frame = _percent(frame[frame["metric"] == metric])
    labels = model_labels(frame)
    layout = row_layout(frame["category"].unique())
    header, measured_columns = ["Class"], []
    with_pub = _published_models(published, frame, labels)
    for key, label in labels.items():
        measured_columns.append(len(header))
        header.append(label)
        if key in with_pub:
            header += [f"{key[0]} pub.", "Δ"]
    rows = []
    for row in layout:
        entries: list[Entry] = [row.label]
        for key in labels:
            stat = row_stat(select_model(frame, key), row, intervals)
            entries.append(stat)
            if key in with_pub:
                entries += _published_entries(published, key[0], metric, row, stat)
        rows.append(entries)
    title = f"{METRIC_TITLES.get(metric, metric)} (%) on {_frame_title(frame)}"
    table = TextTable(title, header, rows, rules=_rules(layout))
    table.bold = [_best_columns(r, measured_columns) for r in rows]
    table.n_seeds = _common_n(e for r in rows for e in r)
    table.notes = _notes(frame, table, bool(with_pub)) + _variant_notes(frame)
    return table


def paper_table(
    frame: pd.DataFrame,
    metrics: Sequence[str] = PAPER_METRICS,
    published: pd.DataFrame | None = None,
    intervals: bool = False,
) -> TextTable:
    """One model on one dataset in the papers' layout: classes as rows, metrics as columns."""
    frame = _percent(frame)
    method, backbone = (frame[c].iloc[0] for c in ("method", "backbone"))
    (key,) = model_keys(frame)
    with_pub = bool(_published_models(published, frame, {key: method}))
    layout = row_layout(frame["category"].unique())
    header = ["Class"]
    for metric in metrics:
        header.append(METRIC_TITLES.get(metric, metric))
        if with_pub:
            header += ["pub.", "Δ"]
    rows = []
    for row in layout:
        entries: list[Entry] = [row.label]
        for metric in metrics:
            stat = row_stat(frame[frame["metric"] == metric], row, intervals)
            entries.append(stat)
            if with_pub:
                entries += _published_entries(published, method, metric, row, stat)
        rows.append(entries)
    name = f"{method}{VARIANT_SEPARATOR}{key[2]}" if key[2] else method
    weights = ", random weights" if key[3] is False else ""
    title = f"{name} ({backbone}{weights}) on {_frame_title(frame)}, percent"
    table = TextTable(title, header, rows, bold=[set() for _ in rows], rules=_rules(layout))
    table.n_seeds = _common_n(e for r in rows for e in r)
    table.notes = _notes(frame, table, with_pub) + _variant_notes(frame)
    return table


def _frame_title(frame: pd.DataFrame) -> str:
    return _dataset_title(frame["dataset"].iloc[0], frame["category"].unique())


def _published_models(
    published: pd.DataFrame | None, frame: pd.DataFrame, labels: dict[tuple, str]
) -> set[tuple]:
    """Models with published numbers: a published method on MVTec AD, standard protocol."""
    if published is None or frame["dataset"].iloc[0] != PUBLISHED_DATASET:
        return set()
    methods = set(published["method"])
    return {k for k in labels if k[0] in methods and _standard_protocol(frame, k)}


def _mean(values: pd.Series) -> float | None:
    values = values.dropna()
    return float(values.mean()) if len(values) else None


def _max(values: pd.Series) -> float | None:
    values = values.dropna()
    return float(values.max()) if len(values) else None


def fmt_number(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return MISSING if value is None else f"{value / scale:.{digits}f}"


def cost_table(frame: pd.DataFrame) -> TextTable | None:
    """What each model cost on one dataset (means over cells, peaks as maxima), or None."""
    cells = frame.drop_duplicates(subset=[c for c in RECORD_COLUMNS if c in frame.columns])
    if cells[list(COST_FIELDS)].isna().all().all():
        return None
    labels = model_labels(cells)
    quantities: list[tuple[str, Any]] = [
        ("Params trainable (M)", lambda c: fmt_number(_mean(c["params_trainable"]), 1e6, 2)),
        ("Params total (M)", lambda c: fmt_number(_mean(c["params_total"]), 1e6, 2)),
        ("GFLOPs / image", lambda c: fmt_number(_mean(c["gflops_per_image"]), 1, 2)),
        ("Train time / class (s)", lambda c: fmt_number(_mean(c["train_seconds"]))),
        ("Train time, all cells (min)", lambda c: fmt_number(_sum(c["train_seconds"]), 60)),
        (
            "Peak GPU memory, train (GiB)",
            lambda c: fmt_number(_max(c["peak_gpu_memory_bytes_train"]), 2**30, 2),
        ),
        (
            "Peak GPU memory, test (GiB)",
            lambda c: fmt_number(_max(c["peak_gpu_memory_bytes_test"]), 2**30, 2),
        ),
        ("Throughput (images/s)", lambda c: fmt_number(_mean(c["test_images_per_second"]))),
        ("Latency p50 (ms / image)", lambda c: fmt_number(_mean(c["latency_ms_p50"]), 1, 2)),
        ("Latency p95 (ms / image)", lambda c: fmt_number(_mean(c["latency_ms_p95"]), 1, 2)),
        ("Kept model (MiB)", lambda c: fmt_number(_mean(c["model_bytes"]), 2**20, 2)),
        ("Precision", lambda c: _joined(c["precision"])),
        ("Hardware", lambda c: _joined(c["device"])),
        ("Cells", lambda c: str(len(c))),
    ]
    rows: list[list[Entry]] = []
    for name, compute in quantities:
        row: list[Entry] = [name]
        for key in labels:
            row.append(compute(select_model(cells, key)))
        rows.append(row)
    return TextTable(
        f"Cost on {_frame_title(cells)}",
        ["", *labels.values()],
        rows,
        bold=[set() for _ in rows],
        rules={len(quantities) - 3},
        notes=[
            "means over cells (classes x seeds); peak memory: maximum; —: not recorded",
            *_variant_notes(cells),
        ],
    )


def _sum(values: pd.Series) -> float | None:
    values = values.dropna()
    return float(values.sum()) if len(values) else None


def _joined(values: pd.Series) -> str:
    found = sorted(str(v) for v in values.dropna().unique())
    return "; ".join(found) if found else MISSING


def format_entry(entry: Entry, n_seeds: int = 1, latex: bool = False) -> str:
    """One entry as papers print it: 97.9, 97.9 ± 0.3, +1.2; missing values as —."""
    if isinstance(entry, str):
        return entry
    if entry.mean is None:
        return MISSING
    text = _signed(entry.mean, latex) if entry.signed else f"{entry.mean:.1f}"
    if entry.std is not None:
        text += (r" $\pm$ " if latex else " ± ") + f"{entry.std:.1f}"
    if entry.interval is not None:
        text += f" [{entry.interval[0]:.1f}, {entry.interval[1]:.1f}]"
    if entry.n is not None and entry.n != n_seeds:
        text += f" (n={entry.n})"
    return text


def _signed(value: float, latex: bool) -> str:
    """+1.2 / -0.4 / 0.0 (no signed zero); LaTeX gets math-mode signs."""
    text = f"{value:+.1f}"
    if text in ("+0.0", "-0.0"):
        return "0.0"
    return f"${text[0]}${text[1:]}" if latex else text


# --- report tables -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NamedTable:
    name: str  # file stem
    table: TextTable
    terminal: bool  # also printed by `anobench report`


def build_tables(
    frame: pd.DataFrame, published: pd.DataFrame | None, intervals: bool = False
) -> list[NamedTable]:
    """Every table of a report: per model (paper layout), per metric, and costs, per dataset;
    with `intervals`, entries carry their 95% intervals."""
    tables = []
    datasets = list(dict.fromkeys(frame["dataset"]))
    for dataset in datasets:
        suffix = "" if len(datasets) == 1 else f"_{dataset}"
        data = frame[frame["dataset"] == dataset]
        labels = model_labels(data)
        stems = _model_stems(labels)
        for key in labels:
            model = select_model(data, key)
            tables.append(
                NamedTable(
                    f"paper_{stems[key]}{suffix}",
                    paper_table(model, published=published, intervals=intervals),
                    True,
                )
            )
        for metric in [m for m in METRIC_IDS if m in set(data["metric"])]:
            table = metric_table(data, metric, published, intervals)
            shown = len(labels) > 1 and metric in PAPER_METRICS
            tables.append(NamedTable(f"table_{metric}{suffix}", table, shown))
        costs = cost_table(data)
        if costs is not None:
            tables.append(NamedTable(f"table_cost{suffix}", costs, True))
    return tables


def _backbones_per_method(keys: Iterable[tuple]) -> dict[str, set[str]]:
    """The backbones each method ran with, from model keys (method, backbone, ...)."""
    backbones: dict[str, set[str]] = {}
    for method, backbone, *_ in keys:
        backbones.setdefault(method, set()).add(backbone)
    return backbones


def _model_stems(labels: dict[tuple, str]) -> dict[tuple, str]:
    """File stems: method[_variant][_backbone if it has several][_random if needed to differ]."""
    backbones = _backbones_per_method(labels)
    stems = {}
    for key in labels:
        method, backbone, variant, _ = key
        parts = [method, variant, backbone if len(backbones[method]) > 1 else ""]
        stems[key] = "_".join(p for p in parts if p)
    taken = list(stems.values())
    for key, stem in stems.items():
        if taken.count(stem) > 1 and key[3] is False:
            stems[key] = f"{stem}_random"
    return stems


# --- per defect type -----------------------------------------------------------------------------

DEFECT_NOTE = (
    "each defect type against the good images: image AUROC, and pixel AUROC / PRO over the good "
    "images plus that type's"
)


def defects_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """The records' per-defect metrics: one row per cell, defect type and metric."""
    rows = []
    for record in records:
        base = {key: record.get(key) for key in RECORD_COLUMNS}
        base["variant"] = record.get("variant") or ""
        base["pretrained"] = record.get("pretrained")
        for defect, values in (record.get("by_defect") or {}).items():
            for metric, value in values.items():
                if metric != "n_images":
                    row = {"defect": defect, "n_images": values.get("n_images")}
                    rows.append({**base, **row, "metric": metric, "value": value})
    columns = [*RECORD_COLUMNS, "pretrained", "defect", "n_images", "metric", "value"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["value"] = pd.to_numeric(frame["value"]).astype(float)
    return frame


def defect_table(frame: pd.DataFrame, metrics: Sequence[str] = PAPER_METRICS) -> TextTable:
    """One model on one dataset: per class and defect type its images and metrics (percent)."""
    frame = _percent(frame)
    (key,) = model_keys(frame)
    label = model_labels(frame)[key]
    header = ["Class", "Defect", "Images", *(METRIC_TITLES.get(m, m) for m in metrics)]
    rows: list[list[Entry]] = []
    rules = set()
    for category in category_order(frame["category"].unique()):
        mine = frame[frame["category"] == category]
        if rows:
            rules.add(len(rows))
        for index, defect in enumerate(sorted(mine["defect"].unique())):
            cells = mine[mine["defect"] == defect]
            entries: list[Entry] = [category if index == 0 else "", defect]
            entries.append(str(int(cells["n_images"].iloc[0])))
            for metric in metrics:
                entries.append(class_stat(cells.loc[cells["metric"] == metric, "value"]))
            rows.append(entries)
    title = f"{label} ({key[1]}) per defect type on {_frame_title(frame)}, percent"
    table = TextTable(title, header, rows, bold=[set() for _ in rows], rules=rules)
    table.n_seeds = _common_n(e for r in rows for e in r)
    table.notes = [DEFECT_NOTE]
    if table.n_seeds > 1:
        table.notes.append(f"mean ± std (sample, ddof=1) over {table.n_seeds} seeds")
    if any(isinstance(e, Stat) and e.n and e.n != table.n_seeds for r in rows for e in r):
        table.notes.append("(n=k): only k seeds finished")
    return table


def build_defect_tables(records: Sequence[dict[str, Any]]) -> list[NamedTable]:
    """Per dataset and model, the per-defect table of the records that hold per-defect metrics."""
    frame = defects_frame(records)
    tables = []
    datasets = sorted(set(frame["dataset"]))
    for dataset in datasets:
        suffix = "" if len(datasets) == 1 else f"_{dataset}"
        data = frame[frame["dataset"] == dataset]
        stems = _model_stems(model_labels(data))
        for key, stem in stems.items():
            model = select_model(data, key)
            tables.append(NamedTable(f"defects_{stem}{suffix}", defect_table(model), True))
    return tables
