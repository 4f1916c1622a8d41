"""`anobench compare`: two results tables cell by cell; fails on a regression (for CI).

Each side is a results.csv of `anobench report` or a results folder; `--stat` adds the
significance test of anobench.gate, `--format md|json` writes for a pull request or a parser.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from anobench.errors import AnobenchError
from anobench.gate import (
    NOISE,
    PAIRED,
    SEEDS,
    SHORT_TESTS,
    TOLERANCE,
    GateSettings,
    PerImageSource,
    statistical_gate,
)
from anobench.metrics import METRIC_IDS
from anobench.results import METRICS_FILE, VARIANT_SEPARATOR, iter_records
from anobench.tables import (
    KEY_COLUMNS,
    MISSING,
    fmt_number,
    nan_to_none,
    records_frame,
    sort_frame,
)

STATUSES = ("regressed", "missing", "improved", NOISE, "same", "new")

_EPS = 1e-9  # a delta of exactly the tolerance is "same", whatever the float rounding


def read_results_csv(path: Path) -> pd.DataFrame:
    """A results.csv written by `anobench report`, checked for its key columns and duplicates."""
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError as err:
        raise AnobenchError(
            f"{path} does not exist; pass a results.csv of `anobench report` or a results folder."
        ) from err
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise AnobenchError(f"{path} is not a readable CSV ({err}); pass a results.csv.") from err
    frame = with_variant(frame)
    missing = [c for c in (*KEY_COLUMNS, "value") if c not in frame.columns]
    if missing:
        raise AnobenchError(
            f"{path} lacks the column(s) {', '.join(missing)}; pass a results.csv written by "
            "`anobench report`."
        )
    frame = frame.astype({c: str for c in KEY_COLUMNS if c != "seed"}).astype({"seed": int})
    duplicated = frame.duplicated(subset=list(KEY_COLUMNS))
    if duplicated.any():
        first = frame[duplicated].iloc[0]
        raise AnobenchError(
            f"{path} holds cell {'/'.join(str(first[c]) for c in KEY_COLUMNS)} twice; "
            "write it again with `anobench report`."
        )
    return frame


def with_variant(frame: pd.DataFrame) -> pd.DataFrame:
    """A `variant` column ("" = reference setting), also for tables written before variants."""
    if "variant" not in frame.columns:
        return frame.assign(variant="")
    known = frame["variant"].notna()
    return frame.assign(variant=frame["variant"].astype(object).where(known, "").astype(str))


def compare_frames(
    baseline: pd.DataFrame, candidate: pd.DataFrame, tolerance: float
) -> pd.DataFrame:
    """Per cell: baseline and candidate in percent, delta in points and a status.

    status: regressed (drop > tolerance), missing (in the baseline only, or no value any more),
    improved (gain > tolerance), same (within the tolerance) or new (in the candidate only).
    """
    keys = list(KEY_COLUMNS)
    baseline, candidate = with_variant(baseline), with_variant(candidate)
    merged = baseline[[*keys, "value"]].merge(
        candidate[[*keys, "value"]], on=keys, how="outer", suffixes=("_b", "_c"), indicator=True
    )
    merged["baseline"] = merged.pop("value_b") * 100
    merged["candidate"] = merged.pop("value_c") * 100
    merged["delta"] = merged["candidate"] - merged["baseline"]
    side = merged.pop("_merge")
    has_b, has_c = merged["baseline"].notna(), merged["candidate"].notna()
    status = pd.Series("same", index=merged.index)
    status[merged["delta"] < -tolerance - _EPS] = "regressed"
    status[merged["delta"] > tolerance + _EPS] = "improved"
    status[(side == "both") & has_b & ~has_c] = "missing"
    status[(side == "both") & ~has_b & has_c] = "new"
    status[side == "left_only"] = "missing"
    status[side == "right_only"] = "new"
    merged["status"] = status
    return sort_frame(merged)


def compare_summary(
    diff: pd.DataFrame, tolerance: float, alpha: float | None = None
) -> tuple[str, bool]:
    """The one-line verdict for a CI log, and whether it passed (alpha: the --stat mode's)."""
    counts = diff["status"].value_counts()
    n = {s: int(counts.get(s, 0)) for s in STATUSES}
    ok = n["regressed"] == 0 and n["missing"] == 0
    compared = len(diff) - n["new"]
    noise = "" if alpha is None else f"{n[NOISE]} {NOISE}, "
    significance = "" if alpha is None else f", significance {alpha:g}"
    line = (
        f"compare: {compared} cells, {n['regressed']} regressed, {n['missing']} missing, "
        f"{n['improved']} improved, {noise}{n['new']} new (tolerance {tolerance:g} points"
        f"{significance}) -> " + ("OK" if ok else "FAIL")
    )
    return line, ok


def variant_note(baseline: pd.DataFrame, candidate: pd.DataFrame) -> str | None:
    """A line naming the variants only one table holds (their cells cannot match), or None."""
    models = ["dataset", "method", "backbone", "variant"]
    sides = [
        set(frame[models].itertuples(index=False, name=None)) for frame in (baseline, candidate)
    ]
    only = [sorted(sides[0] - sides[1]), sorted(sides[1] - sides[0])]
    if not only[0] and not only[1]:
        return None

    def named(models_of: list[tuple]) -> str:
        return ", ".join(
            f"{m}+{v}" if v else f"{m} (reference setting)" for _, m, _, v in models_of
        )

    parts = [
        f"{side} only: {named(found)}"
        for side, found in zip(("baseline", "candidate"), only, strict=True)
        if found
    ]
    return "note: the tables hold different variants (cells match only within one); " + "; ".join(
        parts
    )


def read_results(path: Path) -> tuple[pd.DataFrame, PerImageSource]:
    """A results.csv, or a results folder: its records and (for --stat) its per-image data."""
    if not path.is_dir():
        return read_results_csv(path), PerImageSource()
    frame = records_frame(iter_records(path))
    if frame.empty:
        raise AnobenchError(
            f"{path} holds no finished cells ({METRICS_FILE}); pass a results folder of "
            "`anobench run` or a results.csv of `anobench report`."
        )
    frame = frame.astype({c: str for c in KEY_COLUMNS if c != "seed"})
    return frame, PerImageSource.from_folder(path)


# --- output --------------------------------------------------------------------------------------

_STYLES = {"regressed": "bold red", "missing": "bold red", "improved": "green", "new": "cyan"}
_MODEL_COLUMNS = [c for c in KEY_COLUMNS if c not in ("category", "seed", "metric")]


def _numbers(row: pd.Series) -> list[str]:
    """baseline, candidate (1 decimal), delta (2 decimals): as short as the verdict allows."""
    values = [fmt_number(nan_to_none(row[c])) for c in ("baseline", "candidate")]
    return [*values, MISSING if math.isnan(row["delta"]) else f"{row['delta']:+.2f}"]


def _test_name(row: pd.Series) -> str | None:
    return row["test"] if isinstance(row["test"], str) else None


def _p_text(value: float) -> str:
    if value is None or math.isnan(value):
        return ""
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def terminal_tables(diff: pd.DataFrame, stat: bool) -> list[tuple[str, Table]]:
    """Per model a heading (its key, never cut) and a table fitting 80 columns: the key columns
    class, seed and metric never wrap; only the numbers may fold."""
    tables = []
    for key, rows in diff.groupby(_MODEL_COLUMNS, sort=False):
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        for name in ("class", "seed", "metric"):
            table.add_column(name, no_wrap=True)
        for name in ("base", "cand", "Δ"):
            table.add_column(name, justify="right", overflow="fold")
        table.add_column("status", no_wrap=True)
        if stat:
            table.add_column("p", justify="right", overflow="fold")
            table.add_column("test", overflow="fold")
        for _, row in rows.iterrows():
            cells = [str(row["category"]), str(row["seed"]), str(row["metric"]), *_numbers(row)]
            cells.append(Text(row["status"], style=_STYLES.get(row["status"], "")))
            if stat:
                cells += [_p_text(row["p"]), SHORT_TESTS.get(_test_name(row) or "", "")]
            table.add_row(*cells)
        tables.append((_model_heading(dict(zip(_MODEL_COLUMNS, key, strict=True))), table))
    return tables


def _model_heading(model: dict[str, Any]) -> str:
    """dataset / method[+variant] / backbone, as the results folders name a model."""
    variant = model.get("variant") or ""
    method = f"{model['method']}{VARIANT_SEPARATOR}{variant}" if variant else model["method"]
    return f"{model['dataset']} / {method} / {model['backbone']}"


def legend(stat: bool, settings: GateSettings | None = None, short: bool = True) -> str:
    """What the columns mean; `short`: the terminal's test abbreviations."""
    text = "percent; Δ = candidate − baseline (points)"
    if not stat or settings is None:
        return text
    names = {test: f"{SHORT_TESTS[test]} = {test}" if short else test for test in SHORT_TESTS}
    return text + (
        f"; p: one-sided p of the drop, tested only for drops beyond the tolerance; {NOISE}: "
        f"such a drop with p >= {settings.alpha:g}; test: {names[PAIRED]} over the same test "
        f"images ({settings.resamples} resamples), {names[SEEDS]} (Student t over the seeds), "
        f"{names[TOLERANCE]} (no per-image data and one seed)"
    )


def to_markdown(diff: pd.DataFrame, line: str, stat: bool, settings: GateSettings) -> str:
    """A Markdown table of the changed cells and the verdict, for a pull-request comment."""
    header = [*KEY_COLUMNS, "baseline", "candidate", "Δ", "status"]
    if stat:
        header += ["p", "test"]
    lines = ["**anobench compare**", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join(["---"] * len(KEY_COLUMNS) + ["---:"] * 3 + ["---"]) + "|")
    if stat:
        lines[-1] += "---:|---|"
    for _, row in diff.iterrows():
        status = row["status"]
        failing = status in ("regressed", "missing")
        cells = [str(row[c]) for c in KEY_COLUMNS] + _numbers(row)
        cells.append(f"**{status}**" if failing else status)
        if stat:
            cells += [_p_text(row["p"]), _test_name(row) or ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", legend(stat, settings, short=False), "", f"`{line}`"]
    return "\n".join(lines) + "\n"


def to_json(diff: pd.DataFrame, line: str, ok: bool, stat: bool, settings: GateSettings) -> str:
    """Every compared cell and the verdict, for a CI parser (percent; NaN as null)."""
    cells = []
    for _, row in diff.iterrows():
        cell: dict[str, Any] = {c: row[c] for c in KEY_COLUMNS}
        cell["seed"] = int(row["seed"])
        for name in ("baseline", "candidate", "delta"):
            cell[name] = nan_to_none(row[name])
        cell["status"] = row["status"]
        if stat:
            cell["test"] = _test_name(row)
            cell["p"] = nan_to_none(row["p"])
        cells.append(cell)
    counts = diff["status"].value_counts()
    verdict = {
        "ok": ok,
        "summary": line,
        "mode": "stat" if stat else "tolerance",
        "tolerance": settings.tolerance,
        "counts": {s: int(counts.get(s, 0)) for s in STATUSES},
        "cells": cells,
    }
    if stat:
        verdict |= {"alpha": settings.alpha, "resamples": settings.resamples}
    return json.dumps(verdict, indent=2) + "\n"


# --- command -------------------------------------------------------------------------------------


def _check_options(ns: argparse.Namespace) -> None:
    if ns.tolerance < 0:
        raise AnobenchError(f"--tolerance {ns.tolerance} is negative; give points >= 0, e.g. 0.5.")
    if not 0 < ns.alpha < 1:
        raise AnobenchError(f"--alpha {ns.alpha} must lie in (0, 1); the usual is 0.05.")
    if ns.resamples < 1:
        raise AnobenchError(f"--resamples {ns.resamples} must be 1 or more, e.g. 1000.")


def compare_command(ns: argparse.Namespace) -> int:
    """`anobench compare`: 1 when a baseline cell dropped by more than the tolerance (with
    --stat: and significantly) or is gone."""
    _check_options(ns)
    baseline, baseline_images = read_results(Path(ns.baseline))
    candidate, candidate_images = read_results(Path(ns.candidate))
    if ns.metric:
        known = set(METRIC_IDS) | set(baseline["metric"])
        unknown = [m for m in ns.metric if m not in known]
        if unknown:
            raise AnobenchError(
                f"--metric {unknown[0]} is not valid; use one of: {', '.join(METRIC_IDS)}."
            )
        baseline = baseline[baseline["metric"].isin(ns.metric)]
        candidate = candidate[candidate["metric"].isin(ns.metric)]
    settings = GateSettings(ns.tolerance, ns.alpha, ns.resamples)
    diff = compare_frames(baseline, candidate, ns.tolerance)
    if ns.stat:
        diff = statistical_gate(
            diff, (baseline, candidate), (baseline_images, candidate_images), settings
        )
    line, ok = compare_summary(diff, ns.tolerance, ns.alpha if ns.stat else None)
    console = Console()
    note = variant_note(baseline, candidate)
    if note:
        console.print(note, markup=False, highlight=False, soft_wrap=True)
    shown = diff[(diff["status"] != "same") | (diff["delta"].abs() >= 0.005)]
    hidden = len(diff) - len(shown)
    if ns.format == "json":
        console.print(to_json(diff, line, ok, ns.stat, settings), end="", **_PLAIN)
        return 0 if ok else 1
    if ns.format == "md":
        console.print(to_markdown(shown, line, ns.stat, settings), end="", **_PLAIN)
        return 0 if ok else 1
    if not shown.empty:
        console.print("Changed cells", style="bold")
        for heading, table in terminal_tables(shown, ns.stat):
            console.print(heading, **_PLAIN)
            console.print(table)
        console.print(legend(ns.stat, settings), markup=False, highlight=False)
    if hidden:
        console.print(f"{hidden} cells unchanged (|Δ| < 0.01 points), not shown")
    console.print(line, **_PLAIN)
    return 0 if ok else 1


_PLAIN: dict[str, Any] = {"markup": False, "highlight": False, "soft_wrap": True}
