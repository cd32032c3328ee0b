"""Triton kernels and launcher for ``dpmoe_linear`` (docs/design.md sections 2, 3 and 6).

    y[m] = x[m] Wᵀ + b + Σ_c h[m, c] B_all[c]
    h[m, c] = scaling · g[m, e] · [seq_view[s] == v] · (x[m] · A_all[c])       c < V·E·r
    h[m, c] = scaling · (x[m] · A_all[c])                                       shared columns
    c = (v·E + e)·r + j,   A_all[c] = lora_a[v, e, j],   B_all[c, n] = lora_b[v, e, n, j]
    c = V·E·r + f·r + j,   A_all[c] = shared_a[f, j],    B_all[c, n] = shared_b[f, n, j]

with ``s`` the sequence of row ``m`` (``cu_seqlens[s] <= m < cu_seqlens[s+1]``) and g[m] =
gates[s] (or gates[m] with per-row gates). The shared experts are just more columns of the
same shrink and expand, read through a second pointer. Two launches:

1. ``_dpmoe_shrink_kernel``: ``h = x · A_allᵀ`` over both views' experts at once (``x`` is read
   once), gate-scaled in its epilogue; a row's columns for the view it does not use get 0.
2. ``_dpmoe_base_expand_kernel``: the base GEMM ``x Wᵀ`` with the expand ``h · B_all`` as extra
   reduction steps on the same accumulator, then the bias, then one store: the output is
   written once and no ``[rows, E, d_out]`` tensor exists.

This module imports triton, so it is imported only when the triton backend is first used
(``TRITON_INTERPRET`` must be set before triton is imported). Importing it registers the
``l2rec::dpmoe_linear`` op: with ``torch.library.triton_op`` for compiled triton, as an
opaque ``custom_op`` under the interpreter (see the registration at the bottom).

Nothing here reads a tensor's values on the host: the launch is sync-free. Even with
unvalidated metadata the kernels never read out of bounds (sequence ids are clamped to
``[0, S)``, views are only compared, never used as addresses).
"""

import torch
import triton
import triton.language as tl

from ._triton_util import INTERPRETER, launch, register_triton_op


