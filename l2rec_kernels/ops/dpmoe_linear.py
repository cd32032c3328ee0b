"""``dpmoe_linear``: a frozen linear plus per-sequence, per-view gated low-rank experts.

    y[i] = x[i] Wᵀ + b + scaling · Σ_e gates[s, e] · (x[i] lora_a[v, e]ᵀ) lora_b[v, e]ᵀ
    for row i of sequence s (cu_seqlens[s] <= i < cu_seqlens[s+1]) and v = seq_view[s].

Because a gate is per sequence, not per row, the expert sum is one low-rank product of rank
V·E·r with a per-row scaling in the middle (docs/design.md section 2):

    Σ_e g[e] (x A[v,e]ᵀ) B[v,e]ᵀ = ((x A_allᵀ) ⊙ coef) B_all,   A_all = lora_a as [V·E·r, d_in]
    coef[i, (v', e, j)] = scaling · gates[s, e] if v' == seq_view[s] else 0

Backends: ``"torch"`` (aten ops, differentiable, the CPU default) and ``"triton"``
(``_dpmoe_triton``: inference only, GPU or CPU under ``TRITON_INTERPRET=1``); ``"auto"`` is
triton for CUDA tensors and torch for CPU tensors. ``"cuda"`` is not implemented for this op.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._backend import resolve_backend_traceable
from .._validation import (
    check_finite,
    check_float,
    check_int,
    check_range,
    check_shape,
    values_are_free,
)

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def dpmoe_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 lora_a: torch.Tensor, lora_b: torch.Tensor, gates: torch.Tensor,
                 seq_view: torch.Tensor, cu_seqlens: torch.Tensor, scaling: float,
                 backend: str = "auto", *, validate: bool | None = None) -> torch.Tensor:
    """Frozen linear + dual-view mixture of low-rank experts, one gate row per sequence.

    Args:
        x: [M, d_in] float (fp32, fp16, bf16; fp64 on the torch backend only).
        weight: [d_out, d_in], bias: [d_out] or None.
        lora_a: [V, E, r, d_in]; lora_b: [V, E, d_out, r] (view, expert, ...).
        gates: [S, E], one row per sequence.
        seq_view: [S] integer in [0, V): the view (expert set) each sequence uses.
        cu_seqlens: [S+1] integer, 0 = cu_seqlens[0] <= ... <= cu_seqlens[S] = M; rows
            cu_seqlens[s]:cu_seqlens[s+1] belong to sequence s (empty sequences allowed).
        scaling: python real number (alpha / r), multiplies the expert sum.
        backend: "auto", "torch" or "triton" ("cuda" is not implemented for this op).
        validate: value checks (seq_view range, cu_seqlens offsets, finite gates) read tensor
            values, i.e. a device->host sync. ``None`` (default) = run them for CPU tensors and
            skip them for CUDA tensors and while torch.compile traces; ``True`` = always (syncs
            on CUDA); ``False`` = never. Shape/dtype/device checks always run (they are free).
            Float tensors must all have x's dtype (no silent casts: TypeError otherwise).

    Returns:
        y [M, d_out], contiguous, x's dtype.

    The torch backend is made of differentiable aten ops (training works). The triton
    backend is inference only: it raises RuntimeError if grad mode is on and an input
    requires grad. Even without value checks the triton kernels never read out of bounds.
    """
    _check_metadata(x, weight, bias, lora_a, lora_b, gates, seq_view, cu_seqlens, scaling)
    name = resolve_backend_traceable(backend, x.device.type, "dpmoe_linear", ("triton", "torch"))
    if _want_value_checks(validate, x):
        _check_values(x, lora_a, gates, seq_view, cu_seqlens)
    if name == "triton":
        if x.dtype not in TRITON_DTYPES:
            raise TypeError(f"backend='triton' supports x dtypes float32, float16, bfloat16 for "
                            f"dpmoe_linear, got {x.dtype}; use backend='torch'")
        _refuse_grad(x, weight, bias, lora_a, lora_b, gates)
        return triton_op()(x, weight, bias, lora_a, lora_b, gates, seq_view, cu_seqlens,
                           float(scaling))
    return dpmoe_linear_torch(x, weight, bias, lora_a, lora_b, gates, seq_view, cu_seqlens,
                              float(scaling))


# The per-view path pays a few small launches per run of same-view rows; below this many
# rows per run on average the single concatenated expand is cheaper.
MIN_ROWS_PER_RUN = 128


def dpmoe_linear_torch(x, weight, bias, lora_a, lora_b, gates, seq_view, cu_seqlens,
                       scaling: float, *, split_views: bool | None = None,
                       base: torch.Tensor | None = None) -> torch.Tensor:
    """The torch path (inputs already validated). Never builds [rows, E, d_out]; every op is
    differentiable; the output is the base GEMM's contiguous buffer.

    Two ways to add the experts to the base GEMM ``y = x Wᵀ + b``:

    * concatenated (sync-free: CUDA tensors, torch.compile): ONE shrink over both views'
      experts, so x is read once (a shrink per view re-reads x, which is memory-bound
      next to the base GEMM); the gate coefficient (scaling folded in, 0 for the unused view)
      multiplies h viewed as [M, V·E, r], never repeated over r; one expand into y.
    * per view run (CPU eager, the default there): rows come in runs of consecutive
      sequences of one view (FusedL2Rec stacks view-major: 2 runs). Each run shrinks and
      expands with its own view's experts only: x is still read once (runs are disjoint)
      and the zero half of the concatenated product is skipped (bench/kernel_dpmoe_linear.py
      times both strategies).
      Finding the runs reads seq_view and cu_seqlens on the host, free for CPU tensors.

    ``split_views``: None = per-view runs when the tensors are on the CPU, not under
    torch.compile, and runs average >= MIN_ROWS_PER_RUN rows; True/False force (tests).

    ``base``: ``x Wᵀ + b`` already computed by the caller (a contiguous [M, d_out] tensor,
    which receives the experts in place and is returned); FusedL2Rec passes it when x's
    rows are one block repeated, so the base GEMM runs on one copy only.
    """
    y = F.linear(x, weight, bias) if base is None else base
    if x.shape[0] == 0:
        return y
    V, E, R, d_in = lora_a.shape
    d_out = weight.shape[0]
    # B_all: lora_b's [d_out, r] blocks transposed to [E·r, d_out] per view; one small copy
    # (V·E·r·d_out elements), since lora_b's layout cannot be flattened to it as a view.
    b_all = lora_b.transpose(-1, -2).reshape(V, E * R, d_out)
    forced = split_views is not None
    if not forced:
        split_views = values_are_free(x)
    runs = _view_runs(seq_view, cu_seqlens, 1 if forced else MIN_ROWS_PER_RUN) if split_views else None
    if runs is None:
        M = x.shape[0]
        h = F.linear(x, lora_a.reshape(V * E * R, d_in))                       # [M, V·E·r]
        coef = _row_coefficients(gates, seq_view, cu_seqlens, V, scaling, M)  # [M, V·E]
        h = (h.view(M, V * E, R) * coef.unsqueeze(-1)).view(M, V * E * R)
        # In place into the base output: y stays contiguous, no second [M, d_out] buffer.
        # Autograd allows it: linear saves x and W for backward, not its output.
        return y.addmm_(h, b_all.reshape(V * E * R, d_out))  # a view when b_all was copied
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    for row_lo, row_hi, seq_lo, seq_hi, v in runs:
        n = row_hi - row_lo
        h = F.linear(x[row_lo:row_hi], lora_a[v].reshape(E * R, d_in))       # [n, E·r]
        coef = torch.repeat_interleave(gates[seq_lo:seq_hi] * scaling, lengths[seq_lo:seq_hi],
                                       dim=0, output_size=n)                # [n, E]
        h = (h.view(n, E, R) * coef.unsqueeze(-1)).view(n, E * R)
        y[row_lo:row_hi].addmm_(h, b_all[v])  # a row range of y: still contiguous memory
    return y


def _view_runs(seq_view, cu_seqlens, min_rows_per_run: int):
    """Maximal runs of consecutive non-empty sequences with one view, as
    [(row_lo, row_hi, seq_lo, seq_hi, view)], or None when runs average fewer than
    ``min_rows_per_run`` rows. Empty sequences never break a run (they own no rows; their
    gates are repeated 0 times). Reads the (small) metadata tensors on the host."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    nonempty = (lengths > 0).nonzero().flatten()
    if nonempty.numel() == 0:
        return []
    views = seq_view[nonempty]
    starts = torch.ones_like(views, dtype=torch.bool)
    starts[1:] = views[1:] != views[:-1]
    first = nonempty[starts]
    total_rows = int(cu_seqlens[-1])
    if total_rows < min_rows_per_run * first.numel():
        return None
    first_seq = first.tolist()
    run_views = seq_view[first].tolist()
    offsets = cu_seqlens[first].tolist()
    ends_seq = [*first_seq[1:], seq_view.shape[0]]
    ends_row = [*offsets[1:], total_rows]
    return list(zip(offsets, ends_row, first_seq, ends_seq, run_views))


