"""Results to paper-style tables (rich, Markdown, LaTeX) and a tidy CSV."""

from __future__ import annotations

import argparse
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from anobench.data.mvtec import MVTEC_CATEGORIES, OBJECTS, TEXTURES
from anobench.errors import AnobenchError
from anobench.identity import describe_record, record_arguments
from anobench.metrics import METRIC_IDS
from anobench.results import (
    ERROR_FILE,
    METRICS_FILE,
    RECORD_COLUMNS,
    VARIANT_SEPARATOR,
    Cell,
    iter_records,
    read_checked,
    write_bytes_atomic,
)

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
)
_INTEGER_FIELDS = (
    "params_trainable",
    "params_total",
    "peak_gpu_memory_bytes_train",
    "peak_gpu_memory_bytes_test",
)
KEY_COLUMNS = (*RECORD_COLUMNS, "metric")
IDENTITY_COLUMNS = ("pretrained", "overrides")
CSV_COLUMNS = (
    *KEY_COLUMNS,
    "value",
    *IDENTITY_COLUMNS,
    "device",
    "precision",
    "git_commit",
    *COST_FIELDS,
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


@dataclass(frozen=True)
class Stat:
    """A table entry in percent: mean, std over seeds (None: one seed) and seed count."""

    mean: float | None
    std: float | None = None
    n: int | None = None  # None: not a seed statistic (a published number, a difference)
    signed: bool = False


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
        for metric, value in (record.get("metrics") or {}).items():
            rows.append({**base, "metric": metric, "value": value})
    frame = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    for column in ("value", *COST_FIELDS):
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
    backbones: dict[str, set[str]] = {}
    for method, backbone, *_ in keys:
        backbones.setdefault(method, set()).add(backbone)
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


def row_stat(values: pd.DataFrame, row: _Row) -> Stat:
    if row.group:
        return group_stat(values, row.classes)
    return class_stat(values.loc[values["category"] == row.label, "value"])


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
    frame: pd.DataFrame, metric: str, published: pd.DataFrame | None = None
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
            stat = row_stat(select_model(frame, key), row)
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
            stat = row_stat(frame[frame["metric"] == metric], row)
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


# --- rendering -----------------------------------------------------------------------------------


def format_entry(entry: Entry, n_seeds: int = 1, latex: bool = False) -> str:
    """One entry as papers print it: 97.9, 97.9 ± 0.3, +1.2; missing values as —."""
    if isinstance(entry, str):
        return entry
    if entry.mean is None:
        return MISSING
    text = _signed(entry.mean, latex) if entry.signed else f"{entry.mean:.1f}"
    if entry.std is not None:
        text += (r" $\pm$ " if latex else " ± ") + f"{entry.std:.1f}"
    if entry.n is not None and entry.n != n_seeds:
        text += f" (n={entry.n})"
    return text


def _signed(value: float, latex: bool) -> str:
    """+1.2 / -0.4 / 0.0 (no signed zero); LaTeX gets math-mode signs."""
    text = f"{value:+.1f}"
    if text in ("+0.0", "-0.0"):
        return "0.0"
    return f"${text[0]}${text[1:]}" if latex else text


def to_rich(table: TextTable) -> Table:
    rich_table = Table(title=table.title, caption="; ".join(table.notes), caption_justify="left")
    for index, name in enumerate(table.header):
        rich_table.add_column(name, justify="left" if index == 0 else "right")
    for index, row in enumerate(table.rows):
        cells = [
            Text(
                format_entry(entry, table.n_seeds),
                style="bold" if column in _bold(table, index) else "",
            )
            for column, entry in enumerate(row)
        ]
        rich_table.add_row(*cells, end_section=index + 1 in table.rules)
    return rich_table


def _bold(table: TextTable, row: int) -> set[int]:
    return table.bold[row] if row < len(table.bold) else set()


def to_markdown(table: TextTable) -> str:
    """A GitHub-flavoured Markdown table with its title above and its notes below."""
    lines = [f"**{table.title}**", ""]
    lines.append("| " + " | ".join(table.header) + " |")
    lines.append("|" + "|".join([":---"] + ["---:"] * (len(table.header) - 1)) + "|")
    for index, row in enumerate(table.rows):
        cells = []
        for column, entry in enumerate(row):
            text = format_entry(entry, table.n_seeds).replace("|", r"\|")
            cells.append(f"**{text}**" if column in _bold(table, index) and text else text)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *(f"{note}  " for note in table.notes)]
    return "\n".join(lines).rstrip() + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "Δ": r"$\Delta$",
    "±": r"$\pm$",
    "−": "$-$",
    "—": "--",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def to_latex(table: TextTable, label: str) -> str:
    """A booktabs table environment ready to paste (needs \\usepackage{booktabs})."""
    columns = "l" + "r" * (len(table.header) - 1)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{" + latex_escape(table.title + ". " + "; ".join(table.notes) + ".") + "}",
        r"\label{tab:" + label + "}",
        r"\begin{tabular}{" + columns + "}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in table.header) + r" \\",
        r"\midrule",
    ]
    for index, row in enumerate(table.rows):
        if index in table.rules:
            lines.append(r"\midrule")
        cells = []
        for column, entry in enumerate(row):
            if isinstance(entry, str):
                text = latex_escape(entry)
            else:
                text = format_entry(entry, table.n_seeds, latex=True).replace("—", "--")
            cells.append(r"\textbf{" + text + "}" if column in _bold(table, index) else text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# --- report command ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NamedTable:
    name: str  # file stem
    table: TextTable
    terminal: bool  # also printed by `anobench report`


def build_tables(frame: pd.DataFrame, published: pd.DataFrame | None) -> list[NamedTable]:
    """Every table of a report: per model (paper layout), per metric, and costs, per dataset."""
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
                    f"paper_{stems[key]}{suffix}", paper_table(model, published=published), True
                )
            )
        for metric in [m for m in METRIC_IDS if m in set(data["metric"])]:
            table = metric_table(data, metric, published)
            shown = len(labels) > 1 and metric in PAPER_METRICS
            tables.append(NamedTable(f"table_{metric}{suffix}", table, shown))
        costs = cost_table(data)
        if costs is not None:
            tables.append(NamedTable(f"table_cost{suffix}", costs, True))
    return tables


