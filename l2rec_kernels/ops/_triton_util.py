"""What the Triton kernel modules share: telling compiled kernels from interpreted ones.

Compiled triton's ``@triton.jit`` gives ``JITFunction``s, which ``torch.library.wrap_triton``
captures into a graph, so ``triton_op`` bodies trace and Inductor sees the kernels. Under
``TRITON_INTERPRET=1`` (read when triton is first imported) it gives interpreted functions,
which ``wrap_triton`` cannot trace: fake tensors (``opcheck``, ``torch.compile``) would reach
the interpreter and fail. So there each op launches its kernels directly, inside an opaque
``custom_op`` with its own fake implementation.
"""

from __future__ import annotations

from triton.runtime.jit import JITFunction


def interpreted(kernel) -> bool:
    """True when ``kernel`` (a ``@triton.jit`` function) runs under the interpreter."""
    return not isinstance(kernel, JITFunction)
