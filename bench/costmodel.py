"""GPU cost model of each method's training step, measured on the CPU (`make bench-model`).

Traces real training steps at the paper setting on the CPU with the dtypes and decisions of
`hardware=gpu` (bench/gpumodel: every aten op's FLOPs, bytes, kernels and host syncs), prices
them on an H100 and an H200 (roofline per op, launch overhead, host syncs; bench/gpumodel/gpu.py)
and writes bench/results/model_<date>.md with:

- calibration: the model against the H100 times measured in bench/results/speed_h100.md, for
  the step as it was measured then (multi-tensor Adam; HaloAE's shifted-sum SSIM) and today's;
- before/after: the step of a base revision (`--before`, default: the merge base with main)
  against the working tree, per method, on H100 and H200, eager and as one CUDA graph;
- HaloAE's top ops before and after, the CPU time of a HaloAE step before and after measured
  side by side, and the projected GPU-hours of the 4 x 15 paper benchmark.

Traces are cached (keyed by the source files) under --cache; a paper-size HaloAE trace takes
5-10 minutes on two CPU cores.

    python bench/costmodel.py [--methods haloae,stmae] [--before REV] [--no-cpu-time]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import tarfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# a worker traces the anobench found under --source (another revision's files) with this tree's
# bench/: that source must come first on sys.path, before anobench is imported
if "--source" in sys.argv:
    sys.path.insert(0, sys.argv[sys.argv.index("--source") + 1])
sys.path.insert(1, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from publish import publish  # noqa: E402  (bench/publish.py)

from bench.gpumodel.gpu import (  # noqa: E402
    GPUS,
    H100_SXM,
    Calibration,
    GPUSpec,
    StepTime,
    kernel_seconds,
    simulate,
)
from bench.gpumodel.trace import OpRecord  # noqa: E402

# bench/results/speed_h100.md (2026-11-23, torch 2.11, hardware=gpu): optimised s/epoch on 32
# synthetic training images (HaloAE: one 3000-sample epoch), and the backbone's TFLOP/s on a
# batch of 32
MEASURED_EPOCH = {"saae": 0.004, "stmae": 0.210, "anovit": 0.117, "haloae": 92.628}
MEASURED_BACKBONE_TFLOPS = {"saae": 262.9, "stmae": 254.3, "anovit": 294.9, "haloae": 82.8}
HALOAE_STEPS_PER_EPOCH = 750
MVTEC_MEAN_TRAIN_IMAGES = 242
MVTEC_CLASSES = 15
SETTINGS = {  # method: (training images, epochs, overrides) of the traced fit
    "saae": (32, 2, ()),
    "stmae": (32, 2, ()),
    "anovit": (32, 2, ()),
    "haloae": (4, 1, ("method.samples_per_epoch=8",)),
}
CPU_TIME_SETTING = (4, 1, ("method.samples_per_epoch=4",))  # HaloAE: one step per epoch


def worker(args: argparse.Namespace) -> None:
    """Trace (or time) one method of the anobench under --source; JSON to --json."""
    import anobench

    source = Path(args.source).resolve()
    if not Path(anobench.__file__).resolve().is_relative_to(source):
        raise SystemExit(f"anobench came from {anobench.__file__}, not from {source}")
    from bench.gpumodel import steps

    tmp = Path(args.tmp)
    torch.manual_seed(0)
    if args.worker == "cputime":
        n, epochs, overrides = CPU_TIME_SETTING
        setting = steps.TraceSetting(n, epochs, overrides)
        result: object = steps.time_cpu_step(args.method, setting, tmp)
    elif args.worker == "backbone":
        result = [r.to_dict() for r in steps.trace_backbone(args.method, tmp)]
    else:
        n, epochs, overrides = SETTINGS[args.method]
        setting = steps.TraceSetting(n, epochs, overrides)
        records = steps.trace_fit(args.method, setting, tmp, as_measured=args.worker == "measured")
        result = [r.to_dict() for r in records]
    Path(args.json).write_text(json.dumps(result))


def _source_key(source: Path, *parts: str) -> str:
    """A hash of everything a trace depends on: the traced anobench and configs, the tracer."""
    digest = hashlib.sha256()
    files = sorted(source.glob("anobench/**/*.py")) + sorted(source.glob("conf/**/*.yaml"))
    bench = ROOT / "bench"
    files += [bench / "gpumodel" / f"{name}.py" for name in ("trace", "autocast", "steps")]
    files += [bench / "speed.py", bench / "ssim.py"]
    for path in files:
        digest.update(path.read_bytes())
    digest.update("|".join([*parts, torch.__version__]).encode())
    return digest.hexdigest()[:16]


def run_worker(
    kind: str, method: str, source: Path, cache: Path, tmp: Path, tag: str = ""
) -> object:
    """A worker's result, from the cache when the same sources were traced before."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{method}-{kind}{tag}-{_source_key(source, kind, method, tag)}.json"
    if not path.is_file():
        command = [sys.executable, __file__, "--worker", kind, "--method", method]
        command += ["--source", str(source), "--json", str(path), "--tmp", str(tmp)]
        print(f"[costmodel] {kind} {method} from {source} ...", file=sys.stderr, flush=True)
        subprocess.run(command, check=True, cwd=ROOT)
    return json.loads(path.read_text())


