"""Test set-up.

Without a GPU, Triton kernels are tested on CPU tensors through Triton's interpreter,
which reads TRITON_INTERPRET when triton is imported: so it is set here, before any test
module (or the package) can import triton.
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

HAS_GPU = torch.cuda.is_available()

if not HAS_GPU:
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("triton was imported before tests/conftest.py could set TRITON_INTERPRET=1")
    os.environ["TRITON_INTERPRET"] = "1"

DEVICE = torch.device("cuda" if HAS_GPU else "cpu")


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