def _row_coefficients(gates, seq_view, cu_seqlens, num_views: int, scaling: float,
                      num_rows: int) -> torch.Tensor:
    """coef [M, V·E]: row i of sequence s gets scaling·gates[s] in its view's block, 0 elsewhere."""
    S, E = gates.shape
    views = torch.arange(num_views, device=gates.device)
    uses = (seq_view.view(S, 1, 1) == views.view(1, num_views, 1)).to(gates.dtype)  # [S, V, 1]
    per_seq = (uses * (gates * scaling).unsqueeze(1)).reshape(S, num_views * E)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    # output_size: the result size is known, so no device->host sync to sum the lengths.
    return torch.repeat_interleave(per_seq, lengths, dim=0, output_size=num_rows)


def triton_op():
    """``torch.ops.l2rec.dpmoe_linear``, registered on first use (importing the kernels
    imports triton, which must not happen at package import)."""
    from . import _dpmoe_triton  # noqa: F401  (import registers the op)

    return torch.ops.l2rec.dpmoe_linear


def _refuse_grad(*tensors) -> None:
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(
            "dpmoe_linear backend='triton' is inference-only (no backward); an input requires "
            "grad with grad mode on: use backend='torch' for training, or run under "
            "torch.no_grad() / torch.inference_mode()")


