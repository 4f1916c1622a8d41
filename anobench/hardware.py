"""The only owner of device, dtype, autocast, seeding and determinism."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from anobench.errors import AnobenchError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CACHE_PRECISIONS = ("auto", "fp32")  # auto: half precision on the GPU, float32 on the CPU
log = logging.getLogger("anobench")


class SlotLock:
    """An exclusive lock on a file, held until release(), garbage collection or process exit."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def try_acquire(cls, path: Path) -> SlotLock | None:
        import fcntl  # POSIX only, like the launchers that run several jobs per machine

        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return cls(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.release()


def claim_slot(
    names: list[str], preferred: int, lock_dir: Path, poll_seconds: float = 2.0
) -> tuple[int, SlotLock]:
    """Lock the first free of `names`, trying `preferred` first; wait while all are held."""
    order = [*range(preferred, len(names)), *range(preferred)]
    waited = False
    while True:
        for index in order:
            lock = SlotLock.try_acquire(lock_dir / f"{names[index]}.lock")
            if lock is not None:
                return index, lock
        if not waited:
            log.info("all %d GPUs are held by other anobench jobs; waiting for one", len(names))
            waited = True
        time.sleep(poll_seconds)


def gpu_count() -> int:
    """CUDA devices visible to this process (0 without CUDA)."""
    return torch.cuda.device_count()


def _claim_gpu(job_index: int) -> tuple[int, SlotLock]:
    # Job j prefers cuda:(j % count). Joblib hands a job to whichever worker is free, so job
    # numbers alone can put two running jobs on one GPU; a lock file per GPU (keyed by UUID, so
    # jobs that see different CUDA_VISIBLE_DEVICES agree) sends a job to a free one instead.
    count = torch.cuda.device_count()
    names = [
        str(getattr(torch.cuda.get_device_properties(i), "uuid", f"cuda{i}")) for i in range(count)
    ]
    lock_dir = Path(tempfile.gettempdir()) / f"anobench-gpu-locks-{os.getuid()}"
    return claim_slot(names, job_index % count, lock_dir)


@dataclass(frozen=True)
class Hardware:
    """Where and how tensors run: device, autocast precision and speed switches."""

    device: torch.device
    precision: str = "fp32"
    compile: bool = False
    channels_last: bool = False
    deterministic: bool = False
    gpu_lock: SlotLock | None = field(default=None, compare=False, repr=False)
    tf32: bool = True  # TF32 matmuls and convolutions on the GPU (False: IEEE fp32)
    cache_precision: str = "auto"

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.precision]

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def cache_dtype(self) -> torch.dtype:
        """Storage dtype for cached frozen features: half precision on the GPU, else float32."""
        if self.is_cuda and self.cache_precision == "auto":
            return self.amp_dtype or torch.float16
        return torch.float32

    def optimizer(
        self, cls: type[torch.optim.Optimizer], params: Any, **kwargs: Any
    ) -> torch.optim.Optimizer:
        """`cls(params, **kwargs)`; Adam and AdamW are fused (one kernel per step) on CUDA."""
        if self.is_cuda and cls in (torch.optim.Adam, torch.optim.AdamW):
            kwargs.setdefault("fused", True)
        return cls(params, **kwargs)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for network forwards; a no-op in fp32."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler, active only for fp16 on CUDA."""
        return torch.amp.GradScaler(
            self.device.type, enabled=self.precision == "fp16" and self.is_cuda
        )

    def prepare(self, module: nn.Module) -> nn.Module:
        """Move a module to the device (and memory format); compile its forward when asked."""
        module = module.to(self.device)
        if self.channels_last and self.is_cuda:
            module = module.to(memory_format=torch.channels_last)
        return module

    def maybe_compile(self, module: nn.Module) -> nn.Module:
        """torch.compile the module when hardware.compile is on."""
        return torch.compile(module) if self.compile else module  # type: ignore[return-value]

    def compile_function(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """torch.compile a function with static shapes when hardware.compile is on.

        Static (`dynamic=False`): a batch of another size compiles once more instead of making
        every shape symbolic, so each compiled graph keeps fixed shapes (CUDA-graph ready).
        """
        return torch.compile(fn, dynamic=False) if self.compile else fn

    def to_device(self, tensor: torch.Tensor, non_blocking: bool = True) -> torch.Tensor:
        tensor = tensor.to(self.device, non_blocking=non_blocking and self.is_cuda)
        if self.channels_last and self.is_cuda and tensor.ndim == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def synchronize(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak_memory(self) -> None:
        if self.is_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory_bytes(self) -> int | None:
        return int(torch.cuda.max_memory_allocated(self.device)) if self.is_cuda else None

    def free_memory_bytes(self) -> int | None:
        if not self.is_cuda:
            return None
        free, _total = torch.cuda.mem_get_info(self.device)
        return int(free)

    def empty_cache(self) -> None:
        if self.is_cuda:
            torch.cuda.empty_cache()

    def describe(self) -> str:
        """A human-readable device name, written into every record and table."""
        if self.is_cuda:
            return torch.cuda.get_device_name(self.device)
        return f"cpu ({platform.machine()}, {os.cpu_count()} cores)"

    def peak_flops(self) -> float | None:
        """Dense bf16 tensor-core peak FLOP/s of known GPUs (for roofline fractions)."""
        if not self.is_cuda:
            return None
        name = torch.cuda.get_device_name(self.device)
        for key, flops in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12)):
            if key in name:
                return flops
        return None


