"""Cell identity: what counts, variant folders, and matching stored records against a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from anobench.data.mvtec import index_split
from anobench.data.synthetic import SyntheticSpec, generate
from anobench.identity import (
    NOT_IDENTITY,
    CellIdentity,
    Variant,
    config_variant,
    data_fingerprint,
    identity_config,
    mismatch,
    overrides_yaml,
    reference_configs,
    variant_of,
    weights_sha256,
)
from tests.helpers import compose_config


@pytest.fixture(scope="module")
def knn_references() -> dict:
    return reference_configs("knn")


def _variant(*overrides: str, references: dict | None = None) -> Variant:
    return config_variant(compose_config(*overrides), None, references).variant


def test_the_reference_settings_keep_the_plain_folder(knn_references) -> None:
    paper = _variant("method=knn", references=knn_references)
    demo = _variant("method=knn", "experiment=demo", references=knn_references)
    assert (paper.name, paper.reference) == ("", "paper")
    assert (demo.name, demo.reference) == ("", "demo")
    assert paper.arguments() == [] and demo.arguments() == ["experiment=demo"]


def test_keys_that_do_not_change_numbers_do_not_make_a_variant(knn_references) -> None:
    variant = _variant(
        "method=knn",
        "results_dir=/elsewhere",
        "cache_dir=/cache",
        "hardware=cpu",
        "hardware.eval_batch_size=3",
        "hardware.deterministic=true",
        "hardware.cpu_threads=1",
        "checkpoint_every=2",
        "latency_repeats=0",
        "progress=false",
        "save_maps=false",
        "category=[carpet]",
        "seed=3",
        "dataset.root=/data/mvtec",
        references=knn_references,
    )
    assert variant.name == ""


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        ("backbone.pretrained=false", "backbone.pretrained", False),
        ("method.bank_size=100", "method.bank_size", 100),
        ("hardware.precision=bf16", "hardware.precision", "bf16"),
        ("pro_fpr_limit=0.05", "pro_fpr_limit", 0.05),
        ("backbone.layers=[layer3]", "backbone.layers", ["layer3"]),
    ],
)
def test_settings_that_change_numbers_make_a_variant_named_by_their_overrides(
    knn_references, override, key, value
) -> None:
    variant = _variant("method=knn", override, references=knn_references)
    assert len(variant.name) == 8 and variant.reference == "paper"
    assert variant.as_dict() == {key: value}
    assert variant.arguments() == [override]
    assert _variant("method=knn", override, references=knn_references) == variant  # stable


def test_one_lr_per_sweep_point_and_the_reference_is_part_of_the_name() -> None:
    references = reference_configs("saae")
    first = _variant("method=saae", "method.lr=1e-4", references=references)
    second = _variant("method=saae", "method.lr=2e-4", references=references)
    demo = _variant("method=saae", "experiment=demo", "method.lr=2e-4", references=references)
    assert first.name == ""  # 1e-4 is SAAE's paper value
    assert len({first.name, second.name, demo.name}) == 3
    assert demo.arguments() == ["experiment=demo", "method.lr=0.0002"]


def test_a_new_key_with_its_default_changes_nothing_and_a_changed_default_does(
    knn_references,
) -> None:
    stored = identity_config(compose_config("method=knn"), None)
    del stored["method.blur_sigma"]  # as if written before the key existed
    assert variant_of(stored, knn_references).name == ""
    moved = {**stored, "method.pool": 5}  # written when the default was 5
    assert variant_of(moved, knn_references).as_dict() == {"method.pool": 5}


def test_the_deny_list_is_a_list_of_config_keys_and_prefixes() -> None:
    flat = identity_config(compose_config("method=knn"), None)
    assert not [k for k in flat if any(k == d or k.startswith(d + ".") for d in NOT_IDENTITY)]
    assert {"method.bank_size", "backbone.pretrained", "hardware.precision"} <= set(flat)
    assert "pro_fpr_limit" in flat and "hardware.device" not in flat


def test_a_weights_file_counts_by_content_not_path(tmp_path: Path, knn_references) -> None:
    first, same, other = tmp_path / "a.pth", tmp_path / "b.pth", tmp_path / "c.pth"
    first.write_bytes(b"weights")
    same.write_bytes(b"weights")
    other.write_bytes(b"other weights")
    names = {
        path: _variant("method=knn", f"backbone.weights={path}", references=knn_references)
        for path in (first, same, other)
    }
    assert names[first] == names[same] != names[other]
    assert names[first].as_dict()["backbone.weights"].startswith("sha256:")
    cache = tmp_path / "cache"
    assert weights_sha256(first, cache) == weights_sha256(first, cache)
    assert len(list((cache / "hashes").iterdir())) == 1  # hashed once, then read back


def test_overrides_yaml_names_the_reference_and_the_overrides(knn_references) -> None:
    variant = _variant("method=knn", "method.bank_size=100", references=knn_references)
    text = overrides_yaml("knn", variant)
    assert f"knn+{variant.name}" in text
    assert "anobench run method=knn method.bank_size=100" in text
    assert "reference: method=knn" in text and "method.bank_size: 100" in text


def _identity(root: Path, variant: Variant, category: str = "weave") -> CellIdentity:
    samples = [*index_split(root, category, "train"), *index_split(root, category, "test")]
    fingerprint = data_fingerprint(root / category, samples)
    return CellIdentity("mvtec", "knn", "bb", variant, None, fingerprint, None, True)


def test_a_record_matches_only_its_identity_and_names_what_changed(tmp_path: Path) -> None:
    root = generate(tmp_path / "data", SyntheticSpec(image_size=32, n_train=3, n_test_good=2))
    config = {"method": {"name": "knn", "pool": 3}}
    references = {"paper": identity_config(config, None)}
    variant = variant_of(identity_config(config, None), references)
    identity = _identity(root, variant)
    record = {
        "dataset": "mvtec",
        "method": "knn",
        "backbone": "bb",
        **identity.record_fields(),
        "config": config,
    }
    assert mismatch(record, identity, references) is None
    other = {**record, "config": {"method": {"name": "knn", "pool": 5}}}
    assert "method.pool: 5 -> the reference value" in mismatch(other, identity, references)
    image = next((root / "weave" / "test" / "good").iterdir())
    image.unlink()
    changed = _identity(root, variant)
    assert "test/good: 2 -> 1 files" in mismatch(record, changed, references)
    legacy = {"schema": 1, "dataset": "mvtec", "method": "knn", "backbone": "bb"}
    assert mismatch({**legacy, "config": record["config"]}, changed, references) is None
