"""``batch_metadata``: FusedL2Rec's per-forward bookkeeping from one attention mask.

FusedL2Rec stacks ``V`` views (2: behavioral, semantic) of ``B`` users into one batch of
``V·B`` sequences over the same prompts, view-major: sequence ``s = v·B + b`` is user
``b``'s prompt in view ``v``. All views share the mask ``[B, T]``, so every per-sequence
quantity follows from it. Packed (padding removed, sequences back to back), sequence ``s``
occupies rows ``cu_seqlens[s] .. cu_seqlens[s+1]-1``.

Fields of the returned :class:`BatchMetadata`:

=================  ===========  ==========================================================
position_ids       [B, T] i64   ``cumsum(mask) - 1`` clamped at 0 (= the reference model's
                                ``position_ids_from_mask``): positions follow the mask,
                                so a prompt's result does not depend on its padding side.
                                A padding slot repeats the previous position (0 before the
                                first attended token).
last_index         [B] i64      index in the padded row of the last attended token;
                                **0 for an all-padding row** (a valid index to gather).
cu_seqlens         [V·B+1] i32  packed offsets; sequence ``s`` has as many rows as user
                                ``s % B`` has attended tokens.
seq_view           [V·B] i32    ``s // B``: the view of each sequence.
packed_last_row    [V·B] i64    ``max(cu_seqlens[s+1] - 1, 0)``: the sequence's last row in
                                the packed layout; **for an empty sequence, the row before
                                it (or 0)**, so gathering with it never goes out of bounds
                                while any packed row exists. Its value there is meaningless.
=================  ===========  ==========================================================

``attention_mask`` may be bool or any integer dtype holding 0/1. Any nonzero value counts
as attended on every backend. The 0/1 check runs for CPU tensors only: on a GPU it would
cost a device->host sync per forward, which this op exists to avoid.

Backends: ``"torch"`` (plain aten ops, no host sync; the CPU default) and ``"cuda"`` (one
launch of the compiled extension's ``l2rec_cuda::batch_metadata``, for at most
``CUDA_MAX_USERS`` users). ``"auto"``: torch for CPU tensors; for CUDA tensors the faster of
the two as measured on the first call per bucket (users and tokens rounded up to a power of
two, views exact: ``_autotune``), torch above ``CUDA_MAX_USERS`` users.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import torch

from .._dispatch import CUDA_MAX_USERS as CUDA_MAX_USERS  # the kernel's limit, in the table
from .._dispatch import select
from .._validation import check_range, check_tensor, values_are_free

MASK_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
# cu_seqlens is int32, so the packed capacity V·B·T must fit in int32.
MAX_PACKED_ROWS = 2**31 - 1


class BatchMetadata(NamedTuple):
    """See the module docstring for each field's shape, dtype and meaning."""

    position_ids: torch.Tensor
    last_index: torch.Tensor
    cu_seqlens: torch.Tensor
    seq_view: torch.Tensor
    packed_last_row: torch.Tensor


def _check_num_views(num_views) -> int:
    if isinstance(num_views, bool) or not isinstance(num_views, numbers.Integral):
        raise TypeError(f"num_views must be an int, got {type(num_views).__name__} {num_views!r}")
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    return int(num_views)


def batch_metadata_torch(attention_mask: torch.Tensor, num_views: int) -> BatchMetadata:
    """The aten path: a fixed sequence of ops whose shapes depend only on the input's
    shape, so it never reads a value back to the host (and traces into one graph)."""
    users, tokens = attention_mask.shape
    device = attention_mask.device
    on = attention_mask if attention_mask.dtype == torch.bool else attention_mask != 0

    position_ids = (on.long().cumsum(-1) - 1).clamp_min(0)
    lengths = on.sum(-1, dtype=torch.int32)
    if tokens > 0:
        index = torch.arange(tokens, device=device)
        last_index = torch.where(on, index, -1).amax(-1).clamp_min(0)
    else:  # amax has no identity over an empty dimension
        last_index = torch.zeros(users, dtype=torch.int64, device=device)

    ends = torch.cumsum(lengths.repeat(num_views), 0, dtype=torch.int32)
    cu_seqlens = torch.cat([ends.new_zeros(1), ends])
    seq_view = torch.arange(num_views, dtype=torch.int32, device=device).repeat_interleave(users)
    packed_last_row = (ends.long() - 1).clamp_min(0)
    return BatchMetadata(position_ids, last_index, cu_seqlens, seq_view, packed_last_row)


def batch_metadata(attention_mask: torch.Tensor, num_views: int = 2,
                   backend: str = "auto") -> BatchMetadata:
    """Positions, last rows and packed-sequence offsets for ``num_views`` views of the
    users in ``attention_mask`` [B, T]; see the module docstring for every field.

    Raises ``TypeError``/``ValueError`` naming the argument for a bad type, rank, dtype,
    ``num_views``, a packed capacity ``num_views·B·T`` over 2³¹-1, or (CPU tensors only)
    mask values outside {0, 1}.
    """
    check_tensor("attention_mask", attention_mask, ndim=2, dtypes=MASK_DTYPES)
    num_views = _check_num_views(num_views)
    users, tokens = attention_mask.shape
    if num_views * users * max(tokens, 1) > MAX_PACKED_ROWS:
        raise ValueError(
            f"num_views * B * T must be <= {MAX_PACKED_ROWS} (cu_seqlens is int32), "
            f"got num_views={num_views}, attention_mask shape {tuple(attention_mask.shape)}")
    if attention_mask.dtype != torch.bool and values_are_free(attention_mask):
        check_range("attention_mask", attention_mask, 0, 1)  # free on the host only
    which = select("batch_metadata", backend, attention_mask.device, attention_mask.dtype,
                   rows=(("users", users), ("tokens", tokens)), exact=(("views", num_views),),
                   run=lambda which: _run(which, attention_mask, num_views))
    return _run(which, attention_mask, num_views)


def _run(which: str, attention_mask: torch.Tensor, num_views: int) -> BatchMetadata:
    if which == "cuda":
        from . import _cuda_ext  # the extension is loaded only when asked for

        return BatchMetadata(*_cuda_ext.batch_metadata_cuda(attention_mask, num_views))
    return batch_metadata_torch(attention_mask, num_views)
