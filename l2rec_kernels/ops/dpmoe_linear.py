"""``dpmoe_linear``: a frozen linear plus per-view gated low-rank experts, and optional
ungated shared experts.

    y[i] = x[i] Wᵀ + b + scaling · Σ_e g[i, e] · (x[i] lora_a[v, e]ᵀ) lora_b[v, e]ᵀ
                       + scaling · Σ_f (x[i] shared_a[f]ᵀ) shared_b[f]ᵀ
    for row i of sequence s (cu_seqlens[s] <= i < cu_seqlens[s+1]), v = seq_view[s], and
    g[i] = gates[s] (one gate row per sequence) or gates[i] (``per_row_gates=True``).

Whatever the gates, the expert sum is one low-rank product of rank V·E·r (+ Es·r for the
shared experts) with a per-row scaling in the middle (docs/design.md section 2):

    Σ_e g[e] (x A[v,e]ᵀ) B[v,e]ᵀ = ((x A_allᵀ) ⊙ coef) B_all,   A_all = lora_a as [V·E·r, d_in]
    coef[i, (v', e, j)] = scaling · g[i, e] if v' == seq_view[s] else 0;  scaling for shared

Backends: ``"torch"`` (aten ops, differentiable, the CPU default) and ``"triton"``
(``_dpmoe_linear_triton``: inference only, GPU or CPU under ``TRITON_INTERPRET=1``). ``"auto"``
is torch for CPU tensors, and torch whenever grad mode is on and an input requires grad
(training); otherwise, for CUDA tensors, the faster of triton and torch as measured on the
first call per bucket (rows rounded up to a power of two; d_in, d_out, V, E, r, the number
of shared experts and the gate layout exact: ``_autotune``). ``"cuda"`` is not implemented
for this op.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._dispatch import needs_grad, select
from .._validation import (
    check_finite,
    check_float,
    check_int,
    check_range,
    check_shape,
    values_are_free,
)


def dpmoe_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 lora_a: torch.Tensor, lora_b: torch.Tensor, gates: torch.Tensor,
                 seq_view: torch.Tensor, cu_seqlens: torch.Tensor, scaling: float,
                 backend: str = "auto", *, shared_a: torch.Tensor | None = None,
                 shared_b: torch.Tensor | None = None, per_row_gates: bool = False,
                 validate: bool | None = None) -> torch.Tensor:
    """Frozen linear + dual-view mixture of low-rank experts (+ optional shared experts).

    Args:
        x: [M, d_in] float (fp32, fp16, bf16; fp64 on the torch backend only).
        weight: [d_out, d_in], bias: [d_out] or None.
        lora_a: [V, E, r, d_in]; lora_b: [V, E, d_out, r] (view, expert, ...).
        gates: [S, E], one row per sequence; [M, E], one row per x row, with
            ``per_row_gates=True`` (token-level routing).
        seq_view: [S] integer in [0, V): the view (expert set) each sequence uses.
        cu_seqlens: [S+1] integer, 0 = cu_seqlens[0] <= ... <= cu_seqlens[S] = M; rows
            cu_seqlens[s]:cu_seqlens[s+1] belong to sequence s (empty sequences allowed).
        scaling: python real number (alpha / r), multiplies the expert sum.
        backend: "auto", "torch" or "triton" ("cuda" is not implemented for this op).
        shared_a: [Es, r, d_in], shared_b: [Es, d_out, r], both or neither: experts every
            row uses ungated (coefficient ``scaling``), whatever its view.
        per_row_gates: whether ``gates`` has one row per x row instead of per sequence.
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
    _check_metadata(x, weight, bias, lora_a, lora_b, gates, seq_view, cu_seqlens, scaling,
                    shared_a, shared_b, per_row_gates)
    if _want_value_checks(validate, x):
        _check_values(x, lora_a, gates, seq_view, cu_seqlens)
    scaling = float(scaling)
    V, E, R, d_in = lora_a.shape

    def run(which: str) -> torch.Tensor:
        if which == "triton":
            return triton_op()(x, weight, bias, lora_a, lora_b, gates, seq_view, cu_seqlens,
                               scaling, shared_a, shared_b, per_row_gates)
        return dpmoe_linear_torch(x, weight, bias, lora_a, lora_b, gates, seq_view, cu_seqlens,
                                  scaling, shared_a=shared_a, shared_b=shared_b,
                                  per_row_gates=per_row_gates)

    which = select(
        "dpmoe_linear", backend, x.device, x.dtype, rows=(("rows", x.shape[0]),),
        exact=(("d_in", d_in), ("d_out", weight.shape[0]), ("V", V), ("E", E), ("r", R),
               ("Es", 0 if shared_a is None else shared_a.shape[0]),
               ("per_row_gates", int(per_row_gates))),
        grad_inputs=(x, weight, bias, lora_a, lora_b, gates, shared_a, shared_b), run=run)
    return run(which)