def _model_stems(labels: dict[tuple, str]) -> dict[tuple, str]:
    """File stems: method[_variant][_backbone if it has several][_random if needed to differ]."""
    backbones: dict[str, set[str]] = {}
    for method, backbone, *_ in labels:
        backbones.setdefault(method, set()).add(backbone)
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


def print_run_table(results_dir: Path, cells: list[Cell], console: Console) -> None:
    """The paper-layout table of the cells of one run (those that finished)."""
    records = [read_checked(cell.directory(results_dir) / METRICS_FILE)[0] for cell in cells]
    frame = records_frame(r for r in records if r is not None)
    if frame.empty:
        return
    published = load_published()
    for _, model in frame.groupby(["dataset", *MODEL_COLUMNS], sort=False, dropna=False):
        console.print(to_rich(paper_table(model, published=published)))


def status_frame(done: list[dict[str, Any]], failed: list[dict[str, Any]]) -> pd.DataFrame:
    """Cells done, failed and missing; missing = a model's class x seed grid minus the others.

    The grid of a model holds every class seen in its dataset and every seed seen for the model.
    """
    rows: dict[tuple, tuple[str, str]] = {}
    for record in failed:
        rows[_cell_key(record)] = ("failed", record.get("error", ""))
    for record in done:
        rows[_cell_key(record)] = ("done", "")
    classes: dict[str, set[str]] = {}
    seeds: dict[tuple[str, str, str, str], set[int]] = {}
    for dataset, method, backbone, category, seed, variant in rows:
        classes.setdefault(dataset, set()).add(category)
        seeds.setdefault((dataset, method, backbone, variant), set()).add(seed)
    for (dataset, method, backbone, variant), model_seeds in seeds.items():
        for category in classes[dataset]:
            for seed in model_seeds:
                key = (dataset, method, backbone, category, seed, variant)
                rows.setdefault(key, ("missing", ""))
    status = pd.DataFrame(
        [(*key, state, error) for key, (state, error) in rows.items()],
        columns=[*RECORD_COLUMNS, "status", "error"],
    )
    return sort_frame(status)


