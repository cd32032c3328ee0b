# The README's two set-up commands:
#   make bench   the main job: set up, then benchmark the built-in tiny model
#   make test    set up, then run the test suite
# Also: make serve (the HTTP recommender on 127.0.0.1:8000), make load-test, make fault-test,
# make test-serve, make lint, make cuda-check (compile csrc/ with nvcc, no GPU needed),
# make docs (the documentation site into site/, mkdocs --strict).
# Each does all of its own set-up on a fresh machine, and only what it needs: a local
# virtual environment in .venv, torch (pinned to the CPU-capable 2.13.0 wheel only when no
# torch is present, so a machine without a GPU never downloads CUDA wheels), the package,
# and the extras its job needs: bench for `make bench`, test and serve for `make test`,
# serve for `make serve`/`make load-test`/`make fault-test` (one stamp file per extra in .venv).
# CPU threads: L2REC_THREADS (tests default to 1, the benchmark to the cores it may use).

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
TORCH_PIN ?= torch==2.13.0
# Reuse a torch that the system already has (e.g. a GPU machine with CUDA torch
# preinstalled and no network) instead of installing another one.
VENV_FLAGS := $(shell $(PYTHON) -c "import torch" >/dev/null 2>&1 && echo --system-site-packages)
CORE    := $(VENV)/.l2rec-core
# pytest-xdist workers for `make test` (the tests that start Ray share one worker: conftest).
TEST_WORKERS ?= auto

.PHONY: setup test test-serve bench serve load-test fault-test cuda-check gpu-compile-check lint docs clean

$(PY):
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)

# torch first (pinned to the CPU wheel only where none is present), the build tools, then
# the package with an extra in ONE pip call: each call resolves and builds again.
define install_package
	@$(PY) -c "import torch" >/dev/null 2>&1 || $(PIP) install -q "$(TORCH_PIN)"
	@$(PY) -c "import sys, setuptools, wheel; sys.exit(int(setuptools.__version__.split('.')[0]) < 64)" \
		>/dev/null 2>&1 || $(PIP) install -q "setuptools>=64" wheel
	$(PIP) install -q --no-build-isolation -e "$(1)"
endef

$(CORE): $(PY) pyproject.toml setup.py
	$(call install_package,.)
	@touch $@

# The package with one extra: $(VENV)/.l2rec-<extra> (it includes the core install).
$(VENV)/.l2rec-%: $(PY) pyproject.toml setup.py
	$(call install_package,.[$*])
	@touch $@ $(CORE)

setup: $(VENV)/.l2rec-test $(VENV)/.l2rec-bench $(VENV)/.l2rec-plot $(VENV)/.l2rec-serve

# The whole suite, the serving tests on Ray included (the serve extra): the Ray Serve app,
# the real-checkpoint recipe over HTTP and the small fault scenarios (tests/test_faults.py).
test: $(VENV)/.l2rec-test
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup tests

# Only the serving tests (Ray app, HTTP API, fuzzing, faults, the real-checkpoint recipe).
test-serve: $(VENV)/.l2rec-test $(VENV)/.l2rec-serve
	$(PY) -m pytest -q tests/test_serving.py tests/test_serving_api.py tests/test_serving_fuzz.py \
		tests/test_faults.py tests/test_real_checkpoint.py

bench: $(VENV)/.l2rec-bench
	$(PY) bench/latency.py --quick

PORT ?= 8000
serve: $(VENV)/.l2rec-serve
	$(PY) -m l2rec_serving --port $(PORT)

load-test: $(VENV)/.l2rec-serve
	$(PY) bench/load_test.py --requests 2000 --concurrency 32

# Fault scenarios on loopback (bench/fault_test.py): overload (200s or fast 503s with
# Retry-After), a SIGKILLed replica, a two-node Ray cluster losing its worker node. A few
# minutes in all; results in bench/results/fault_test.{json,csv,md}; fails on a failed check.
# batch-node-loss (the batch extra): batch scoring on that cluster loses the worker node mid-run.
fault-test: $(VENV)/.l2rec-serve $(VENV)/.l2rec-batch
	$(PY) bench/fault_test.py --all

