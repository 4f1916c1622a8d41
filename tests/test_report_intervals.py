"""`anobench report --ci` and `--by-defect` on hand-made records (old ones without the new keys)."""

from __future__ import annotations

import pandas as pd
import pytest

from anobench.cli import main
from anobench.tables import MEAN, build_defect_tables, format_entry, metric_table, records_frame
from tests.test_report import make_record, write_record


def with_intervals(record: dict, intervals: dict) -> dict:
    return {**record, "intervals": intervals}


def test_one_seed_shows_its_bootstrap_interval_and_old_records_none():
    new = with_intervals(
        make_record("a", "carpet", 0, {"image_auroc": 0.979}), {"image_auroc": [0.968, 0.987]}
    )
    old = make_record("b", "carpet", 0, {"image_auroc": 0.90})
    frame = records_frame([new, old])
    assert frame.loc[frame["method"] == "a", ["ci_low", "ci_high"]].values.tolist() == [
        [0.968, 0.987]
    ]
    assert frame.loc[frame["method"] == "b", "ci_low"].isna().all()
    table = metric_table(frame, "image_auroc", intervals=True)
    carpet = table.rows[0]
    assert format_entry(carpet[1]) == "97.9 [96.8, 98.7]"
    assert format_entry(carpet[2]) == "90.0"  # the record predates intervals
    assert any("95% interval" in note for note in table.notes)
    plain = metric_table(frame, "image_auroc")
    assert format_entry(plain.rows[0][1]) == "97.9"


def test_three_seeds_show_the_t_interval_of_the_mean_two_seeds_none():
    records = [
        make_record("a", category, seed, {"image_auroc": value})
        for category, values in (("carpet", (0.90, 0.92, 0.94)), ("bottle", (0.8, 0.8, 0.9)))
        for seed, value in enumerate(values)
    ]
    records += [make_record("b", "carpet", seed, {"image_auroc": 0.5 + seed}) for seed in (0, 1)]
    table = metric_table(records_frame(records), "image_auroc", intervals=True)
    rows = {row[0]: row for row in table.rows}
    # carpet: mean 92, standard error 2 / sqrt(3), t(0.975, 2) = 4.3027: 92 -+ 4.968
    low, high = rows["carpet"][1].interval
    assert (low, high) == pytest.approx((87.032, 96.968), abs=1e-3)
    assert format_entry(rows["carpet"][1], 3) == "92.0 ± 2.0 [87.0, 97.0]"
    # mean row: per-seed class averages 85, 86, 92 -> mean 87.67, sd 3.786
    low, high = rows[MEAN][1].interval
    half = 4.302653 * 3.7859389 / 3**0.5
    assert (low, high) == pytest.approx((87.6667 - half, 87.6667 + half), abs=1e-3)
    assert rows["carpet"][2].interval is None  # two seeds: mean ± std only


def test_report_ci_flag_prints_intervals_and_csv_keeps_them(tmp_path, capsys):
    results = tmp_path / "results"
    record = make_record("a", "carpet", 0, {"image_auroc": 0.979, "pixel_auroc": 0.9, "pro": 0.8})
    write_record(results, with_intervals(record, {"image_auroc": [0.968, 0.987]}))
    assert main(["report", str(results), "--ci"]) == 0
    out = capsys.readouterr().out
    assert "97.9 [96.8, 98.7]" in out and "[low, high]: 95% interval" in out
    csv = pd.read_csv(results / "results.csv")
    row = csv[csv["metric"] == "image_auroc"].iloc[0]
    assert (row["ci_low"], row["ci_high"]) == (0.968, 0.987)
    assert "[96.8, 98.7]" in (results / "paper_a.md").read_text()
    assert main(["report", str(results)]) == 0
    assert "[96.8" not in capsys.readouterr().out


def by_defect(crack: float, hole: float) -> dict:
    return {
        "crack": {"n_images": 3, "image_auroc": crack, "pixel_auroc": 0.9, "pro": 0.7},
        "hole": {"n_images": 2, "image_auroc": hole, "pixel_auroc": 0.8, "pro": None},
    }


def test_defect_tables_hold_each_type_with_its_seed_statistics():
    records = [
        {**make_record("a", "carpet", seed, {"image_auroc": 0.9}), "by_defect": by_defect(c, 0.5)}
        for seed, c in enumerate((0.90, 0.94))
    ]
    records.append({**make_record("a", "bottle", 0, {}), "by_defect": by_defect(0.6, 0.7)})
    (named,) = build_defect_tables(records)
    assert named.name == "defects_a"
    table = named.table
    assert table.header == ["Class", "Defect", "Images", "Image AUROC", "Pixel AUROC", "PRO"]
    assert [row[:3] for row in table.rows] == [
        ["carpet", "crack", "3"],
        ["", "hole", "2"],
        ["bottle", "crack", "3"],
        ["", "hole", "2"],
    ]
    assert format_entry(table.rows[0][3], table.n_seeds) == "92.0 ± 2.8"
    assert format_entry(table.rows[3][3], table.n_seeds) == "70.0 (n=1)"
    assert format_entry(table.rows[1][5], table.n_seeds) == "—"
    assert table.rules == {2}


def test_report_by_defect_writes_tables_and_names_old_records(tmp_path, capsys):
    results = tmp_path / "results"
    write_record(
        results, {**make_record("a", "carpet", 0, {"pro": 0.5}), "by_defect": by_defect(1.0, 0.5)}
    )
    write_record(results, make_record("a", "bottle", 0, {"pro": 0.5}))  # predates by_defect
    assert main(["report", str(results), "--by-defect"]) == 0
    out = capsys.readouterr().out
    assert "1 of 2 cells predate per-defect metrics" in out
    assert "per defect type" in out
    text = (results / "defects_a.md").read_text()
    assert "| carpet | crack | 3 | 100.0 |" in text
    assert (results / "defects_a.tex").is_file()
