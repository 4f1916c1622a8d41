"""Check bench/gpumodel/fusion.py against Inductor itself on a small HaloAE step (CPU).

Compiles HaloAE's whole training loss (colour jitter, Cut&Paste, the frozen VGG19, the
network, the losses) and its backward with Inductor on this CPU, as `hardware.compile=true`
does, at a narrow 32 px setting; compares the loss and gradients with eager's, reads the
scheduler's nodes after fusion (generated and extern kernels, the bytes each reads and writes)
and sets them beside what `fuse` predicts from an eager trace of the same computation.
Compiling takes minutes on two cores, so this is a bench check, not a test:

    python bench/gpumodel/inductor_check.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from anobench.backbones import BackboneConfig  # noqa: E402
from anobench.hardware import create_hardware  # noqa: E402
from anobench.methods import cutpaste  # noqa: E402
from anobench.methods.base import MethodContext  # noqa: E402
from anobench.methods.haloae import HaloAE, HaloAEConfig  # noqa: E402
from bench.gpumodel.fusion import PERSISTENT_ROWS, BufferTracer, fuse  # noqa: E402

VGG = BackboneConfig(
    name="vgg19.tv_in1k",
    layers=["features.1", "features.6", "features.11", "features.17"],
    pretrained=False,
    padding_mode="reflect",
)
NARROW = HaloAEConfig(  # paper layers and logic at 32 px, narrow widths (as the tests)
    image_size=32,
    block_size=4,
    stem_channels=16,
    encoder_channels=[16, 8, 8, 8],
    decoder_widths=[8, 8, 16, 16, 32],
    decoder_channels=[8, 8, 16, 16, 704],
    image_decoder_channels=[16, 8, 3, 3],
    encoder_heads=[2, 2, 2, 2],
    decoder_heads=[2, 2, 2, 2, 2],
    dim_head=8,
)
INDEX = torch.tensor([3, 0, 2, 1])
WEIGHTS = [0.5, 0.3, 0.2]


def _method() -> HaloAE:
    torch.manual_seed(0)
    context = MethodContext(hardware=create_hardware("cpu"), backbone=VGG, progress=False)
    method = HaloAE(NARROW, context)
    method.train_images = torch.rand(4, 3, 32, 32)
    return method


def _run(method: HaloAE, loss_fn: object) -> tuple[float, list[torch.Tensor]]:
    torch.manual_seed(3)
    loss = loss_fn(INDEX, torch.tensor(WEIGHTS))  # type: ignore[operator]
    loss.backward()
    grads = [p.grad.clone() for p in method.net.parameters() if p.grad is not None]
    method.net.zero_grad(set_to_none=True)
    return loss.item(), grads


def predicted(persistent_rows: int) -> dict[str, float]:
    """Generated kernels and their bytes as fusion.py predicts them from an eager trace of the
    compiled code path (colour-jitter order on the device)."""
    method = _method()
    tracer = BufferTracer()
    eager_path = cutpaste.order_on_device
    cutpaste.order_on_device = lambda: True
    try:
        with tracer:
            _run(method, method.weighted_loss)
    finally:
        cutpaste.order_on_device = eager_path
    fused = fuse(tracer.records, tracer.reads, tracer.writes, tracer.sizes, persistent_rows)
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


def inductor() -> dict[str, object]:
    """Inductor's scheduler after fusion, and the compiled step's numbers against eager's."""
    from torch._inductor import metrics
    from torch._inductor.scheduler import ExternKernelSchedulerNode, NopKernelSchedulerNode

    torch._logging.set_logs(inductor_metrics=True)  # makes Inductor keep its scheduler nodes
    torch._inductor.config.fallback_random = True  # the same random draws as eager
    torch._inductor.config.fx_graph_cache = False  # a cached graph reports no scheduler nodes
    torch._functorch.config.enable_autograd_cache = False
    metrics.reset()
    method = _method()
    eager_loss, eager_grads = _run(method, method.weighted_loss)
    start = time.perf_counter()
    compiled = torch.compile(method.weighted_loss, dynamic=False, fullgraph=True)
    loss, grads = _run(method, compiled)
    seconds = time.perf_counter() - start
    worst = max(
        ((g - e).abs().max() / e.abs().max().clamp_min(1e-30)).item()
        for g, e in zip(grads, eager_grads, strict=True)
    )
    generated = extern = reductions = 0
    generated_bytes = 0.0
    extern_names: Counter[str] = Counter()
    for node, _ in metrics.nodes_num_elem:
        if isinstance(node, NopKernelSchedulerNode):
            continue
        if isinstance(node, ExternKernelSchedulerNode):
            kernel = getattr(node.node, "python_kernel_name", None) or type(node.node).__name__
            if kernel != "MultiOutput":  # unpacks a tuple of outputs: no kernel
                extern += 1
                extern_names[str(kernel)] += 1
        else:
            generated += 1
            reductions += bool(node.is_reduction())
            generated_bytes += node.get_read_write_buffers_sizes()
    return {
        "generated_kernels": generated,
        "generated_bytes": generated_bytes,
        "generated_reductions": reductions,
        "extern_kernels": extern,
        "extern_by_name": dict(extern_names.most_common()),
        "codegen_kernels": metrics.generated_kernel_count,
        "compile_seconds": seconds,
        "loss_relative_difference": abs(loss - eager_loss) / abs(eager_loss),
        "gradient_max_relative_difference": worst,
    }


def check() -> dict[str, object]:
    return {
        "model, CPU rules": predicted(persistent_rows=0),
        "model, CUDA rules": predicted(persistent_rows=PERSISTENT_ROWS),
        "inductor": inductor(),
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    text = json.dumps(check(), indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
