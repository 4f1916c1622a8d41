"""Report: aggregation over seeds and methods, published numbers, Markdown / LaTeX / CSV output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from anobench.cli import main
from anobench.data.mvtec import MVTEC_CATEGORIES
from anobench.report import print_run_table, status_frame, to_latex, to_markdown
from anobench.results import Cell
from anobench.tables import (
    CSV_COLUMNS,
    MEAN,
    NOT_PUBLISHED,
    OBJECTS_MEAN,
    TEXTURES_MEAN,
    Stat,
    build_tables,
    cost_table,
    format_entry,
    load_published,
    metric_table,
    paper_table,
    records_frame,
)


def make_record(
    method: str,
    category: str,
    seed: int,
    metrics: dict[str, float | None],
    *,
    dataset: str = "mvtec",
    backbone: str = "bb",
    cost: dict | None = None,
    device: str = "cpu (test)",
) -> dict:
    return {
        "schema": 1,
        "status": "done",
        "dataset": dataset,
        "method": method,
        "backbone": backbone,
        "category": category,
        "seed": seed,
        "metrics": metrics,
        "cost": cost or {},
        "device": device,
        "precision": "fp32",
        "git_commit": "abc",
    }


def write_record(results: Path, record: dict, name: str = "metrics.json") -> None:
    cell = Cell(*(record[k] for k in ("dataset", "method", "backbone", "category", "seed")))
    folder = cell.directory(results)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(record))


# method "a": 3 seeds on carpet (texture) and bottle (object); method "b": one seed.
A_CARPET = (0.90, 0.92, 0.94)
A_BOTTLE = (0.80, 0.81, 0.85)


def seeded_records() -> list[dict]:
    records = []
    for seed in range(3):
        for category, values in (("carpet", A_CARPET), ("bottle", A_BOTTLE)):
            value = values[seed]
            metrics = {"image_auroc": value, "pixel_auroc": value, "pro": value}
            records.append(make_record("a", category, seed, metrics))
    records.append(
        make_record("b", "carpet", 0, {"image_auroc": 0.95, "pixel_auroc": 0.5, "pro": None})
    )
    records.append(
        make_record("b", "bottle", 0, {"image_auroc": 0.70, "pixel_auroc": 0.5, "pro": 0.6})
    )
    return records


def entries(table, column: str) -> dict[str, object]:
    index = table.header.index(column)
    return {row[0]: row[index] for row in table.rows}


def test_mean_and_std_over_seeds_by_hand():
    frame = records_frame(seeded_records())
    table = metric_table(frame, "image_auroc")
    a = entries(table, "a")
    assert [row[0] for row in table.rows] == ["carpet", "bottle", TEXTURES_MEAN, OBJECTS_MEAN, MEAN]
    assert a["carpet"].mean == pytest.approx(92.0)
    assert a["carpet"].std == pytest.approx(2.0)  # sample std of 90, 92, 94
    assert a["bottle"].mean == pytest.approx(82.0)
    assert a["bottle"].std == pytest.approx(math.sqrt(7))  # deviations -2, -1, 3
    assert a[TEXTURES_MEAN].mean == pytest.approx(92.0)
    assert a[OBJECTS_MEAN].mean == pytest.approx(82.0)
    # per-seed class means 85, 86.5, 89.5 -> mean 87, sample std sqrt(5.25)
    assert a[MEAN].mean == pytest.approx(87.0)
    assert a[MEAN].std == pytest.approx(math.sqrt(5.25))
    assert a[MEAN].n == 3
    b = entries(table, "b")
    assert b["carpet"] == Stat(95.0, None, 1)
    assert b[MEAN].mean == pytest.approx(82.5)
    assert table.n_seeds == 3
    assert format_entry(a["carpet"], table.n_seeds) == "92.0 ± 2.0"
    assert format_entry(b["carpet"], table.n_seeds) == "95.0 (n=1)"
    assert any("over 3 seeds" in note for note in table.notes)


def test_missing_metric_values_are_skipped_and_shown_as_dash():
    frame = records_frame(seeded_records())
    b = entries(metric_table(frame, "pro"), "b")
    assert b["carpet"].mean is None and format_entry(b["carpet"]) == "—"
    assert b[MEAN].mean == pytest.approx(60.0)


def test_paper_order_then_other_classes_sorted_and_group_rows_only_when_present():
    records = [
        make_record("a", category, 0, {"image_auroc": 0.9})
        for category in ("zipper", "zeta", "grid", "alpha", "carpet")
    ]
    table = metric_table(records_frame(records), "image_auroc")
    labels = [row[0] for row in table.rows]
    assert labels == [
        "carpet",
        "grid",
        "zipper",
        "alpha",
        "zeta",
        TEXTURES_MEAN,
        OBJECTS_MEAN,
        MEAN,
    ]
    assert table.rules == {2, 3, 5}  # after textures, after objects, before the means
    synthetic = [
        make_record("a", c, 0, {"image_auroc": 0.9}, dataset="synthetic")
        for c in ("washer", "chip")
    ]
    labels = [row[0] for row in metric_table(records_frame(synthetic), "image_auroc").rows]
    assert labels == ["chip", "washer", MEAN]


PUBLISHED = pd.DataFrame(
    [
        ("a", "carpet", "pixel_auroc", 95.0),
        ("a", "bottle", "pixel_auroc", 80.0),
        ("a", "mean", "pixel_auroc", 90.0),
        ("a", "carpet", "pro", 91.0),
    ],
    columns=["method", "category", "metric", "value"],
)


def test_published_numbers_and_differences():
    frame = records_frame(seeded_records())
    table = paper_table(frame[frame["method"] == "a"], published=PUBLISHED)
    assert table.header == [
        "Class",
        "Image AUROC",
        "pub.",
        "Δ",
        "Pixel AUROC",
        "pub.",
        "Δ",
        "PRO",
        "pub.",
        "Δ",
    ]
    rows = {row[0]: row for row in table.rows}
    assert rows["carpet"][2] == NOT_PUBLISHED  # no published image AUROC
    assert rows["carpet"][5] == Stat(95.0)
    assert rows["carpet"][6].mean == pytest.approx(92.0 - 95.0)
    assert format_entry(rows["carpet"][6]) == "-3.0"
    assert format_entry(rows["bottle"][6]) == "+2.0"
    assert rows["bottle"][8] == NOT_PUBLISHED  # PRO of bottle not published
    assert rows["bottle"][9] == "—"
    # the paper's mean covers all 15 classes: shown, but no difference from two classes
    assert rows[MEAN][5] == Stat(90.0)
    assert rows[MEAN][6] == "—"


def test_difference_of_the_mean_when_every_class_ran():
    records = [
        make_record("a", c, 0, {"pixel_auroc": 0.9 if c == "carpet" else 0.8})
        for c in MVTEC_CATEGORIES
    ]
    table = metric_table(records_frame(records), "pixel_auroc", PUBLISHED)
    assert table.header == ["Class", "a", "a pub.", "Δ"]
    rows = {row[0]: row for row in table.rows}
    assert rows[MEAN][1].mean == pytest.approx((90 + 14 * 80) / 15)
    assert rows[MEAN][3].mean == pytest.approx((90 + 14 * 80) / 15 - 90.0)
    assert rows["grid"][2] == NOT_PUBLISHED


def test_no_published_columns_for_another_dataset():
    records = [make_record("saae", "carpet", 0, {"pixel_auroc": 0.9}, dataset="synthetic")]
    table = metric_table(records_frame(records), "pixel_auroc", load_published())
    assert table.header == ["Class", "saae"]


def test_shipped_published_numbers_join_by_method_class_and_metric():
    published = load_published()
    assert {"method", "category", "metric", "value", "source"} <= set(published.columns)
    records = [make_record("saae", "carpet", 0, {"pixel_auroc": 0.95, "pro": 0.9})]
    table = paper_table(records_frame(records), published=published)
    carpet = table.rows[0]
    expected = published.query("method == 'saae' and category == 'carpet' and metric == 'pro'")
    assert carpet[table.header.index("PRO") + 1] == Stat(float(expected["value"].iloc[0]))


def test_markdown_and_latex_bold_the_best_per_row():
    frame = records_frame(seeded_records())
    table = metric_table(frame, "image_auroc")
    markdown = to_markdown(table)
    assert "| carpet | 92.0 ± 2.0 | **95.0 (n=1)** |" in markdown
    assert "| bottle | **82.0 ± 2.6** | 70.0 (n=1) |" in markdown
    assert markdown.splitlines()[3] == "|:---|---:|---:|"
    latex = to_latex(table, "image_auroc")
    assert r"carpet & 92.0 $\pm$ 2.0 & \textbf{95.0 (n=1)} \\" in latex
    assert r"bottle & \textbf{82.0 $\pm$ 2.6} & 70.0 (n=1) \\" in latex
    for command in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{lrr}"):
        assert command in latex


def test_ties_are_all_bold_and_latex_is_escaped():
    records = [make_record(m, "metal_nut", 0, {"pro": 0.9}) for m in ("x_1", "y")]
    table = metric_table(records_frame(records), "pro", PUBLISHED)
    latex = to_latex(table, "pro")
    assert r"metal\_nut & \textbf{90.0} & \textbf{90.0} \\" in latex
    assert r"Class & x\_1 & y \\" in latex
    assert r"PRO (\%)" in latex
    signed = to_latex(
        paper_table(records_frame(seeded_records()).query("method == 'a'"), published=PUBLISHED),
        "a",
    )
    assert r"$-$3.0" in signed and r"$\Delta$" in signed


def test_cost_table_with_missing_fields():
    cost = {
        "params_trainable": 1_500_000,
        "params_total": 11_000_000,
        "train_seconds": 30.0,
        "test_images_per_second": 12.5,
        "latency_ms_p50": 4.0,
        "latency_ms_p95": 6.0,
        "peak_gpu_memory_bytes_train": 2 * 2**30,
    }
    records = [
        make_record("a", c, 0, {"pro": 0.9}, cost=cost, device="GPU X")
        for c in ("carpet", "bottle")
    ]
    table = cost_table(records_frame(records))
    rows = {row[0]: row[1] for row in table.rows}
    assert rows["Params trainable (M)"] == "1.50"
    assert rows["Params total (M)"] == "11.00"
    assert rows["GFLOPs / image"] == "—"
    assert rows["Train time / class (s)"] == "30.0"
    assert rows["Train time, all cells (min)"] == "1.0"
    assert rows["Peak GPU memory, train (GiB)"] == "2.00"
    assert rows["Peak GPU memory, test (GiB)"] == "—"
    assert rows["Latency p95 (ms / image)"] == "6.00"
    assert rows["Hardware"] == "GPU X"
    assert cost_table(records_frame(seeded_records())) is None


def test_report_writes_csv_markdown_and_latex(tmp_path, capsys):
    results, out = tmp_path / "results", tmp_path / "out"
    for record in seeded_records():
        write_record(results, record)
    assert main(["report", str(results), "--out", str(out)]) == 0
    csv = pd.read_csv(out / "results.csv")
    assert list(csv.columns) == list(CSV_COLUMNS)
    assert len(csv) == 8 * 3  # cells x metrics
    row = csv.query("method == 'a' and category == 'bottle' and seed == 2 and metric == 'pro'")
    assert row["value"].iloc[0] == pytest.approx(0.85)
    assert list(csv["category"].unique()) == ["carpet", "bottle"]
    names = {p.name for p in out.iterdir()}
    for stem in ("table_image_auroc", "table_pixel_auroc", "table_pro", "paper_a", "paper_b"):
        assert {f"{stem}.md", f"{stem}.tex"} <= names
    assert "**95.0 (n=1)**" in (out / "table_image_auroc.md").read_text()
    assert "Image AUROC (%) on MVTec AD" in capsys.readouterr().out


def test_report_names_files_per_dataset_and_says_once_that_synthetic_is_unpublished(
    tmp_path, capsys
):
    results = tmp_path / "results"
    write_record(results, make_record("a", "carpet", 0, {"pro": 0.9}))
    write_record(results, make_record("a", "washer", 0, {"pro": 0.8}, dataset="synthetic"))
    assert main(["report", str(results)]) == 0
    assert (results / "table_pro_mvtec.md").is_file()
    assert (results / "paper_a_synthetic.tex").is_file()
    assert capsys.readouterr().out.count("no published numbers") == 1


def test_model_labels_name_the_backbone_when_a_method_has_several():
    records = [make_record("a", "carpet", 0, {"pro": 0.9}, backbone=b) for b in ("r18", "vit")]
    frame = records_frame(records)
    assert metric_table(frame, "pro").header == ["Class", "a (r18)", "a (vit)"]
    assert [t.name for t in build_tables(frame, None)][:2] == ["paper_a_r18", "paper_a_vit"]


def test_report_without_results_is_a_user_error(tmp_path):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2


def test_status_counts_done_failed_and_missing(tmp_path, capsys):
    results = tmp_path / "results"
    write_record(results, make_record("a", "carpet", 0, {"pro": 0.9}))
    write_record(results, make_record("a", "carpet", 1, {"pro": 0.9}))
    failed = make_record("a", "bottle", 0, {}) | {"status": "failed", "error": "out of memory"}
    write_record(results, failed, "error.json")
    done = [make_record("a", "carpet", s, {"pro": 0.9}) for s in (0, 1)]
    status = status_frame(done, [failed])
    assert status["status"].value_counts().to_dict() == {"done": 2, "failed": 1, "missing": 1}
    missing = status[status["status"] == "missing"].iloc[0]
    assert (missing["category"], missing["seed"]) == ("bottle", 1)
    assert main(["report", str(results), "--status"]) == 0
    out = capsys.readouterr().out
    assert "failed: mvtec/a/bb/bottle/seed0: out of memory" in out
    assert "missing: mvtec/a/bb/bottle/seed1" in out


def test_print_run_table_shows_the_finished_cells(tmp_path):
    results = tmp_path / "results"
    write_record(results, make_record("saae", "carpet", 0, {"pixel_auroc": 0.95, "pro": 0.9}))
    cells = [Cell("mvtec", "saae", "bb", c, 0) for c in ("carpet", "grid")]
    console = Console(record=True, width=200)
    print_run_table(results, cells, console)
    text = console.export_text()
    assert "saae (bb) on MVTec AD" in text
    assert "97.9" in text  # SAAE's published carpet pixel AUROC beside the measured 95.0
    assert "grid" not in text
