"""``topk_items``: the k best catalogue items per query, without a [B, N] score matrix.

For queries ``q`` [B, d] and items ``E`` [N, d]::

    s[b, i] = q[b] · E[i]                       (fp32; fp16/bf16 inputs accumulate in fp32)
    ids[b]  = the k items i ∉ exclude[b] with the largest s[b, i], by descending score
    scores[b, j] = s[b, ids[b, j]]

``exclude`` [B, X] (any integer dtype) lists item rows to skip per query; -1 is padding.
Exclusions can leave a row with fewer than k candidates (k is only checked against N):
the missing slots come last with score -inf and id -1. (An item whose score is itself
-inf, only possible with non-finite embeddings, may be returned as -1 instead.) Ties
between equal scores come in any order; ids are distinct within a row, except for -1.

Memory stays O(B·(chunk + k)): the torch path walks the catalogue in chunks and merges a
running top-k; the triton path keeps a running top-k on chip per catalogue slice (see
``_topk_items_triton``). Both are inference-only: results carry no gradient.

Sync policy: ``exclude`` values are range-checked ([-1, N-1]) only for CPU tensors (a
free host check) in eager mode; for CUDA tensors the check would cost a sync, and under
``torch.compile`` it would break the graph, so it is skipped there: out-of-range values
then simply exclude nothing (they are compared, never used as addresses).

Query and items must share one dtype (fp32, fp16 or bf16): casting a million-row
catalogue per call to match a query would cost more than the search, so the caller
chooses.
"""

from __future__ import annotations

import torch

from .._dispatch import FLOAT_DTYPES as _DTYPES
from .._dispatch import TRITON_MAX_ITEMS as TRITON_MAX_ITEMS  # the triton kernel's limits,
from .._dispatch import TRITON_MAX_K as TRITON_MAX_K  # stated in the dispatch table
from .._dispatch import check_serves, select
from .._validation import check_exclude, check_tensor

# Catalogue items scored per torch step: the [B, chunk] fp32 block is the path's largest
# intermediate, so the chunk shrinks as the batch grows (at most 2^24 scores, 64 MiB).
MAX_CHUNK_ITEMS = 65536
MAX_CHUNK_SCORES = 1 << 24


