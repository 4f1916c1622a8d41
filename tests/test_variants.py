"""Results you can trust: each setting gets its own cells, tables say what they show (issue 19)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import timm
import torch

from anobench import progress as progress_module
from anobench import runner
from anobench.cli import main
from anobench.compare import variant_note
from anobench.data.synthetic import SyntheticSpec, generate
from anobench.progress import LineProgress, progress
from anobench.tables import build_tables, metric_table, records_frame
from tests.helpers import tiny_run_args


def _records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.rglob("metrics.json"))]


@pytest.fixture()
def tire_root(tmp_path: Path) -> Path:
    """An MVTec-layout folder with one class that is not an MVTec AD class."""
    spec = SyntheticSpec(
        image_size=64, n_train=6, n_test_good=3, n_test_defect=4, categories=("weave",)
    )
    root = generate(tmp_path / "D", spec)
    (root / "weave").rename(root / "tire")
    return root


def _tire_run(tmp_path: Path, tire_root: Path) -> list[str]:
    """`anobench run` of knn on the tire class, results under tmp_path/R."""
    return [
        "run",
        "method=knn",
        "category=[tire]",
        f"dataset.root={tire_root}",
        "method.image_size=64",
        "latency_repeats=0",
        "progress=false",
        f"results_dir={tmp_path / 'R'}",
        f"cache_dir={tmp_path / 'cache'}",
    ]


def test_a_changed_setting_gets_its_own_cell_and_tables_tell_them_apart(
    tmp_path: Path, tire_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "R"
    base = _tire_run(tmp_path, tire_root)
    assert main([*base, "backbone.pretrained=false"]) == 0
    # trained weights from a file: the offline stand-in for backbone.pretrained=true
    weights = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), weights)
    assert main([*base, f"backbone.weights={weights}"]) == 0
    out = capsys.readouterr().out
    assert "done already, skipped" not in out
    records = _records(results)
    assert sorted(r["pretrained"] for r in records) == [False, True]
    assert len({r["variant"] for r in records}) == 2 and all(r["variant"] for r in records)

    # a hyperparameter change is a cell to run, not one that is done
    assert main([*base, "backbone.pretrained=false", "method.bank_size=100", "dry_run=true"]) == 0
    assert "todo" in capsys.readouterr().out
    assert main([*base, "backbone.pretrained=false", "dry_run=true"]) == 0
    plan = capsys.readouterr().out
    assert "done" in plan and "todo" not in plan

    assert main(["report", str(results), "--out", str(tmp_path / "report")]) == 0
    report = " ".join(capsys.readouterr().out.split())
    random, trained = sorted(records, key=lambda r: r["pretrained"])
    assert f"knn+{random['variant']} (resnet18.tv_in1k, random weights) on mvtec" in report
    assert f"knn+{trained['variant']} (resnet18.tv_in1k) on mvtec" in report
    assert "on MVTec AD" not in report and "pub." not in report  # tire is no MVTec AD class
    assert "tire are not MVTec AD classes" in report
    assert "backbone.pretrained=false" in report  # the variant's overrides in a note
    csv = pd.read_csv(tmp_path / "report" / "results.csv", keep_default_na=False)
    assert {"variant", "pretrained", "overrides"} <= set(csv.columns)
    assert set(csv["variant"]) == {random["variant"], trained["variant"]}
    assert set(csv["pretrained"].astype(str)) == {"True", "False"}


def _record(method: str, variant: str, pretrained: bool | None, overrides: dict) -> dict:
    return {
        "schema": 2,
        "status": "done",
        "dataset": "mvtec",
        "method": method,
        "backbone": "bb",
        "category": "carpet",
        "seed": 0,
        "variant": variant,
        "reference": "paper",
        "overrides": overrides,
        "pretrained": pretrained,
        "identity": {"hash": variant or "reference"},
        "metrics": {"pro": 0.9},
    }


def test_report_groups_by_variant_and_marks_random_weights() -> None:
    frame = records_frame(
        [
            _record("saae", "", True, {}),
            _record("saae", "1a2b3c4d", True, {"method.lr": 0.0002}),
            _record("saae", "5e6f7a8b", False, {"backbone.pretrained": False}),
            _record("saae", "9c0d1e2f", True, {"pro_fpr_limit": 0.05}),
        ]
    )
    published = pd.DataFrame(
        [("saae", "carpet", "pro", 90.0)], columns=["method", "category", "metric", "value"]
    )
    table = metric_table(frame, "pro", published)
    assert table.header == [
        "Class",
        "saae",
        "saae pub.",
        "Δ",
        "saae+1a2b3c4d",
        "saae pub.",
        "Δ",
        "saae+5e6f7a8b (random weights)",
        "saae pub.",
        "Δ",
        "saae+9c0d1e2f",  # another PRO limit: not comparable with the paper
    ]
    assert "saae+1a2b3c4d = method=saae method.lr=0.0002" in table.notes
    assert "saae+5e6f7a8b (random weights) = method=saae backbone.pretrained=false" in table.notes
    names = [t.name for t in build_tables(frame, None)]
    assert names[:4] == [
        "paper_saae",
        "paper_saae_1a2b3c4d",
        "paper_saae_5e6f7a8b",
        "paper_saae_9c0d1e2f",
    ]


def test_compare_matches_by_variant_and_says_when_the_tables_differ(tmp_path: Path) -> None:
    rows = records_frame([_record("knn", "", True, {}), _record("knn", "1a2b3c4d", True, {})])
    baseline, candidate = tmp_path / "b.csv", tmp_path / "c.csv"
    rows.to_csv(baseline, index=False)
    rows[rows["variant"] == ""].to_csv(candidate, index=False)
    assert main(["compare", str(baseline), str(candidate)]) == 1  # the variant's cell is gone
    frames = [pd.read_csv(p, keep_default_na=False) for p in (baseline, candidate)]
    assert variant_note(*frames) == (
        "note: the tables hold different variants (cells match only within one); "
        "baseline only: knn+1a2b3c4d"
    )
    legacy = frames[1].drop(columns=["variant"])  # a table written before variants
    legacy.to_csv(tmp_path / "legacy.csv", index=False)
    assert main(["compare", str(tmp_path / "legacy.csv"), str(candidate)]) == 0


def test_an_lr_sweep_in_one_folder_gives_one_cell_per_point(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tiny_run_args(
        tmp_path, "category=weave", "method.epochs=1", "dataset.synthetic.n_train=4", method="stmae"
    )
    assert main(["run", "-m", *args[1:], "method.lr=3e-3,1e-3"]) == 0
    out = capsys.readouterr().out
    assert "done already, skipped" not in out and "resumed at" not in out
    records = _records(tmp_path / "results")
    assert [r["overrides"]["method.lr"] for r in records if "method.lr" in r["overrides"]] == [
        0.001
    ]
    assert len({r["variant"] for r in records}) == 2
    assert {r["config"]["method"]["lr"] for r in records} == {0.003, 0.001}
    # one table per model at the end of the sweep, none per job
    assert out.count("on synthetic, percent") == 2
    assert out.index("on synthetic, percent") > out.rindex("cell(s) run")  # after both jobs


def test_a_checkpoint_of_another_identity_is_set_aside_and_the_same_one_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tiny_run_args(
        tmp_path,
        "category=weave",
        "method.epochs=2",
        "checkpoint_every=1",
        "dataset.synthetic.n_train=4",
        method="stmae",
    )

    def fail(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("injected failure after training")

    monkeypatch.setattr(runner, "compute_metrics", fail)
    assert main(args) == 1  # trained, then failed: its checkpoint stays
    (folder,) = (tmp_path / "results" / "synthetic").glob("stmae+*/vgg19.tv_in1k/weave/seed0")
    assert (folder / "checkpoint.pt").is_file() and (folder / "checkpoint.json").is_file()
    data = next((tmp_path / "cache" / "synthetic").iterdir())
    next((data / "weave" / "train" / "good").iterdir()).unlink()  # the data changed
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "not this setting's (the dataset files changed (train/good: 4 -> 3 files))" in out
    assert "resumed at" not in out
    assert (folder / "checkpoint.pt.mismatch").is_file() and (folder / "checkpoint.pt").is_file()

    monkeypatch.undo()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "resumed at epoch 2/2" in out
    record = json.loads((folder / "metrics.json").read_text())
    assert record["n_train"] == 3 and not (folder / "checkpoint.pt").exists()
    logs = sorted((tmp_path / "results" / "_logs").glob("*.log"))
    assert len(logs) == 3
    trace = logs[-1].read_text()
    assert "resumed at epoch 2/2" in trace and f"results go under {tmp_path / 'results'}" in trace
    assert "injected failure after training" in logs[0].read_text()


def test_a_sweep_ends_with_one_table_and_every_file_has_the_umask_permissions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results"
    previous = os.umask(0o022)
    try:
        args = tiny_run_args(tmp_path, "category=[weave,washer]")
        assert main(["run", "-m", *args[1:]]) == 0
        out = capsys.readouterr().out
        assert main(["report", str(results), "--figures"]) == 0
        assert main(["export-maps", str(results), "--out", str(tmp_path / "tiff")]) == 0
        os.umask(0o027)
        assert main(["report", str(results), "--out", str(tmp_path / "group")]) == 0
    finally:
        os.umask(previous)
    assert out.count("on synthetic, percent") == 1  # one table for the two jobs of the sweep
    table = out[out.index("on synthetic, percent") :]
    assert "weave" in table and "washer" in table
    written = [p for p in results.rglob("*") if p.is_file()]
    written += list((tmp_path / "tiff").rglob("*.tiff"))
    kinds = {p.suffix for p in written}
    assert {".json", ".npz", ".yaml", ".log", ".csv", ".md", ".tex", ".png", ".tiff"} <= kinds
    assert any(p.parent.name == "_sweeps" for p in written)
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {"0o644"}
    group = [p for p in (tmp_path / "group").rglob("*") if p.is_file()]
    assert group and {oct(p.stat().st_mode & 0o777) for p in group} == {"0o640"}


def test_a_run_without_a_terminal_writes_progress_lines_and_no_carriage_returns(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress_module, "MIN_INTERVAL", 0.0)  # a line per step, however fast
    assert main(tiny_run_args(tmp_path, "category=weave", "progress=true")) == 0
    out, err = capfd.readouterr()
    assert "\r" not in out and "\r" not in err
    assert "decode: 10/10 image (100%)" in out + err


class _Terminal:
    """A stream that says it is a terminal."""

    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


class _File(_Terminal):
    def isatty(self) -> bool:
        return False


def test_progress_is_a_bar_in_a_terminal_and_lines_elsewhere(caplog) -> None:
    terminal = _Terminal()
    for _ in progress(range(20), desc="epochs", stream=terminal):
        pass
    assert "\r" in terminal.text  # tqdm redraws its line
    assert isinstance(progress(range(3), desc="x", stream=_File()), LineProgress)
    bar = LineProgress(range(10, 40), "train", total=40, unit="epoch", initial=10, min_interval=0)
    with caplog.at_level("INFO", logger="anobench"):
        for epoch in bar:
            bar.set_postfix(loss=f"{1 / (epoch + 1):.3f}")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "train: 12/40 epoch (30%), loss=0.083"
    assert lines[-1].startswith("train: 40/40 epoch (100%)")
    assert len(lines) == 8 and not any("\r" in line for line in lines)


def test_a_record_of_other_data_is_set_aside_with_its_maps_and_per_image_scores(
    tmp_path: Path, tire_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "R"
    args = [*_tire_run(tmp_path, tire_root), "backbone.pretrained=false"]
    assert main(args) == 0
    (cell,) = [p.parent for p in results.rglob("metrics.json")]
    first = json.loads((cell / "metrics.json").read_text())
    train = tire_root / "tire" / "train" / "good"
    image = sorted(train.iterdir())[0]
    (train / f"extra{image.suffix}").write_bytes(image.read_bytes())  # the file list changed

    assert main(args) == 0
    assert "done already, skipped" not in capsys.readouterr().out
    for name in ("metrics.json", "maps.npz", "per_image.npz"):
        assert (cell / f"{name}.superseded").is_file(), name
        assert (cell / name).is_file(), name  # recomputed
    second = json.loads((cell / "metrics.json").read_text())
    assert first["identity"]["hash"] != second["identity"]["hash"]
