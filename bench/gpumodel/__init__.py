"""A GPU cost model measured on the CPU: trace a real training step, then price it on a GPU.

`trace` records every aten op of a step (FLOPs, bytes, kernels, host syncs); `autocast` makes
a CPU run take the dtype decisions CUDA autocast takes; `gpu` turns a trace into modelled
seconds on a GPU from its published peaks (roofline per op, launch overhead, host syncs).
"""
