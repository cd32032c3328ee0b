"""tests/interpreter_patching.py: the Triton interpreter patches ``triton.language`` once per
launch. A kernel that calls a device function many times gives the interpreter's answer,
and after the launch every builtin is triton's own again (nothing patched leaks out)."""

import pytest
import torch

pytestmark = pytest.mark.interpreter
triton = pytest.importorskip("triton", reason="the triton extra is not installed")
tl = pytest.importorskip("triton.language")


@triton.jit
def _twice(x):
    return x * 2


@triton.jit
def _repeat_kernel(x_ptr, out_ptr, n, TIMES: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    for _ in tl.static_range(TIMES):  # TIMES device-function calls per program
        x = _twice(x) * 0.5 + 1.0
    tl.store(out_ptr + offs, x, mask=offs < n)


def test_once_per_launch_and_nothing_left_patched():
    import interpreter_patching
    from triton.runtime import interpreter

    assert interpreter_patching.install()  # conftest installed it; a second call is a no-op
    assert getattr(interpreter._patch_lang, "_l2rec_once_per_launch", False)
    load, dot = tl.load, tl.dot
    x = torch.randn(37)
    out = torch.empty_like(x)
    _repeat_kernel[(3,)](x, out, x.numel(), TIMES=5, BLOCK=16)
    torch.testing.assert_close(out, x + 5.0)
    assert tl.load is load and tl.dot is dot  # restored when the launch ended