def default_chunk_items(batch: int) -> int:
    """Items per chunk of the torch path for a batch of ``batch`` queries."""
    return max(1024, min(MAX_CHUNK_ITEMS, MAX_CHUNK_SCORES // max(batch, 1)))


def check_topk_inputs(query, item_emb, k, exclude) -> None:
    """Shape/dtype/device/range checks shared by every backend (``ValueError``/``TypeError``)."""
    check_tensor("query", query, ndim=2, dtypes=_DTYPES)
    check_tensor("item_emb", item_emb, ndim=2, dtypes=_DTYPES, device=query.device)
    if item_emb.dtype != query.dtype:
        raise TypeError(f"item_emb must have the same dtype as query ({query.dtype}), got "
                        f"{item_emb.dtype}; cast one of them")
    if query.shape[1] < 1:
        raise ValueError(f"query must have at least one feature column, got shape {tuple(query.shape)}")
    if item_emb.shape[1] != query.shape[1]:
        raise ValueError(f"item_emb must have shape [N, d={query.shape[1]}] to match query, got "
                         f"{list(item_emb.shape)}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__} {k!r}")
    num_items = item_emb.shape[0]
    if not 1 <= k <= num_items:
        raise ValueError(f"k must be in [1, N={num_items}] (N = item_emb.shape[0]), got {k}")
    if exclude is not None:
        check_exclude("exclude", exclude, rows=query.shape[0], row_name="query",
                      num_items=num_items, device=query.device)


@torch.no_grad()
def topk_items_torch(query: torch.Tensor, item_emb: torch.Tensor, k: int,
                     exclude: torch.Tensor | None = None,
                     chunk_items: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked aten path; inputs already validated.

    Per chunk of ``chunk_items`` catalogue rows: score it (fp32), set excluded columns to
    -inf, take its top min(k, chunk), and merge with the running top-k by one more topk
    over the 2k-wide concatenation.
    """
    batch, num_items = query.shape[0], item_emb.shape[0]
    chunk = default_chunk_items(batch) if chunk_items is None else chunk_items
    q = query.float()
    best_scores = query.new_full((batch, k), float("-inf"), dtype=torch.float32)
    best_ids = torch.full((batch, k), -1, dtype=torch.int64, device=query.device)
    if batch == 0:
        return best_scores, best_ids
    ex = None if exclude is None or exclude.shape[1] == 0 else exclude.long()
    for start in range(0, num_items, chunk):
        width = min(chunk, num_items - start)
        scores = q @ item_emb[start:start + width].float().T  # [B, width]
        take = min(k, width)
        if ex is None:
            top = torch.topk(scores, take, dim=1)
            top_ids = top.indices + start
        else:
            # Excluded ids of this chunk become True in an extra-column mask (ids of other
            # chunks and padding land in the dropped last column); scatter of True is
            # order-independent, so duplicate ids are fine.
            local = ex - start
            local = torch.where((local >= 0) & (local < width), local, width)
            banned = torch.zeros((batch, width + 1), dtype=torch.bool, device=query.device)
            banned = banned.scatter_(1, local, True)[:, :width]
            scores.masked_fill_(banned, float("-inf"))
            top = torch.topk(scores, take, dim=1)
            top_ids = torch.where(banned.gather(1, top.indices), -1, top.indices + start)
        merged = torch.topk(torch.cat([best_scores, top.values], dim=1), k, dim=1)
        best_scores = merged.values
        best_ids = torch.cat([best_ids, top_ids], dim=1).gather(1, merged.indices)
    return best_scores, best_ids


def topk_items(query: torch.Tensor, item_emb: torch.Tensor, k: int,
               exclude: torch.Tensor | None = None,
               backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [B, k] fp32 descending, ids [B, k] int64): see the module docstring.

    query [B, d] and item_emb [N, d] share a dtype (fp32/fp16/bf16); 1 <= k <= N;
    exclude [B, X] integer item rows to skip (-1 = padding) or None. ``backend``: "auto",
    "torch" or "triton" (k <= TRITON_MAX_K). "auto" is torch for CPU tensors; for CUDA
    tensors the faster of triton and torch as measured on the first call per bucket (queries
    and exclusions per query rounded up to a power of two; N, d and k exact: ``_autotune``),
    torch where triton cannot serve k or N.
    """
    check_topk_inputs(query, item_emb, k, exclude)
    which = select("topk_items", backend, query.device, query.dtype,
                   rows=(("queries", query.shape[0]),
                         ("exclude", 0 if exclude is None else exclude.shape[1])),
                   exact=(("items", item_emb.shape[0]), ("d", query.shape[1]), ("k", k)),
                   run=lambda which: _run(which, query, item_emb, k, exclude))
    return _run(which, query, item_emb, k, exclude)


def _run(which: str, query, item_emb, k: int, exclude):
    if which == "torch":
        return topk_items_torch(query, item_emb, k, exclude)
    return topk_items_triton(query, item_emb, k, exclude)


def topk_items_triton(query: torch.Tensor, item_emb: torch.Tensor, k: int,
                      exclude: torch.Tensor | None = None,
                      tiles_per_slice: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The triton path (inputs validated by ``topk_items``); inference only.

    ``tiles_per_slice`` (items per program / the kernel's tile width) is for tests and
    tuning; None picks it from the device.
    """
    check_serves("topk_items", "triton", query.dtype, (("k", k), ("items", item_emb.shape[0])))
    if tiles_per_slice is not None and (isinstance(tiles_per_slice, bool)
                                        or not isinstance(tiles_per_slice, int) or tiles_per_slice < 1):
        raise ValueError(f"tiles_per_slice must be None or a positive int, got {tiles_per_slice!r}")
    from . import _topk_items_triton  # noqa: F401  (import registers torch.ops.l2rec.topk_items)

    if exclude is None:
        exclude = torch.empty((query.shape[0], 0), dtype=torch.int64, device=query.device)
    with torch.no_grad():
        return torch.ops.l2rec.topk_items(query, item_emb, k, exclude, tiles_per_slice or 0)