def _want_value_checks(validate: bool | None, x: torch.Tensor) -> bool:
    if validate is not None:
        if not isinstance(validate, bool):
            raise TypeError(f"validate must be None, True or False, got {validate!r}")
        return validate
    return values_are_free(x)


def _check_metadata(x, weight, bias, lora_a, lora_b, gates, seq_view, cu_seqlens, scaling):
    """Types, ranks, shapes, dtypes and devices: free (no tensor values are read)."""
    check_float("x", x, ndim=2)
    dev, dt = x.device, x.dtype
    M, d_in = x.shape
    check_float("weight", weight, ndim=2, device=dev)
    d_out = weight.shape[0]
    check_shape("weight", weight, (None, d_in))
    if bias is not None:
        check_float("bias", bias, ndim=1, device=dev)
        check_shape("bias", bias, (d_out,))
    check_float("lora_a", lora_a, ndim=4, device=dev)
    check_shape("lora_a", lora_a, (None, None, None, d_in))
    V, E, R, _ = lora_a.shape
    if min(V, E, R) < 1:
        raise ValueError(f"lora_a [V, E, r, d_in] needs V, E, r >= 1, got shape {list(lora_a.shape)}")
    check_float("lora_b", lora_b, ndim=4, device=dev)
    check_shape("lora_b", lora_b, (V, E, d_out, R))
    check_float("gates", gates, ndim=2, device=dev)
    check_shape("gates", gates, (None, E))
    S = gates.shape[0]
    check_int("seq_view", seq_view, ndim=1, device=dev)
    check_shape("seq_view", seq_view, (S,))
    check_int("cu_seqlens", cu_seqlens, ndim=1, device=dev)
    check_shape("cu_seqlens", cu_seqlens, (S + 1,))
    if S == 0 and M > 0:
        raise ValueError(f"x has {M} rows but gates/seq_view describe 0 sequences")
    for name, t in (("weight", weight), ("bias", bias), ("lora_a", lora_a), ("lora_b", lora_b),
                    ("gates", gates)):
        if t is not None and t.dtype != dt:
            raise TypeError(f"{name} must have x's dtype {dt} (no implicit casts), got {t.dtype}")
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)):
        raise TypeError(f"scaling must be a python float or int, got {type(scaling).__name__}")
    if not math.isfinite(scaling):
        raise ValueError(f"scaling must be finite, got {scaling}")


def _check_values(x, lora_a, gates, seq_view, cu_seqlens) -> None:
    """Checks that read tensor values (one device->host sync each on CUDA)."""
    check_range("seq_view", seq_view, 0, lora_a.shape[0] - 1)
    M = x.shape[0]
    first, last = int(cu_seqlens[0]), int(cu_seqlens[-1])
    if first != 0:
        raise ValueError(f"cu_seqlens[0] must be 0, got {first}")
    if last != M:
        raise ValueError(f"cu_seqlens[-1] must equal x.shape[0] = {M}, got {last}")
    if cu_seqlens.numel() > 1 and bool((cu_seqlens[1:] < cu_seqlens[:-1]).any()):
        raise ValueError("cu_seqlens must be non-decreasing (sequence s has rows "
                         "cu_seqlens[s]:cu_seqlens[s+1])")
    check_finite("gates", gates)
