"""Bad input gets one clear message and exit code 2; faults lose nothing."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from anobench.cli import main
from anobench.data.synthetic import SyntheticSpec, generate
from anobench.results import write_json_atomic
from anobench.runner import _failure_message
from anobench.training import NonFiniteLossError, train
from tests.helpers import cell_dir, read_metrics, tiny_run_args

SPEC = SyntheticSpec(
    image_size=64, n_train=4, n_test_good=2, n_test_defect=3, categories=("weave", "washer")
)


@pytest.fixture()
def mvtec_root(tmp_path: Path) -> Path:
    """A fresh MVTec-layout tree to break, one per test."""
    return generate(tmp_path / "mvtec", SPEC)


def _run_mvtec(tmp_path: Path, root: Path, *extra: str) -> int:
    return main(
        [
            "run",
            "method=knn",
            "dataset=mvtec",
            f"dataset.root={root}",
            "category=weave",
            "method.image_size=64",
            "backbone.pretrained=false",
            "latency_repeats=0",
            "progress=false",
            f"results_dir={tmp_path / 'results'}",
            f"cache_dir={tmp_path / 'cache'}",
            *extra,
        ]
    )


def _assert_user_error(
    code: int, capsys: pytest.CaptureFixture, tmp_path: Path, *fragments: str
) -> None:
    err = capsys.readouterr().err
    assert code == 2, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert "Traceback" not in err
    assert not list(tmp_path.rglob("metrics.json"))


def test_missing_root_names_path_and_suggests_synthetic(tmp_path, capsys) -> None:
    code = main(
        [
            "run",
            "method=knn",
            "category=all",
            "dataset=mvtec",
            "dataset.root=/missing",
            f"results_dir={tmp_path}",
        ]
    )
    _assert_user_error(code, capsys, tmp_path, "/missing", "dataset=synthetic")


def test_misspelled_class_suggests_closest(tmp_path, mvtec_root, capsys) -> None:
    code = _run_mvtec(tmp_path, mvtec_root, "category=wave")
    _assert_user_error(code, capsys, tmp_path, "wave", "did you mean 'weave'")


def test_empty_train_good(tmp_path, mvtec_root, capsys) -> None:
    for image in (mvtec_root / "weave" / "train" / "good").iterdir():
        image.unlink()
    code = _run_mvtec(tmp_path, mvtec_root)
    _assert_user_error(code, capsys, tmp_path, str(mvtec_root / "weave" / "train" / "good"))


def test_truncated_image_names_the_file(tmp_path, mvtec_root, capsys) -> None:
    image = mvtec_root / "weave" / "train" / "good" / "001.png"
    image.write_bytes(image.read_bytes()[:100])
    code = _run_mvtec(tmp_path, mvtec_root)
    _assert_user_error(code, capsys, tmp_path, str(image))


def test_missing_mask_names_expected_path(tmp_path, mvtec_root, capsys) -> None:
    mask = next((mvtec_root / "weave" / "ground_truth").rglob("*_mask.png"))
    mask.unlink()
    code = _run_mvtec(tmp_path, mvtec_root)
    _assert_user_error(code, capsys, tmp_path, mask.stem)


def test_mask_of_other_size(tmp_path, mvtec_root, capsys) -> None:
    mask = next((mvtec_root / "weave" / "ground_truth").rglob("*_mask.png"))
    Image.new("L", (10, 10)).save(mask)
    code = _run_mvtec(tmp_path, mvtec_root)
    _assert_user_error(code, capsys, tmp_path, mask.name)


def test_grayscale_and_rgba_images_are_converted(tmp_path, mvtec_root) -> None:
    good = sorted((mvtec_root / "weave" / "train" / "good").glob("*.png"))
    Image.open(good[0]).convert("L").save(good[0])
    Image.open(good[1]).convert("RGBA").save(good[1])
    assert _run_mvtec(tmp_path, mvtec_root) == 0


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("method=saea", "saea"),
        ("backbone.name=resnet19.tv_in1k", "did you mean resnet18"),
        ("backbone.layers=[layer2,layr3]", "did you mean layer3"),
        ("backbone.weights=/no/such.pth", "/no/such.pth"),
        ("method.image_size=-4", "method.image_size=-4 is out of range; use a value >= 1"),
        ("hardware.eval_batch_size=0", "hardware.eval_batch_size=0 must be positive"),
        ("checkpoint_every=0", "checkpoint_every=0 must be positive"),
        ("pro_fpr_limit=1.5", "pro_fpr_limit=1.5"),
    ],
)
def test_invalid_config_values(tmp_path, mvtec_root, capsys, override, fragment) -> None:
    code = _run_mvtec(tmp_path, mvtec_root, override)
    _assert_user_error(code, capsys, tmp_path, fragment)


def test_incompatible_weights_file(tmp_path, mvtec_root, capsys) -> None:
    weights = tmp_path / "other.pth"
    torch.save({"not_a_layer.weight": torch.zeros(3)}, weights)
    code = _run_mvtec(tmp_path, mvtec_root, f"backbone.weights={weights}")
    _assert_user_error(code, capsys, tmp_path, str(weights), "does not fit")


def test_results_dir_not_writable(tmp_path, mvtec_root, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code = main(
        [
            "run",
            "method=knn",
            "dataset=mvtec",
            f"dataset.root={mvtec_root}",
            "category=weave",
            f"results_dir={blocker / 'results'}",
        ]
    )
    _assert_user_error(code, capsys, tmp_path, str(blocker / "results"), "not writable")


def test_debug_shows_the_traceback(tmp_path, capsys) -> None:
    code = main(
        ["run", "dataset=mvtec", "dataset.root=/missing", "debug=true", f"results_dir={tmp_path}"]
    )
    assert code == 2
    assert "Traceback" in capsys.readouterr().err


def test_nan_loss_stops_training_with_a_clear_error() -> None:
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    from anobench.hardware import create_hardware

    def loss_fn(batch: torch.Tensor, epoch: int) -> torch.Tensor:
        loss = model(batch).pow(2).mean()
        return loss * float("nan") if epoch == 2 else loss

    with pytest.raises(NonFiniteLossError, match="epoch 3"):
        train(
            model,
            optimizer,
            loss_fn,
            lambda g: [torch.ones(4, 2)],
            epochs=5,
            hardware=create_hardware("cpu"),
            progress=False,
        )


def test_out_of_memory_message_suggests_a_fix(tmp_path, mvtec_root) -> None:
    from hydra import compose, initialize_config_dir

    from anobench.config import (
        CONF_DIR,
        register_configs,  # noqa: F401  (plan needs configs)
    )
    from anobench.runner import plan_run

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            [
                f"dataset.root={mvtec_root}",
                "category=weave",
                f"results_dir={tmp_path}",
                "dry_run=true",
            ],
        )
    message = _failure_message(torch.OutOfMemoryError("CUDA out of memory"), plan_run(cfg))
    assert "batch size" in message and "GiB" in message


def test_disk_full_keeps_the_previous_record(tmp_path, monkeypatch) -> None:
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"value": 1})

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", lambda fd: full(fd, b""))
    with pytest.raises(OSError, match="No space"):
        write_json_atomic(path, {"value": 2})
    assert json.loads(path.read_text()) == {"value": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_sigterm_stops_cleanly_and_rerun_completes(tmp_path) -> None:
    args = tiny_run_args(tmp_path, "category=[weave,marble,washer,chip]")
    code = "import sys; from anobench.cli import main; sys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = cell_dir(tmp_path, "weave") / "metrics.json"
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted" in err
    assert read_metrics(tmp_path, "weave")["status"] == "done"
    assert main(args) == 0
    for category in ("marble", "washer", "chip"):
        assert read_metrics(tmp_path, category)["status"] == "done"
