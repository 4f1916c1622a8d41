"""Tables to the terminal (rich), Markdown and LaTeX; the `anobench report` command."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from anobench.data.mvtec import MVTEC_CATEGORIES
from anobench.errors import AnobenchError
from anobench.identity import describe_record
from anobench.results import (
    ERROR_FILE,
    METRICS_FILE,
    RECORD_COLUMNS,
    Cell,
    iter_records,
    read_checked,
    write_bytes_atomic,
)
from anobench.tables import (
    MODEL_COLUMNS,
    PUBLISHED_DATASET,
    NamedTable,
    TextTable,
    build_defect_tables,
    build_tables,
    category_order,
    format_entry,
    load_published,
    paper_table,
    records_frame,
    sort_frame,
)

# --- rendering -----------------------------------------------------------------------------------


def to_rich(table: TextTable) -> Table:
    caption = Text("; ".join(table.notes))  # plain text: "[low, high]" is not markup
    rich_table = Table(title=table.title, caption=caption, caption_justify="left")
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
    for named in build_tables(frame, published, intervals=ns.ci):
        if named.terminal:
            console.print(to_rich(named.table))
        written += write_table_files(named, out_dir)
    if ns.by_defect:
        written += write_defect_tables(records, out_dir, console)
    console.print(
        f"wrote {len(written)} files (results.csv, *.md, *.tex) to {out_dir}", soft_wrap=True
    )
    if ns.figures:
        from anobench.figures import write_figures

        figures = write_figures(results_dir, records, frame, out_dir / "figures", console)
        console.print(f"wrote {len(figures)} figures to {out_dir / 'figures'}", soft_wrap=True)
    if ns.html:
        from anobench.html_report import write_html_report

        path = write_html_report(results_dir, records, frame, published, out_dir, console)
        console.print(f"wrote {path} (self-contained; open it in a browser)", soft_wrap=True)
    return 0


def write_table_files(named: NamedTable, out_dir: Path) -> list[Path]:
    """A table as `<name>.md` and `<name>.tex` in out_dir (atomic); the paths written."""
    paths = []
    for suffix, text in (
        (".md", to_markdown(named.table)),
        (".tex", to_latex(named.table, named.name)),
    ):
        path = out_dir / f"{named.name}{suffix}"
        write_bytes_atomic(path, text.encode())
        paths.append(path)
    return paths


def write_defect_tables(
    records: list[dict[str, Any]], out_dir: Path, console: Console
) -> list[Path]:
    """`report --by-defect`: print each model's per-defect table, write it as .md and .tex."""
    lacking = sum("by_defect" not in r for r in records)
    if lacking:
        console.print(
            f"by-defect: {lacking} of {len(records)} cells predate per-defect metrics; "
            "rerun them with overwrite=true to add them"
        )
    written = []
    for named in build_defect_tables(records):
        console.print(to_rich(named.table))
        written += write_table_files(named, out_dir)
    return written


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
