"""Values no schema type can check: hyperparameter ranges, seeds, folder-safe names, keys."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from anobench.backbones import BackboneConfig
from anobench.config import RunConfig, method_config, resolve_categories, resolve_seeds
from anobench.errors import AnobenchError
from anobench.methods import list_methods, method_entry
from anobench.validation import (
    METHOD_RANGES,
    SEED_MAX,
    Range,
    check_folder_name,
    check_seed,
    numeric_fields,
    unknown_keys,
)
from tests.helpers import compose_config

TRAINED = [m for m in list_methods() if m != "knn"]


def _invalid_values(valid: Range) -> list[float]:
    """The values just outside each bounded end of a range."""
    values = []
    if valid.low is not None:
        values.append(valid.low if valid.low_open else valid.low - 1)
    if valid.high is not None:
        values.append(valid.high if valid.high_open else valid.high + 1)
    return values


@pytest.mark.parametrize("method", list_methods())
def test_every_numeric_hyperparameter_has_a_range(method: str) -> None:
    fields = numeric_fields(method_entry(method).config_cls)
    assert fields  # every method has some (image_size at least)
    assert [f for f in fields if f not in METHOD_RANGES] == []


@pytest.mark.parametrize("method", list_methods())
def test_values_outside_the_range_are_rejected_naming_it(method: str) -> None:
    paper = compose_config(f"method={method}")
    method_config(paper)  # the paper setting is inside every range
    checked = 0
    for key in numeric_fields(method_entry(method).config_cls):
        valid = METHOD_RANGES[key]
        for bad in _invalid_values(valid):
            cfg = paper.copy()
            OmegaConf.update(cfg, f"method.{key}", bad)
            with pytest.raises(AnobenchError) as raised:
                method_config(cfg)
            assert str(raised.value) == (
                f"method.{key}={cfg.method[key]} is out of range; use a value {valid.describe()}."
            )
            checked += 1
    assert checked >= len(numeric_fields(method_entry(method).config_cls))


def test_zero_blur_is_valid_and_said_to_mean_no_blur() -> None:
    cfg = compose_config("method.blur_sigma=0")
    assert method_config(cfg).blur_sigma == 0
    assert METHOD_RANGES["blur_sigma"].describe().startswith(">= 0 (0 = no blur")
    assert Range(0, 1, low_open=True).describe() == "in (0, 1]"


@pytest.mark.parametrize("seed", [0, 7, SEED_MAX])
def test_seeds_in_range_are_kept(seed: int) -> None:
    assert check_seed(seed) == seed


@pytest.mark.parametrize(
    ("seed", "fragment"),
    [
        (-1, "seed=-1 is out of range; use whole numbers in [0, 4294967295]"),
        (SEED_MAX + 1, "seed=4294967296 is out of range"),
        (1.5, "seed=1.5 is not an integer"),
        (True, "seed=True is not an integer"),
        ("a", "seed='a' is not an integer"),
    ],
)
def test_seeds_outside_the_range_are_rejected(seed: object, fragment: str) -> None:
    with pytest.raises(AnobenchError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        check_seed(seed)


def test_seed_lists() -> None:
    assert resolve_seeds(OmegaConf.create({"s": [0, 1, 2]}).s) == [0, 1, 2]
    assert resolve_seeds(3) == [3]
    with pytest.raises(AnobenchError, match="empty"):
        resolve_seeds([])
    with pytest.raises(AnobenchError, match="seed=-2 is out of range"):
        resolve_seeds([0, -2])


@pytest.mark.parametrize("name", ["carpet", "metal_nut", "part.v2", "Gear 7"])
def test_plain_folder_names_pass(name: str) -> None:
    assert check_folder_name("category", name) == name


@pytest.mark.parametrize(
    "name", ["../../../../cls", "/abs", "a/b", "..", ".", "", " ", "a\\b", " padded "]
)
def test_names_that_are_not_one_folder_are_rejected(name: str) -> None:
    with pytest.raises(AnobenchError, match="is not a plain folder name"):
        check_folder_name("category", name)
    with pytest.raises(AnobenchError, match="category="):
        resolve_categories([name], ["carpet"])


def test_dataset_names_are_checked_when_the_config_is_read() -> None:
    from anobench.config import dataset_config

    with pytest.raises(AnobenchError, match="dataset.name='/abs' is not a plain folder name"):
        dataset_config(compose_config("dataset.name=/abs"))
    with pytest.raises(AnobenchError, match="dataset.categories='..'"):
        dataset_config(compose_config("dataset.categories=[carpet,..]"))


def test_unknown_keys_descend_into_typed_nodes_only() -> None:
    node = {
        "category": "all",
        "typo": 1,
        "backbone": {"name": "x", "layrs": [], "model_kwargs": {"anything": 1}},
        "dataset": {"synthetic": {"n_trian": 3}},
        "method": {"whatever": 1},  # Any: each method's own schema checks it
    }
    found = dict(unknown_keys(node, RunConfig))
    assert set(found) == {"typo", "backbone.layrs", "dataset.synthetic.n_trian"}
    assert found["backbone.layrs"] == sorted(BackboneConfig.__dataclass_fields__)
