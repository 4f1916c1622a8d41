"""Speed: naive vs optimised training and inference per method, side by side in one run.

naive     = the frozen backbone runs on every training step (hardware.cache_features=false), fp32.
optimised = anobench's path: backbone features cached once per class where that is valid,
            bf16 autocast, channels_last and TF32 on a GPU (on a CPU: caching only, fp32).

Per-epoch times are the difference between a fit of 1 and of 1+E epochs (so one-off setup such
as feature caching is reported apart). The projection scales the optimised per-epoch time to an
average MVTec AD class (242 training images) and the paper's epochs, for all 15 classes.

    python bench/speed.py                      # CPU: demo sizes, ratios only
    python bench/speed.py --size paper         # GPU: paper sizes
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch.utils.flop_counter import FlopCounterMode

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from publish import publish  # noqa: E402  (bench/publish.py)

from anobench.backbones import create_backbone  # noqa: E402
from anobench.config import CONF_DIR, register_configs  # noqa: E402
from anobench.planning import cell_loader, timed_fit  # noqa: E402
from anobench.runner import RunPlan, plan_run  # noqa: E402

MVTEC_MEAN_TRAIN_IMAGES = 242  # 3629 train/good images over 15 classes
MVTEC_CLASSES = 15
FIXED_EPOCH_METHODS = {"haloae"}  # one epoch = a fixed sample count, whatever the class size
# HaloAE's epoch is 3000 samples; time a fifth of it and scale (its steps are all alike)
SHORTENED_EPOCHS = {"haloae": ("method.samples_per_epoch=600", 3000 / 600)}


def bench_plan(
    method: str,
    size: str,
    mode: str,
    n_train: int,
    tmp: Path,
    on_gpu: bool,
    extra: tuple[str, ...] = (),
) -> RunPlan:
    """A dry-run plan of one synthetic cell: demo or paper size, naive or optimised hardware."""
    overrides = [
        f"method={method}",
        "dataset=synthetic",
        "category=weave",
        "backbone.pretrained=false",
        f"dataset.synthetic.n_train={n_train}",
        "dataset.synthetic.n_test_good=8",
        "dataset.synthetic.n_test_defect=8",
        f"results_dir={tmp / 'results'}",
        f"cache_dir={tmp / 'cache'}",
        "dry_run=true",
    ]
    if size == "demo":
        overrides += ["scale=demo", "dataset.synthetic.image_size=128"]
    else:
        overrides += ["dataset.synthetic.image_size=256"]
    if method in SHORTENED_EPOCHS:
        overrides.append(SHORTENED_EPOCHS[method][0])
    overrides += list(extra)
    if mode == "naive":
        overrides += ["hardware.cache_features=false", "hardware.precision=fp32"]
        overrides += ["hardware.device=cuda" if on_gpu else "hardware.device=cpu"]
    elif on_gpu:
        overrides += ["hardware=gpu"]
    else:
        overrides += ["hardware=cpu"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return plan_run(compose(config_name="config", overrides=overrides))


def measure(plan: RunPlan, epochs: int) -> dict[str, float]:
    """Per-epoch training time, setup time, test throughput and peak memory of one setting."""
    train, test = cell_loader(plan, "train"), cell_loader(plan, "test")
    timed_fit(plan, train, 1)  # warm-up: allocator, cuDNN autotuning, compile
    plan.hardware.reset_peak_memory()
    one, _ = timed_fit(plan, train, 1)
    more, method = timed_fit(plan, train, 1 + epochs)
    per_epoch = max(more - one, 1e-9) / epochs
    images = [batch["image"] for batch in test]
    method.predict(images[0])  # warm-up
    plan.hardware.synchronize()
    start = time.perf_counter()
    for batch in images:
        method.predict(batch)
    plan.hardware.synchronize()
    return {
        "epoch_s": per_epoch,
        "setup_s": max(one - per_epoch, 0.0),
        "test_img_per_s": sum(len(b) for b in images) / (time.perf_counter() - start),
        "peak_gib": (plan.hardware.peak_memory_bytes() or 0) / 2**30,
        "n_train": len(train.dataset),  # type: ignore[arg-type]
    }


def backbone_roofline(plan: RunPlan) -> tuple[float, float, float | None]:
    """(GFLOPs per image, achieved TFLOP/s, fraction of the GPU's bf16 peak) of the backbone."""
    hw = plan.hardware
    size = plan.method_cfg.image_size
    extractor = hw.prepare(create_backbone(plan.backbone_cfg, size))
    batch = hw.to_device(torch.rand(32 if hw.is_cuda else 4, 3, size, size))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        extractor(batch[:1])
    flops = counter.get_total_flops()
    with torch.no_grad(), hw.autocast():
        for _ in range(3):
            extractor(batch)
        hw.synchronize()
        start = time.perf_counter()
        repeats = 10 if hw.is_cuda else 2
        for _ in range(repeats):
            extractor(batch)
        hw.synchronize()
    achieved = flops * len(batch) * repeats / (time.perf_counter() - start)
    peak = hw.peak_flops()
    return flops / 1e9, achieved / 1e12, (achieved / peak if peak else None)


def projected_hours(method: str, result: dict[str, float], paper_epochs: int) -> float:
    scale = 1.0 if method in FIXED_EPOCH_METHODS else MVTEC_MEAN_TRAIN_IMAGES / result["n_train"]
    per_class = result["setup_s"] * scale + result["epoch_s"] * scale * paper_epochs
    return per_class * MVTEC_CLASSES / 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="saae,anovit,haloae,stmae")
    parser.add_argument(
        "--size",
        choices=("demo", "paper"),
        default=None,
        help="demo sizes (default on CPU) or the paper's (default on GPU)",
    )
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per setting")
    parser.add_argument("--n-train", type=int, default=32)
    parser.add_argument("--out", default=None, help="markdown file for the results")
    parser.add_argument("--tmp", default="/tmp/anobench-bench")
    args = parser.parse_args()
    on_gpu = torch.cuda.is_available()
    size = args.size or ("paper" if on_gpu else "demo")
    register_configs()
    tmp = Path(args.tmp)
    rows = []
    device = None
    total_hours = 0.0
    for method in args.methods.split(","):
        naive_plan = bench_plan(method, size, "naive", args.n_train, tmp, on_gpu)
        fast_plan = bench_plan(method, size, "optimised", args.n_train, tmp, on_gpu)
        paper_cfg = bench_plan(method, "paper", "optimised", args.n_train, tmp, on_gpu).method_cfg
        paper_epochs = int(getattr(paper_cfg, "epochs", 1))
        device = fast_plan.hardware.describe()
        naive = measure(naive_plan, args.epochs)
        fast = measure(fast_plan, args.epochs)
        if method in SHORTENED_EPOCHS:
            for result in (naive, fast):
                result["epoch_s"] *= SHORTENED_EPOCHS[method][1]
        gflops, tflops, fraction = backbone_roofline(fast_plan)
        hours = projected_hours(method, fast, paper_epochs)
        total_hours += hours
        row = (
            f"| {method} | {fast_plan.method_cfg.image_size} | {naive['epoch_s']:.3f} | "
            f"{fast['epoch_s']:.3f} | **{naive['epoch_s'] / fast['epoch_s']:.1f}x** | "
            f"{fast['setup_s']:.1f} | {naive['test_img_per_s']:.1f} | "
            f"{fast['test_img_per_s']:.1f} | "
            f"{fast['test_img_per_s'] / naive['test_img_per_s']:.1f}x | {fast['peak_gib']:.2f} | "
            f"{gflops:.1f} | {tflops:.1f} | "
            f"{'-' if fraction is None else f'{100 * fraction:.0f}%'} | {paper_epochs} | "
            f"{hours:.2f} |"
        )
        rows.append(row)
        print(row, flush=True)
    header = [
        f"# Speed: naive vs optimised ({size} sizes)",
        "",
        f"Device: {device}; torch {torch.__version__}; {platform.machine()}, "
        f"{os.cpu_count()} CPU cores; {datetime.date.today()}; "
        f"{args.n_train} synthetic training images, {args.epochs} timed epochs per setting.",
        "",
        "| method | input | naive s/epoch | optimised s/epoch | ratio | setup s | naive test img/s "
        "| optimised test img/s | ratio | peak GiB | backbone GFLOPs/img | backbone TFLOP/s "
        "| of bf16 peak | paper epochs | projected h (15 classes) |",
        "|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    footer = [
        "",
        f"Projected total for the {len(rows)} methods x 15 classes: **{total_hours:.2f} hours "
        f"on this {'GPU' if on_gpu else 'CPU'}** (optimised per-epoch time scaled to a 242-image "
        "class and the paper's epochs; AnoViT at its 200-epoch cap, early stopping usually ends "
        "it sooner)."
        + (
            ""
            if size == "paper"
            else " Demo-size networks and inputs: the ratios are the point, not this total."
        ),
    ]
    text = "\n".join(header + rows + footer) + "\n"
    publish(text, args.out)


if __name__ == "__main__":
    main()