def create_hardware(
    device: str = "auto",
    precision: str = "fp32",
    compile: bool = False,
    channels_last: bool = False,
    deterministic: bool = False,
    job_index: int | None = None,
    cpu_threads: int | None = None,
    tf32: bool = True,
    cache_precision: str = "auto",
) -> Hardware:
    """Resolve `hardware=` settings to a Hardware; `auto` picks CUDA when present.

    With `job_index` (hardware.gpu_from_job), a device of `cuda` becomes one GPU of this machine
    held by this job alone: cuda:(job_index % GPU count) when free, else the next free one.
    `cpu_threads` sets torch's intra-op threads for the process (fewer than the cores helps when
    several runs share a machine: oversubscribed threads can be many times slower than one).
    `tf32=False` keeps GPU matmuls and convolutions in IEEE fp32, as the authors' runs were;
    `cache_precision="fp32"` stores cached frozen features in float32 on the GPU too.
    """
    if precision not in PRECISIONS:
        raise AnobenchError(
            f"hardware.precision={precision!r} is not valid; use one of {', '.join(PRECISIONS)}."
        )
    if cache_precision not in CACHE_PRECISIONS:
        raise AnobenchError(
            f"hardware.cache_precision={cache_precision!r} is not valid; use auto or fp32."
        )
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise AnobenchError(f"hardware.device={device!r} is not a valid torch device.") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise AnobenchError(
            f"hardware.device={device!r} asks for CUDA but no GPU is visible; "
            "use hardware=cpu or hardware.device=auto."
        )
    gpu_lock = None
    if job_index is not None and resolved.type == "cuda" and resolved.index is None:
        index, gpu_lock = _claim_gpu(job_index)
        resolved = torch.device("cuda", index)
        torch.cuda.set_device(resolved)
    if resolved.type == "cpu" and precision == "fp16":
        raise AnobenchError("hardware.precision=fp16 needs a GPU; use bf16 or fp32 on the CPU.")
    if deterministic:
        # cuBLAS needs this set before its first call to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cuda.matmul.allow_tf32 = tf32 and not deterministic
    torch.backends.cudnn.allow_tf32 = tf32 and not deterministic
    torch.backends.cudnn.benchmark = not deterministic and resolved.type == "cuda"
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if cpu_threads is not None:
        torch.set_num_threads(cpu_threads)
    return Hardware(
        resolved,
        precision,
        compile,
        channels_last,
        deterministic,
        gpu_lock,
        tf32=tf32,
        cache_precision=cache_precision,
    )


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """All global RNG states, for checkpoints."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def epoch_generator(seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for one epoch's data order, so a resumed run draws the same batches."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed * 1_000_003 + epoch)
    return generator


@contextlib.contextmanager
def inference_mode() -> Iterator[None]:
    with torch.inference_mode():
        yield
