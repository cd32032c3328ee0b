"""``route``: router logits -> dense expert gates (docs/design.md section 3).

For logits ``x`` [S, E] and temperature τ > 0, row by row::

    p = softmax(x / τ)                                   (dense, top_k None or E)
    K = the top_k largest logits (ties: lowest index first)
    g[e] = p[e] / Σ_{e'∈K} p[e']  for e ∈ K,  else 0    (top-k, renormalised)

computed in fp32 (fp64 for fp64 input on the torch backend) and returned in the logits'
dtype. Note ``Σ_{K} p`` renormalisation equals ``softmax`` over the kept logits alone.

The top-k set is chosen on the fp32 logits themselves (same order as ``x / τ``, since
τ > 0) so that every backend compares the same exact numbers: no backend's division
rounding can change which experts are kept.

Backends: ``"torch"`` (plain aten, differentiable; the reference model trains through it),
``"triton"`` (one launch for all rows, inference only), ``"cuda"`` (the compiled
extension, inference only). ``"auto"``: torch for CPU tensors and whenever the logits require
grad under grad mode; for CUDA tensors otherwise the fastest of cuda, triton and torch as
measured on the first call per bucket (rows rounded up to a power of two; E and top_k
exact: ``_autotune``).

Sync policy: non-finite logits are rejected with ``ValueError`` for CPU tensors (a free
host check). For CUDA tensors the check is skipped, because it would force a
device->host sync on the hot path; non-finite logits there give unspecified gates
(NaN in, NaN out). The check is also skipped while ``torch.compile`` traces, so that the
torch path compiles into one graph.
"""

from __future__ import annotations

import math
import numbers

import torch

from .._dispatch import FLOAT_DTYPES, select
from .._validation import check_finite, check_tensor, values_are_free

_TORCH_DTYPES = (*FLOAT_DTYPES, torch.float64)  # fp64 only on the torch path (gradcheck)


def _check_top_k(top_k, num_experts: int) -> int | None:
    if top_k is None:
        return None
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral):
        raise TypeError(f"top_k must be None or an int, got {type(top_k).__name__} {top_k!r}")
    top_k = int(top_k)
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in [1, E={num_experts}] (E = logits.shape[1]), got {top_k}")
    return top_k


def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a real number, got {type(temperature).__name__} "
                        f"{temperature!r}")
    value = float(temperature)
    # One chained comparison (False for NaN, inf and <= 0), not math.isfinite: under
    # torch.compile(dynamic=True) the temperature is a symbolic float, which comparisons
    # take (as guards) and math.isfinite does not.
    if not 0.0 < value < math.inf:
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    return value


def route_torch(logits: torch.Tensor, top_k: int | None, temperature: float) -> torch.Tensor:
    """The aten path; inputs already validated. Differentiable."""
    compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(compute)
    probs = torch.softmax(x / temperature, dim=-1)
    num_experts = logits.shape[-1]
    if top_k is None or top_k == num_experts:
        return probs.to(logits.dtype)
    # A stable descending sort keeps equal logits in index order, which gives the
    # lowest-index tie-break the other backends implement (torch.topk promises no order
    # among ties). E is small (experts), so the sort is as cheap as topk.
    order = torch.sort(x.detach(), dim=-1, descending=True, stable=True).indices[:, :top_k]
    keep = torch.zeros_like(x, dtype=torch.bool).scatter(-1, order, True)
    kept = probs * keep
    return (kept / kept.sum(dim=-1, keepdim=True)).to(logits.dtype)


def route(logits: torch.Tensor, top_k: int | None = None, temperature: float = 1.0,
          backend: str = "auto") -> torch.Tensor:
    """Gates [S, E] (logits' dtype) from router logits [S, E]; see the module docstring.

    ``top_k`` None or E: dense softmax; 1 <= top_k < E: keep the top_k largest per row
    (ties: lowest index), zero the rest, renormalise to sum 1. ``temperature`` > 0 divides
    the logits before the softmax. ``backend``: "auto", "torch", "triton" or "cuda"; the
    triton and cuda backends are inference-only and raise if a gradient is wanted.
    """
    check_tensor("logits", logits, ndim=2, dtypes=_TORCH_DTYPES)
    num_rows, num_experts = logits.shape
    if num_experts < 1:
        raise ValueError(f"logits must have at least one expert column, got shape {tuple(logits.shape)}")
    top_k = _check_top_k(top_k, num_experts)
    temperature = _check_temperature(temperature)
    if values_are_free(logits):
        check_finite("logits", logits)  # free on the host; skipped on CUDA (no sync)

    def run(which: str) -> torch.Tensor:
        return _run(which, logits, top_k, temperature)

    which = select("route", backend, logits.device, logits.dtype, rows=(("rows", num_rows),),
                   exact=(("E", num_experts), ("top_k", top_k or 0)), grad_inputs=(logits,),
                   run=run)
    if num_rows == 0:
        return logits.new_empty((0, num_experts))
    return run(which)


def _run(which: str, logits: torch.Tensor, top_k: int | None, temperature: float) -> torch.Tensor:
    if which == "torch":
        return route_torch(logits, top_k, temperature)
    if which == "triton":
        from ._route_triton import route_triton

        return route_triton(logits, top_k, temperature)
    from . import _cuda_ext  # the compiled extension's wrapper; imported only when asked

    return _cuda_ext.route_cuda(logits, top_k, temperature)
