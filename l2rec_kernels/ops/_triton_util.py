"""What the Triton op modules share: one way to register an op, one way to launch a kernel.

``register_triton_op(name, impl, fake)`` registers ``torch.ops.l2rec.<name>``:

- compiled triton (a GPU): a ``torch.library.triton_op`` whose body launches through
  ``wrap_triton``, so ``torch.compile`` traces into the body and Inductor sees the kernels;
- the interpreter (``_backend.triton_interpreter()``): an opaque
  ``torch.library.custom_op``. Interpreted kernels are plain Python functions that
  ``wrap_triton`` cannot capture, and fake tensors (``opcheck``, ``torch.compile``) must
  never reach them, so compiled graphs call the op at run time instead.

Either way ``fake`` is the op's meta implementation, so both paths have the same schema and
the same output metadata.

``launch(kernel, grid, *args, **kwargs)`` is how every launcher starts a kernel. Inside
``compile_only(hook)`` it calls ``hook(kernel, grid, args, kwargs)`` instead: the GPU
compile check (``tools/gpu_compile_check.py``) uses this to compile, for a GPU target and
without a GPU, exactly the specialisations that the launchers would launch.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch
from torch.library import wrap_triton

from .._backend import triton_interpreter

# Under the interpreter ``@triton.jit`` gives plain Python functions instead of JITFunctions.
INTERPRETER = triton_interpreter()

_compile_hook: contextvars.ContextVar[Callable | None] = contextvars.ContextVar(
    "l2rec_triton_compile_hook", default=None)


def register_triton_op(name: str, impl: Callable, fake: Callable):
    """Register ``l2rec::<name>`` (no mutated inputs) with ``impl`` and its fake ``fake``."""
    qualname = f"l2rec::{name}"
    if INTERPRETER:
        op = torch.library.custom_op(qualname, impl, mutates_args=())
    else:
        op = torch.library.triton_op(qualname, impl, mutates_args=())
    op.register_fake(fake)
    return op


def launch(kernel, grid, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)``, traceable by ``triton_op`` on a GPU."""
    hook = _compile_hook.get()
    if hook is not None:
        hook(kernel, grid, args, kwargs)
        return
    runner = kernel if INTERPRETER else wrap_triton(kernel)
    runner[grid](*args, **kwargs)


@contextlib.contextmanager
def compile_only(hook: Callable) -> Iterator[None]:
    """While active, ``launch`` hands each launch to ``hook`` instead of running it."""
    token = _compile_hook.set(hook)
    try:
        yield
    finally:
        _compile_hook.reset(token)
