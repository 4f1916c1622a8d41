"""The MVTec AD reader: indexing, decoding, masks and its errors on bad input."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from anobench.data import AnomalyDataset, Sample, index_split, list_categories
from anobench.data.mvtec import MVTEC_CATEGORIES, OBJECTS, TEXTURES
from anobench.errors import AnobenchError
from tests.conftest import TINY_SYNTHETIC

SIZE = 40


def _png(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


def _rgb(seed: int, size: tuple[int, int] = (SIZE, SIZE)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3))
    return Image.fromarray(pixels.astype(np.uint8))


def _mask(size: tuple[int, int] = (SIZE, SIZE), box: tuple[int, int, int, int] = (5, 5, 15, 15)):
    pixels = np.zeros((size[1], size[0]), dtype=np.uint8)
    pixels[box[1] : box[3], box[0] : box[2]] = 255
    return Image.fromarray(pixels)


def _tree(root: Path, category: str = "wood", n_train: int = 2, defect: str = "crack") -> Path:
    """A minimal valid class folder: train/good, test/good, test/<defect> with masks."""
    folder = root / category
    for i in range(n_train):
        _png(folder / "train" / "good" / f"{i:03d}.png", _rgb(i))
    _png(folder / "test" / "good" / "000.png", _rgb(10))
    _png(folder / "test" / defect / "000.png", _rgb(11))
    _png(folder / "ground_truth" / defect / "000_mask.png", _mask())
    return folder


def test_category_constant_is_textures_then_objects() -> None:
    assert MVTEC_CATEGORIES == TEXTURES + OBJECTS
    assert len(MVTEC_CATEGORIES) == 15 and len(set(MVTEC_CATEGORIES)) == 15


def test_list_categories_keeps_only_class_folders_in_mvtec_order(tmp_path: Path) -> None:
    for name in ("zipper", "carpet", "custom"):
        _tree(tmp_path, name)
    (tmp_path / "notes").mkdir()
    (tmp_path / "README.txt").write_text("x")
    assert list_categories(tmp_path) == ["carpet", "zipper", "custom"]


def test_index_split_on_synthetic_data(synthetic_root: Path) -> None:
    assert list_categories(synthetic_root) == sorted(TINY_SYNTHETIC.categories)
    for category in TINY_SYNTHETIC.categories:
        train = index_split(synthetic_root, category, "train")
        test = index_split(synthetic_root, category, "test")
        assert len(train) == TINY_SYNTHETIC.n_train
        assert all(s.label == 0 and s.defect == "good" and s.mask_path is None for s in train)
        assert [s.relative_path for s in train][:2] == ["train/good/000.png", "train/good/001.png"]
        good = [s for s in test if s.defect == "good"]
        bad = [s for s in test if s.defect != "good"]
        assert len(good) == TINY_SYNTHETIC.n_test_good
        assert len(bad) == TINY_SYNTHETIC.n_test_defect
        assert all(s.label == 0 and s.mask_path is None for s in good)
        for s in bad:
            assert s.label == 1
            masks = synthetic_root / category / "ground_truth" / s.defect
            assert s.mask_path == masks / f"{s.image_path.stem}_mask.png"
            assert s.relative_path == f"test/{s.defect}/{s.image_path.name}"
        assert test == index_split(synthetic_root, category, "test")
        assert test == sorted(test, key=lambda s: (s.defect, s.image_path.name))


def test_dataset_items_have_the_documented_types(synthetic_root: Path) -> None:
    for category in TINY_SYNTHETIC.categories:
        dataset = AnomalyDataset(index_split(synthetic_root, category, "test"), 48)
        assert len(dataset) == TINY_SYNTHETIC.n_test_good + TINY_SYNTHETIC.n_test_defect
        assert dataset.images.dtype == torch.uint8 and dataset.images.shape[1:] == (3, 48, 48)
        for i in range(len(dataset)):
            item = dataset[i]
            image, mask = item["image"], item["mask"]
            assert image.shape == (3, 48, 48) and image.dtype == torch.float32
            assert image.min() >= 0.0 and image.max() <= 1.0 and image.std() > 0.01
            assert mask.shape == (48, 48) and mask.dtype == torch.float32
            assert set(mask.unique().tolist()) <= {0.0, 1.0}
            assert type(item["label"]) is int and isinstance(item["defect"], str)
            assert item["path"] == dataset.samples[i].relative_path
            if item["label"] == 0:
                assert item["defect"] == "good" and mask.sum() == 0
            else:
                assert mask.sum() > 0
        batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
        assert batch["image"].shape == (4, 3, 48, 48) and batch["label"].dtype == torch.int64


def test_grayscale_class_loads_as_three_equal_channels(synthetic_root: Path) -> None:
    dataset = AnomalyDataset(index_split(synthetic_root, "washer", "train")[:2], 32)
    image = dataset[0]["image"]
    assert image.shape[0] == 3
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_mask_area_survives_resizing(synthetic_root: Path) -> None:
    samples = [s for s in index_split(synthetic_root, "weave", "test") if s.label == 1]
    original = [np.asarray(Image.open(s.mask_path)) > 127 for s in samples]
    doubled = AnomalyDataset(samples, 64).masks
    smaller = AnomalyDataset(samples, 24).masks
    for mask, up, down in zip(original, doubled, smaller, strict=True):
        assert int(up.sum()) == 4 * int(mask.sum())  # NEAREST x2: every pixel becomes 2x2
        fraction, resized = mask.mean(), down.float().mean().item()
        assert abs(resized - fraction) <= 0.35 * fraction + 2 / 24**2


def test_images_are_decoded_once(tmp_path: Path) -> None:
    _tree(tmp_path)
    dataset = AnomalyDataset(index_split(tmp_path, "wood", "test"), SIZE, progress=True)
    for sample in dataset.samples:
        sample.image_path.unlink()
    items = [dataset[i] for i in range(len(dataset))]
    assert [item["defect"] for item in items] == ["crack", "good"]
    assert items[0]["mask"].sum() == 100 and items[0]["image"].std() > 0.1


def test_resize_modes_differ_and_unknown_mode_lists_valid_ones(tmp_path: Path) -> None:
    _tree(tmp_path)
    samples = index_split(tmp_path, "wood", "train")
    images = {m: AnomalyDataset(samples, 24, m).images for m in ("nearest", "bilinear", "bicubic")}
    assert not torch.equal(images["nearest"], images["bilinear"])
    assert not torch.equal(images["bilinear"], images["bicubic"])
    with pytest.raises(AnobenchError, match="lanczos.*nearest, bilinear, bicubic"):
        AnomalyDataset(samples, 24, "lanczos")
    with pytest.raises(AnobenchError, match="image_size 0"):
        AnomalyDataset(samples, 0)


def _mode_image(mode: str) -> Image.Image:
    colour = (10, 120, 230)
    if mode == "I;16":
        return Image.fromarray(np.full((SIZE, SIZE), 100 * 257, dtype=np.uint16))
    if mode in ("P", "P+transparency"):
        image = Image.new("RGB", (SIZE, SIZE), colour).quantize(colors=2)
        if mode == "P+transparency":
            image.info["transparency"] = 0
        return image
    fill = {"L": 90, "LA": (90, 0), "RGBA": (*colour, 0), "1": 1, "CMYK": (0, 0, 0, 0)}[mode]
    return Image.new(mode, (SIZE, SIZE), fill)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("L", (90, 90, 90)),
        ("LA", (90, 90, 90)),  # alpha dropped, not composited on black
        ("RGBA", (10, 120, 230)),
        ("P", (10, 120, 230)),
        ("P+transparency", (10, 120, 230)),
        ("I;16", (100, 100, 100)),  # 16-bit scaled to 8 bits, not clipped at 255
        ("1", (255, 255, 255)),
        ("CMYK", None),
    ],
)
def test_any_image_mode_loads_as_rgb(tmp_path: Path, mode: str, expected) -> None:
    folder = _tree(tmp_path)
    good = folder / "train" / "good"
    (good / "000.png").unlink()
    image = _mode_image(mode)
    if mode == "CMYK":
        image.save(good / "000.JPG", format="JPEG")  # upper-case extensions count too
    else:
        image.save(good / "000.png", format="PNG", transparency=image.info.get("transparency"))
    assert Image.open(next(good.glob("000.*"))).mode == mode.split("+")[0]
    dataset = AnomalyDataset(index_split(tmp_path, "wood", "train")[:1], 16)
    assert dataset.images.shape == (1, 3, 16, 16)
    if expected is not None:
        assert dataset.images[0, :, 8, 8].tolist() == list(expected)


def test_non_binary_masks_are_thresholded_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _tree(tmp_path)
    soft = np.zeros((SIZE, SIZE), dtype=np.uint8)
    soft[0:10, :] = 200
    soft[10:20, :] = 255
    soft[20:30, :] = 127
    _png(folder / "ground_truth" / "crack" / "000_mask.png", Image.fromarray(soft))
    single = np.zeros((SIZE, SIZE), dtype=np.uint8)
    single[5, 5] = 128
    _png(folder / "test" / "crack" / "001.png", _rgb(12))
    _png(folder / "ground_truth" / "crack" / "001_mask.png", Image.fromarray(single))
    with caplog.at_level(logging.WARNING, logger="anobench"):
        dataset = AnomalyDataset(index_split(tmp_path, "wood", "test"), SIZE)
    (message,) = caplog.messages
    assert message.startswith("wood: 2 mask(s) have values other than 0 and 255")
    assert str(folder / "ground_truth" / "crack" / "000_mask.png") in message
    crack = [i for i, s in enumerate(dataset.samples) if s.defect == "crack"]
    assert dataset.masks[crack[0]].sum() == 20 * SIZE  # 200 and 255 in, 127 out
    assert dataset.masks[crack[1]].sum() == 1 and dataset.masks[crack[1], 5, 5]


def test_binary_masks_do_not_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _tree(tmp_path)
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="anobench"):
        warnings.simplefilter("error")
        AnomalyDataset(index_split(tmp_path, "wood", "test"), 16)
    assert caplog.messages == []


def test_missing_root_names_it_and_the_synthetic_option(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    for call in (lambda: list_categories(missing), lambda: index_split(missing, "wood", "train")):
        with pytest.raises(AnobenchError) as info:
            call()
        assert str(missing) in str(info.value) and "dataset=synthetic" in str(info.value)


def test_misspelled_category_suggests_the_closest(tmp_path: Path) -> None:
    _tree(tmp_path, "wood")
    _tree(tmp_path, "tile")
    with pytest.raises(AnobenchError) as info:
        index_split(tmp_path, "wod", "train")
    message = str(info.value)
    assert str(tmp_path / "wod") in message
    assert "did you mean 'wood'" in message and "tile, wood" in message


def test_empty_train_good_names_the_folder(tmp_path: Path) -> None:
    folder = _tree(tmp_path)
    for path in (folder / "train" / "good").iterdir():
        path.unlink()
    (folder / "train" / "good" / "notes.txt").write_text("not an image")
    with pytest.raises(AnobenchError, match=str(folder / "train" / "good")):
        index_split(tmp_path, "wood", "train")


def test_missing_test_folder_names_it(tmp_path: Path) -> None:
    folder = _tree(tmp_path)
    (folder / "test").rename(folder / "tests")
    with pytest.raises(AnobenchError, match=str(folder / "test")):
        index_split(tmp_path, "wood", "test")


def test_bad_split_lists_valid_ones(tmp_path: Path) -> None:
    _tree(tmp_path)
    with pytest.raises(AnobenchError, match="'val'.*train, test"):
        index_split(tmp_path, "wood", "val")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_image_names_the_file(tmp_path: Path, damage: str) -> None:
    folder = _tree(tmp_path)
    path = folder / "test" / "crack" / "000.png"
    data = path.read_bytes()
    broken = {"garbage": bytes(range(256)) * 4, "truncated": data[: len(data) // 2], "empty": b""}
    path.write_bytes(broken[damage])
    samples = index_split(tmp_path, "wood", "test")
    with pytest.raises(AnobenchError, match=str(path)):
        AnomalyDataset(samples, 16)


def test_corrupt_mask_names_the_file(tmp_path: Path) -> None:
    folder = _tree(tmp_path)
    mask = folder / "ground_truth" / "crack" / "000_mask.png"
    mask.write_bytes(mask.read_bytes()[:60])
    with pytest.raises(AnobenchError, match=str(mask)):
        AnomalyDataset(index_split(tmp_path, "wood", "test"), 16)


def test_missing_mask_names_the_expected_path(tmp_path: Path) -> None:
    folder = _tree(tmp_path)
    expected = folder / "ground_truth" / "crack" / "000_mask.png"
    expected.unlink()
    with pytest.raises(AnobenchError) as info:
        index_split(tmp_path, "wood", "test")
    assert str(expected) in str(info.value)
    assert str(folder / "test" / "crack" / "000.png") in str(info.value)


def test_mask_size_mismatch_names_both_files_and_sizes(tmp_path: Path) -> None:
    folder = _tree(tmp_path)
    mask = _png(folder / "ground_truth" / "crack" / "000_mask.png", _mask((SIZE, SIZE + 2)))
    with pytest.raises(AnobenchError) as info:
        AnomalyDataset(index_split(tmp_path, "wood", "test"), 16)
    message = str(info.value)
    assert str(mask) in message and str(folder / "test" / "crack" / "000.png") in message
    assert f"({SIZE}, {SIZE + 2})" in message and f"({SIZE}, {SIZE})" in message


def test_hidden_and_non_image_files_are_ignored(tmp_path: Path) -> None:
    folder = _tree(tmp_path)
    (folder / "train" / "good" / "._000.png").write_bytes(b"\x00\x05\x16\x07")
    (folder / "train" / "good" / "Thumbs.db").write_bytes(b"x")
    _png(folder / "train" / "good" / "002.PNG", _rgb(3))
    names = [s.image_path.name for s in index_split(tmp_path, "wood", "train")]
    assert names == ["000.png", "001.png", "002.PNG"]


def test_masks_match_by_stem_and_hidden_folders_are_skipped(tmp_path: Path) -> None:
    folder = _tree(tmp_path)
    gt = folder / "ground_truth" / "crack"
    (gt / "000_mask.png").rename(gt / "000_mask.TIF")
    _png(folder / "test" / "crack" / "001.png", _rgb(5))
    _png(gt / "001_mask.png", _mask())
    _png(gt / "001_mask.bmp", _mask())
    _png(folder / "test" / ".ipynb_checkpoints" / "000.png", _rgb(6))
    samples = index_split(tmp_path, "wood", "test")
    assert [(s.defect, s.mask_path) for s in samples] == [
        ("crack", gt / "000_mask.TIF"),
        ("crack", gt / "001_mask.png"),
        ("good", None),
    ]


def test_sample_is_frozen() -> None:
    sample = Sample(Path("a.png"), None, 0, "good", "train/good/a.png")
    with pytest.raises(AttributeError):
        sample.label = 1  # type: ignore[misc]


# ---- faults in the dataset folder (issue #20) ----------------------------------------------


def test_a_class_without_good_test_images_is_an_error_naming_the_folder(tmp_path: Path) -> None:
    folder = _tree(tmp_path)
    (folder / "test" / "good" / "000.png").unlink()
    with pytest.raises(AnobenchError, match="image AUROC is undefined") as raised:
        index_split(tmp_path, "wood", "test")
    assert str(folder / "test" / "good") in str(raised.value)


def test_a_class_without_defect_folders_is_an_error_naming_the_folder(tmp_path: Path) -> None:
    folder = _tree(tmp_path)
    (folder / "test" / "crack" / "000.png").unlink()
    with pytest.raises(AnobenchError, match="has no defect folder with images") as raised:
        index_split(tmp_path, "wood", "test")
    assert str(folder / "test") in str(raised.value)


def test_a_defect_folder_replaced_by_a_file_leaves_no_defects(tmp_path: Path) -> None:
    folder = _tree(tmp_path)
    crack = folder / "test" / "crack"
    (crack / "000.png").unlink()
    crack.rmdir()
    crack.write_text("not a folder")
    with pytest.raises(AnobenchError, match="has no defect folder with images"):
        index_split(tmp_path, "wood", "test")


def test_a_dangling_link_in_place_of_a_folder_is_named(tmp_path: Path) -> None:
    folder = _tree(tmp_path, defect="hole")
    (folder / "test" / "crack").symlink_to(tmp_path / "unmounted" / "crack")
    with pytest.raises(AnobenchError, match="is a broken symbolic link") as raised:
        index_split(tmp_path, "wood", "test")
    assert str(folder / "test" / "crack") in str(raised.value)
    (folder / "test" / "crack").unlink()
    (folder / "test" / "loop").symlink_to(folder / "test" / "loop")
    with pytest.raises(AnobenchError, match="link loop"):
        index_split(tmp_path, "wood", "test")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their mode")
def test_an_unreadable_folder_is_named(tmp_path: Path) -> None:
    folder = _tree(tmp_path)
    crack = folder / "test" / "crack"
    crack.chmod(0)
    try:
        with pytest.raises(AnobenchError, match="cannot list folder") as raised:
            index_split(tmp_path, "wood", "test")
    finally:
        crack.chmod(0o755)
    assert str(crack) in str(raised.value)


def test_files_of_another_format_are_not_test_images(tmp_path: Path) -> None:
    # e.g. float32 TIFF maps that export-maps wrote next to the images
    folder = _tree(tmp_path)
    for split in ("good", "crack"):
        tifffile.imwrite(folder / "test" / split / "000.tiff", np.zeros((4, 4), np.float32))
    samples = index_split(tmp_path, "wood", "test")
    assert [s.relative_path for s in samples] == ["test/crack/000.png", "test/good/000.png"]


def test_zero_one_masks_are_read_as_defects_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _tree(tmp_path)
    reference = AnomalyDataset(index_split(tmp_path, "wood", "test"), SIZE).masks
    zero_one = (np.asarray(_mask()) // 255).astype(np.uint8)
    _png(folder / "ground_truth" / "crack" / "000_mask.png", Image.fromarray(zero_one))
    with caplog.at_level(logging.WARNING, logger="anobench"):
        dataset = AnomalyDataset(index_split(tmp_path, "wood", "test"), SIZE)
    assert torch.equal(dataset.masks, reference) and reference.any()
    (message,) = caplog.messages
    assert message.startswith("wood: 1 mask(s) hold only the values 0 and 1")
    assert "read as 0/255, 1 = defect" in message


def test_all_empty_masks_say_the_pixel_metrics_are_undefined(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _tree(tmp_path)
    empty = Image.fromarray(np.zeros((SIZE, SIZE), np.uint8))
    _png(folder / "ground_truth" / "crack" / "000_mask.png", empty)
    with caplog.at_level(logging.WARNING, logger="anobench"):
        dataset = AnomalyDataset(index_split(tmp_path, "wood", "test"), SIZE)
    assert not dataset.masks.any()
    (message,) = caplog.messages
    assert message.startswith("wood: all 1 defect masks are empty (all zero")
    assert "pixel metrics (pixel AUROC, PRO, pixel AP, pixel F1) are undefined" in message
