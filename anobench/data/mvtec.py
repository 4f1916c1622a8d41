"""Index and load datasets laid out like MVTec AD (train/good, test/<defect>, ground_truth)."""

from __future__ import annotations

import difflib
import logging
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anobench.errors import AnobenchError
from anobench.progress import progress as progress_bar

log = logging.getLogger("anobench")
TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
OBJECTS = (
    "bottle",
    "cable",
    "capsule",
    "hazelnut",
    "metal_nut",
    "pill",
    "screw",
    "toothbrush",
    "transistor",
    "zipper",
)
MVTEC_CATEGORIES = TEXTURES + OBJECTS

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
RESIZE_MODES = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
SPLITS = ("train", "test")
GOOD = "good"

# Pillow signals a bad file with any of these, depending on the format plugin and where the
# damage is; TIFF and BMP parsers raise struct/index/key errors on garbled headers.
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    zlib.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
    MemoryError,
    Image.DecompressionBombError,
)
_INT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


@dataclass(frozen=True)
class Sample:
    """One image of a split, its mask (None for good images) and its label."""

    image_path: Path
    mask_path: Path | None
    label: int
    defect: str
    relative_path: str


def is_image_file(path: Path) -> bool:
    # Skip hidden files: macOS copies leave "._000.png" resource forks that are not images.
    return (
        path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")
    )


def _entries(folder: Path) -> list[Path]:
    """The folder's entries; an unreadable folder or a dangling link is an AnobenchError."""
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as err:
        raise AnobenchError(
            f"cannot list folder {folder} ({err.strerror}); make it readable "
            "(e.g. chmod -R u+rX on the dataset) or remove it"
        ) from err
    for entry in entries:
        if entry.is_symlink() and not entry.exists():
            raise AnobenchError(
                f"{entry} is a broken symbolic link (or a link loop); restore its target or "
                "remove the link"
            )
    return entries


def _images_in(folder: Path, extensions: set[str] | None = None) -> list[Path]:
    """Image files of a folder by name; with `extensions`, only files with one of those."""
    return [
        p
        for p in _entries(folder)
        if is_image_file(p) and (extensions is None or p.suffix.lower() in extensions)
    ]


