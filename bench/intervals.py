"""Benchmark: what the per-cell statistics cost at MVTec AD sizes, and how close the binned pixel
bootstrap stays to the exact metrics of the drawn images.

Run as `python bench/intervals.py [--n 160 --sizes 256 384 --resamples 1000]`; writes
bench/results/intervals_cpu.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import numpy as np
from metrics import synthetic_maps, timed  # noqa: E402  (bench/metrics.py)
from publish import publish  # noqa: E402  (bench/publish.py)
from sklearn.metrics import roc_auc_score

from anobench import metrics
from anobench import statistics as st
from anobench.per_image import write_per_image

ROOT = Path(__file__).resolve().parent.parent
DEFECTS = ("crack", "cut", "hole", "print", "scratch")


def mvtec_like(n: int, size: int, seed: int) -> tuple[np.ndarray, ...]:
    """Maps, masks, image scores and paths of n test images (about 30% good), 5 defect types."""
    maps, masks = synthetic_maps(n, size, None, seed)
    labels = masks.any(axis=(1, 2))
    scores = maps.max(axis=(1, 2)).astype(np.float64)
    paths = [
        f"test/{DEFECTS[i % len(DEFECTS)] if bad else 'good'}/{i:03d}.png"
        for i, bad in enumerate(labels)
    ]
    return maps, masks, scores, labels, paths


def exact_check(
    maps: np.ndarray, masks: np.ndarray, labels: np.ndarray, count: int, fpr_limit: float
) -> tuple[float, float, float, float, float]:
    """Largest |binned - exact| over the first `count` resamples, the bound there, and the
    seconds one exact resample takes (metrics.pixel_auroc + metrics.pro on the drawn images)."""
    indices = st.resample_indices(labels, count, st.BOOTSTRAP_SEED)
    summary = st.summarise_pixels(maps, masks)
    found = st.pixel_bootstrap(summary, st.resample_counts(indices, len(labels)), fpr_limit)
    start = time.perf_counter()
    auroc = np.array([metrics.pixel_auroc(maps[i], masks[i]) for i in indices])
    pro = np.array([metrics.pro(maps[i], masks[i], fpr_limit) for i in indices])
    seconds = (time.perf_counter() - start) / count
    return (
        float(np.abs(found["pixel_auroc"].values - auroc).max()),
        found["pixel_auroc"].binning_error,
        float(np.abs(found["pro"].values - pro).max()),
        found["pro"].binning_error,
        seconds,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=160, help="test images per class")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 384])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--exact", type=int, default=10, help="resamples checked exactly")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "intervals_cpu.md")
    args = parser.parse_args()
    limit = 0.3
    lines = [
        "# Per-cell statistics benchmark (CPU)",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"numpy {np.__version__}; 1-minute load average {os.getloadavg()[0]:.1f} after the "
        "timings (other jobs slow every column)",
        f"- command: `python bench/intervals.py --n {args.n} --sizes "
        f"{' '.join(map(str, args.sizes))} --resamples {args.resamples} --exact {args.exact}`",
        f"- inputs: {args.n} smoothed-noise maps per class with blob masks (bench/metrics.py), "
        f"about 30% of the images defect-free, {len(DEFECTS)} defect types; float32, not "
        f"quantised; {st.N_THRESHOLDS} shared thresholds, {args.resamples} stratified resamples",
        "- columns: `compute_metrics` (every cell computes it anyway; for scale); pixel summary "
        "(per-image counts at the shared thresholds); bootstrap (all resamples of image AUROC/AP, "
        "pixel AUROC, PRO); per defect (`compute_metrics` on the good images plus each type, one "
        "shared sort); total = `statistics.cell_statistics` as the runner calls it",
        "",
        "| maps | pixels | compute_metrics s | pixel summary s | bootstrap s | per defect s "
        "| total s | per_image.npz |",
        "|---|---|---|---|---|---|---|---|",
    ]
    accuracy = []
    for size in args.sizes:
        maps, masks, scores, labels, paths = mvtec_like(args.n, size, args.seed)
        defects = [st.defect_of(p) for p in paths]
        _, metric_s = timed(metrics.compute_metrics, maps, masks, scores, labels)
        summary, summary_s = timed(st.summarise_pixels, maps, masks)
        counts = st.stratified_counts(labels, args.resamples)
        per_image = st.PerImage(paths, labels, scores, summary)
        _, boot_s = timed(st.bootstrap_metrics, per_image, counts, limit)
        _, defect_s = timed(st.metrics_by_defect, maps, masks, scores, labels, defects, limit)
        result, total_s = timed(
            lambda m=maps, k=masks, s=scores, b=labels, p=paths: st.cell_statistics(
                m, k, s, b, p, resamples=args.resamples, pro_fpr_limit=limit
            )
        )
        write_path = args.out.parent / f".per_image_{size}.npz"
        write_per_image(write_path, result.per_image)
        file_bytes = write_path.stat().st_size
        write_path.unlink()
        lines.append(
            f"| {args.n} x {size} x {size} | {maps.size:,} | {metric_s:.2f} | {summary_s:.2f} | "
            f"{boot_s:.2f} | {defect_s:.2f} | {total_s:.2f} | {file_bytes / 2**10:.0f} KiB |"
        )
        if args.exact:
            auroc_gap, auroc_bound, pro_gap, pro_bound, exact_s = exact_check(
                maps, masks, labels, args.exact, limit
            )
            start = time.perf_counter()
            drawn = st.resample_indices(labels, 1, st.BOOTSTRAP_SEED)[0]
            roc_auc_score(masks[drawn].ravel(), maps[drawn].ravel())
            sklearn_s = time.perf_counter() - start
            accuracy.append(
                f"| {size} | {auroc_gap:.1e} | {auroc_bound:.1e} | {pro_gap:.1e} | "
                f"{pro_bound:.1e} | {exact_s:.2f} | {sklearn_s:.2f} | "
                f"{args.resamples * exact_s / 60:.0f} min |"
            )
    if accuracy:
        lines += [
            "",
            f"Binned against exact, on the first {args.exact} resamples (exact: "
            "`metrics.pixel_auroc` and `metrics.pro` on the drawn images; the bound is what "
            "`pixel_bootstrap` guarantees for every resample, the largest shown):",
            "",
            "| size | pixel AUROC: largest gap | bound | PRO: largest gap | bound "
            "| exact s / resample | sklearn pixel AUROC s / resample "
            f"| a loop over {args.resamples} resamples, exact |",
            "|---|---|---|---|---|---|---|---|",
            *accuracy,
        ]
    publish("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