def _cell_key(record: dict[str, Any]) -> tuple:
    return tuple(record.get(k) for k in RECORD_COLUMNS[:-1]) + (record.get("variant") or "",)


def print_status(
    results_dir: Path, console: Console, done: list[dict[str, Any]] | None = None
) -> None:
    """Counts of done, failed and missing cells per model, then each cell that is not done."""
    done = iter_records(results_dir) if done is None else done
    status = status_frame(done, iter_records(results_dir, ERROR_FILE))
    if status.empty:
        console.print(f"no cells under {results_dir}")
        return
    status["model"] = [
        Cell("", m, "", "", 0, v).model_folder
        for m, v in zip(status["method"], status["variant"], strict=True)
    ]
    table = Table(title=f"Cells under {results_dir}")
    for name in ("dataset", "method", "backbone", "done", "failed", "missing"):
        table.add_column(name, justify="right" if name in ("done", "failed", "missing") else "left")
    counts = status.groupby(["dataset", "model", "backbone", "status"]).size().unstack(fill_value=0)
    for key, row in counts.iterrows():
        table.add_row(*key, *(str(row.get(s, 0)) for s in ("done", "failed", "missing")))
    console.print(table)
    for _, cell in status[status["status"] != "done"].iterrows():
        label = f"{cell['dataset']}/{cell['model']}/{cell['backbone']}/{cell['category']}"
        message = f": {cell['error']}" if cell["error"] else ""
        console.print(f"{cell['status']}: {label}/seed{cell['seed']}{message}", markup=False)


def report_command(ns: argparse.Namespace) -> int:
    """`anobench report`: print the tables, write CSV / Markdown / LaTeX (and figures)."""
    results_dir = Path(ns.results_dir)
    if not results_dir.is_dir():
        raise AnobenchError(
            f"results folder {results_dir} does not exist; run `anobench run` first "
            "or pass the results_dir it wrote to."
        )
    out_dir = Path(ns.out) if ns.out else results_dir
    console = Console()
    records = iter_records(results_dir)  # one warning line per damaged record
    if ns.status:
        print_status(results_dir, console, records)
    references: dict[str, Any] = {}
    records = [describe_record(record, references) for record in records]
    frame = records_frame(records)
    if frame.empty:
        if ns.status:
            return 0
        raise AnobenchError(
            f"no finished cells ({METRICS_FILE}) under {results_dir}; "
            "run `anobench run` first (`anobench report --status` lists failed cells)."
        )
    published = load_published()
    for dataset in sorted(set(frame["dataset"]) - {PUBLISHED_DATASET}):
        console.print(f"dataset {dataset}: no published numbers (they exist for MVTec AD only)")
    _print_foreign_classes(frame, console)
    written = [out_dir / "results.csv"]
    write_bytes_atomic(written[0], frame.to_csv(index=False).encode())
    for named in build_tables(frame, published):
        if named.terminal:
            console.print(to_rich(named.table))
        for suffix, text in (
            (".md", to_markdown(named.table)),
            (".tex", to_latex(named.table, named.name)),
        ):
            path = out_dir / f"{named.name}{suffix}"
            write_bytes_atomic(path, text.encode())
            written.append(path)
    console.print(f"wrote {len(written)} files (results.csv, *.md, *.tex) to {out_dir}")
    if ns.figures:
        from anobench.figures import write_figures

        figures = write_figures(results_dir, records, frame, out_dir / "figures", console)
        console.print(f"wrote {len(figures)} figures to {out_dir / 'figures'}")
    return 0


def _print_foreign_classes(frame: pd.DataFrame, console: Console) -> None:
    """Say which classes of dataset=mvtec are not MVTec AD classes (no published numbers)."""
    mvtec = frame[frame["dataset"] == PUBLISHED_DATASET]
    foreign = [c for c in category_order(mvtec["category"].unique()) if c not in MVTEC_CATEGORIES]
    if foreign:
        console.print(
            f"dataset {PUBLISHED_DATASET}: {', '.join(foreign)} are not MVTec AD classes; their "
            "tables are titled by the dataset name and have no published numbers (set "
            "dataset.name to name such data)",
            soft_wrap=True,
        )
