# The README's two set-up commands:
#   make bench   the main job: set up, then benchmark the built-in tiny model
#   make test    set up, then run the test suite
# Also: make serve (the HTTP recommender on 127.0.0.1:8000), make load-test, make lint,
# make cuda-check (compile csrc/ with nvcc, no GPU needed).
# Each does all of its own set-up on a fresh machine: a local virtual environment in
# .venv, torch (pinned to the CPU-capable 2.13.0 wheel only when no torch is present, so a
# machine without a GPU never downloads CUDA wheels), the dependencies and the package.

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
TORCH_PIN ?= torch==2.13.0
# Reuse a torch that the system already has (e.g. a GPU machine with CUDA torch
# preinstalled and no network) instead of installing another one.
VENV_FLAGS := $(shell $(PYTHON) -c "import torch" >/dev/null 2>&1 && echo --system-site-packages)
STAMP   := $(VENV)/.l2rec-installed

.PHONY: setup test bench serve load-test cuda-check gpu-compile-check lint clean

$(PY):
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)

$(STAMP): $(PY) pyproject.toml setup.py
	@$(PY) -c "import torch" >/dev/null 2>&1 || $(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q "setuptools>=64" wheel
	$(PIP) install -q --no-build-isolation -e ".[test,bench,serve]"
	@touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) bench/latency.py --quick

PORT ?= 8000
serve: $(STAMP)
	$(PY) -m l2rec_serving --port $(PORT)

load-test: $(STAMP)
	$(PY) bench/load_test.py --requests 2000 --concurrency 32

# Compile every csrc/ source for sm_90a (nvcc; the host compiler for .cpp) against the
# installed torch's headers, warnings as errors; link the extension in a temporary
# directory and run its GPU-free tests on it. Needs nvcc, no GPU.
cuda-check: $(STAMP)
	$(PY) csrc/cuda_check.py

# Compile every Triton kernel through its launcher for sm_90a and sm_80 (Triton's own ptxas,
# no GPU needed) and fail on compile errors, shared memory over the limit, spills, missing
# wgmma or scalar LoRA loads; the table goes to bench/results/gpu_compile_check.md.
gpu-compile-check: $(STAMP)
	$(PY) tools/gpu_compile_check.py

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
