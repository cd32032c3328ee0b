"""Triton kernel for ``route``: softmax(x / τ) with optional top-k and renormalisation.

For a block of rows at once (one program per ``BLOCK_S`` rows, ``BLOCK_E`` =
next_power_of_2(E) columns, the padding columns set to -inf)::

    z = x / τ,   p = exp(z - max_e z)                          (the row's max is kept first)
    dense:  g = p / Σ_e p
    top-k:  K = ∅;  k times:  m = max_{e∉K} x_e,  K ∪= { min{e ∉ K : x_e = m} }
            g = p·[e∈K] / Σ_{e∈K} p_e

The top-k rounds compare the fp32 logits ``x`` (not ``z``), exactly as the torch path
ranks them, so both choose the same experts bit for bit; ties go to the lowest index
because each round takes the smallest column holding the row maximum.

Imported only when the triton backend is asked for: importing triton reads
TRITON_INTERPRET, which must be set first for CPU tensors. Importing this module
registers ``torch.ops.l2rec.route`` (see ``_triton_util.register_triton_op``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_util import launch, register_triton_op

# Largest expert count one program holds in registers (BLOCK_E = next pow2 of E); routers
# have a handful of experts, so this only guards against misuse.
MAX_EXPERTS = 8192
# Elements (rows x BLOCK_E) per program: enough rows to amortise a program, few enough
# to stay in registers.
_BLOCK_ELEMS = 4096


@triton.jit
def _route_kernel(x_ptr, out_ptr, num_rows, num_experts, stride_xs, stride_xe, stride_os,
                  temperature, top_k,
                  DENSE: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_E: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)  # int64: rows * stride may pass 2^31
    cols = tl.arange(0, BLOCK_E)
    row_ok = rows < num_rows
    col_ok = cols < num_experts
    inside = row_ok[:, None] & col_ok[None, :]
    x = tl.load(x_ptr + rows[:, None] * stride_xs + cols[None, :] * stride_xe,
                mask=inside, other=0.0).to(tl.float32)
    # Padding columns get -inf so they vanish from max and exp; rows past the end keep
    # finite zeros (never stored) so no NaN is computed for them.
    x = tl.where(col_ok[None, :], x, float("-inf"))
    z = x / temperature
    p = tl.exp(z - tl.max(z, axis=1)[:, None])
    if not DENSE:
        keep = (rows[:, None] < 0) & (cols[None, :] < 0)  # all False, [BLOCK_S, BLOCK_E]
        for _ in range(top_k):
            free = col_ok[None, :] & (keep == 0)
            best = tl.max(tl.where(free, x, float("-inf")), axis=1)
            pick = tl.min(tl.where(free & (x == best[:, None]), cols[None, :], BLOCK_E), axis=1)
            keep = keep | (cols[None, :] == pick[:, None])
        p = tl.where(keep, p, 0.0)
    g = p / tl.sum(p, axis=1)[:, None]
    tl.store(out_ptr + rows[:, None] * stride_os + cols[None, :], g.to(out_ptr.dtype.element_ty),
             mask=inside)


def _blocks(num_experts: int) -> tuple[int, int]:
    # Independent of the row count, so a dynamic batch size under torch.compile does not
    # specialise the launch (a short last block is masked).
    block_e = triton.next_power_of_2(num_experts)
    return max(1, min(_BLOCK_ELEMS // block_e, 128)), block_e


def _route_impl(logits: torch.Tensor, top_k: int, temperature: float) -> torch.Tensor:
    """``l2rec::route``: gates [S, E] in logits' dtype. ``top_k`` == E means dense."""
    num_rows, num_experts = logits.shape
    out = torch.empty((num_rows, num_experts), dtype=logits.dtype, device=logits.device)
    if num_rows == 0:
        return out
    block_s, block_e = _blocks(num_experts)
    launch(_route_kernel, (triton.cdiv(num_rows, block_s),),
           logits, out, num_rows, num_experts, logits.stride(0), logits.stride(1), out.stride(0),
           temperature, top_k, DENSE=top_k >= num_experts, BLOCK_S=block_s, BLOCK_E=block_e)
    return out


def _route_fake(logits, top_k, temperature):
    return logits.new_empty(logits.shape)


route_op = register_triton_op("route", _route_impl, _route_fake)


def route_triton(logits: torch.Tensor, top_k: int | None, temperature: float) -> torch.Tensor:
    """Launcher used by ``route``; inputs already validated there."""
    num_experts = logits.shape[1]
    if num_experts > MAX_EXPERTS:
        raise ValueError(f"route backend='triton' supports at most {MAX_EXPERTS} experts "
                         f"(logits.shape[1]), got {num_experts}; use backend='torch'")
    return torch.ops.l2rec.route(logits, num_experts if top_k is None else top_k, temperature)
