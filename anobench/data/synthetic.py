"""Deterministic synthetic dataset in the MVTec AD layout, for tests and demos without downloads."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from anobench.errors import AnobenchError
from anobench.progress import progress as progress_bar
from anobench.results import folder_mode

SYNTHETIC_TEXTURES = ("weave", "marble")
SYNTHETIC_OBJECTS = ("washer", "chip")
SYNTHETIC_CATEGORIES = SYNTHETIC_TEXTURES + SYNTHETIC_OBJECTS
DEFECTS: dict[str, tuple[str, ...]] = {
    "weave": ("color", "hole", "scratch", "stain"),
    "marble": ("hole", "scratch", "stain"),
    "washer": ("hole", "missing", "scratch"),
    "chip": ("color", "missing", "scratch", "stain"),
}
# Saved as 8-bit greyscale PNG, like MVTec's grid, screw and zipper.
GRAYSCALE = ("washer",)
# Part of the cache key: bump whenever the rendered images change.
GENERATOR_VERSION = 1
MIN_IMAGE_SIZE = 16


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate: image size, images per split, seed and categories."""

    image_size: int = 128
    n_train: int = 40
    n_test_good: int = 10
    n_test_defect: int = 20
    seed: int = 0
    categories: tuple[str, ...] = SYNTHETIC_CATEGORIES


@dataclass
class _Layers:
    background: np.ndarray  # [S, S, 3] float, noise-free
    foreground: np.ndarray  # [S, S, 3] float, noise-free
    alpha: np.ndarray  # [S, S] object coverage in [0, 1]; ones for textures
    noise: np.ndarray  # [S, S, 3] sensor noise added last

    def compose(self, alpha: np.ndarray | None = None) -> np.ndarray:
        a = (self.alpha if alpha is None else alpha)[..., None]
        return self.background * (1 - a) + self.foreground * a


