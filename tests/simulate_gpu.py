"""pytest plugin: collect and skip as a GPU machine would, without a GPU. From the repo root:

    .venv/bin/python -m pytest -q -p tests.simulate_gpu tests

tests/conftest.py sees this module loaded and sets GPU_RUN, so the tests marked
``interpreter`` are skipped as on a GPU machine. Tensors stay on the CPU: the ``device``
fixture (and conftest's DEVICE) is still the CPU and the Triton interpreter stands in for the
device, so the device tests run as they would there. ``gpu``-marked tests stay skipped
(they need the real device).

So that the run also catches a test that lacks the ``interpreter`` marker, a test that uses
neither the ``device`` fixture nor a module-level DEVICE finds no interpreter, as on a GPU
machine: ``backend="triton"`` on CPU tensors raises the ValueError it raises there, and a
direct kernel launch raises RuntimeError. (A test in a module with DEVICE that makes its own
CPU tensors is not caught that way; such modules must be read.)

With a real GPU this plugin does nothing.
"""

from __future__ import annotations

import pytest
import torch

ACTIVE = not torch.cuda.is_available()
_interpreter_allowed = True


def pytest_report_header(config):
    if ACTIVE:
        return "simulate_gpu: collecting and skipping as on a GPU machine; tensors stay on the CPU"
    return None


def pytest_sessionstart(session):
    if not ACTIVE:
        return
    # Imported only now: conftest has set TRITON_INTERPRET=1 before triton is first imported.
    from triton.runtime.interpreter import InterpretedFunction

    from l2rec_kernels import _backend

    reason, run = _backend.triton_unavailable_reason, InterpretedFunction.run

    def reason_if_allowed(device):
        if device.type == "cpu" and not _interpreter_allowed:
            return "simulate_gpu: CPU tensors need the interpreter, which this test may not use"
        return reason(device)

    _backend.triton_unavailable_reason = reason_if_allowed

    def run_if_allowed(self, *args, **kwargs):
        if not _interpreter_allowed:
            raise RuntimeError(f"simulate_gpu: kernel {self.__name__} launched on CPU tensors, which "
                               "only the Triton interpreter runs; mark the test `interpreter`")
        return run(self, *args, **kwargs)

    InterpretedFunction.run = run_if_allowed


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    global _interpreter_allowed
    _interpreter_allowed = ("device" in getattr(item, "fixturenames", ())
                            or hasattr(getattr(item, "module", None), "DEVICE"))
