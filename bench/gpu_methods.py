"""A few epochs of each method at the paper setting on synthetic data, through the real runner.

Records per method: time per epoch (from the record's training time over the epochs run),
peak GPU memory, image/pixel AUROC and PRO. Random backbone weights (no downloads), so the
accuracy columns show that training works, not what the paper reaches with pretrained weights.

    python bench/gpu_methods.py --out bench/results/gpu_methods_h100.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from publish import publish  # noqa: E402  (bench/publish.py)

from anobench.cli import main as anobench  # noqa: E402

# (method, epochs to run, extra overrides): short schedules of the paper configuration
DEFAULT_RUNS = {
    "saae": (5, []),
    "anovit": (5, []),
    "haloae": (1, []),
    "stmae": (5, []),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(DEFAULT_RUNS))
    parser.add_argument("--category", default="weave")
    parser.add_argument("--n-train", type=int, default=64)
    parser.add_argument("--out", default=None)
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="anobench-gpu-"))
    lines = [
        "# Paper-setting smoke runs on synthetic data",
        "",
        f"{datetime.date.today()}; class `{args.category}` of the synthetic data at 256 px, "
        f"{args.n_train} training images, random backbone weights, `hardware=gpu` (bf16).",
        "",
        "| method | epochs run | s/epoch (incl. setup) | train s | peak GiB (train) "
        "| image AUROC | pixel AUROC | PRO | device | exit |",
        "|:--|--:|--:|--:|--:|--:|--:|--:|:--|--:|",
    ]
    for method in args.methods.split(","):
        epochs, extra = DEFAULT_RUNS.get(method, (3, []))
        code = anobench(
            [
                "run",
                f"method={method}",
                "dataset=synthetic",
                "hardware=gpu",
                f"category={args.category}",
                "backbone.pretrained=false",
                "dataset.synthetic.image_size=256",
                f"dataset.synthetic.n_train={args.n_train}",
                f"method.epochs={epochs}",
                f"results_dir={tmp / 'results'}",
                f"cache_dir={tmp / 'cache'}",
                "progress=false",
                *extra,
                *args.extra,
            ]
        )
        # the method's folder is <method>+<variant>: these runs are not the paper setting
        found = (tmp / "results").rglob(f"*/{args.category}/seed0/metrics.json")
        records = [p for p in found if json.loads(p.read_text())["method"] == method]
        if not records:
            lines.append(f"| {method} | - | - | - | - | - | - | - | - | {code} |")
            print(lines[-1], flush=True)
            continue
        record = json.loads(records[0].read_text())
        cost, metrics = record["cost"], record["metrics"]
        ran = record.get("epochs_run") or epochs
        peak = (cost.get("peak_gpu_memory_bytes_train") or 0) / 2**30
        lines.append(
            f"| {method} | {ran} | {cost['train_seconds'] / ran:.2f} | {cost['train_seconds']:.1f} "
            f"| {peak:.2f} | {100 * metrics['image_auroc']:.1f} "
            f"| {100 * metrics['pixel_auroc']:.1f} "
            f"| {100 * (metrics['pro'] or 0):.1f} | {record['device']} | {code} |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    publish(text, args.out)


if __name__ == "__main__":
    main()
