"""Seeded fuzz of the reader: damaged or odd files load correctly or raise AnobenchError."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anobench.data import AnomalyDataset, index_split
from anobench.errors import AnobenchError

N_CASES = 300
SIZE = 40
OUT = 32
MODES = ("RGB", "L", "LA", "P", "RGBA", "I;16", "1")
FORMATS = {"png": "PNG", "jpg": "JPEG", "bmp": "BMP", "tif": "TIFF"}
IMAGE_DAMAGE = ("ok", "truncate", "flip", "zero", "garbage", "signature_only")
MASK_DAMAGE = ("ok", "truncate", "flip", "zero", "garbage", "wrong_size")
# Damage that leaves no decodable image, or a mask that cannot match its image.
FATAL_IMAGE = ("zero", "garbage", "signature_only")
FATAL_MASK = ("zero", "garbage", "wrong_size")


def _encode(image: Image.Image, fmt: str) -> bytes:
    if fmt == "jpg" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    if fmt == "bmp" and image.mode in ("I;16", "LA"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=FORMATS[fmt])
    return buffer.getvalue()


def _in_mode(pixels: np.ndarray, mode: str) -> Image.Image:
    """Pixels [H, W, 3] uint8 as an image of the given mode."""
    if mode == "I;16":
        return Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
    image = Image.fromarray(pixels)
    return image.quantize(16) if mode == "P" else image.convert(mode)


def _damage(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    if kind == "truncate":
        return data[: rng.integers(0, len(data))]
    if kind == "flip":
        damaged = bytearray(data)
        for _ in range(rng.integers(1, 9)):
            damaged[rng.integers(len(damaged))] ^= int(rng.integers(1, 256))
        return bytes(damaged)
    if kind == "zero":
        return b""
    if kind == "garbage":
        return rng.integers(0, 256, size=int(rng.integers(1, 2000)), dtype=np.uint8).tobytes()
    if kind == "signature_only":
        return data[:8]
    return data


def _case(root: Path, rng: np.random.Generator) -> tuple[str, str]:
    """Write one class folder with a random image and mask; return (image, mask) damage."""
    fmt = "png" if rng.random() < 0.8 else str(rng.choice(list(FORMATS)[1:]))
    image_kind = str(rng.choice(IMAGE_DAMAGE, p=[0.4, 0.2, 0.25, 0.05, 0.05, 0.05]))
    mask_kind = str(rng.choice(MASK_DAMAGE, p=[0.5, 0.15, 0.2, 0.05, 0.05, 0.05]))
    pixels = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    mode = str(rng.choice(MODES))
    train = root / "train" / "good" / f"000.{fmt}"
    train.parent.mkdir(parents=True)
    train.write_bytes(_encode(_in_mode(pixels, mode), fmt))
    good = root / "test" / "good" / f"000.{fmt}"  # a class needs defect-free test images
    good.parent.mkdir(parents=True)
    good.write_bytes(train.read_bytes())
    image = root / "test" / "crack" / f"000.{fmt}"
    image.parent.mkdir(parents=True)
    encoded = _encode(_in_mode(pixels[::-1], str(rng.choice(MODES))), fmt)
    image.write_bytes(_damage(encoded, image_kind, rng))
    mask_pixels = np.zeros((SIZE, SIZE + 3 if mask_kind == "wrong_size" else SIZE, 3), np.uint8)
    mask_pixels[8:20, 10:30] = 255
    mask = root / "ground_truth" / "crack" / "000_mask.png"
    mask.parent.mkdir(parents=True)
    mask_mode = str(rng.choice(MODES))
    encoded = _encode(_in_mode(mask_pixels, mask_mode), "png")
    mask.write_bytes(_damage(encoded, mask_kind, rng))
    return image_kind, mask_kind


def _check_loaded(dataset: AnomalyDataset) -> None:
    for i in range(len(dataset)):
        item = dataset[i]
        assert item["image"].shape == (3, OUT, OUT) and item["image"].dtype == torch.float32
        assert item["image"].min() >= 0.0 and item["image"].max() <= 1.0
        assert item["mask"].shape == (OUT, OUT)
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
        assert item["label"] == (0 if item["defect"] == "good" else 1)


def test_damaged_files_load_or_raise_anobench_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(20240611)
    outcomes = {"loaded": 0, "rejected": 0}
    for case in range(N_CASES):
        category = f"c{case:03d}"
        image_kind, mask_kind = _case(tmp_path / category, rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # flipped mask bytes make grey values; that warns
            _check_loaded(AnomalyDataset(index_split(tmp_path, category, "train"), OUT))
            try:
                dataset = AnomalyDataset(index_split(tmp_path, category, "test"), OUT)
            except AnobenchError as error:
                assert category in str(error)
                assert image_kind != "ok" or mask_kind != "ok", str(error)
                outcomes["rejected"] += 1
                continue
        assert image_kind not in FATAL_IMAGE and mask_kind not in FATAL_MASK
        _check_loaded(dataset)
        if mask_kind == "ok":
            assert dataset.masks[0].sum() > 0
        outcomes["loaded"] += 1
    # both branches are exercised, so the test would notice a reader that rejects everything
    assert outcomes["loaded"] > 30 and outcomes["rejected"] > 100, outcomes


def _with_ihdr(data: bytes, width: int, height: int, fix_crc: bool = True) -> bytes:
    """A PNG whose header claims another size; the IHDR checksum is recomputed or broken."""
    damaged = bytearray(data)
    damaged[16:24] = struct.pack(">II", width, height)
    damaged[29:33] = struct.pack(">I", zlib.crc32(bytes(damaged[12:29])) if fix_crc else 0)
    return bytes(damaged)


@pytest.mark.parametrize(
    "header",
    [(40_000, 40_000, True), (4_000, 4_000, True), (SIZE, SIZE + 1, False)],
    ids=["decompression-bomb", "claims-more-pixels", "bad-header-checksum"],
)
def test_crafted_headers_raise_anobench_error(tmp_path: Path, header: tuple) -> None:
    image = tmp_path / "wood" / "train" / "good" / "000.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(_with_ihdr(_encode(Image.new("RGB", (SIZE, SIZE)), "png"), *header))
    samples = index_split(tmp_path, "wood", "train")
    with pytest.raises(AnobenchError, match=str(image)):
        AnomalyDataset(samples, OUT)
