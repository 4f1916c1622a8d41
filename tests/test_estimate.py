"""dry_run=true: a bounded probe (a few optimizer steps at most) and per-class projections."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from anobench import estimate
from anobench.cli import main
from anobench.data.synthetic import SyntheticSpec, generate
from anobench.estimate import (
    TIMED_STEPS,
    estimate_plan,
    probe_images,
    samples_per_epoch,
)
from anobench.methods import method_entry
from anobench.runner import plan_run
from tests.helpers import compose_config, tiny_run_args


@pytest.fixture()
def optimizer_calls() -> Iterator[dict[str, int]]:
    """Counts, process-wide, the training steps started (backward done) and weight updates."""
    calls = {"steps": 0, "updates": 0}
    pre = register_optimizer_step_pre_hook(
        lambda *_: calls.__setitem__("steps", calls["steps"] + 1)
    )
    post = register_optimizer_step_post_hook(
        lambda *_: calls.__setitem__("updates", calls["updates"] + 1)
    )
    yield calls
    pre.remove()
    post.remove()


def test_a_dry_run_trains_a_few_steps_of_thousands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], optimizer_calls: dict[str, int]
) -> None:
    # ST-MAE's demo schedule is 600 epochs (3000 steps on the demo data)
    args = tiny_run_args(tmp_path, "category=weave", "dry_run=true", method="stmae")
    assert main(args) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert 1 <= optimizer_calls["steps"] <= 1 + TIMED_STEPS
    assert optimizer_calls["updates"] <= TIMED_STEPS - 1
    assert "the fit is stopped before its first weight update" in out
    assert "estimate: " in out and "x 600 epochs" in out
    assert not (tmp_path / "results" / "synthetic").exists()


def test_without_budget_only_one_counted_step_runs(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    optimizer_calls: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # as for a paper-size HaloAE step on a CPU, where full-batch steps would take too long
    monkeypatch.setattr(estimate, "TIMED_BUDGET_SECONDS", 0.0)
    args = tiny_run_args(tmp_path, "category=weave", "dry_run=true", method="saae")
    assert main(args) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert optimizer_calls == {"steps": 1, "updates": 0}
    assert "basis: FLOPs: a training step of 1 sample counted and scaled to the batch" in out
    assert "per training step of 8" in out and "x 12 epochs" in out  # saae's demo schedule


def test_a_method_without_training_is_timed_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], optimizer_calls: dict[str, int]
) -> None:
    assert main(tiny_run_args(tmp_path, "category=weave", "dry_run=true")) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert optimizer_calls == {"steps": 0, "updates": 0}
    assert "scoring timed on 2 test images (no training steps)" in out


def test_samples_per_epoch_follow_each_methods_epoch() -> None:
    haloae = method_entry("haloae").config_cls()
    anovit = method_entry("anovit").config_cls()
    saae = method_entry("saae").config_cls()
    assert samples_per_epoch(haloae, 60) == samples_per_epoch(haloae, 391) == 3000
    assert samples_per_epoch(anovit, 242) == 242 - 24  # a 10% validation split
    assert samples_per_epoch(anovit, 5) == 4 and samples_per_epoch(anovit, 1) == 0
    assert samples_per_epoch(saae, 242) == 242
    assert probe_images(anovit, 1, 1) == 2  # one image stays for validation
    assert samples_per_epoch(anovit, probe_images(anovit, 8, TIMED_STEPS)) >= 8 * TIMED_STEPS
    assert probe_images(saae, 32, TIMED_STEPS) == 32 * TIMED_STEPS


def test_each_class_is_projected_from_its_own_size(tmp_path: Path) -> None:
    spec = SyntheticSpec(
        image_size=32, n_train=12, n_test_good=2, n_test_defect=2, categories=("weave", "chip")
    )
    root = generate(tmp_path / "data", spec)
    for image in sorted((root / "chip" / "train" / "good").iterdir())[4:]:
        image.unlink()  # chip: 4 training images, weave: 12
    cfg = compose_config(
        "method=saae",
        "scale=demo",
        f"dataset.root={root}",
        "dataset.categories=[weave,chip]",
        "category=[weave,chip]",
        "backbone.pretrained=false",
        "method.batch_size=2",
        f"results_dir={tmp_path / 'results'}",
        "dry_run=true",
    )
    plan = plan_run(cfg)
    result = estimate_plan(plan, plan.cells)
    setup = result.probes[-1]
    step = result.probes[-1].step_seconds
    for cell, n_train in zip(result.cells, (12, 4), strict=True):
        steps = math.ceil(n_train / 2) * plan.method_cfg.epochs
        expected = setup.setup_seconds / setup.images * n_train + steps * step
        assert cell.seconds == pytest.approx(expected)
    assert result.cells[0].seconds > result.cells[1].seconds
    assert result.basis.startswith("timed: a warm training step of the full batch")
