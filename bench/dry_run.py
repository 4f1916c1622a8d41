"""Wall time of `anobench run ... dry_run=true` at the paper setting, per method.

Each dry run is the console command a user types, in its own process (imports, config, data
index, the bounded probes, the estimate), on one class of synthetic data at 256 px with random
backbone weights. The result records the machine's load, since a loaded CPU is slower.

    python bench/dry_run.py [--methods saae,anovit,haloae,stmae] [--device cpu]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from publish import publish  # noqa: E402  (bench/publish.py)

ROOT = Path(__file__).resolve().parent.parent


def dry_run(method: str, device: str, tmp: Path) -> tuple[float, int, str, str]:
    """(wall seconds, exit code, estimate line, basis line) of one dry run."""
    command = [
        str(Path(sys.executable).with_name("anobench")),
        "run",
        f"method={method}",
        "dataset=synthetic",
        "dataset.synthetic.image_size=256",
        "backbone.pretrained=false",
        "category=weave",
        f"hardware.device={device}",
        "dry_run=true",
        f"results_dir={tmp / 'results'}",
        f"cache_dir={tmp / 'cache'}",
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ})
    seconds = time.perf_counter() - start
    text = " ".join(done.stdout.split())
    estimate = re.search(r"estimate: (.+?) per cell", text)
    basis = re.search(r"basis: (.+?)\.(?: |$)", text)
    return (
        seconds,
        done.returncode,
        estimate[1] if estimate else done.stderr.strip()[-200:],
        basis[1] if basis else "",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="saae,anovit,haloae,stmae")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dry_run_cpu.md")
    parser.add_argument("--tmp", type=Path, default=Path("/tmp/anobench-bench-dry-run"))
    args = parser.parse_args()
    rows = []
    for method in args.methods.split(","):
        load = os.getloadavg()[0]
        seconds, code, estimate, basis = dry_run(method, args.device, args.tmp)
        rows.append(f"| {method} | {seconds:.1f} | {code} | {load:.1f} | {estimate} | {basis} |")
        print(rows[-1], flush=True)
    lines = [
        "# Dry runs at the paper setting: how long `dry_run=true` takes",
        "",
        f"- date: {datetime.date.today()}; {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"device `{args.device}`; synthetic class `weave` at 256 px (40 training images), random "
        "backbone weights; each method's paper config (`conf/method/<name>.yaml`)",
        f"- command: `python bench/dry_run.py --methods {args.methods} --device {args.device}`",
        "- wall: the whole console command, from start to exit (Python start-up and imports, "
        "composing and checking the config, indexing the data, the probes, the estimate); "
        "load: the 1-minute load average when it started (this machine is shared: 2 cores)",
        "- the estimate is per cell on this device (a CPU here, where the paper schedules take "
        "days); on a GPU the same command times full-batch steps instead",
        "",
        "| method | wall s | exit | load | estimate per cell | basis |",
        "|:--|--:|--:|--:|:--|:--|",
        *rows,
        "",
    ]
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
