"""The wheel `pip wheel .` builds: every config inside it, and the demo running from `/`.

The fresh virtual environment gets the wheel alone (pip --no-deps) and reaches the dependencies
already installed here through a .pth line naming their folder (which makes no .pth file there
run, so the checkout's editable anobench stays out); copying torch would take minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from anobench.config import CONF_DIR

ROOT = Path(__file__).resolve().parent.parent
UNLISTED_PACKAGE_WARNING = "absent from the `packages` configuration"
# Hydra's plugin scan where hydra-submitit-launcher cannot be imported (as without [slurm])
WITHOUT_SUBMITIT = """
import sys, hydra_plugins
# only the wheel's own plugin folder: the other launchers' packages are then not installed
hydra_plugins.__path__ = [p for p in hydra_plugins.__path__ if p.startswith(sys.prefix)]
from hydra.core.plugins import Plugins
names = Plugins.instance().class_name_to_class
assert not any("anobench" in n or "submitit" in n for n in names), names
"""


SKIPPED_FOLDERS = {".git", ".venv", "results", "build", "__pycache__", ".pytest_cache"}


def _checkout_files() -> list[str]:
    """The files a clean clone would have: git's tracked and new unignored files (outside git:
    the tree without virtual environments, results and build output)."""
    if shutil.which("git") is not None and (ROOT / ".git").exists():
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]
    return [
        path.relative_to(ROOT).as_posix()
        for path in ROOT.rglob("*")
        if path.is_file()
        and not SKIPPED_FOLDERS & set(path.relative_to(ROOT).parts)
        and not any(part.endswith(".egg-info") for part in path.parts)
        and path.relative_to(ROOT).parts[:2] != ("conf", "local")
    ]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(the wheel, pip's verbose build log), built from a copy of the checkout."""
    source = tmp_path_factory.mktemp("source")
    for name in _checkout_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    # a developer's machine paths (git-ignored) must not reach the wheel
    (source / "conf" / "local" / "default.yaml").write_text("results_dir: /my/machine\n")
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation"]
        + ["--no-index", "-v", "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = out.glob("anobench-*.whl")
    return wheel, build.stdout + build.stderr


def test_the_wheel_holds_every_config_and_no_machine_paths(built: tuple[Path, str]) -> None:
    wheel, log = built
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = [p.relative_to(CONF_DIR) for p in CONF_DIR.rglob("*.yaml")]
    expected = {f"anobench/conf/{p.as_posix()}" for p in configs if p.parts[0] != "local"}
    shipped = {n for n in names if n.startswith("anobench/conf/") and n.endswith(".yaml")}
    assert shipped == expected
    folders = {p.parent.as_posix() for p in configs if p.parts[0] != "local"} - {"."}
    shipped_folders = {n.removeprefix("anobench/conf/").rpartition("/")[0] for n in shipped}
    assert folders == shipped_folders - {""} and "hydra/launcher" in folders
    assert not any(n.startswith("anobench/conf/local/") for n in names)  # machine paths stay
    assert "anobench/published/mvtec_published.csv" in names
    assert "hydra_plugins/anobench_launcher/__init__.py" in names
    assert not any(n.startswith(("tests/", "bench/", "conf/")) for n in names)
    assert UNLISTED_PACKAGE_WARNING not in log  # every config folder is a listed package


def test_the_wheel_runs_the_demo_from_another_folder(
    built: tuple[Path, str], tmp_path: Path
) -> None:
    wheel, _ = built
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
        + ["--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "ANOBENCH_CONFIG_DIR", "VIRTUAL_ENV")
    }
    env.update(HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1")
    where = subprocess.run(
        [str(python), "-c", "import anobench.conf as c; print(c.__file__)"],
        capture_output=True,
        text=True,
        cwd="/",
        env=env,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(Path(purelib))  # the wheel's copy, not the checkout's
    # the launcher plugin the wheel ships stays silent where the slurm extra is not installed
    quiet = subprocess.run(
        [str(python), "-W", "error", "-c", WITHOUT_SUBMITIT],
        capture_output=True,
        text=True,
        cwd="/",
        env=env,
    )
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    found = subprocess.run(  # with it, Hydra finds the launcher in the installed wheel
        [
            str(python),
            "-c",
            "from hydra.core.plugins import Plugins; print(*Plugins.instance()."
            "class_name_to_class)",
        ],
        capture_output=True,
        text=True,
        cwd="/",
        env=env,
        check=True,
    )
    assert "hydra_plugins.anobench_launcher._slurm.SlurmLauncher" in found.stdout.split()
    results = tmp_path / "results"
    run = subprocess.run(
        [
            str(venv / "bin" / "anobench"),
            "run",
            "experiment=demo",
            "category=weave",
            "dataset.synthetic.image_size=32",
            "dataset.synthetic.n_train=6",
            "dataset.synthetic.n_test_good=2",
            "dataset.synthetic.n_test_defect=3",
            "method.image_size=32",
            "latency_repeats=0",
            "progress=false",
            f"results_dir={results}",
            f"cache_dir={tmp_path / 'cache'}",
        ],
        capture_output=True,
        text=True,
        cwd="/",
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (record_file,) = results.rglob("metrics.json")
    record = json.loads(record_file.read_text())
    assert record["status"] == "done" and record["method"] == "knn"
    assert record["git_commit"] is None  # ran from site-packages, outside any checkout
