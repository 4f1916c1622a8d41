"""compat=authors: every authors'-code behaviour per method, fp32 without TF32, and refusals."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from anobench.cli import main
from anobench.compat import validate_compat
from anobench.config import CONF_DIR, hardware_config, method_config
from anobench.errors import AnobenchError
from anobench.hardware import Hardware
from anobench.runner import plan_run
from tests.helpers import TINY_DATA, compose_config, tiny_run_args

# What each paper method's authors' code does where anobench's default corrects it, typed out
# from the README's deviations table (not read from the YAML under test).
AUTHORS = {
    "haloae": {"method.halo_mask_compat": True, "method.vgg_border_compat": True},
    "stmae": {
        "method.joint_decoder": True,
        "method.qkv_bias": False,
        "method.shared_block_norm": True,
        "method.final_norms": False,
    },
    "saae": {"backbone.layer_norm_eps": 1e-5},
    "anovit": {"backbone.layer_norm_eps": None},
}
DEFAULTS = {
    "haloae": {"method.halo_mask_compat": False, "method.vgg_border_compat": False},
    "stmae": {
        "method.joint_decoder": False,
        "method.qkv_bias": True,
        "method.shared_block_norm": False,
        "method.final_norms": True,
    },
    "saae": {"backbone.layer_norm_eps": 1e-5},
    "anovit": {"backbone.layer_norm_eps": None},
}
FP32 = {"hardware.precision": "fp32", "hardware.tf32": False, "hardware.cache_precision": "fp32"}


@pytest.fixture
def restore_tf32() -> Iterator[None]:
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("method", sorted(AUTHORS))
def test_compat_authors_turns_on_every_authors_code_behaviour(method: str) -> None:
    cfg = compose_config(f"method={method}", "compat=authors", "hardware=gpu")
    assert cfg.compat == "authors"
    for key, value in {**AUTHORS[method], **FP32}.items():
        assert OmegaConf.select(cfg, key) == value, key
    validate_compat(cfg, CONF_DIR)
    # every `*_compat` switch a method offers is on
    config = method_config(cfg)
    switches = [f.name for f in dataclasses.fields(config) if f.name.endswith("_compat")]
    assert all(getattr(config, name) is True for name in switches)

    default = compose_config(f"method={method}", "hardware=gpu")
    assert default.compat == "none"
    for key, value in DEFAULTS[method].items():
        assert OmegaConf.select(default, key) == value, key
    assert default.hardware.precision == "bf16" and default.hardware.tf32 is True
    assert default.hardware.cache_precision == "auto"


def test_demo_settings_stay_under_compat() -> None:
    cfg = compose_config("method=stmae", "experiment=demo", "compat=authors")
    assert method_config(cfg).image_size == 64 and cfg.method.shared_block_norm is True


def test_gpu_feature_cache_is_half_precision_unless_fp32() -> None:
    gpu = Hardware(torch.device("cuda"))  # a description only: nothing touches CUDA here
    assert gpu.cache_dtype == torch.float16
    assert dataclasses.replace(gpu, precision="bf16").cache_dtype == torch.bfloat16
    assert dataclasses.replace(gpu, cache_precision="fp32").cache_dtype == torch.float32
    compat = hardware_config(compose_config("method=stmae", "compat=authors", "hardware=gpu"))
    assert compat.cache_precision == "fp32"


def test_plan_under_compat_turns_tf32_off(tmp_path: Path, restore_tf32: None) -> None:
    paths = [f"results_dir={tmp_path / 'results'}", f"cache_dir={tmp_path / 'cache'}"]
    plan = plan_run(compose_config("method=stmae", "compat=authors", *TINY_DATA, *paths))
    assert plan.hardware.tf32 is False and plan.hardware.cache_precision == "fp32"
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is False
    assert plan.resolved_config["compat"] == "authors"
    plan = plan_run(compose_config("method=stmae", *TINY_DATA, *paths))
    assert plan.hardware.tf32 is True and plan.resolved_config["compat"] == "none"
    assert torch.backends.cuda.matmul.allow_tf32 is True
    assert torch.backends.cudnn.allow_tf32 is True


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["method=haloae", "hardware.precision=bf16"], "hardware.precision=bf16"),
        (["method=stmae", "hardware=gpu", "hardware.tf32=true"], "hardware.tf32=true"),
        (["method=stmae", "method.joint_decoder=false"], "method.joint_decoder=false"),
        (["method=haloae", "method.halo_mask_compat=false"], "method.halo_mask_compat=false"),
        (["method=saae", "backbone.layer_norm_eps=1e-6"], "backbone.layer_norm_eps=1e-06"),
        (["method=knn"], "method=knn"),
    ],
)
def test_undone_or_meaningless_compat_is_refused(overrides: list[str], named: str) -> None:
    with pytest.raises(AnobenchError, match=named.replace(".", r"\.")):
        validate_compat(compose_config("compat=authors", *overrides), CONF_DIR)


def test_compat_with_bf16_exits_2_before_any_work(tmp_path: Path, capsys) -> None:
    code = main(
        tiny_run_args(tmp_path, "compat=authors", "hardware.precision=bf16", method="stmae")
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "hardware.precision=bf16" in err and "Traceback" not in err
    assert not (tmp_path / "results").exists()


def test_compat_cell_records_the_switch_and_runs_the_public_network(tmp_path: Path) -> None:
    args = tiny_run_args(tmp_path, "compat=authors", "category=weave", method="stmae")
    assert main([*args, "method.epochs=1"]) == 0
    (path,) = (tmp_path / "results").rglob("metrics.json")
    record = json.loads(path.read_text())
    assert record["config"]["compat"] == "authors"
    assert record["config"]["method"]["shared_block_norm"] is True
    assert record["config"]["hardware"]["tf32"] is False
    assert record["precision"] == "fp32"
    assert 0.0 <= record["metrics"]["image_auroc"] <= 1.0
