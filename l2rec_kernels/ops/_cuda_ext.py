"""The one Python module of the compiled extension (``csrc/``): its calls and fake impls.

The extension defines, in C++ (``csrc/l2rec_ops.cpp``)::

    l2rec_cuda::route(Tensor logits, int top_k, float temperature) -> Tensor
    l2rec_cuda::batch_metadata(Tensor attention_mask, int num_views)
        -> (position_ids, last_index, cu_seqlens, seq_view, packed_last_row)

with CUDA kernels (and CPU registrations that only raise a clear error). This module
holds their fake impls, so ``torch.compile`` can trace them; the C++ side names this
module with ``m.set_python_module``, which torch requires for a C++ op with a Python fake.

Importing this module is free: it neither loads the extension nor queries CUDA. The fake
impls are registered when the extension is loaded through ``load_ops()`` (the first op
call), or at import if the extension was already imported some other way.
"""

from __future__ import annotations

import sys
import threading

import torch

from .. import _backend
from .._compat import mark_constant_for_dynamo

_EXT_MODULE = "l2rec_kernels._C"
_lock = threading.Lock()
_fakes_registered = False


def _route_fake(logits, top_k, temperature):
    torch._check(logits.dim() == 2, lambda: f"logits must be 2-D, got {logits.dim()}-D")
    return logits.new_empty(logits.shape)


def _batch_metadata_fake(attention_mask, num_views):
    torch._check(attention_mask.dim() == 2,
                 lambda: f"attention_mask must be 2-D, got {attention_mask.dim()}-D")
    users, tokens = attention_mask.shape
    seqs = num_views * users

    def new(size, dtype):
        return attention_mask.new_empty(size, dtype=dtype)

    return (new((users, tokens), torch.int64), new((users,), torch.int64),
            new((seqs + 1,), torch.int32), new((seqs,), torch.int32),
            new((seqs,), torch.int64))


def _register_fakes() -> None:
    # Called from this module on purpose: torch checks that the module calling
    # register_fake is the one the C++ set_python_module call names.
    global _fakes_registered
    with _lock:
        if _fakes_registered:
            return
        torch.library.register_fake("l2rec_cuda::route", _route_fake)
        torch.library.register_fake("l2rec_cuda::batch_metadata", _batch_metadata_fake)
        _fakes_registered = True


@mark_constant_for_dynamo
def _ensure_loaded() -> bool:
    # assume_constant_result: under torch.compile this runs once at trace time (dynamo
    # refuses to trace importlib), and later calls cost nothing in the compiled graph.
    if not _fakes_registered:
        _backend.load_cuda_ext()
        _register_fakes()
    return True


def load_ops():
    """``torch.ops.l2rec_cuda`` with the extension loaded and the fake impls registered.

    Raises ``ImportError`` where the extension is not built (callers check
    ``_backend.cuda_ext_unavailable_reason`` first).
    """
    _ensure_loaded()
    return torch.ops.l2rec_cuda


def route_cuda(logits: torch.Tensor, top_k: int | None, temperature: float) -> torch.Tensor:
    """Gates [S, E] from logits [S, E] in one launch; arguments already validated by
    ``l2rec_kernels.ops.route.route``. ``top_k`` None (or E) means dense."""
    k = 0 if top_k is None else int(top_k)
    _ensure_loaded()
    return torch.ops.l2rec_cuda.route(logits.contiguous(), k, float(temperature))


def batch_metadata_cuda(attention_mask: torch.Tensor, num_views: int):
    """The five metadata tensors in one launch (see ``ops.batch_metadata``); arguments
    already validated by ``l2rec_kernels.ops.batch_metadata.batch_metadata``."""
    _ensure_loaded()
    return torch.ops.l2rec_cuda.batch_metadata(attention_mask.contiguous(), int(num_views))


if _EXT_MODULE in sys.modules:
    # The extension was imported directly, and this module imported afterwards (e.g.
    # following torch's "import l2rec_kernels.ops._cuda_ext" hint for a missing fake
    # impl, which the set_python_module call produces): make the fakes available now.
    _register_fakes()
