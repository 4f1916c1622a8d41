"""FLOPs of each method's paper schedule, and the GPU-hours they need at a GPU's peak.

Counts, with torch.utils.flop_counter, the matmul/convolution/attention FLOPs of a real fit at the
paper setting (one epoch and two epochs; the difference is one epoch, the rest is one-off setup
such as feature caching), scales them to an average MVTec AD class (242 training images) and the
paper's epochs for 15 classes, and divides by the H100's dense bf16 tensor-core peak (989
TFLOP/s). That quotient is a floor no implementation can beat on one H100; real kernels reach a
fraction of the peak. Runs on a CPU (it executes the ops to count them; a few minutes).

    python bench/flops.py [--methods saae,anovit,haloae,stmae]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from publish import publish  # noqa: E402  (bench/publish.py)
from speed import FIXED_EPOCH_METHODS, MVTEC_CLASSES, MVTEC_MEAN_TRAIN_IMAGES, bench_plan  # noqa: E402

from anobench.config import register_configs  # noqa: E402
from anobench.planning import cell_loader, timed_fit  # noqa: E402
from anobench.runner import RunPlan  # noqa: E402

H100_BF16_PEAK = 989e12  # dense bf16 tensor-core FLOP/s (SXM), as in Hardware.peak_flops
ROOT = Path(__file__).resolve().parent.parent
# HaloAE's epoch is 3000 samples of identical steps: count 2 steps' worth and scale
HALOAE_COUNTED_SAMPLES = 8


def fit_flops(plan: RunPlan, loader: DataLoader, epochs: int) -> int:
    """Matmul/conv/attention FLOPs of fitting a fresh method for `epochs` epochs."""
    counter = FlopCounterMode(display=False)
    with counter:
        timed_fit(plan, loader, epochs)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="saae,anovit,haloae,stmae")
    parser.add_argument("--n-train", type=int, default=8, help="training images counted")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "flops.md")
    parser.add_argument("--tmp", default="/tmp/anobench-bench")
    args = parser.parse_args()
    register_configs()
    torch.manual_seed(0)
    rows, total_flops = [], 0.0
    for method in args.methods.split(","):
        extra = ()
        if method == "haloae":
            extra = (f"method.samples_per_epoch={HALOAE_COUNTED_SAMPLES}",)
        plan = bench_plan(method, "paper", "optimised", args.n_train, Path(args.tmp), False, extra)
        cfg = plan.method_cfg
        loader = cell_loader(plan, "train")
        one, two = fit_flops(plan, loader, 1), fit_flops(plan, loader, 2)
        epoch, setup = two - one, max(2 * one - two, 0)
        if method == "haloae":
            epoch *= 3000 / HALOAE_COUNTED_SAMPLES  # the paper's 3000 samples per epoch
        # setup passes over the training images scale with the class; so do epochs, except
        # HaloAE's fixed-size ones
        setup *= MVTEC_MEAN_TRAIN_IMAGES / args.n_train
        if method not in FIXED_EPOCH_METHODS:
            epoch *= MVTEC_MEAN_TRAIN_IMAGES / args.n_train
        per_class = setup + epoch * cfg.epochs
        flops = per_class * MVTEC_CLASSES
        total_flops += flops
        rows.append(
            f"| {method} | {cfg.image_size} | {epoch / 1e12:.2f} | {setup / 1e12:.2f} "
            f"| {cfg.epochs} | {per_class / 1e15:.1f} | {flops / 1e18:.3f} "
            f"| {flops / H100_BF16_PEAK / 3600:.2f} | {flops / (0.4 * H100_BF16_PEAK) / 3600:.2f} |"
        )
        print(rows[-1], flush=True)
    lines = [
        "# FLOPs of the paper schedules and the GPU-hours they need at the peak",
        "",
        f"- date: {datetime.date.today()}; counted on {platform.machine()} "
        f"({os.cpu_count()} CPU cores), torch {torch.__version__}, random backbone weights "
        "(FLOPs do not depend on them)",
        f"- command: `python bench/flops.py --methods {args.methods} --n-train {args.n_train}`",
        "- FLOPs of matmuls, convolutions and attention (torch.utils.flop_counter), forward and "
        "backward, of a fit at the paper setting; per-epoch and setup FLOPs scaled to a "
        f"{MVTEC_MEAN_TRAIN_IMAGES}-image class (HaloAE: 3000 samples per epoch whatever the "
        "class); AnoViT at its 200-epoch cap (early stopping usually ends it sooner)",
        "",
        "| method | input | TFLOP per epoch | TFLOP setup | paper epochs | PFLOP per class "
        "| EFLOP, 15 classes | h at 100% of H100 bf16 peak | h at 40% |",
        "|:--|--:|--:|--:|--:|--:|--:|--:|--:|",
        *rows,
        "",
        f"All {len(rows)} methods x 15 classes: **{total_flops / 1e18:.2f} EFLOP = "
        f"{total_flops / H100_BF16_PEAK / 3600:.2f} h on one H100 at 100% of its dense bf16 "
        f"peak**, {total_flops / (0.4 * H100_BF16_PEAK) / 3600:.2f} h at 40% (a good "
        "utilisation for convolution-heavy training).",
        "",
    ]
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
