"""Run a step on the CPU with the dtype decisions `hardware=gpu` takes on CUDA.

CPU and CUDA autocast keep different op lists: CUDA runs softmax, layer_norm, pow, sum and the
losses in float32 (and casts back before the next matmul), CPU autocast does not, but runs
reflection padding and cat in float32, which CUDA does not. A cost model that prices a CPU trace
at GPU speeds must see CUDA's dtypes, so `cuda_autocast` applies CUDA's policy
(aten/src/ATen/autocast_mode.cpp and autocast_mode.h: AT_FORALL_LOWER_PRECISION_FP,
AT_FORALL_FP32, AT_FORALL_FP32_SET_OPT_DTYPE) as a TorchFunctionMode: its casts are real
autograd-recorded `_to_copy` ops, as CUDA autocast's are, so forward and backward carry the
same dtypes and the same cast kernels a GPU run has. CPU autocast stays switched on only as the
region flag, so code that opens `torch.autocast(..., enabled=False)` (HaloAE's SSIM) still
leaves the region; ops that CPU autocast alone would re-type run with it off.

`EmulatedGPU` is a Hardware on the CPU that otherwise decides as `hardware=gpu` does: bf16
autocast (CUDA's policy), fused Adam, channels-last modules and inputs, features cached in bf16
in device memory. This is the one place besides hardware.py that touches torch.autocast: it
imitates CUDA's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from anobench.hardware import Hardware

# function names as torch/F/Tensor expose them, grouped by CUDA autocast's cast policy
LOWER_PRECISION = {
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "conv_tbc",
    "prelu",
    "linear",
    "matmul",
    "__matmul__",
    "__rmatmul__",
    "einsum",
    "mm",
    "mv",
    "bmm",
    "addmm",
    "addmv",
    "addr",
    "addbmm",
    "baddbmm",
    "chain_matmul",
    "multi_dot",
    "scaled_dot_product_attention",
}
FP32 = {
    "acos",
    "asin",
    "cosh",
    "erfinv",
    "exp",
    "expm1",
    "log",
    "log10",
    "log2",
    "log1p",
    "reciprocal",
    "rsqrt",
    "sinh",
    "tan",
    "pow",
    "__pow__",
    "__rpow__",
    "softplus",
    "layer_norm",
    "group_norm",
    "frobenius_norm",
    "nuclear_norm",
    "cosine_similarity",
    "poisson_nll_loss",
    "cosine_embedding_loss",
    "nll_loss",
    "hinge_embedding_loss",
    "kl_div",
    "l1_loss",
    "smooth_l1_loss",
    "huber_loss",
    "mse_loss",
    "margin_ranking_loss",
    "multilabel_margin_loss",
    "soft_margin_loss",
    "triplet_margin_loss",
    "multi_margin_loss",
    "binary_cross_entropy_with_logits",
    "cross_entropy",  # composite on CUDA: log_softmax (set to float32) + nll_loss (float32)
    "dist",
    "pdist",
    "cdist",
    "renorm",
    "logsumexp",
    "norm",  # fp32_append_dtype
}
FP32_SET_OPT_DTYPE = {"softmax", "log_softmax", "sum", "prod", "cumsum", "cumprod"}
# ops CPU autocast re-types but CUDA autocast leaves alone: run them with CPU autocast off
CPU_ONLY = {"pad", "cat", "concat", "concatenate", "stack", "avg_pool3d", "max_pool3d"}


def _eligible(value: Any) -> bool:
    return (
        isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and value.dtype != torch.float64
    )


class CudaAutocastPolicy(TorchFunctionMode):
    """Casts the arguments of each call as CUDA autocast would, while CPU autocast is on."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self.weight_casts: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _cast(self, value: Any, dtype: torch.dtype) -> Any:
        if not _eligible(value) or value.dtype == dtype:
            return value
        # as autocast's cast cache: a float32 weight (leaf, requires grad) is cast once per region
        cacheable = dtype == self.dtype and value.is_leaf and value.requires_grad
        if cacheable and id(value) in self.weight_casts:
            source, cast = self.weight_casts[id(value)]
            if source is value:
                return cast
        cast = value.to(dtype)
        if cacheable:
            self.weight_casts[id(value)] = (value, cast)
        return cast

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = dict(kwargs or {})
        if not torch.is_autocast_enabled("cpu"):
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in LOWER_PRECISION:
            args, kwargs = tree_map(lambda v: self._cast(v, self.dtype), (args, kwargs))
        elif name in FP32:
            args, kwargs = tree_map(lambda v: self._cast(v, torch.float32), (args, kwargs))
        elif name in FP32_SET_OPT_DTYPE:
            first = next((v for v in args if isinstance(v, torch.Tensor)), None)
            if _eligible(first) and kwargs.get("dtype") is None:
                kwargs["dtype"] = torch.float32
        elif name in CPU_ONLY:
            with torch.autocast("cpu", enabled=False):
                return func(*args, **kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def cuda_autocast(dtype: torch.dtype = torch.bfloat16) -> Iterator[None]:
    """A CPU autocast region that casts with CUDA's policy (see the module docstring)."""
    with torch.autocast("cpu", dtype=dtype), CudaAutocastPolicy(dtype):
        yield


@dataclass(frozen=True)
class EmulatedGPU(Hardware):
    """The CPU, deciding as `hardware=gpu` decides on CUDA (see the module docstring)."""

    device_memory_bytes: int = 80 * 2**30  # the H100's: feature caches go to device memory
    fused_optimizer: bool = True  # False: CUDA's default multi-tensor (foreach) Adam

    @property
    def cache_dtype(self) -> torch.dtype:
        return self.amp_dtype or torch.float16

    def optimizer(
        self, cls: type[torch.optim.Optimizer], params: Any, **kwargs: Any
    ) -> torch.optim.Optimizer:
        if cls in (torch.optim.Adam, torch.optim.AdamW):
            kwargs.setdefault("fused" if self.fused_optimizer else "foreach", True)
        return cls(params, **kwargs)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return cuda_autocast(self.amp_dtype)

    def prepare(self, module: nn.Module) -> nn.Module:
        module = module.to(self.device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module

    def to_device(self, tensor: torch.Tensor, non_blocking: bool = True) -> torch.Tensor:
        tensor = tensor.to(self.device)
        if self.channels_last and tensor.ndim == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def free_memory_bytes(self) -> int | None:
        return self.device_memory_bytes

    def describe(self) -> str:
        return f"CPU emulating hardware=gpu ({self.precision}, CUDA autocast policy)"


def emulated_gpu(fused_optimizer: bool = True) -> EmulatedGPU:
    """EmulatedGPU with `hardware=gpu`'s settings (conf/hardware/gpu.yaml: bf16, channels-last)."""
    return EmulatedGPU(
        torch.device("cpu"), precision="bf16", channels_last=True, fused_optimizer=fused_optimizer
    )
