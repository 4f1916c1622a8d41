"""Config composition from the real conf/ and validation before any work starts."""

from __future__ import annotations

import pytest

from anobench.cli import main
from anobench.config import method_config, resolve_categories
from anobench.data.mvtec import MVTEC_CATEGORIES
from anobench.errors import AnobenchError
from tests.helpers import compose_config  # noqa: E402


def test_defaults_compose_to_reference_method_on_mvtec() -> None:
    cfg = compose_config()
    assert cfg.method.name == "knn"
    assert cfg.dataset.name == "mvtec"
    assert list(cfg.dataset.categories) == list(MVTEC_CATEGORIES)
    assert cfg.category == "all"
    assert resolve_categories(cfg.category, list(cfg.dataset.categories)) == list(MVTEC_CATEGORIES)


def test_demo_experiment_switches_dataset_and_applies_method_demo_settings() -> None:
    cfg = compose_config("experiment=demo")
    assert cfg.dataset.name == "synthetic"
    assert cfg.backbone.pretrained is False
    assert cfg.method.image_size == 128  # conf/method_scale/knn_demo.yaml
    assert compose_config().method.image_size == 256  # the default is untouched


def test_category_forms() -> None:
    available = ["a", "b", "c"]
    assert resolve_categories("b", available) == ["b"]
    assert resolve_categories("a,c", available) == ["a", "c"]
    assert resolve_categories(["c", "a"], available) == ["c", "a"]
    with pytest.raises(AnobenchError):
        resolve_categories([], available)


def test_method_config_is_the_registered_dataclass() -> None:
    cfg = method_config(compose_config("method.bank_size=100"))
    assert type(cfg).__name__ == "KNNConfig"
    assert cfg.bank_size == 100


@pytest.mark.parametrize(
    "override",
    [
        "method.pool=abc",
        "method.lrr=1",
        "hardware.eval_batch_size=x",
        "nosuchkey=1",
        "method=nosuchmethod",
    ],
)
def test_bad_overrides_exit_2_before_work(override: str, tmp_path, capsys) -> None:
    code = main(["run", override, f"results_dir={tmp_path}", "--cfg", "job"])
    assert "unrecognized arguments" not in capsys.readouterr().err
    assert code == 2
    assert not any(tmp_path.rglob("metrics.json"))


def test_invalid_value_is_a_one_line_error(tmp_path, capsys) -> None:
    code = main(
        [
            "run",
            "experiment=demo",
            "method.image_size=0",
            f"results_dir={tmp_path}",
            f"cache_dir={tmp_path / 'cache'}",
            "dataset.synthetic.image_size=32",
            "dataset.synthetic.n_train=2",
            "dataset.synthetic.n_test_good=1",
            "dataset.synthetic.n_test_defect=1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "method.image_size=0 is out of range; use a value >= 1" in err
    assert "Traceback" not in err


def test_cfg_job_prints_composed_config(capsys, tmp_path) -> None:
    assert main(["run", "method=knn", f"results_dir={tmp_path}", "--cfg", "job"]) == 0
    out = capsys.readouterr().out
    assert "name: knn" in out
    assert "resnet18.tv_in1k" in out