def _check_spec(spec: SyntheticSpec) -> None:
    unknown = [c for c in spec.categories if c not in SYNTHETIC_CATEGORIES]
    if unknown or not spec.categories or len(set(spec.categories)) != len(spec.categories):
        raise AnobenchError(
            f"synthetic categories {spec.categories} are not valid; use distinct names from: "
            f"{', '.join(SYNTHETIC_CATEGORIES)}"
        )
    if spec.image_size < MIN_IMAGE_SIZE:
        raise AnobenchError(
            f"synthetic image_size {spec.image_size} is too small; use {MIN_IMAGE_SIZE} or more"
        )
    if spec.seed < 0:
        raise AnobenchError(f"synthetic seed {spec.seed} is not valid; use a seed >= 0")
    for name in ("n_train", "n_test_good", "n_test_defect"):
        if getattr(spec, name) < 1:
            raise AnobenchError(f"synthetic {name}={getattr(spec, name)} is not valid; use >= 1")


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) in [0, 1]."""
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size
    return np.meshgrid(coords, coords, indexing="ij")


def _edge(distance: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased coverage of a shape from a signed distance (positive inside, image units)."""
    return np.clip(0.5 + distance * size, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field = gaussian_filter(rng.standard_normal((size, size)), sigma=sigma * size, mode="wrap")
    return field / (field.std() + 1e-12)


def _lighting(rng: np.random.Generator, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    gain = 1.0 + rng.uniform(-0.06, 0.06)
    gx, gy = rng.uniform(-0.12, 0.12, size=2)
    return (gain + gx * (x - 0.5) + gy * (y - 0.5))[..., None]


def _rotate(
    y: np.ndarray, x: np.ndarray, cy: float, cx: float, angle: float
) -> tuple[np.ndarray, np.ndarray]:
    cos, sin = np.cos(angle), np.sin(angle)
    dy, dx = y - cy, x - cx
    return cos * dy - sin * dx, sin * dy + cos * dx


def _noise(rng: np.random.Generator, size: int, gray: bool, sigma: float = 0.015) -> np.ndarray:
    return rng.normal(0.0, sigma, size=(size, size, 1 if gray else 3)) * np.ones((1, 1, 3))


def _weave(rng: np.random.Generator, size: int) -> _Layers:
    y, x = _grid(size)
    # Fewer, larger threads on small images, so the weave is not lost to aliasing.
    periods = min(8.0, max(3.0, size / 16)) * rng.uniform(0.96, 1.04)
    v, u = _rotate(y, x, 0.5, 0.5, np.deg2rad(rng.uniform(-3, 3)))
    u = u * periods + rng.uniform(0, 1)
    v = v * periods + rng.uniform(0, 1)
    fu, fv = u - np.floor(u), v - np.floor(v)
    row_gain = rng.uniform(0.95, 1.05, size=64)[np.floor(v).astype(int) % 64]
    col_gain = rng.uniform(0.95, 1.05, size=64)[np.floor(u).astype(int) % 64]
    over = (np.floor(u) + np.floor(v)) % 2 == 0
    across = np.where(over, np.sin(np.pi * fv), np.sin(np.pi * fu)) ** 0.6
    along = 0.75 + 0.25 * np.where(over, np.sin(np.pi * fu), np.sin(np.pi * fv))
    shade = (across * along * np.where(over, row_gain, col_gain))[..., None]
    warp = np.array([0.26, 0.36, 0.62]) * rng.uniform(0.95, 1.05, size=3)
    weft = np.array([0.62, 0.52, 0.34]) * rng.uniform(0.95, 1.05, size=3)
    colour = np.where(over[..., None], warp, weft)
    texture = (0.06 + 0.9 * shade * colour) * _lighting(rng, y, x)
    return _Layers(texture, texture, np.ones((size, size)), _noise(rng, size, gray=False))


def _marble(rng: np.random.Generator, size: int) -> _Layers:
    y, x = _grid(size)
    turbulence = _smooth_noise(rng, size, 1 / 14) + 0.5 * _smooth_noise(rng, size, 1 / 40)
    angle = np.deg2rad(30 + rng.uniform(-12, 12))
    phase = rng.uniform(0, 2 * np.pi)
    waves = np.sin(2 * np.pi * 3 * (x * np.cos(angle) + y * np.sin(angle)) + phase + turbulence)
    veins = (np.abs(waves) ** 0.35)[..., None]
    stone = np.array([0.86, 0.82, 0.75]) * rng.uniform(0.96, 1.04, size=3)
    vein = np.array([0.45, 0.41, 0.40])
    grain = 0.02 * _smooth_noise(rng, size, 1 / 90)[..., None]
    texture = (vein + (stone - vein) * veins + grain) * _lighting(rng, y, x)
    return _Layers(texture, texture, np.ones((size, size)), _noise(rng, size, gray=False))


def _washer(rng: np.random.Generator, size: int) -> _Layers:
    y, x = _grid(size)
    cy, cx = 0.5 + rng.uniform(-0.04, 0.04, size=2)
    outer, inner = 0.32 * rng.uniform(0.98, 1.02), 0.15 * rng.uniform(0.97, 1.03)
    along, across = _rotate(y, x, cy, cx, np.deg2rad(rng.uniform(-12, 12)))
    radius = np.hypot(along, across)
    ring = _edge(outer - radius, size) * _edge(radius - inner, size)
    tab = _edge(np.minimum(outer + 0.07 - along, 0.05 - np.abs(across)), size)
    alpha = np.maximum(ring, tab * _edge(along - inner, size))
    light = _lighting(rng, y, x)
    relative = (radius - inner) / (outer - inner)
    metal = 0.6 + 0.16 * np.cos(np.pi * relative) + 0.03 * np.sin(2 * np.pi * radius * size / 3)
    metal = metal + 0.08 * (across / outer)
    foreground = np.repeat(metal[..., None], 3, axis=2) * light
    background = np.full((size, size, 3), 0.2) * light
    return _Layers(background, foreground, alpha, _noise(rng, size, gray=True))


def _chip(rng: np.random.Generator, size: int) -> _Layers:
    y, x = _grid(size)
    cy, cx = 0.5 + rng.uniform(-0.04, 0.04, size=2)
    v, u = _rotate(y, x, cy, cx, np.deg2rad(rng.uniform(-6, 6)))
    half_u, half_v = 0.24, 0.16
    body = _edge(np.minimum(half_u - np.abs(u), half_v - np.abs(v)), size)
    pins = np.zeros_like(body)
    for centre in np.linspace(-half_u + 0.035, half_u - 0.035, 6):
        pin = np.minimum(0.016 - np.abs(u - centre), half_v + 0.07 - np.abs(v))
        pins = np.maximum(pins, _edge(pin, size))
    marker = _edge(0.022 - np.hypot(u + half_u - 0.06, v + half_v - 0.055), size)[..., None]
    light = _lighting(rng, y, x)
    body_colour = np.array([0.2, 0.2, 0.23]) + 0.05 * (u[..., None] / half_u)
    colour = np.where(body[..., None] > 0, body_colour, np.array([0.78, 0.77, 0.72]))
    colour = colour * (1 - marker) + np.array([0.55, 0.55, 0.55]) * marker
    pcb = np.array([0.13, 0.42, 0.22]) * rng.uniform(0.95, 1.05, size=3)
    background = (pcb + 0.015 * _smooth_noise(rng, size, 1 / 60)[..., None]) * light
    alpha = np.clip(body + pins, 0.0, 1.0)
    return _Layers(background, colour * light, alpha, _noise(rng, size, gray=False))


_RENDERERS = {"weave": _weave, "marble": _marble, "washer": _washer, "chip": _chip}


def _blob(rng: np.random.Generator, size: int, centre: np.ndarray, radius: float) -> np.ndarray:
    """Normalised radius of an irregular blob: < 1 inside."""
    y, x = _grid(size)
    dy, dx = y - centre[0], x - centre[1]
    theta = np.arctan2(dy, dx)
    wobble = np.ones_like(theta)
    for k in (2, 3, 4):
        wobble += rng.uniform(0, 0.25) / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    # Relatively larger defects on small images, so they span more than a pixel or two.
    radius = max(radius * max(1.0, (128 / size) ** 0.5), 2.0 / size)
    return np.hypot(dy, dx) / (radius * wobble)


def _site(rng: np.random.Generator, layers: _Layers) -> np.ndarray:
    """A defect centre (y, x): inside the object, or anywhere away from the border for textures."""
    size = layers.alpha.shape[0]
    margin = int(0.2 * size)
    solid = layers.alpha[margin:-margin, margin:-margin] > 0.95
    rows, cols = np.nonzero(solid)
    pick = rng.integers(len(rows))
    return (np.array([rows[pick], cols[pick]]) + margin + 0.5) / size


def _scratch(rng: np.random.Generator, size: int, centre: np.ndarray) -> np.ndarray:
    """Pixels of a thin, slightly bent line near centre."""
    y, x = _grid(size)
    length, angle = rng.uniform(0.2, 0.35), rng.uniform(0, np.pi)
    direction = np.array([np.sin(angle), np.cos(angle)])
    bend = rng.uniform(-0.08, 0.08) * np.array([direction[1], -direction[0]])
    t = np.linspace(0, 1, 17)[:, None]
    start, end = centre - direction * length / 2, centre + direction * length / 2
    points = (1 - t) ** 2 * start + 2 * t * (1 - t) * (centre + bend) + t**2 * end
    distance = np.full((size, size), np.inf)
    for a, b in zip(points[:-1], points[1:], strict=True):
        ab = b - a
        s = np.clip(((y - a[0]) * ab[0] + (x - a[1]) * ab[1]) / (ab @ ab), 0, 1)
        distance = np.minimum(distance, np.hypot(y - a[0] - s * ab[0], x - a[1] - s * ab[1]))
    return distance * size <= max(0.75, size / 160)


def _recolour(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """Rotate hue in YIQ space and push chroma, so grey pixels change colour too."""
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    yiq = rgb @ to_yiq.T
    angle = rng.uniform(np.pi / 2, 3 * np.pi / 2)
    cos, sin = np.cos(angle), np.sin(angle)
    i, q = yiq[..., 1], yiq[..., 2]
    push = 0.1 * np.array([np.cos(angle + 1.0), np.sin(angle + 1.0)])
    yiq = np.stack([yiq[..., 0], cos * i - sin * q + push[0], sin * i + cos * q + push[1]], -1)
    return yiq @ np.linalg.inv(to_yiq).T


def _apply_defect(kind: str, layers: _Layers, rng: np.random.Generator, gray: bool) -> np.ndarray:
    """Return the noise-free image with one defect of the given kind."""
    size = layers.alpha.shape[0]
    base = layers.compose()
    centre = _site(rng, layers)
    on_object = layers.alpha > 0.5
    if kind == "scratch":
        region = _scratch(rng, size, centre) & on_object
        if not region.any():
            return base
        # Scratches show against the surface: bright on dark parts, dark on bright ones.
        target = 0.08 if base[region].mean() > 0.5 else 0.92
        return np.where(region[..., None], base + rng.uniform(0.4, 0.7) * (target - base), base)
    if kind == "hole":
        d = _blob(rng, size, centre, rng.uniform(0.035, 0.06))
        darken = (0.15 + 0.2 * np.clip(d, 0, 1))[..., None]
        return np.where(((d < 1) & on_object)[..., None], base * darken + 0.02, base)
    if kind == "stain":
        d = _blob(rng, size, centre, rng.uniform(0.06, 0.11))
        strength = rng.uniform(0.3, 0.65) * (0.4 + 0.6 * np.clip(1 - d, 0, 1) ** 0.7)
        region = (d < 1) & on_object
        palette = np.array(
            [[0.42, 0.25, 0.08], [0.12, 0.1, 0.1], [0.6, 0.55, 0.12], [0.3, 0.1, 0.3]]
        )
        palette = palette.mean(axis=1, keepdims=True) * np.ones(3) if gray else palette
        # The palette colour least like the surface, so a stain is never invisible by chance.
        colour = palette[np.abs(palette - base[region].mean(axis=0)).sum(axis=1).argmax()]
        stained = base + strength[..., None] * (colour - base)
        return np.where(region[..., None], stained, base)
    if kind == "color":
        d = _blob(rng, size, centre, rng.uniform(0.07, 0.12))
        return np.where(((d < 1) & on_object)[..., None], _recolour(rng, base), base)
    if kind == "missing":
        d = _blob(rng, size, centre, rng.uniform(0.08, 0.12))
        return layers.compose(np.where(d < 1, 0.0, layers.alpha))
    raise AnobenchError(f"defect kind '{kind}' is not valid; use one of: {', '.join(DEFECTS)}")


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def _render(
    category: str, size: int, rng: np.random.Generator, defect: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (clean, image, mask): uint8 [S, S, 3] twice and the bool [S, S] changed pixels."""
    layers = _RENDERERS[category](rng, size)
    clean = _to_uint8(layers.compose() + layers.noise)
    if defect is None:
        return clean, clean, np.zeros((size, size), dtype=bool)
    gray = category in GRAYSCALE
    for _ in range(20):
        image = _to_uint8(_apply_defect(defect, layers, rng, gray) + layers.noise)
        mask = (image != clean).any(axis=2)
        if mask.sum() >= 4:
            return clean, image, mask
    raise AnobenchError(f"could not place a visible {defect} on {category}; try another seed")


def _rng(seed: int, category: str, folder: str, index: int) -> np.random.Generator:
    keys = [zlib.crc32(category.encode()), zlib.crc32(folder.encode()), index]
    return np.random.default_rng([seed, *keys])


def _write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")


def _jobs(spec: SyntheticSpec) -> list[tuple[str, str, str, int]]:
    """(category, split, defect, index) for every image, in writing order."""
    jobs = []
    for category in spec.categories:
        jobs += [(category, "train", "good", i) for i in range(spec.n_train)]
        jobs += [(category, "test", "good", i) for i in range(spec.n_test_good)]
        kinds = DEFECTS[category]
        jobs += [
            (category, "test", kinds[j % len(kinds)], j // len(kinds))
            for j in range(spec.n_test_defect)
        ]
    return jobs


def generate(out: Path, spec: SyntheticSpec, progress: bool = False) -> Path:
    """Write the synthetic dataset under out/<category>/ in the MVTec AD layout; return out."""
    _check_spec(spec)
    out = Path(out)
    for category in spec.categories:
        folder = out / category
        if folder.exists() and any(folder.iterdir()):
            raise AnobenchError(
                f"synthetic output folder {folder} is not empty; remove it or choose another out"
            )
    width = max(3, len(str(max(spec.n_train, spec.n_test_good, spec.n_test_defect))))
    for category, split, defect, index in progress_bar(
        _jobs(spec), desc="synthetic", enabled=progress, unit="image"
    ):
        rng = _rng(spec.seed, category, f"{split}/{defect}", index)
        kind = None if defect == "good" else defect
        _, image, mask = _render(category, spec.image_size, rng, kind)
        stem = f"{index:0{width}d}"
        folder = out / category
        _write_png(
            folder / split / defect / f"{stem}.png",
            image[..., 0] if category in GRAYSCALE else image,
        )
        if kind is not None:
            _write_png(
                folder / "ground_truth" / defect / f"{stem}_mask.png",
                mask.astype(np.uint8) * 255,
            )
    return out


def spec_key(spec: SyntheticSpec) -> str:
    """Short hash naming a spec's cache folder."""
    payload = json.dumps({"version": GENERATOR_VERSION, **asdict(spec)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def ensure_synthetic(cache_root: Path, spec: SyntheticSpec) -> Path:
    """Return cache_root/<spec hash>, generating it once, atomically, if it is not there."""
    _check_spec(spec)
    cache_root = Path(cache_root)
    final = cache_root / spec_key(spec)
    marker = final / "spec.json"
    if marker.is_file():
        return final
    if final.exists():
        raise AnobenchError(
            f"synthetic cache folder {final} exists without spec.json (an old or foreign "
            "folder); delete it so it can be regenerated"
        )
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=cache_root))
    try:
        staging.chmod(folder_mode())  # mkdtemp makes it private; the cache is meant to be shared
        generate(staging, spec)
        payload = {"version": GENERATOR_VERSION, **asdict(spec)}
        (staging / "spec.json").write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        try:
            staging.rename(final)
        except OSError:
            # Another process renamed its copy first; its files are identical, keep those.
            if not marker.is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final