# The per-view path pays a few small launches per run of same-view rows; below this many
# rows per run on average the single concatenated expand is cheaper.
MIN_ROWS_PER_RUN = 128


def dpmoe_linear_torch(x, weight, bias, lora_a, lora_b, gates, seq_view, cu_seqlens,
                       scaling: float, *, shared_a=None, shared_b=None, per_row_gates=False,
                       split_views: bool | None = None,
                       base: torch.Tensor | None = None, view_runs: list | None = None) -> torch.Tensor:
    """The torch path (inputs already validated). Never builds [rows, E, d_out]; every op is
    differentiable; the output is the base GEMM's contiguous buffer.

    Two ways to add the experts to the base GEMM ``y = x Wᵀ + b``:

    * concatenated (sync-free: CUDA tensors, torch.compile): ONE shrink over both views'
      experts and the shared ones, so x is read once (a shrink per view re-reads x, which is
      memory-bound next to the base GEMM); the coefficient (scaling folded in, 0 for the
      unused view) multiplies h viewed as [M, V·E + Es, r], never repeated over r; one
      expand into y.
    * per view run (CPU eager, the default there): rows come in runs of consecutive
      sequences of one view (FusedL2Rec stacks view-major: 2 runs). Each run shrinks and
      expands with its own view's experts (and the shared ones) only: x is still read once
      (runs are disjoint) and the zero half of the concatenated product is skipped
      (bench/kernel_dpmoe_linear.py times both strategies).
      Finding the runs reads seq_view and cu_seqlens on the host, free for CPU tensors.

    ``split_views``: None = per-view runs when the tensors are on the CPU, not under
    torch.compile, and runs average >= MIN_ROWS_PER_RUN rows; True/False force (tests).

    ``view_runs``: the runs as ``_view_runs`` gives them, [(row_lo, row_hi, seq_lo, seq_hi,
    view)], when the caller knows them from shapes (FusedL2Rec while torch.compile traces a
    padded forward): the per-view path without reading metadata, whatever ``split_views``.

    ``base``: ``x Wᵀ + b`` already computed by the caller (a contiguous [M, d_out] tensor,
    which receives the experts in place and is returned); FusedL2Rec passes it when x's
    rows are one block repeated, so the base GEMM runs on one copy only.
    """
    if x.shape[0] == 0:
        return F.linear(x, weight, bias) if base is None else base
    M = x.shape[0]
    V, E, R, d_in = lora_a.shape
    d_out = weight.shape[0]
    # B_all: lora_b's [d_out, r] blocks transposed to [E·r, d_out] per view; one small copy
    # (V·E·r·d_out elements), since lora_b's layout cannot be flattened to it as a view.
    b_all = lora_b.transpose(-1, -2).reshape(V, E * R, d_out)
    shared = None
    if shared_a is not None:  # the shared experts join every shrink and expand as extra columns
        es = shared_a.shape[0]
        shared = (shared_a.reshape(es * R, d_in), shared_b.transpose(-1, -2).reshape(es * R, d_out),
                  x.new_full((1, es), scaling))
    if view_runs is not None:
        runs = view_runs
    else:
        forced = split_views is not None
        if not forced:
            split_views = values_are_free(x)
        runs = _view_runs(seq_view, cu_seqlens, 1 if forced else MIN_ROWS_PER_RUN) if split_views else None
    if runs is None:
        y = F.linear(x, weight, bias) if base is None else base
        coef = _row_coefficients(gates, seq_view, cu_seqlens, V, scaling, M, per_row_gates)
        _add_experts(y, x, lora_a.reshape(V * E * R, d_in), b_all.reshape(V * E * R, d_out),
                     coef, R, shared)
        return y
    lengths = None if per_row_gates else (cu_seqlens[1:] - cu_seqlens[:-1]).long()

    def add_run_experts(y_run, x_run, row_lo, row_hi, seq_lo, seq_hi, v) -> None:
        """y_run += the experts of view ``v`` on x_run, the run's rows (in place)."""
        if per_row_gates:
            coef = gates[row_lo:row_hi] * scaling                                # [n, E]
        else:
            coef = torch.repeat_interleave(gates[seq_lo:seq_hi] * scaling, lengths[seq_lo:seq_hi],
                                           dim=0, output_size=row_hi - row_lo)
        _add_experts(y_run, x_run, lora_a[v].reshape(E * R, d_in), b_all[v], coef, R, shared)

    # Each run's base GEMM is its own, right before its experts update its rows: the run's
    # output is then still in cache, and a GEMM over half the rows of a stacked batch runs
    # as fast per row as the reference's per-view GEMMs.
    if not needs_grad(x, weight, bias, lora_a, lora_b, gates, shared_a, shared_b):
        y = x.new_empty((M, d_out)) if base is None else base
        for run in runs:
            y_run, x_run = y[run[0]:run[1]], x[run[0]:run[1]]  # row ranges: contiguous memory
            if base is None:
                _linear_into(y_run, x_run, weight, bias)
            add_run_experts(y_run, x_run, *run)
        return y
    # Under autograd each run gets an output of its own, joined by one cat: in-place updates
    # of row ranges of one output would make backward copy the whole output once per range
    # (CopySlices), and split (not slicing) lets backward join x's gradient with one cat.
    sizes = [row_hi - row_lo for row_lo, row_hi, *_ in runs]
    xs = x.split(sizes)
    bases = base.split(sizes) if base is not None else [None] * len(runs)
    parts = []
    for x_run, base_run, run in zip(xs, bases, runs):
        y_run = F.linear(x_run, weight, bias) if base_run is None else base_run.clone()
        add_run_experts(y_run, x_run, *run)
        parts.append(y_run)
    return torch.cat(parts)


