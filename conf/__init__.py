"""anobench's Hydra configs, shipped inside the package as `anobench.conf` (found through it)."""
