"""Results to tables: rich in the terminal, CSV and Markdown on disk."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from anobench.data.mvtec import MVTEC_CATEGORIES
from anobench.results import Cell, METRICS_FILE, load_results, read_record, write_bytes_atomic

TABLE_METRICS = ("image_auroc", "pixel_auroc", "pro", "image_ap", "pixel_ap")
METRIC_TITLES = {
    "image_auroc": "Image AUROC",
    "pixel_auroc": "Pixel AUROC",
    "pro": "PRO",
    "image_ap": "Image AP",
    "pixel_ap": "Pixel AP",
    "image_f1_max": "Image F1-max",
    "pixel_f1_max": "Pixel F1-max",
}


def category_order(categories: list[str]) -> list[str]:
    """MVTec classes in the papers' order (textures, then objects), then any others sorted."""
    known = [c for c in MVTEC_CATEGORIES if c in categories]
    return known + sorted(c for c in categories if c not in MVTEC_CATEGORIES)


def per_class_table(frame: pd.DataFrame, metrics: tuple[str, ...] = TABLE_METRICS) -> pd.DataFrame:
    """Classes as rows, metrics as columns (percent, mean over seeds), with a mean row."""
    frame = frame[frame["metric"].isin(metrics)]
    table = frame.pivot_table(index="category", columns="metric", values="value", aggfunc="mean")
    table = table.reindex(index=category_order(list(table.index)), columns=list(metrics)) * 100
    table.loc["mean"] = table.mean(numeric_only=True)
    return table


def _cell(value: float) -> str:
    return "-" if pd.isna(value) else f"{value:.1f}"


def print_table(table: pd.DataFrame, title: str, console: Console) -> None:
    rich_table = Table(title=title)
    rich_table.add_column("class")
    for metric in table.columns:
        rich_table.add_column(METRIC_TITLES.get(metric, metric), justify="right")
    for category, row in table.iterrows():
        style = "bold" if category == "mean" else None
        rich_table.add_row(str(category), *(_cell(v) for v in row), style=style)
    console.print(rich_table)


def print_run_table(results_dir: Path, cells: list[Cell], console: Console) -> None:
    """The per-class table of the cells of one run (those that finished)."""
    rows = []
    for cell in cells:
        record = read_record(cell.directory(results_dir) / METRICS_FILE)
        if record is None:
            continue
        for metric, value in record["metrics"].items():
            rows.append({"category": cell.category, "metric": metric, "value": value})
    if not rows:
        return
    first = cells[0]
    title = f"{first.method} ({first.backbone}) on {first.dataset}, percent"
    print_table(per_class_table(pd.DataFrame(rows)), title, console)


def report_command(ns: argparse.Namespace) -> int:
    results_dir = Path(ns.results_dir)
    frame = load_results(results_dir)
    out_dir = Path(ns.out) if ns.out else results_dir
    console = Console()
    for (dataset, method, backbone), group in frame.groupby(["dataset", "method", "backbone"]):
        table = per_class_table(group)
        print_table(table, f"{method} ({backbone}) on {dataset}, percent", console)
    write_bytes_atomic(out_dir / "results.csv", frame.to_csv(index=False).encode())
    console.print(f"wrote {out_dir / 'results.csv'}")
    return 0


def compare_command(ns: argparse.Namespace) -> int:
    raise NotImplementedError