def _linear_into(out, x, weight, bias) -> None:
    """out = x weightᵀ + bias, written into ``out`` (no autograd: callers run without grad)."""
    if bias is None:
        torch.mm(x, weight.t(), out=out)
    else:
        torch.addmm(bias, x, weight.t(), out=out)


def _add_experts(y, x, a_cat, b_cat, coef, rank: int, shared) -> None:
    """y += ((x a_catᵀ) ⊙ coef repeated over each expert's r columns) b_cat, in place.

    ``shared`` (None or (a [Es·r, d_in], b [Es·r, d_out], coef row [1, Es])) appends the
    shared experts' columns, so x is read by one shrink and y written by one expand."""
    n = x.shape[0]
    if shared is not None:
        a_cat, b_cat = torch.cat([a_cat, shared[0]]), torch.cat([b_cat, shared[1]])
        coef = torch.cat([coef, shared[2].expand(n, -1)], dim=1)
    h = F.linear(x, a_cat)                                                  # [n, cols]
    h = (h.view(n, -1, rank) * coef.unsqueeze(-1)).view(n, -1)
    # In place into the base output: y stays contiguous, no second [n, d_out] buffer.
    # Autograd allows it: linear saves x and W for backward, not its output.
    y.addmm_(h, b_cat)


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
                      num_rows: int, per_row_gates: bool = False) -> torch.Tensor:
    """coef [M, V·E]: row i of sequence s gets scaling·g[i] in seq_view[s]'s block, 0 elsewhere
    (g[i] = gates[s], or gates[i] with per-row gates)."""
    E = gates.shape[1]
    views = torch.arange(num_views, device=gates.device)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    # output_size: the result size is known, so no device->host sync to sum the lengths.
    if per_row_gates:  # expand the views to rows, keep the gates as they are
        row_view = torch.repeat_interleave(seq_view, lengths, output_size=num_rows)
        uses = (row_view.view(-1, 1, 1) == views.view(1, num_views, 1)).to(gates.dtype)
        return (uses * (gates * scaling).unsqueeze(1)).reshape(num_rows, num_views * E)
    S = gates.shape[0]
    uses = (seq_view.view(S, 1, 1) == views.view(1, num_views, 1)).to(gates.dtype)  # [S, V, 1]
    per_seq = (uses * (gates * scaling).unsqueeze(1)).reshape(S, num_views * E)
    return torch.repeat_interleave(per_seq, lengths, dim=0, output_size=num_rows)


