"""Shared test settings: the tiniest real runs on the synthetic data."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from anobench.backbones import BackboneConfig
from anobench.cli import main
from anobench.config import CONF_DIR, register_configs

# HaloAE's VGG19 (its four feature layers, reflection padding), random weights for the tests
HALOAE_VGG = BackboneConfig(
    name="vgg19.tv_in1k",
    layers=["features.1", "features.6", "features.11", "features.17"],
    pretrained=False,
    padding_mode="reflect",
)
# HaloAE's network at narrow widths for CPU tests that train (spatial settings stay the paper's)
HALOAE_NARROW = {
    "stem_channels": 16,
    "encoder_channels": [16, 8, 8, 8],
    "decoder_widths": [8, 8, 16, 16, 32],
    "decoder_channels": [8, 8, 16, 16, 704],
    "image_decoder_channels": [16, 8, 3, 3],
    "encoder_heads": [2, 2, 2, 2],
    "decoder_heads": [2, 2, 2, 2, 2],
    "dim_head": 8,
}
# ... and at 32 px: 8x8 features, one 4x4 block
HALOAE_NARROW_32PX = {**HALOAE_NARROW, "image_size": 32, "block_size": 4}

TINY_DATA = [
    "experiment=demo",
    "dataset.synthetic.image_size=64",
    "dataset.synthetic.n_train=10",
    "dataset.synthetic.n_test_good=5",
    "dataset.synthetic.n_test_defect=8",
    "latency_repeats=0",
    "progress=false",
]


def tiny_run_args(tmp_path: Path, *extra: str, method: str = "knn") -> list[str]:
    """`anobench run` arguments for a seconds-long run writing under tmp_path."""
    return [
        "run",
        f"method={method}",
        *TINY_DATA,
        "method.image_size=64",
        f"results_dir={tmp_path / 'results'}",
        f"cache_dir={tmp_path / 'cache'}",
        *extra,
    ]


@functools.cache
def tiny_variant(method: str) -> str:
    """The variant folder name of `tiny_run_args` runs of `method` (`<method>+<hash>`)."""
    from anobench.identity import config_variant

    cfg = compose_config(f"method={method}", *TINY_DATA, "method.image_size=64")
    variant = config_variant(cfg, None).variant.name
    return f"{method}+{variant}" if variant else method


def cell_dir(
    tmp_path: Path,
    category: str,
    method: str = "knn",
    seed: int = 0,
    backbone: str = "resnet18.tv_in1k",
) -> Path:
    """The folder of a `tiny_run_args` cell."""
    model = tiny_variant(method)
    return tmp_path / "results" / "synthetic" / model / backbone / category / f"seed{seed}"


def read_metrics(tmp_path: Path, category: str, **kwargs: object) -> dict:
    return json.loads((cell_dir(tmp_path, category, **kwargs) / "metrics.json").read_text())


def run_demo_cell(tmp_path: Path, method: str, category: str, *overrides: str) -> dict:
    """Run one `experiment=demo` cell of `method` under tmp_path; return its metrics record."""
    code = main(
        [
            "run",
            f"method={method}",
            "experiment=demo",
            f"category={category}",
            "latency_repeats=0",
            "progress=false",
            f"results_dir={tmp_path / 'results'}",
            f"cache_dir={tmp_path / 'cache'}",
            *overrides,
        ]
    )
    assert code == 0
    (path,) = (tmp_path / "results").rglob("metrics.json")
    return json.loads(path.read_text())


def compose_config(*overrides: str) -> DictConfig:
    """The composed `anobench run` config for these command-line overrides."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


# the tiniest real run of each method: 48 px synthetic images scored at 32 px
TINY_METHOD: dict[str, list[str]] = {
    "knn": [],
    "saae": [
        "backbone.name=vit_tiny_patch16_224",
        "+backbone.model_kwargs.depth=4",
        "method.latent_dim=8",
        "method.epochs=1",
        "method.batch_size=4",
    ],
    "anovit": [
        "backbone.name=vit_tiny_patch16_224",
        "+backbone.model_kwargs.depth=1",
        "method.epochs=2",
        "method.batch_size=4",
    ],
    "haloae": ["method.epochs=1", "method.samples_per_epoch=4", "method.batch_size=4"],
    "stmae": ["method.epochs=1", "method.batch_size=4"],
}


def run_tiny(
    tmp_path: Path, method: str, *extra: str, category: str = "weave", image_size: int = 32
) -> Path:
    """Run one tiny cell of `method` under tmp_path; return its folder."""
    arguments = [
        "run",
        f"method={method}",
        "experiment=demo",
        "dataset.synthetic.image_size=48",
        "dataset.synthetic.n_train=4",
        "dataset.synthetic.n_test_good=3",
        "dataset.synthetic.n_test_defect=3",
        f"method.image_size={image_size}",
        f"category={category}",
        "latency_repeats=0",
        "progress=false",
        f"results_dir={tmp_path / 'results'}",
        f"cache_dir={tmp_path / 'cache'}",
        *TINY_METHOD[method],
        *extra,
    ]
    assert main(arguments) == 0
    from anobench.identity import config_variant
    from anobench.results import Cell

    cfg = compose_config(*arguments[1:])
    variant = config_variant(cfg, None).variant.name
    cell = Cell("synthetic", method, cfg.backbone.name, category, 0, variant)
    return cell.directory(tmp_path / "results")