# Offline batch scoring on Ray Data with the built-in tiny model (python -m l2rec_serving.batch):
# a synthetic users file (2000 users, a few bad rows among them) scored by 2 actors of 1 thread
# into $(SCORE_OUT): scores/, rejected/, _manifest.json (replaced if there). docs/batch-scoring.md.
SCORE_OUT ?= build/score-demo
.PHONY: score-demo
score-demo: $(VENV)/.l2rec-batch
	$(PY) -m l2rec_serving.batch --out $(SCORE_OUT) --overwrite --k 10 --actors 2 --threads 1

# Compile every csrc/ source for sm_90a (nvcc; the host compiler for .cpp) against the
# installed torch's headers, warnings as errors; link the extension in a temporary
# directory and run its GPU-free tests on it. Needs nvcc, no GPU.
cuda-check: $(VENV)/.l2rec-test
	$(PY) csrc/cuda_check.py

# Compile every Triton kernel through its launcher for sm_90a and sm_80 (Triton's own ptxas,
# no GPU needed) and fail on compile errors, shared memory over the limit, spills, missing
# wgmma or scalar LoRA loads; the table goes to bench/results/gpu_compile_check.md.
gpu-compile-check: $(VENV)/.l2rec-triton
	$(PY) tools/gpu_compile_check.py

lint: $(VENV)/.l2rec-test
	$(PY) -m ruff check .

# The documentation site (mkdocs.yml, pages under docs/, the API reference generated from the
# docstrings) into site/ (git-ignored). --strict: a broken link, anchor or API reference fails.
# (NO_MKDOCS_2_WARNING: Material's end-of-life banner, not a build warning.)
docs: $(VENV)/.l2rec-docs
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build *.egg-info

# RecBole 1.2.1, the peer library of the comparison rows (l2rec_kernels/peers.py), in its own
# environment $(PEERS_VENV): never imported into $(VENV). Rebuilt when the requirements change.
# recbole itself with --no-deps: its ray<=2.6.3 pin is only for its hyper-parameter tuning
# (recbole.quick_start imports ray and is never imported). About 40 s with the wheels cached.
.PHONY: peers
PEERS_VENV ?= .venv-peers
PEERS_REQ  := peers/requirements-recbole.txt
peers: $(PEERS_VENV)/.recbole
$(PEERS_VENV)/.recbole: $(PEERS_REQ)
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q -r $(PEERS_REQ)
	$(PEERS_VENV)/bin/python -m pip install -q --no-deps recbole==1.2.1
	@touch $@

# Train on the demo fixture (tests/data/interactions/ml-demo: 300 users, 150 items, the
# MovieLens-1M layout) with the tiny backbone, then evaluate on its test split next to
# most-popular and random; fails unless the model beats both on HR@10 and NDCG@10. One CPU
# thread: these tiny GEMMs gain nothing from a second one, which only contends with anything
# else running (docs/training.md). About a minute on 2 cores.
.PHONY: train-demo
TRAIN_DEMO_OUT ?= build/train-demo
train-demo: $(VENV)/.l2rec-train
	rm -rf $(TRAIN_DEMO_OUT)
	L2REC_THREADS=1 $(PY) -m l2rec_kernels.train --data movielens:tests/data/interactions/ml-demo \
		--backbone tiny --out $(TRAIN_DEMO_OUT) --epochs 2 --lr 3e-3 --max-history 10 --batch-size 32 \
		--no-progress --logging-steps 50
	L2REC_THREADS=1 $(PY) -m l2rec_kernels.evaluate --checkpoint $(TRAIN_DEMO_OUT) \
		--json $(TRAIN_DEMO_OUT)/test_metrics.json --require-beating-baselines

# L2Rec next to our SASRec, popularity, random and RecBole's SASRec, BERT4Rec and Pop on one
# split, each trained within the same wall-clock budget (python -m l2rec_kernels.compare;
# docs/compare.md). The default: MovieLens-100K from the recbole wheel of $(PEERS_VENV), the
# tiny backbone, 6 minutes per row; tables, CSV, JSON and plot into $(COMPARE_OUT), the runs
# into build/compare. make compare COMPARE_ARGS="--budget-min 1 --peers sasrec" passes arguments on.
.PHONY: compare
COMPARE_OUT ?= bench/results
COMPARE_ARGS ?=
compare: $(VENV)/.l2rec-compare $(PEERS_VENV)/.recbole
	$(PY) -m l2rec_kernels.compare --data recbole:ml-100k --backbone tiny --out $(COMPARE_OUT) \
		--runs build/compare --peer-env $(PEERS_VENV) $(COMPARE_ARGS)
