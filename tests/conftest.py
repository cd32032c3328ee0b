"""Test set-up.

Without a GPU, Triton kernels are tested on CPU tensors through Triton's interpreter,
which reads TRITON_INTERPRET when triton is imported: so it is set here, before any test
module (or the package) can import triton.

Two markers decide what runs where (both registered in pyproject.toml):

- ``gpu``: needs a CUDA GPU; skipped without one.
- ``interpreter``: puts CPU tensors through ``backend="triton"``, which only the Triton
  interpreter can run; skipped on a GPU machine, where TRITON_INTERPRET is not set (the
  ``device`` fixture's CUDA tensors test the same kernels compiled there).

``-p tests.simulate_gpu`` (tests/simulate_gpu.py) makes the collection logic below act as on
a GPU machine while tensors stay on the CPU.
"""

import os
import sys

import pytest
import torch
from hypothesis import settings

# CI must be reproducible: on CI the property tests draw the same examples every run
# (a failure found locally is kept in .hypothesis/ and replayed first).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# CPU threads, set explicitly: the test models are tiny, so more threads buy little, and on a
# machine where other jobs hold the cores extra threads only contend. L2REC_THREADS overrides.
_threads = os.environ.get("L2REC_THREADS", "1")
if not _threads.isdigit() or int(_threads) < 1:
    raise RuntimeError(f"L2REC_THREADS must be a positive integer, got {_threads!r}")
torch.set_num_threads(int(_threads))

HAS_GPU = torch.cuda.is_available()
# Collect and skip as on a GPU machine: with a real GPU, or simulated by tests/simulate_gpu.py.
SIMULATED_GPU = not HAS_GPU and "tests.simulate_gpu" in sys.modules
GPU_RUN = HAS_GPU or SIMULATED_GPU

if not HAS_GPU:  # (when simulating, the interpreter stands in for the device: DEVICE is the CPU)
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("triton was imported before tests/conftest.py could set TRITON_INTERPRET=1")
    os.environ["TRITON_INTERPRET"] = "1"

DEVICE = torch.device("cuda" if HAS_GPU else "cpu")


# Test modules that start Ray (a local instance or a loopback cluster) or bind ports: under
# pytest-xdist (`make test` runs `-n auto --dist loadgroup`) they all run on one worker, one
# after another, so two Ray instances never compete for the same ports, /tmp/ray sessions
# or cores. A test module may also mark itself with `pytest.mark.xdist_group(...)`.
RAY_MODULES = frozenset({
    "test_serving.py", "test_faults.py", "test_serving_fuzz.py", "test_real_checkpoint.py",
    "test_batch_scoring.py",
})


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in RAY_MODULES and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group("ray"))
    needs_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    needs_interpreter = pytest.mark.skip(
        reason="CPU tensors through backend='triton' need the Triton interpreter, which conftest "
               "turns on (TRITON_INTERPRET=1) only without a GPU; on a GPU the `device` tests run "
               "these kernels compiled")
    for item in items:
        if not HAS_GPU and item.get_closest_marker("gpu"):
            item.add_marker(needs_gpu)
        if GPU_RUN and item.get_closest_marker("interpreter"):
            item.add_marker(needs_interpreter)


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
