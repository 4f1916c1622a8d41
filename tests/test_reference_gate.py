"""Accuracy gate: rerun the committed reference run and compare it with its table."""

from __future__ import annotations

from pathlib import Path

from anobench.cli import main

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference" / "knn_synthetic.csv"
# The overrides of results/reference/README.md, minus the output folders.
REFERENCE_RUN = [
    "experiment=demo",
    "method=knn",
    "category=[weave,washer]",
    "seed=0",
    "hardware=cpu",
    "hardware.deterministic=true",
    "dataset.synthetic.image_size=64",
    "dataset.synthetic.n_train=8",
    "dataset.synthetic.n_test_good=4",
    "dataset.synthetic.n_test_defect=6",
    "method.image_size=64",
    "latency_repeats=0",
    "progress=false",
]


def test_reference_run_matches_the_committed_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    results = tmp_path / "results"
    run = ["run", *REFERENCE_RUN, f"results_dir={results}", f"cache_dir={tmp_path / 'cache'}"]
    assert main(run) == 0
    assert main(["report", str(results), "--out", str(tmp_path / "report")]) == 0
    capsys.readouterr()
    code = main(["compare", str(REFERENCE), str(tmp_path / "report" / "results.csv")])
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 0, summary
    assert summary.startswith("compare: 14 cells, 0 regressed, 0 missing")


def test_readme_states_the_same_run():
    readme = (REFERENCE.parent / "README.md").read_text()
    command = " ".join(readme.replace("\\\n", " ").split())
    for override in REFERENCE_RUN:
        assert f" {override} " in command, override
