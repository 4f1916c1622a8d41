# anobench — set-up, demo, tests and benchmarks. `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
# The torch build that works on these machines; override e.g. TORCH_SPEC="torch torchvision".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-install
export HF_HUB_OFFLINE ?= 1

.PHONY: help install run demo-all test lint bench bench-metrics bench-ssim bench-flops bench-intervals bench-dry-run report-screenshot clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

install: $(STAMP)  ## create .venv and install torch + anobench[dev] (once; stamp file)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)  ## demo: reference method on the built-in synthetic data, then the table
	$(VENV)/bin/anobench run experiment=demo
	$(VENV)/bin/anobench report results/demo

demo-all: $(STAMP)  ## demo of every method (3-7 minutes per method on a 2-core CPU, ST-MAE ~15)
	$(VENV)/bin/anobench run -m experiment=demo method=knn,saae,anovit,haloae,stmae hydra/launcher=basic
	$(VENV)/bin/anobench report results/demo

test: $(STAMP)  ## the test suite (CPU, tiny sizes; one pytest-xdist worker per core)
	$(PY) -m pytest -q -n auto

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check anobench tests bench hydra_plugins
	$(VENV)/bin/ruff format --check anobench tests bench hydra_plugins

bench-metrics: $(STAMP)  ## metrics: fast AUPRO vs the brute-force definition
	$(PY) bench/metrics.py

bench-ssim: $(STAMP)  ## HaloAE SSIM: banded-matrix window vs shifted sums (DEVICE=cuda on a GPU)
	$(PY) bench/ssim.py --device $(or $(DEVICE),cpu)

bench-flops: $(STAMP)  ## FLOPs of each paper schedule and the H100-hours they need at its peak
	$(PY) bench/flops.py

bench-intervals: $(STAMP)  ## per-cell intervals and per-defect metrics: seconds at MVTec sizes
	$(PY) bench/intervals.py

bench-dry-run: $(STAMP)  ## wall time of dry_run=true at the paper setting, per method
	$(PY) bench/dry_run.py

.PHONY: bench-model bench-gpu bench-check
GPU_NAME = $(shell $(PY) -c "import torch; print(torch.cuda.get_device_name(0).split()[1].lower())" 2>/dev/null)

bench-model: $(STAMP)  ## GPU cost model of each training step, traced on this CPU (before issue 24 / now)
	$(PY) bench/costmodel.py --before $(or $(BEFORE),7a29020ac)

bench-gpu: $(STAMP)  ## on a GPU: paper-size speed -> bench/results/speed_<gpu>.md (then bench-check)
	@test -n "$(GPU_NAME)" || { echo "bench-gpu needs a CUDA GPU"; exit 1; }
	$(PY) bench/speed.py --size paper --epochs 3 --out bench/results/speed_$(GPU_NAME).md

bench-check: $(STAMP)  ## cost model vs a GPU measurement (SPEED=bench/results/speed_<gpu>.md), any CPU
	$(PY) bench/costmodel.py --check $(or $(SPEED),bench/results/speed_h100.md)

bench: $(STAMP)  ## speed: naive vs optimised training per method, side by side
	$(PY) bench/speed.py

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache

CHROMIUM ?= chromium
CHROMIUM_FLAGS := --headless --no-sandbox --disable-gpu --disable-background-networking \
	--disable-component-update --disable-sync --no-first-run --hide-scrollbars
report-screenshot: $(STAMP)  ## the demo's HTML report in headless Chromium -> docs/html_report.png
	test -f results/demo/synthetic/knn/resnet18.tv_in1k/weave/seed0/metrics.json \
		|| $(VENV)/bin/anobench run experiment=demo
	$(VENV)/bin/anobench report results/demo --html --out results/demo/html
	rm -rf results/demo/html/.chromium
	$(CHROMIUM) $(CHROMIUM_FLAGS) --user-data-dir=$(CURDIR)/results/demo/html/.chromium \
		--window-size=1200,1900 --screenshot=$(CURDIR)/results/demo/html/report.png \
		file://$(CURDIR)/results/demo/html/report.html
	mkdir -p docs
	$(PY) -c "from PIL import Image; Image.open('results/demo/html/report.png').convert('RGB')\
		.quantize(128).save('docs/html_report.png', optimize=True)"