def checkout(revision: str, into: Path) -> Path:
    """The anobench and conf files of a git revision, extracted under `into`."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", revision],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    target = into / f"src-{commit}"
    if not (target / "anobench").is_dir():
        archive = into / f"{commit}.tar"
        with archive.open("wb") as handle:
            subprocess.run(
                ["git", "-C", str(ROOT), "archive", commit, "anobench", "conf"],
                check=True,
                stdout=handle,
            )
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    return target


def records_of(data: object) -> list[OpRecord]:
    return [OpRecord(**item) for item in data]  # type: ignore[union-attr]


def modelled(records: list[OpRecord], method: str, gpu: GPUSpec, cal: Calibration) -> dict:
    """Steady step, measured-epoch equivalent and per-class epoch of a traced fit."""
    from bench.gpumodel.steps import split_steps

    trace = split_steps(records)
    step = simulate(trace.steady, gpu, cal)
    graphed = None if step.syncs else simulate(trace.steady, gpu, cal, graphed=True)
    if method == "haloae":
        epoch = step.seconds * HALOAE_STEPS_PER_EPOCH
        extra = 0.0
        steps_per_class_epoch = HALOAE_STEPS_PER_EPOCH
    else:
        epoch_ops = trace.epoch(len(trace.epoch_starts) - 1)
        epoch = simulate(epoch_ops, gpu, cal).seconds
        steps_in_epoch = len(trace.steps) - trace.epoch_starts[-1]
        extra = max(epoch - steps_in_epoch * step.seconds, 0.0)
        steps_per_class_epoch = _class_steps(method)
    return {
        "step": step,
        "graphed": graphed,
        "epoch": epoch,
        "class_epoch": extra + steps_per_class_epoch * step.seconds,
        "class_epoch_graphed": (
            None if graphed is None else extra + steps_per_class_epoch * graphed.seconds
        ),
        "trace": trace,
    }


def _class_steps(method: str) -> int:
    """Steps per epoch on an average MVTec AD class (242 training images)."""
    n = MVTEC_MEAN_TRAIN_IMAGES
    if method == "anovit":
        n -= int(0.1 * n)  # the validation part
    return -(-n // {"saae": 32, "stmae": 8, "anovit": 8}[method])


PAPER_EPOCHS = {"saae": 700, "stmae": 400, "anovit": 200, "haloae": 251}


def bound(step: StepTime) -> str:
    if step.syncs and step.seconds > 1.2 * max(step.device_seconds, step.host_seconds):
        return "syncs"
    return "device" if step.device_seconds >= step.host_seconds else "host"


def top_ops(ops: Sequence[OpRecord], gpu: GPUSpec, cal: Calibration, n: int = 10) -> list[str]:
    """The n most expensive op groups (same op, phase and input shapes) of a step."""
    groups: dict[tuple[str, str, str, str], list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    total = 0.0
    for op in ops:
        seconds = kernel_seconds(op, gpu, cal)
        total += seconds
        group = groups[(op.phase, op.name, op.dtype, op.shape)]
        group[0] += 1
        group[1] += seconds
        group[2] += op.flops
        group[3] += op.bytes_read + op.bytes_written
    rows = []
    for (phase, name, dtype, shape), (count, seconds, flops, nbytes) in sorted(
        groups.items(), key=lambda item: -item[1][1]
    )[:n]:
        rows.append(
            f"| {phase} | `{name}` | {dtype} | {shape} | {int(count)} | {1e3 * seconds:.2f} | "
            f"{100 * seconds / total:.1f}% | {flops / 1e9:.1f} | {nbytes / 1e9:.2f} |"
        )
    return rows


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1e3 * seconds:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="saae,anovit,haloae,stmae")
    parser.add_argument("--before", default=None, help="base revision (default: merge base)")
    parser.add_argument("--no-cpu-time", action="store_true", help="skip the CPU step timing")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/anobench-bench/traces"))
    parser.add_argument("--tmp", default="/tmp/anobench-bench")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--method", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--source", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    methods = args.methods.split(",")
    before_rev = (
        args.before
        or subprocess.run(
            ["git", "-C", str(ROOT), "merge-base", "HEAD", "main"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    tmp = Path(args.tmp)
    before_src = checkout(before_rev, tmp)
    cal = Calibration()
    run = lambda kind, method, source: run_worker(kind, method, source, args.cache, tmp)  # noqa: E731
    traces = {
        (m, which): records_of(run(kind, m, src))
        for m in methods
        for which, kind, src in (
            ("measured", "measured", before_src),
            ("before", "trace", before_src),
            ("after", "trace", ROOT),
        )
    }
    backbones = {m: records_of(run("backbone", m, ROOT)) for m in methods}
    cpu_times: dict[str, list[float]] = defaultdict(list)
    if not args.no_cpu_time and "haloae" in methods:
        for repeat in range(2):  # interleaved, so both see the same machine load
            for which, src in (("before", before_src), ("after", ROOT)):
                seconds = run_worker("cputime", "haloae", src, args.cache, tmp, tag=str(repeat))
                cpu_times[which].append(float(seconds))  # type: ignore[arg-type]
    lines = report(methods, traces, backbones, cpu_times, before_rev, cal)
    date = datetime.date.today().isoformat()
    publish("\n".join(lines) + "\n", args.out or ROOT / "bench" / "results" / f"model_{date}.md")


def report(
    methods: list[str],
    traces: dict[tuple[str, str], list[OpRecord]],
    backbones: dict[str, list[OpRecord]],
    cpu_times: dict[str, list[float]],
    before_rev: str,
    cal: Calibration,
) -> list[str]:
    lines = [
        "# GPU cost model of the training steps (measured on a CPU)",
        "",
        f"- date: {datetime.date.today()}; traced on {platform.machine()} "
        f"({os.cpu_count()} CPU cores), torch {torch.__version__}; before = `{before_rev[:9]}`, "
        "after = this tree",
        "- command: `make bench-model` (`python bench/costmodel.py`)",
        "",
    ]
    # calibration
    lines += [
        "## Calibration against the H100 measurements",
        "",
        "| method | unit | measured H100 s | modelled (as measured) s | ratio | modelled today s "
        "| bound | kernels/step | host syncs/step | TFLOP/step | GB/step |",
        "|:--|:--|--:|--:|--:|--:|:--|--:|--:|--:|--:|",
    ]
    for m in methods:
        as_measured = modelled(traces[(m, "measured")], m, H100_SXM, cal)
        today = modelled(traces[(m, "before")], m, H100_SXM, cal)
        step = as_measured["step"]
        unit = "3000-sample epoch" if m == "haloae" else "epoch of 32 images"
        lines.append(
            f"| {m} | {unit} | {MEASURED_EPOCH[m]:.3f} | {as_measured['epoch']:.3f} | "
            f"{as_measured['epoch'] / MEASURED_EPOCH[m]:.2f} | {today['epoch']:.3f} | "
            f"{bound(step)} | {step.kernels} | {step.syncs} | {step.flops / 1e12:.2f} | "
            f"{step.bytes / 1e9:.1f} |"
        )
    lines += [
        "",
        "| backbone of | batch | measured H100 TFLOP/s | modelled TFLOP/s | ratio (time) |",
        "|:--|--:|--:|--:|--:|",
    ]
    for m in methods:
        step = simulate(backbones[m], H100_SXM, cal)
        achieved = step.flops / step.seconds / 1e12
        lines.append(
            f"| {m} | 32 | {MEASURED_BACKBONE_TFLOPS[m]:.1f} | {achieved:.1f} | "
            f"{MEASURED_BACKBONE_TFLOPS[m] / achieved:.2f} |"
        )
    # before / after
    lines += [
        "",
        "## Modelled step before and after",
        "",
        "| method | GPU | before ms | after ms | after, CUDA graph ms | speed-up | bound after |",
        "|:--|:--|--:|--:|--:|--:|:--|",
    ]
    for m in methods:
        for key, gpu in GPUS.items():
            before = modelled(traces[(m, "before")], m, gpu, cal)
            after = modelled(traces[(m, "after")], m, gpu, cal)
            best = after["graphed"].seconds if after["graphed"] else after["step"].seconds
            lines.append(
                f"| {m} | {key.upper()} | {fmt_ms(before['step'].seconds)} | "
                f"{fmt_ms(after['step'].seconds)} | "
                f"{fmt_ms(after['graphed'].seconds if after['graphed'] else None)} | "
                f"{before['step'].seconds / best:.1f}x | {bound(after['step'])} |"
            )
    if "haloae" in methods:
        for which in ("before", "after"):
            trace = modelled(traces[("haloae", which)], "haloae", H100_SXM, cal)["trace"]
            lines += [
                "",
                f"## HaloAE: top 10 op groups {which} (H100, modelled device time per step)",
                "",
                "| phase | op | dtype | inputs | count | ms | share | GFLOP | GB |",
                "|:--|:--|:--|:--|--:|--:|--:|--:|--:|",
                *top_ops(trace.steady, H100_SXM, cal),
            ]
    if cpu_times:
        lines += [
            "",
            "## HaloAE step on this CPU (hardware=cpu, fp32, paper size), before and after",
            "",
            "Seconds per training step (a fit of two one-step epochs minus one of one epoch), "
            "before and after alternately, twice; the best of each:",
            "",
            f"before {min(cpu_times['before']):.1f} s, after {min(cpu_times['after']):.1f} s: "
            f"**{min(cpu_times['before']) / min(cpu_times['after']):.2f}x** "
            f"(all runs: before {', '.join(f'{t:.1f}' for t in cpu_times['before'])}; "
            f"after {', '.join(f'{t:.1f}' for t in cpu_times['after'])})",
        ]
    # projection
    lines += [
        "",
        "## Projected GPU-hours of the paper benchmark (15 classes, 242 training images each)",
        "",
        "| method | epochs | H100 before h | H100 after h | H200 after h |",
        "|:--|--:|--:|--:|--:|",
    ]
    totals = defaultdict(float)
    for m in methods:
        row = []
        for which, gpu in (
            ("before", GPUS["h100"]),
            ("after", GPUS["h100"]),
            ("after", GPUS["h200"]),
        ):
            result = modelled(traces[(m, which)], m, gpu, cal)
            epoch = (
                result["class_epoch_graphed"]
                if which == "after" and result["class_epoch_graphed"]
                else result["class_epoch"]
            )
            hours = epoch * PAPER_EPOCHS[m] * MVTEC_CLASSES / 3600
            totals[(which, gpu.name)] += hours
            row.append(f"{hours:.2f}")
        lines.append(f"| {m} | {PAPER_EPOCHS[m]} | " + " | ".join(row) + " |")
    h100, h200 = H100_SXM.name, GPUS["h200"].name
    lines.append(
        f"| **all** | | **{totals[('before', h100)]:.1f}** | "
        f"**{totals[('after', h100)]:.1f}** | **{totals[('after', h200)]:.1f}** |"
    )
    return lines


if __name__ == "__main__":
    main()