def _check_root(root: Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise AnobenchError(
            f"dataset root {root} does not exist; set dataset.root=... to your MVTec AD folder "
            "or use dataset=synthetic for the built-in data"
        )
    return root


def _order(name: str) -> tuple[int, str]:
    rank = MVTEC_CATEGORIES.index(name) if name in MVTEC_CATEGORIES else len(MVTEC_CATEGORIES)
    return rank, name


def list_categories(root: Path) -> list[str]:
    """Return the class folders under root that have train/good, MVTec order first."""
    root = _check_root(root)
    found = [p.name for p in root.iterdir() if (p / "train" / GOOD).is_dir()]
    return sorted(found, key=_order)


def _check_category(root: Path, category: str) -> Path:
    folder = root / category
    if folder.is_dir():
        return folder
    valid = list_categories(root)
    if not valid:
        raise AnobenchError(
            f"category folder {folder} does not exist and {root} has no class folders with "
            "train/good; point dataset.root at the folder that holds the MVTec class folders"
        )
    close = difflib.get_close_matches(category, valid, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise AnobenchError(
        f"category folder {folder} does not exist; {hint}valid categories: {', '.join(valid)}"
    )


def _masks_by_stem(gt_folder: Path) -> dict[str, Path]:
    """Map image stem to mask file for one ground_truth/<defect> folder; .png wins a tie."""
    if not gt_folder.is_dir():
        return {}
    masks: dict[str, Path] = {}
    candidates = (p for p in _entries(gt_folder) if is_image_file(p) and p.stem.endswith("_mask"))
    for path in sorted(candidates, key=lambda p: (p.suffix != ".png", p.name)):
        masks.setdefault(path.stem.removesuffix("_mask"), path)
    return masks


def index_split(root: Path, category: str, split: str) -> list[Sample]:
    """List a category's train or test samples, sorted by defect folder and file name."""
    root = _check_root(root)
    if split not in SPLITS:
        raise AnobenchError(f"split '{split}' is not valid; use one of: {', '.join(SPLITS)}")
    folder = _check_category(root, category)
    if split == "train":
        good = folder / "train" / GOOD
        paths = _images_in(good) if good.is_dir() else []
        if not paths:
            raise AnobenchError(
                f"{good} is missing or holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                "put the defect-free training images there"
            )
        return [Sample(p, None, 0, GOOD, p.relative_to(folder).as_posix()) for p in paths]

    test = folder / "test"
    if not test.is_dir():
        raise AnobenchError(
            f"test folder {test} does not exist; it must hold good/ and one folder per defect type"
        )
    samples = []
    # images of the split have the training images' format: other files (e.g. TIFF anomaly maps
    # exported into the dataset) are not test images
    train_good = folder / "train" / GOOD
    formats = {p.suffix.lower() for p in _images_in(train_good)} if train_good.is_dir() else None
    defect_dirs = (p for p in _entries(test) if p.is_dir() and not p.name.startswith("."))
    for defect_dir in defect_dirs:
        defect = defect_dir.name
        gt_folder = folder / "ground_truth" / defect
        masks = _masks_by_stem(gt_folder) if defect != GOOD else {}
        for path in _images_in(defect_dir, formats or None):
            relative = path.relative_to(folder).as_posix()
            if defect == GOOD:
                samples.append(Sample(path, None, 0, GOOD, relative))
                continue
            mask = masks.get(path.stem)
            if mask is None:
                raise AnobenchError(
                    f"mask {gt_folder / (path.stem + '_mask.png')} for defect image {path} "
                    "does not exist; add the mask or remove the image"
                )
            samples.append(Sample(path, mask, 1, defect, relative))
    if not samples:
        raise AnobenchError(
            f"test folder {test} holds no images in subfolders; expected test/good and "
            "test/<defect> folders of images"
        )
    if not any(s.label == 0 for s in samples):
        raise AnobenchError(
            f"{test / GOOD} is missing or holds no images: image AUROC is undefined without "
            "defect-free test images; add them there"
        )
    if not any(s.label == 1 for s in samples):
        raise AnobenchError(
            f"{test} has no defect folder with images (only {GOOD}/): the metrics are undefined "
            "without defective test images; add test/<defect>/ images and their masks"
        )
    return samples


def _to_8bit(image: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer greyscale to 8 bits instead of Pillow's clipping at 255."""
    if image.mode not in _INT_MODES:
        return image
    values = np.asarray(image).astype(np.int64)
    return Image.fromarray(((np.clip(values, 0, 65535) + 128) // 257).astype(np.uint8))


def _to_rgb(image: Image.Image) -> Image.Image:
    image = _to_8bit(image)
    # Alpha is dropped, not composited: colour channels are kept as stored, like cv2.imread.
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def decode_image(path: Path, mode: str) -> Image.Image:
    """Open, fully decode and convert one image file; raise AnobenchError if it is bad."""
    try:
        with Image.open(path) as opened:
            opened.load()
            image = _to_rgb(opened) if mode == "RGB" else _to_8bit(opened).convert("L")
            image.load()
    except _DECODE_ERRORS as error:
        raise AnobenchError(
            f"cannot read image {path} ({type(error).__name__}: {error}); "
            "replace or delete the corrupt file"
        ) from error
    if image.width < 1 or image.height < 1:
        raise AnobenchError(f"image {path} has size {image.size}; replace or delete the file")
    return image


class AnomalyDataset(torch.utils.data.Dataset):
    """Samples decoded once into memory; items are dicts of image, mask, label, defect, path.

    RGBA, LA and transparent palette images lose their alpha channel (not composited); 16-bit
    greyscale is scaled to 8 bits. Masks are binarised at 128 (masks valued 0/1: at 1) and
    resized with NEAREST; unusual masks are reported in one warning line per kind.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int,
        resize: str = "bilinear",
        progress: bool = False,
    ) -> None:
        if resize not in RESIZE_MODES:
            raise AnobenchError(
                f"resize mode '{resize}' is not valid; use one of: {', '.join(RESIZE_MODES)}"
            )
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise AnobenchError(f"image_size {image_size!r} is not valid; use a positive integer")
        self.samples = tuple(samples)
        self.image_size = image_size
        size = (image_size, image_size)
        self.images = torch.empty(len(self.samples), 3, *size, dtype=torch.uint8)  # [N, 3, S, S]
        self.masks = torch.zeros(len(self.samples), *size, dtype=torch.bool)  # [N, S, S]
        self.labels = torch.tensor([s.label for s in self.samples], dtype=torch.long)  # [N]
        unusual: dict[str, list[Path]] = {"soft": [], "zero_one": []}
        for i, sample in enumerate(
            progress_bar(self.samples, desc="decode", enabled=progress, unit="image")
        ):
            image = decode_image(sample.image_path, "RGB")
            original_size = image.size
            try:
                image = image.resize(size, RESIZE_MODES[resize])
            except _DECODE_ERRORS as error:
                raise AnobenchError(
                    f"cannot resize image {sample.image_path} of size {original_size}; "
                    "replace or delete the file"
                ) from error
            self.images[i] = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
            if sample.mask_path is None:
                continue
            mask = decode_image(sample.mask_path, "L")
            if mask.size != original_size:
                raise AnobenchError(
                    f"mask {sample.mask_path} has size {mask.size} but image "
                    f"{sample.image_path} has size {original_size}; masks must match their image"
                )
            values = np.asarray(mask)
            if values.max(initial=0) == 1:  # a 0/1 mask: 1 marks the defect
                unusual["zero_one"].append(sample.mask_path)
                values = values * np.uint8(255)
            elif ((values != 0) & (values != 255)).any():
                unusual["soft"].append(sample.mask_path)
            binary = Image.fromarray(((values > 127) * 255).astype(np.uint8))
            binary = binary.resize(size, Image.Resampling.NEAREST)
            self.masks[i] = torch.from_numpy(np.asarray(binary) > 127)
        self._report_masks(unusual["soft"], unusual["zero_one"])

    def _report_masks(self, soft: list[Path], zero_one: list[Path]) -> None:
        """One warning line per kind of unusual mask, naming the class and the consequence."""
        defects = [i for i, s in enumerate(self.samples) if s.mask_path is not None]
        if not defects:
            return
        category = self.samples[defects[0]].image_path.parents[2].name
        if zero_one:
            log.warning(
                "%s: %d mask(s) hold only the values 0 and 1 (e.g. %s); read as 0/255, 1 = defect",
                category,
                len(zero_one),
                zero_one[0],
            )
        if soft:
            log.warning(
                "%s: %d mask(s) have values other than 0 and 255 (e.g. %s); thresholded at 128 "
                "(>= 128 = defect)",
                category,
                len(soft),
                soft[0],
            )
        if not self.masks[defects].any():
            log.warning(
                "%s: all %d defect masks are empty (all zero, e.g. %s); the pixel metrics "
                "(pixel AUROC, PRO, pixel AP, pixel F1) are undefined and recorded as null",
                category,
                len(defects),
                self.samples[defects[0]].mask_path,
            )

    def __len__(self) -> int:
        """Return the number of samples."""
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int | str]:
        """Return image [3, S, S] and mask [S, S] as float32, plus label, defect and path."""
        sample = self.samples[index]
        return {
            "image": self.images[index].float().div_(255.0),
            "mask": self.masks[index].float(),
            "label": int(sample.label),
            "defect": sample.defect,
            "path": sample.relative_path,
        }
