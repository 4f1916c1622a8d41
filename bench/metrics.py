"""Benchmark: fast metrics against the brute-force definitions on the same synthetic maps.

Run as `python bench/metrics.py [--n 100 --size 256]`; writes bench/results/metrics_cpu.md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from publish import publish  # noqa: E402  (bench/publish.py)
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from anobench import metrics

ROOT = Path(__file__).resolve().parent.parent


def load_reference() -> ModuleType:
    """Import tests/reference_metrics.py by path; the tests folder is not a package."""
    spec = importlib.util.spec_from_file_location(
        "reference_metrics", ROOT / "tests" / "reference_metrics.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_maps(
    n: int, size: int, levels: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed-noise maps [N, S, S] float32 in [0, 1] and blob masks; about 30% defect-free."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    masks = np.zeros((n, size, size), dtype=bool)
    for index in range(n):
        if rng.random() < 0.3:
            continue
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, size, 2)
            ry, rx = rng.uniform(size / 40, size / 8, 2)
            masks[index] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    noise = rng.standard_normal((n, size, size)).astype(np.float32)
    maps = ndimage.gaussian_filter(noise, sigma=(0, size / 64, size / 64))
    maps /= maps.std()
    maps += 1.5 * ndimage.gaussian_filter(masks.astype(np.float32), sigma=(0, 2, 2))
    maps = (maps - maps.min()) / (maps.max() - maps.min())
    if levels is not None:
        # Exact per-threshold reference loops cost one pass per distinct score.
        maps = np.round(maps * (levels - 1)) / (levels - 1)
    return maps.astype(np.float32), masks


def timed(function: Callable[..., Any], *args: Any, repeat: int = 1) -> tuple[Any, float]:
    """Return the function's value and its best wall time over `repeat` runs."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        value = function(*args)
        best = min(best, time.perf_counter() - start)
    return value, best


def peak_bytes(function: Callable[..., Any], *args: Any) -> int:
    """Peak traced allocation (numpy arrays included) while the function runs."""
    tracemalloc.start()
    try:
        function(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="number of maps")
    parser.add_argument("--size", type=int, default=256, help="map height and width")
    parser.add_argument("--levels", type=int, default=20000, help="distinct score levels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fpr-limit", type=float, default=0.3)
    parser.add_argument(
        "--full-class", action="store_true", help="also time fast metrics on 200 x 384 x 384"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "metrics_cpu.md")
    args = parser.parse_args()
    reference = load_reference()

    maps, masks = synthetic_maps(args.n, args.size, args.levels, args.seed)
    n_regions = len(reference.regions(masks))
    limit = args.fpr_limit
    fast_pro, fast_pro_s = timed(metrics.pro, maps, masks, limit, repeat=3)
    ref_pro, ref_pro_s = timed(reference.pro_bincount, maps, masks, limit)
    fast_auc, fast_auc_s = timed(metrics.pixel_auroc, maps, masks, repeat=3)
    sk_auc, sk_auc_s = timed(roc_auc_score, masks.ravel(), maps.ravel())
    scores = maps.max(axis=(1, 2))
    labels = masks.any(axis=(1, 2))
    _, all_s = timed(metrics.compute_metrics, maps, masks, scores, labels, repeat=3)
    pro_peak = peak_bytes(metrics.pro, maps, masks, limit)

    pixels = maps.size
    n_levels = len(np.unique(maps))
    n_distinct_raw = len(np.unique(synthetic_maps(args.n, args.size, None, args.seed)[0]))
    rows = [
        (f"PRO (AUPRO, FPR <= {limit:g})", fast_pro, fast_pro_s, ref_pro, ref_pro_s,
         "brute force: loop over every distinct score"),
        ("pixel AUROC", fast_auc, fast_auc_s, sk_auc, sk_auc_s, "scikit-learn roc_auc_score"),
    ]  # fmt: skip
    lines = [
        "# Metrics benchmark (CPU)",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, numpy {np.__version__}; 1-minute load average "
        f"{os.getloadavg()[0]:.1f} after the timings (other jobs slow both columns)",
        f"- command: `python bench/metrics.py --n {args.n} --size {args.size} "
        f"--levels {args.levels} --seed {args.seed}{' --full-class' if args.full_class else ''}`",
        f"- inputs: {args.n} smoothed-noise maps of {args.size}x{args.size} ({pixels:,} pixels), "
        f"blob masks with {n_regions} 8-connected regions, "
        f"{int((~masks.any(axis=(1, 2))).sum())} images defect-free",
        f"- maps quantised to {n_levels:,} distinct levels (np.round) so that the exact reference, "
        "one pass over all pixels per distinct score, runs in minutes; no thresholds are "
        f"subsampled. Unquantised, the same maps have {n_distinct_raw:,} distinct scores: at "
        f"{1e3 * ref_pro_s / n_levels:.2f} ms per score the reference would take about "
        f"{ref_pro_s / n_levels * n_distinct_raw / 3600:.1f} h, while the fast path does not "
        "depend on the number of distinct scores",
        "",
        "| metric | fast value | fast s | reference value | reference s | speed-up | abs diff |"
        " reference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, fast, fast_s, ref, ref_s, how in rows:
        lines.append(
            f"| {name} | {fast:.9f} | {fast_s:.3f} | {ref:.9f} | {ref_s:.3f} | "
            f"{ref_s / fast_s:.1f}x | {abs(fast - ref):.2e} | {how} |"
        )
    lines += [
        "",
        f"- `compute_metrics` (all {len(metrics.METRIC_IDS)} metrics, one shared pixel sort): "
        f"{all_s:.3f} s",
        f"- peak traced memory of fast `pro`: {pro_peak / 2**20:.0f} MiB "
        f"({pro_peak / pixels:.1f} bytes per pixel, input maps not counted)",
    ]
    if args.full_class:
        full_maps, full_masks = synthetic_maps(200, 384, None, args.seed)
        full_pixels = full_maps.size
        _, full_s = timed(metrics.pro, full_maps, full_masks, limit)
        full_peak = peak_bytes(metrics.pro, full_maps, full_masks, limit)
        lines.append(
            f"- full MVTec class size, 200 x 384 x 384 float32 ({full_pixels:,} pixels, "
            f"{len(np.unique(full_maps)):,} distinct scores, not quantised): fast `pro` "
            f"{full_s:.2f} s, peak traced memory {full_peak / 2**20:.0f} MiB "
            f"({full_peak / full_pixels:.1f} bytes per pixel)"
        )
    text = "\n".join(lines) + "\n"
    publish(text, args.out)


if __name__ == "__main__":
    main()
