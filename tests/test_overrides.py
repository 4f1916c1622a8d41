"""Every config mistake on `anobench run`'s command line: one line on stderr, exit code 2."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from anobench.cli import main
from anobench.methods import list_methods
from anobench.overrides import with_user_config_dir

KNN_KEYS = "its keys: bank_size, blur_sigma, image_size, name, pool, resize."

# (arguments, a fragment of the one-line message)
MISTAKES = {
    "misspelled method": (
        ["method=halo"],
        "method=halo: no such method config; did you mean 'haloae'?",
    ),
    "schema as method": (["method=haloae_schema"], "method=haloae_schema: no such method config"),
    "schema as backbone": (
        ["backbone=backbone_schema"],
        "backbone=backbone_schema: no such backbone",
    ),
    "misspelled experiment": (["experiment=dmeo"], "did you mean 'demo'? choices: demo."),
    "unknown +key on a method": (
        ["+method.bank_sise=100"],
        "+method.bank_sise=100: method knn has no key 'bank_sise'; did you mean 'bank_size'? "
        + KNN_KEYS,
    ),
    "unknown ++key on a method": (["++method.bank_sise=1"], "method knn has no key 'bank_sise'"),
    "unknown key without +": (
        ["method.lrr=1"],
        f"method.lrr=1: method knn has no key 'lrr'; {KNN_KEYS}",
    ),
    "unknown +key on the backbone": (["+backbone.depth=3"], "backbone has no key 'depth'"),
    "unknown +key on the hardware": (["+hardware.gpus=2"], "hardware has no key 'gpus'"),
    "unknown +key on the dataset": (["+dataset.size=1"], "dataset has no key 'size'"),
    "unknown top-level key": (["nosuchkey=1"], "nosuchkey=1: anobench run has no key 'nosuchkey'"),
    "wrong type": (
        ["method.bank_size=abc"],
        "method.bank_size=abc: Value 'abc' of type 'str' could not be converted to Integer",
    ),
    "wrong type of a flag": (["overwrite=maybe"], "overwrite=maybe: Value 'maybe'"),
    "negative epochs": (
        ["method=saae", "method.epochs=-1"],
        "method.epochs=-1 is out of range; use a value >= 1",
    ),
    "zero epochs": (["method=stmae", "method.epochs=0"], "method.epochs=0 is out of range"),
    "negative blur": (
        ["method.blur_sigma=-1"],
        "method.blur_sigma=-1.0 is out of range; use a value >= 0",
    ),
    "unknown launcher": (
        ["hydra/launcher=slurmm"],
        "hydra/launcher=slurmm: no such hydra/launcher config; did you mean 'slurm'?",
    ),
    "unknown launcher in a sweep": (
        ["-m", "hydra/launcher=jobib", "method=knn,saae"],
        "hydra/launcher=jobib: no such hydra/launcher config; did you mean 'joblib'?",
    ),
    "misspelled method in a sweep": (["-m", "method=knn,stmea"], "did you mean 'stmae'?"),
    "sweep without -m": (["method=knn,saae"], "method=knn,saae is a sweep: run it with -m"),
    "bad override syntax": (["method.lr=[1,"], "cannot parse the override 'method.lr=[1,'"),
    "unknown flag": (["--epochs", "3"], "unknown argument '--epochs'"),
    "unknown precision": (["hardware.precision=fp8"], "hardware.precision='fp8' is not valid"),
    "unknown device": (["hardware.device=tpu"], "hardware.device='tpu' is not a device"),
    "seed below range": (
        ["seed=-1"],
        "seed=-1 is out of range; use whole numbers in [0, 4294967295]",
    ),
    "seed above range": (["seed=4294967296"], "seed=4294967296 is out of range"),
    "fractional seed": (["seed=1.5"], "seed=1.5 is not an integer"),
    "fractional seed in a sweep": (["-m", "seed=[0,1.5]"], "seed=1.5 is not an integer"),
    "empty results_dir": (["results_dir="], "results_dir is empty"),
    "missing config folder": (["--config-dir", "/no/such/folder"], "config folder /no/such/folder"),
}


@pytest.mark.parametrize("args, fragment", list(MISTAKES.values()), ids=list(MISTAKES))
def test_config_mistake_is_one_line_and_exit_2(
    args: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results"
    extra = [] if any(a.startswith("results_dir=") for a in args) else [f"results_dir={results}"]
    code = main(["run", *args, *extra, f"cache_dir={tmp_path / 'cache'}"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err.count("\n") == 1, captured.err  # one line: no traceback, no Hydra text
    assert captured.err.startswith("error: ") and fragment in captured.err
    assert "_schema" not in captured.err.replace(args[-1], "")  # never offered as a choice
    assert "(debug=true shows the traceback)" in captured.err
    assert not results.exists()


def test_config_mistakes_exit_2_from_the_console_script(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "anobench",
            "run",
            "method=haloae_schema",
            f"results_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: method=haloae_schema: no such method config")
    assert done.stderr.count("\n") == 1 and done.stdout == ""


def test_debug_true_adds_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "method=halo", "debug=true"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "MissingConfigException" in err
    assert err.rstrip().endswith(
        "did you mean 'haloae'? choices: anovit, haloae, knn, saae, stmae."
    )


@pytest.mark.parametrize(
    "command", [["status", "/no/such/results"], ["compare", "/no/a.csv", "/no/b.csv"]]
)
def test_other_commands_name_their_own_debug_switch(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"(anobench --debug {command[0]} shows the traceback)" in err
    assert main(["--debug", *command]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_help_offers_real_choices_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    assert "_schema" not in out and "joblib_plugin" not in out
    assert f"  method: {', '.join(list_methods())}\n" in out
    assert "  hydra/launcher: basic, joblib, local, slurm" in out
    assert "method_scale" not in out  # follows scale=..., not a user's choice
    assert "name: knn" in out  # the composed config follows


def test_help_checks_its_overrides_too(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "method=halo", "--help"]) == 2
    assert "no such method config" in capsys.readouterr().err


def test_info_defaults_prints_the_list_once(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # as in a fresh process: no handlers left on the root logger by earlier runs in this one
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    assert main(["run", "--info", "defaults"]) == 0
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    assert printed.count("Defaults List") == 1
    assert printed.count("hydra/launcher/basic") == 1


def test_user_config_dir_adds_datasets_and_machine_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "my-configs"
    (folder / "local").mkdir(parents=True)
    (folder / "dataset").mkdir()
    (folder / "local" / "default.yaml").write_text(
        f"# @package _global_\nresults_dir: {tmp_path / 'mine'}\n"
    )
    (folder / "dataset" / "parts.yaml").write_text(
        "defaults:\n  - dataset_schema\n  - _self_\n\nname: parts\ncategories: [gear]\n"
    )
    assert main(["run", "dataset=parts", "--cfg", "job"]) == 2  # not known without the folder
    capsys.readouterr()
    assert main(["run", "--config-dir", str(folder), "dataset=parts", "--cfg", "job"]) == 0
    out = capsys.readouterr().out
    assert "name: parts" in out and f"results_dir: {tmp_path / 'mine'}" in out
    monkeypatch.setenv("ANOBENCH_CONFIG_DIR", str(folder))
    assert with_user_config_dir(["dataset=parts"]) == ["--config-dir", str(folder), "dataset=parts"]
    assert with_user_config_dir(["-cd", "x"]) == ["-cd", "x"]  # an explicit folder wins
    assert main(["run", "dataset=parts", "--cfg", "job"]) == 0
    assert "name: parts" in capsys.readouterr().out
    assert main(["run", "dataset=prats", "--cfg", "job"]) == 2
    assert "did you mean 'parts'?" in capsys.readouterr().err
