"""Check bench/gpumodel/fusion.py against Inductor itself on a small HaloAE step (CPU).

Compiles the forward and backward of a small HaloAE network (its halo attention, BatchNorm,
transposed and reflection-padded convolutions, nearest upsampling, a loss with SSIM) with
Inductor on this CPU, reads the scheduler's nodes after fusion (generated kernels and extern
kernels, with the bytes each reads and writes) and sets them beside what `fuse` predicts from
an eager trace of the same computation. Compiling takes minutes on two cores, so this is a
bench check, not a test:

    python bench/gpumodel/inductor_check.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from anobench.methods.haloae import HaloAEConfig, HaloAENet, ssim  # noqa: E402
from bench.gpumodel.fusion import BufferTracer, fuse  # noqa: E402

SMALL = HaloAEConfig(
    image_size=64,
    stem_channels=16,
    encoder_channels=[16, 8],
    encoder_heads=[2, 2],
    encoder_kernels=[3, 3],
    decoder_widths=[8, 16, 40],
    decoder_channels=[8, 16, 40],
    decoder_heads=[2, 2, 2],
    decoder_kernels=[3, 3, 1],
    image_decoder_channels=[16, 8, 3],
)
FEATURES = (2, 40, 16, 16)


def _step(net: HaloAENet, features: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    logits, rec_features, rec_images = net(features)
    feat = (rec_features - features).square().mean() + 1 - ssim(features, rec_features)
    img = (rec_images - images).square().mean() + 1 - ssim(rec_images, images)
    return logits.square().mean() + feat + img


def _inputs() -> tuple[HaloAENet, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = HaloAENet(SMALL, FEATURES[1])
    size = SMALL.image_size
    return net, torch.randn(FEATURES), torch.rand(FEATURES[0], 3, size, size)


def predicted() -> dict[str, float]:
    """Generated kernels and their bytes as fusion.py predicts them from an eager trace."""
    net, features, images = _inputs()
    tracer = BufferTracer()
    with tracer:
        _step(net, features, images).backward()
    fused = fuse(tracer.records, tracer.reads, tracer.writes)
    generated = [r for r in fused if r.kind == "memory"]
    extern = [r for r in fused if r.kind in ("conv", "gemm", "attention")]
    eager = [r for r in tracer.records if r.kind == "memory" and r.kernels]
    return {
        "eager_kernels": len(eager),
        "eager_bytes": sum(r.bytes_read + r.bytes_written for r in eager),
        "generated_kernels": len(generated),
        "generated_bytes": sum(r.bytes_read + r.bytes_written for r in generated),
        "extern_kernels": len(extern),
    }


def inductor() -> dict[str, float]:
    """Inductor's scheduler after fusion: generated and extern nodes and their bytes."""
    from torch._inductor import metrics
    from torch._inductor.scheduler import ExternKernelSchedulerNode, NopKernelSchedulerNode

    torch._logging.set_logs(inductor_metrics=True)  # makes Inductor keep its scheduler nodes
    torch._inductor.config.fallback_random = True
    torch._inductor.config.fx_graph_cache = False  # a cached graph reports no scheduler nodes
    torch._functorch.config.enable_autograd_cache = False
    metrics.reset()
    net, features, images = _inputs()
    start = time.perf_counter()
    compiled = torch.compile(lambda f, i: _step(net, f, i), dynamic=False)
    compiled(features, images).backward()
    seconds = time.perf_counter() - start
    generated = extern = reductions = 0
    generated_bytes = 0.0
    extern_names: Counter[str] = Counter()
    for node, _ in metrics.nodes_num_elem:
        if isinstance(node, NopKernelSchedulerNode):
            continue
        if isinstance(node, ExternKernelSchedulerNode):
            extern += 1
            kernel = getattr(node.node, "python_kernel_name", None) or type(node.node).__name__
            extern_names[str(kernel)] += 1
        else:
            generated += 1
            reductions += bool(node.is_reduction())
            generated_bytes += node.get_read_write_buffers_sizes()
    return {
        "generated_kernels": generated,
        "generated_bytes": generated_bytes,
        "extern_kernels": extern,
        "extern_by_name": dict(extern_names.most_common()),
        "generated_reductions": reductions,
        "codegen_kernels": metrics.generated_kernel_count,
        "compile_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = {"model": predicted(), "inductor": inductor(), "torch": torch.__version__}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
