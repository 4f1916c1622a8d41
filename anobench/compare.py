"""`anobench compare`: two results.csv tables cell by cell; fails on a regression (for CI)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from anobench.errors import AnobenchError
from anobench.metrics import METRIC_IDS
from anobench.report import KEY_COLUMNS, MISSING, fmt_number, nan_to_none, sort_frame

_EPS = 1e-9  # a delta of exactly the tolerance is "same", whatever the float rounding


def read_results_csv(path: Path) -> pd.DataFrame:
    """A results.csv written by `anobench report`, checked for its key columns and duplicates."""
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError as err:
        raise AnobenchError(
            f"{path} does not exist; pass a results.csv of anobench report."
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


def compare_summary(diff: pd.DataFrame, tolerance: float) -> tuple[str, bool]:
    """The one-line verdict for a CI log, and whether it passed."""
    counts = diff["status"].value_counts()
    n = {s: int(counts.get(s, 0)) for s in ("regressed", "missing", "improved", "same", "new")}
    ok = n["regressed"] == 0 and n["missing"] == 0
    compared = len(diff) - n["new"]
    line = (
        f"compare: {compared} cells, {n['regressed']} regressed, {n['missing']} missing, "
        f"{n['improved']} improved, {n['new']} new (tolerance {tolerance:g} points) -> "
        + ("OK" if ok else "FAIL")
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


def _diff_table(diff: pd.DataFrame) -> Table:
    table = Table(title="Changed cells (percent; Δ = candidate − baseline, points)")
    for name in ("method", "variant", "backbone", "category", "seed", "metric"):
        table.add_column(name)
    for name in ("baseline", "candidate", "Δ", "status"):
        table.add_column(name, justify="right")
    styles = {"regressed": "bold red", "missing": "bold red", "improved": "green", "new": "cyan"}
    for _, row in diff.iterrows():
        values = [fmt_number(nan_to_none(row[c])) for c in ("baseline", "candidate")]
        delta = MISSING if math.isnan(row["delta"]) else f"{row['delta']:+.2f}"
        table.add_row(
            *(str(row[c]) for c in ("method", "variant", "backbone", "category", "seed", "metric")),
            *values,
            delta,
            Text(row["status"], style=styles.get(row["status"], "")),
        )
    return table


def compare_command(ns: argparse.Namespace) -> int:
    """`anobench compare`: 1 when a baseline cell dropped by more than the tolerance or is gone."""
    if ns.tolerance < 0:
        raise AnobenchError(f"--tolerance {ns.tolerance} is negative; give points >= 0, e.g. 0.5.")
    baseline = read_results_csv(Path(ns.baseline))
    candidate = read_results_csv(Path(ns.candidate))
    if ns.metric:
        known = set(METRIC_IDS) | set(baseline["metric"])
        unknown = [m for m in ns.metric if m not in known]
        if unknown:
            raise AnobenchError(
                f"--metric {unknown[0]} is not valid; use one of: {', '.join(METRIC_IDS)}."
            )
        baseline = baseline[baseline["metric"].isin(ns.metric)]
        candidate = candidate[candidate["metric"].isin(ns.metric)]
    diff = compare_frames(baseline, candidate, ns.tolerance)
    console = Console()
    note = variant_note(baseline, candidate)
    if note:
        console.print(note, markup=False, highlight=False, soft_wrap=True)
    shown = diff[(diff["status"] != "same") | (diff["delta"].abs() >= 0.005)]
    if not shown.empty:
        console.print(_diff_table(shown))
    if len(shown) < len(diff):
        console.print(f"{len(diff) - len(shown)} cells unchanged (|Δ| < 0.01 points), not shown")
    line, ok = compare_summary(diff, ns.tolerance)
    console.print(line, markup=False, highlight=False, soft_wrap=True)
    return 0 if ok else 1
