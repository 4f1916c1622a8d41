"""Benchmarks and the GPU cost model (run the scripts from the repository root)."""