@triton.jit
def _dpmoe_shrink_kernel(
    x_ptr, a_ptr, sa_ptr, gates_ptr, view_ptr, cu_ptr, h_ptr,
    M, K, S, E, VER, ESR, scaling, n_search,
    stride_xm, stride_xk,
    stride_av, stride_ae, stride_ar, stride_ak,
    stride_sf, stride_sr, stride_sk,
    stride_gs, stride_ge,
    stride_hm,
    R: tl.constexpr, HAS_SHARED: tl.constexpr, PER_ROW_GATES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SHARED_N: tl.constexpr,
):
    """Gate-scaled shrink, one [BLOCK_M, BLOCK_N] tile of h [M, V·E·r + Es·r]:

        h[m, c] = scaling · g[m, e(c)] · [seq_view[s(m)] == v(c)]
                  · Σ_k x[m, k] · lora_a[v(c), e(c), j(c), k]          (c < VER = V·E·r)
        h[m, VER + f·r + j] = scaling · Σ_k x[m, k] · shared_a[f, j, k]  (HAS_SHARED)

    with c = (v·E + e)·r + j and s(m) the sequence of row m, found by binary search over
    cu_seqlens; g[m] = gates[s(m)], or gates[m] with PER_ROW_GATES. The shared columns
    (ESR = Es·r of them, padded to SHARED_N) are a second, small tl.dot on the same x tile,
    so x is still read once; column tile 0 stores them. Accumulates in fp32; h is stored
    in x's dtype (it feeds a tl.dot with lora_b).
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    # int64 rows: rows · stride can pass 2³¹ for large M·d_in.
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < VER
    # Column -> (view, expert, rank index). V·E·r is small, so int32 is safe here.
    j = cols % R
    e = (cols // R) % E
    v = cols // (R * E)
    a_cols = v.to(tl.int64) * stride_av + e.to(tl.int64) * stride_ae + j.to(tl.int64) * stride_ar
    # The shared experts' columns: (expert f, rank index) -> offset in shared_a.
    s_cols = tl.arange(0, SHARED_N)
    s_ok = s_cols < ESR
    s_off = (s_cols // R).to(tl.int64) * stride_sf + (s_cols % R).to(tl.int64) * stride_sr

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_s = tl.zeros((BLOCK_M, SHARED_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)  # int64: a transposed x has stride M
        k_ok = ks < K
        xt = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :] * stride_xk,
                     mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        # A_allᵀ tile [BLOCK_K, BLOCK_N] read straight from lora_a's 4-D layout (no reshape copy).
        at = tl.load(a_ptr + ks[:, None] * stride_ak + a_cols[None, :],
                     mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        # ieee: fp32 inputs keep fp32 accuracy (no tf32); ignored for 16-bit inputs.
        acc = tl.dot(xt, at, acc, input_precision="ieee")
        if HAS_SHARED:
            st = tl.load(sa_ptr + ks[:, None] * stride_sk + s_off[None, :],
                         mask=k_ok[:, None] & s_ok[None, :], other=0.0)
            acc_s = tl.dot(xt, st, acc_s, input_precision="ieee")

    # Sequence of each row: the largest s in [0, S] with cu_seqlens[s] <= row. Empty sequences
    # (cu[s] == cu[s+1]) are skipped by "largest"; a tile may hold rows of many sequences.
    # Each step halves [lo, hi]: ceil(log2(S + 1)) steps leave lo == hi, and further steps
    # change nothing, so n_search is any upper bound (bucketed on the host).
    lo = tl.zeros((BLOCK_M,), dtype=tl.int32)
    hi = tl.zeros((BLOCK_M,), dtype=tl.int32) + S
    for _ in range(n_search):
        mid = (lo + hi + 1) // 2
        start = tl.load(cu_ptr + mid)  # mid <= S: always inside cu_seqlens
        right = start <= rows
        lo = tl.where(right, mid, lo)
        hi = tl.where(right, hi, mid - 1)
    # Rows past M (tile padding) end at S; clamping keeps the loads below in bounds even then.
    seq = tl.minimum(lo, S - 1).to(tl.int64)

    row_view = tl.load(view_ptr + seq, mask=row_ok, other=-1)
    tile_ok = row_ok[:, None] & col_ok[None, :]
    gate_row = rows if PER_ROW_GATES else seq
    g = tl.load(gates_ptr + gate_row[:, None] * stride_gs + e[None, :].to(tl.int64) * stride_ge,
                mask=tile_ok, other=0.0)
    # The zero for the other view's columns is what lets the expand run over all V·E·r columns.
    coef = tl.where(row_view[:, None] == v[None, :], g.to(tl.float32) * scaling, 0.0)
    h = (acc * coef).to(h_ptr.dtype.element_ty)
    tl.store(h_ptr + rows[:, None] * stride_hm + cols[None, :], h, mask=tile_ok)
    # A constexpr test and a runtime one: triton does not mix them in one `and`.
    if HAS_SHARED:  # noqa: SIM102
        if pid_n == 0:  # every column tile computed them; one stores them
            tl.store(h_ptr + rows[:, None] * stride_hm + (VER + s_cols)[None, :],
                     (acc_s * scaling).to(h_ptr.dtype.element_ty),
                     mask=row_ok[:, None] & s_ok[None, :])


@triton.jit
def _dpmoe_base_expand_kernel(
    x_ptr, w_ptr, b_ptr, h_ptr, lb_ptr, sb_ptr, y_ptr,
    M, N, K, VER, ESR,
    stride_xm, stride_xk,
    stride_wn, stride_wk,
    stride_hm,
    stride_bve, stride_sbf,
    stride_ym,
    HAS_BIAS: tl.constexpr, HAS_SHARED: tl.constexpr, R: tl.constexpr, RANK_RUNS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_J: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """Base GEMM with the expand folded in, one [BLOCK_M, BLOCK_N] tile of y [M, N]:

        y[m, n] = Σ_k x[m, k] · W[n, k]  +  Σ_c h[m, c] · B_all[c, n]  +  b[n]

    with B_all[c, n] = lora_b[v(c), e(c), n, j(c)] for c < VER = V·E·r and shared_b[f, n, j]
    for the shared column c = VER + f·r + j. Both sums go into one fp32 accumulator (the
    expand is just VER + ESR more reduction steps), so y is stored once, in x's dtype.
    """
    # Grouped tile order: GROUP_M row-tiles share each column sweep, so a W tile is reused
    # from L2 by neighbouring programs instead of being re-read from HBM.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows

    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # Base: x · Wᵀ, W read as a [BLOCK_K, BLOCK_N] tile of Wᵀ.
    for k0 in range(0, K, BLOCK_K):
        ks = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
        k_ok = ks < K
        xt = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :] * stride_xk,
                     mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        wt = tl.load(w_ptr + cols[None, :] * stride_wn + ks[:, None] * stride_wk,
                     mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(xt, wt, acc, input_precision="ieee")
    # Expand: h · B_all as extra reduction steps over c in [0, V·E·r). B_all is read straight
    # from lora_b as [V·E, d_out, r], rows of d_out·r contiguous (the launcher merges the view
    # and expert axes): column c is rank c % R of expert block c // R. With R a constexpr and
    # the inner strides fixed at (R, 1), the compiler knows the R-long runs and their
    # alignment, so it loads them as vectors, not one element at a time.
    # The shared experts (HAS_SHARED) are a second run of steps over h's columns VER .. VER +
    # ESR, whose B is shared_b ([Es, d_out, r], the same inner strides). Each step reads one
    # of the two tensors, chosen per step: a uniform choice keeps the vector loads.
    view_steps = tl.cdiv(VER, BLOCK_J)
    n_steps = view_steps
    if HAS_SHARED:
        n_steps += tl.cdiv(ESR, BLOCK_J)
    for step in range(0, n_steps):
        if HAS_SHARED:
            in_view = step < view_steps
            local = tl.where(in_view, step, step - view_steps)
            b_base = tl.where(in_view, lb_ptr, sb_ptr)
            stride_blk = tl.where(in_view, stride_bve, stride_sbf)
            h_first = tl.where(in_view, 0, VER)
            n_cols = tl.where(in_view, VER, ESR)
        else:
            local, b_base, stride_blk, h_first, n_cols = step, lb_ptr, stride_bve, 0, VER
        cs = local * BLOCK_J + tl.arange(0, BLOCK_J)
        c_ok = cs < n_cols
        ht = tl.load(h_ptr + rows[:, None] * stride_hm + (h_first + cs)[None, :],
                     mask=row_ok[:, None] & c_ok[None, :], other=0.0)
        if not RANK_RUNS:
            b_rows = (cs // R).to(tl.int64) * stride_blk + (cs % R)
            bt = tl.load(b_base + b_rows[:, None] + cols[None, :] * R,
                         mask=c_ok[:, None] & col_ok[None, :], other=0.0)
        else:
            # R a power of two below BLOCK_J: several expert blocks per step. Load them as
            # [blocks, R, BLOCK_N] so the R-long runs are an axis of their own (vector loads),
            # then fold to [BLOCK_J, BLOCK_N].
            blk = local * (BLOCK_J // R) + tl.arange(0, BLOCK_J // R)
            jj = tl.arange(0, R)
            b3 = tl.load(b_base + blk.to(tl.int64)[:, None, None] * stride_blk
                         + jj[None, :, None] + cols[None, None, :] * R,
                         mask=(blk < n_cols // R)[:, None, None] & col_ok[None, None, :], other=0.0)
            bt = tl.reshape(b3, [BLOCK_J, BLOCK_N])
        acc = tl.dot(ht, bt, acc, input_precision="ieee")
    if HAS_BIAS:
        bias = tl.load(b_ptr + cols, mask=col_ok, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


def _pow2_between(n, low: int, high: int) -> int:
    """Smallest power of two >= n, clamped to [low, high]. Only comparisons on n: under
    torch.compile with dynamic shapes n may be a SymInt, and comparing guards on a bucket
    where int(n) would specialise on (and recompile for) every value."""
    p = low
    while p < high and p < n:
        p *= 2
    return p


def _search_steps(num_seqs) -> int:
    """An upper bound on ceil(log2(S + 1)), bucketed (extra steps are no-ops)."""
    for steps in (7, 11, 15, 19, 23, 27):
        if num_seqs < (1 << steps):
            return steps
    return 31


def choose_blocks(M: int, d_in: int, d_out: int, ver: int, dtype: torch.dtype,
                  esr: int = 0) -> dict[str, int]:
    """Block sizes from the shapes alone (no device query, no autotune list at import).

    tl.dot needs every block dim >= 16. Under the interpreter small blocks keep tests fast
    and still put several tiles (and sequence boundaries) in a test of ~100 rows. On a GPU:
    128-row tiles once there are enough rows (wgmma needs BLOCK_M >= 64), smaller for
    decode-like M; 16-bit tiles take BLOCK_K = 64 (four wgmma k-steps per stage), which
    with 3 stages stays within Ampere's shared memory as well as Hopper's. fp32 runs on
    FFMA (``input_precision="ieee"``), where smaller tiles avoid spills.
    ``ver`` is the view experts' V·E·r columns, ``esr`` the shared experts' Es·r (one
    SHARED_N tile of the shrink holds them all).
    ``tools/gpu_compile_check.py`` checks every choice for registers, spills and smem.
    """
    shared_n = _pow2_between(esr, 16, 1 << 20)
    if INTERPRETER:  # TRITON_INTERPRET=1 at triton import
        return {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "BLOCK_J": _pow2_between(ver, 16, 32),
                "SHRINK_M": 32, "SHRINK_N": _pow2_between(ver, 16, 64), "SHARED_N": shared_n,
                "GROUP_M": 4, "num_warps": 4, "num_stages": 1}
    wide = dtype != torch.float32  # 2-byte elements: twice the tile for the same smem
    block_m = _pow2_between(M, 16, 128 if wide else 64)
    block_n = _pow2_between(d_out, 32, 128 if wide else 64)
    shrink_n = _pow2_between(ver, 16, 128 if wide else 64)
    # The shared experts' accumulator sits beside the view experts' one: past 128 columns
    # in all, half the rows per shrink tile keeps the registers from spilling.
    shrink_m = block_m if not esr or shrink_n + shared_n <= 128 else min(block_m, 64)
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": 64 if wide else 32,
            "BLOCK_J": _pow2_between(ver, 16, 32),
            # One column tile covers all V·E·r columns (up to 128; 64 for fp32, whose FMA
            # tiles hold more registers), so x is read once.
            "SHRINK_M": shrink_m, "SHRINK_N": shrink_n, "SHARED_N": shared_n,
            "GROUP_M": 8,
            # More threads for the large tiles: the register counts the compile check reads
            # stay below spilling on sm_80 and sm_90a.
            "num_warps": 8 if not wide or block_m * block_n >= 64 * 128 else 4,
            "num_stages": 3}


def launch_dpmoe_linear(x, weight, bias, lora_a, lora_b, gates, seq_view, cu_seqlens,
                        scaling: float, shared_a=None, shared_b=None, per_row_gates: bool = False,
                        *, out: torch.Tensor | None = None,
                        blocks: dict[str, int] | None = None) -> torch.Tensor:
    """Run the two kernels on already validated inputs; returns y [M, d_out] in x's dtype.

    Internal keywords (tests and benchmarks):
      ``out``: a contiguous [M, d_out] tensor of x's dtype to write into; every element is
      written (tests pre-fill it with NaN to check that).
      ``blocks``: override ``choose_blocks`` (tests force small tiles so sequences straddle
      tile edges).
    M == 0 returns without launching anything.
    """
    M, d_in = x.shape
    d_out = weight.shape[0]
    V, E, R, _ = lora_a.shape
    S = seq_view.shape[0]
    ver = V * E * R
    has_shared = shared_a is not None
    esr = shared_a.shape[0] * R if has_shared else 0
    if out is None:
        out = torch.empty((M, d_out), dtype=x.dtype, device=x.device)
    elif (out.shape != (M, d_out) or out.dtype != x.dtype or out.device != x.device
          or not out.is_contiguous()):
        raise ValueError(f"out must be a contiguous [{M}, {d_out}] {x.dtype} tensor on {x.device}, "
                         f"got {list(out.shape)} {out.dtype} on {out.device}")
    if M == 0:
        return out
    cfg = choose_blocks(M, d_in, d_out, ver, x.dtype, esr)
    if blocks:  # (a forced BLOCK_M sets the shrink's rows too unless SHRINK_M is given)
        cfg = {**cfg, "SHRINK_M": blocks.get("BLOCK_M", cfg["SHRINK_M"]), **blocks}
    launch_opts = {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}

    h = torch.empty((M, ver + esr), dtype=x.dtype, device=x.device)
    n_search = _search_steps(S)
    grid_shrink = (triton.cdiv(M, cfg["SHRINK_M"]), triton.cdiv(ver, cfg["SHRINK_N"]))
    # Without shared experts, lora_a stands in as the (never read: HAS_SHARED=False) pointer.
    sa = shared_a if has_shared else lora_a[0]
    launch(
        _dpmoe_shrink_kernel, grid_shrink,
        x, lora_a, sa, gates, seq_view, cu_seqlens, h,
        M, d_in, S, E, ver, esr, float(scaling), n_search,
        x.stride(0), x.stride(1),
        *lora_a.stride(),
        *sa.stride(),
        gates.stride(0), gates.stride(1),
        h.stride(0),
        R=R, HAS_SHARED=has_shared, PER_ROW_GATES=per_row_gates,
        BLOCK_M=cfg["SHRINK_M"], BLOCK_N=cfg["SHRINK_N"], BLOCK_K=cfg["BLOCK_K"],
        SHARED_N=cfg["SHARED_N"], **launch_opts,
    )
    grid_main = (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(d_out, cfg["BLOCK_N"]),)
    # lora_b as [V·E, d_out, r], the view and expert axes merged
    lora_b_merged = _rank_inner(lora_b.reshape(V * E, d_out, R))
    sb = _rank_inner(shared_b) if has_shared else lora_b_merged
    launch(
        _dpmoe_base_expand_kernel, grid_main,
        # Without a bias, weight stands in as the (never read: HAS_BIAS=False) bias pointer.
        x, weight, bias if bias is not None else weight, h, lora_b_merged, sb, out,
        M, d_out, d_in, ver, esr,
        x.stride(0), x.stride(1),
        weight.stride(0), weight.stride(1),
        h.stride(0),
        lora_b_merged.stride(0), sb.stride(0),
        out.stride(0),
        HAS_BIAS=bias is not None, HAS_SHARED=has_shared, R=R,
        RANK_RUNS=cfg["BLOCK_J"] > R and R & (R - 1) == 0,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
        BLOCK_J=cfg["BLOCK_J"], GROUP_M=cfg["GROUP_M"],
        **launch_opts,
    )
    return out


def _rank_inner(b: torch.Tensor) -> torch.Tensor:
    """``b`` [blocks, d_out, r] with inner strides (r, 1): a view of the usual contiguous
    parameter; otherwise a copy of the small adapter, never of the frozen weight."""
    return b if b.stride()[1:] == (b.shape[2], 1) else b.contiguous()


def _dpmoe_linear_impl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      lora_a: torch.Tensor, lora_b: torch.Tensor, gates: torch.Tensor,
                      seq_view: torch.Tensor, cu_seqlens: torch.Tensor, scaling: float,
                      shared_a: torch.Tensor | None, shared_b: torch.Tensor | None,
                      per_row_gates: bool) -> torch.Tensor:
    """``l2rec::dpmoe_linear``: the Triton path as a torch op (inference only, no autograd).

    The body is only torch allocations and kernel launches (through ``wrap_triton`` with
    compiled triton), so on a GPU triton_op can trace it and ``torch.compile`` sees the
    kernels themselves. Inputs must already be validated by
    ``l2rec_kernels.ops.dpmoe_linear.dpmoe_linear``.
    """
    return launch_dpmoe_linear(x, weight, bias, lora_a, lora_b, gates, seq_view, cu_seqlens,
                               scaling, shared_a, shared_b, per_row_gates)


def _dpmoe_linear_fake(x, weight, bias, lora_a, lora_b, gates, seq_view, cu_seqlens, scaling,
                       shared_a, shared_b, per_row_gates):
    # Explicit fake: triton_op derives one by running the body on fake tensors, which only
    # works where wrap_triton captures the kernels (compiled triton). Interpreted kernels are
    # not captured and would run on fake tensors. Same metadata as the real output.
    return x.new_empty((x.shape[0], weight.shape[0]))


dpmoe_linear_op = register_triton_op("dpmoe_linear", _dpmoe_linear_impl, _dpmoe_linear_fake)