def triton_op():
    """``torch.ops.l2rec.dpmoe_linear``, registered on first use (importing the kernels
    imports triton, which must not happen at package import)."""
    from . import _dpmoe_linear_triton  # noqa: F401  (import registers the op)

    return torch.ops.l2rec.dpmoe_linear


def _want_value_checks(validate: bool | None, x: torch.Tensor) -> bool:
    if validate is not None:
        if not isinstance(validate, bool):
            raise TypeError(f"validate must be None, True or False, got {validate!r}")
        return validate
    return values_are_free(x)


def _check_metadata(x, weight, bias, lora_a, lora_b, gates, seq_view, cu_seqlens, scaling,
                    shared_a=None, shared_b=None, per_row_gates=False):
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
    if not isinstance(per_row_gates, bool):
        raise TypeError(f"per_row_gates must be a bool, got {type(per_row_gates).__name__}")
    check_float("gates", gates, ndim=2, device=dev)
    # One gate row per sequence (S = gates.shape[0]), or per x row with per_row_gates.
    check_shape("gates", gates, (M if per_row_gates else None, E))
    check_int("seq_view", seq_view, ndim=1, device=dev)
    if not per_row_gates:
        check_shape("seq_view", seq_view, (gates.shape[0],))
    S = seq_view.shape[0]
    check_int("cu_seqlens", cu_seqlens, ndim=1, device=dev)
    check_shape("cu_seqlens", cu_seqlens, (S + 1,))
    if S == 0 and M > 0:
        raise ValueError(f"x has {M} rows but gates/seq_view describe 0 sequences")
    if (shared_a is None) != (shared_b is None):
        raise ValueError("shared_a and shared_b must be given together (or neither), got "
                         f"shared_a={'None' if shared_a is None else 'a tensor'} and "
                         f"shared_b={'None' if shared_b is None else 'a tensor'}")
    if shared_a is not None:
        check_float("shared_a", shared_a, ndim=3, device=dev)
        check_shape("shared_a", shared_a, (None, R, d_in))
        if shared_a.shape[0] < 1:
            raise ValueError(f"shared_a [Es, r, d_in] needs Es >= 1, got shape {list(shared_a.shape)}")
        check_float("shared_b", shared_b, ndim=3, device=dev)
        check_shape("shared_b", shared_b, (shared_a.shape[0], d_out, R))
    for name, t in (("weight", weight), ("bias", bias), ("lora_a", lora_a), ("lora_b", lora_b),
                    ("gates", gates), ("shared_a", shared_a), ("shared_b", shared_b)):
        if t is not None and t.dtype != dt:
            raise TypeError(f"{name} must have x's dtype {dt} (no implicit casts), got {t.dtype}")
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)):
        raise TypeError(f"scaling must be a python float or int, got {type(scaling).__name__}")
    if not -math.inf < scaling < math.inf:  # (a comparison, not math.isfinite: see route)
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
