"""Hostile names, broken dataset folders and full disks end in one line and exit 2 (issue #20).

Each test injects the fault into a real run on a tiny MVTec-layout tree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anobench.cli import main
from anobench.data.synthetic import SyntheticSpec, generate

SPEC = SyntheticSpec(
    image_size=32, n_train=4, n_test_good=2, n_test_defect=3, categories=("weave", "washer")
)


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    """A fresh MVTec-layout tree to break, one per test."""
    return generate(tmp_path / "mvtec", SPEC)


def _args(tmp_path: Path, root: Path, *extra: str) -> list[str]:
    return [
        "run",
        "method=knn",
        "dataset=mvtec",
        f"dataset.root={root}",
        "dataset.categories=[weave,washer]",
        "category=weave",
        "method.image_size=32",
        "backbone.pretrained=false",
        "latency_repeats=0",
        "progress=false",
        f"results_dir={tmp_path / 'results'}",
        f"cache_dir={tmp_path / 'cache'}",
        *extra,
    ]


def _one_line_error(capsys: pytest.CaptureFixture[str], code: int, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "override",
    [
        "category=../../../../cls",
        "category=/abs",
        "category=[weave,../washer]",
        "dataset.name=/abs",
        "dataset.name=..",
    ],
)
def test_names_that_leave_the_results_folder_are_rejected(
    override: str, tmp_path: Path, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _files(tmp_path)
    code = main(_args(tmp_path, root, override))
    _one_line_error(capsys, code, "is not a plain folder name")
    assert _files(tmp_path) == before  # nothing written, inside results_dir or out of it


def test_empty_results_dir_is_rejected(
    tmp_path: Path, root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    code = main(_args(tmp_path, root, "results_dir="))
    _one_line_error(capsys, code, "results_dir is empty")
    assert list(cwd.iterdir()) == []


def test_export_maps_refuses_an_out_inside_the_dataset(
    tmp_path: Path, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_args(tmp_path, root)) == 0
    capsys.readouterr()
    results = tmp_path / "results"
    before = _files(root)
    for out in (root, root / "weave" / "test", root / "maps"):
        code = main(["export-maps", str(results), "--out", str(out)])
        _one_line_error(capsys, code, f"--out {out} lies inside the dataset root {root}")
    assert _files(root) == before
    assert main(["export-maps", str(results), "--out", str(tmp_path / "maps")]) == 0
    assert len(list((tmp_path / "maps").rglob("*.tiff"))) == 5


def test_a_class_without_good_test_images_stops_before_training(
    tmp_path: Path, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for image in (root / "washer" / "test" / "good").iterdir():
        image.unlink()
    code = main(_args(tmp_path, root, "category=[weave,washer]"))
    _one_line_error(capsys, code, str(root / "washer" / "test" / "good"), "AUROC is undefined")
    assert not (tmp_path / "results").exists()  # not recorded as done, nor as anything


def test_a_class_without_defect_folders_stops_before_training(
    tmp_path: Path, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    test = root / "weave" / "test"
    for folder in test.iterdir():
        if folder.name != "good":
            for image in folder.iterdir():
                image.unlink()
            folder.rmdir()
    code = main(_args(tmp_path, root))
    _one_line_error(capsys, code, f"{test} has no defect folder with images")


def _defect_folder(root: Path) -> Path:
    return next(p for p in sorted((root / "weave" / "test").iterdir()) if p.name != "good")


def test_a_defect_folder_turned_into_a_dangling_link_is_named(
    tmp_path: Path, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # as root a `chmod 000` folder stays readable; an unmounted link target fails the same way
    folder = _defect_folder(root)
    folder.rename(tmp_path / "moved")
    folder.symlink_to(tmp_path / "unmounted")
    code = main(_args(tmp_path, root))
    _one_line_error(capsys, code, f"{folder} is a broken symbolic link")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their mode")
def test_an_unreadable_defect_folder_is_named(
    tmp_path: Path, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _defect_folder(root)
    folder.chmod(0)
    try:
        code = main(_args(tmp_path, root))
    finally:
        folder.chmod(0o755)
    _one_line_error(capsys, code, f"cannot list folder {folder}")


def test_a_cache_dir_that_cannot_be_written_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    args = [
        "run",
        "experiment=demo",
        "dataset.synthetic.image_size=32",
        f"cache_dir={blocker / 'cache'}",
        f"results_dir={tmp_path / 'results'}",
    ]
    _one_line_error(capsys, main(args), "cannot write the synthetic data", str(blocker / "cache"))
    if os.geteuid() != 0:  # root writes into read-only folders
        read_only = tmp_path / "read_only"
        read_only.mkdir(mode=0o555)
        args[3] = f"cache_dir={read_only}"
        _one_line_error(capsys, main(args), "cannot write the synthetic data")


def _metrics(tmp_path: Path) -> dict:
    (path,) = (tmp_path / "results").rglob("metrics.json")
    return json.loads(path.read_text())["metrics"]


def _rewrite_masks(root: Path, scale: int) -> None:
    for mask in (root / "weave" / "ground_truth").rglob("*_mask.png"):
        values = np.asarray(Image.open(mask)) // 255 * scale
        Image.fromarray(values.astype(np.uint8)).save(mask)


def test_zero_one_masks_score_as_their_0_255_originals(
    tmp_path: Path, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_args(tmp_path / "original", root)) == 0
    capsys.readouterr()
    _rewrite_masks(root, 1)
    assert main(_args(tmp_path / "zero_one", root)) == 0
    out = capsys.readouterr().out
    assert out.count("weave: 3 mask(s) hold only the values 0 and 1") == 1
    assert _metrics(tmp_path / "zero_one") == _metrics(tmp_path / "original")


def test_empty_masks_give_null_pixel_metrics_and_say_why(
    tmp_path: Path, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _rewrite_masks(root, 0)
    assert main(_args(tmp_path, root)) == 0
    out = capsys.readouterr().out
    assert out.count("weave: all 3 defect masks are empty") == 1
    metrics = _metrics(tmp_path)
    assert metrics["pixel_auroc"] is None and metrics["pro"] is None
    assert metrics["image_auroc"] is not None


def test_a_full_disk_is_one_line_and_exit_2(tmp_path: Path, root: Path) -> None:
    # RLIMIT_FSIZE makes every write past 2 kB fail (EFBIG) as a full disk would (ENOSPC)
    script = (
        "import resource, sys\n"
        "from anobench.cli import main\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *_args(tmp_path, root)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    # the cell fails (recorded where possible), the run ends with its one line
    assert done.stderr.startswith("failed: ") and done.stderr.count("\n") == 1
    assert "cannot write " in done.stderr
    assert "File too large" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not list((tmp_path / "results").rglob("metrics.json"))
