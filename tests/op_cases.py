"""Random inputs of the ops, shared by each op's own tests and the op-contract suite."""

from __future__ import annotations

import torch


def make_case(lengths, d_in, d_out, V, E, r, *, device, bias=True, dtype=torch.float32,
              index_dtype=torch.int32, views=None, seed=0, shared=0, per_row=False):
    """Random inputs (never zeros). Scaled so the expert term is about as large as x Wᵀ:
    an error in it cannot hide under the base GEMM. ``shared`` > 0 adds that many shared
    experts; ``per_row`` gives one gate row per x row."""
    g = torch.Generator().manual_seed(seed)
    S = len(lengths)
    M = sum(lengths)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype).to(device)

    cu = torch.zeros(S + 1, dtype=torch.int64)
    cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0)
    if views is None:
        views = torch.randint(0, V, (S,), generator=g).tolist()
    gates = torch.softmax(torch.randn(M if per_row else S, E, generator=g), -1) + 0.1
    scaling = 1.7
    case = dict(
        x=rnd(M, d_in), weight=rnd(d_out, d_in, scale=d_in ** -0.5),
        bias=rnd(d_out) if bias else None,
        lora_a=rnd(V, E, r, d_in, scale=d_in ** -0.5),
        lora_b=rnd(V, E, d_out, r, scale=(E * r) ** -0.5 / scaling),
        gates=gates.to(dtype).to(device),
        seq_view=torch.tensor(views, dtype=index_dtype, device=device),
        cu_seqlens=cu.to(index_dtype).to(device), scaling=scaling)
    if shared:
        case["shared_a"] = rnd(shared, r, d_in, scale=d_in ** -0.5)
        case["shared_b"] = rnd(shared, d_out, r, scale=(shared * r) ** -0.5 / scaling)
    if per_row:
        case["per_row_gates"] = True
    return case


def make(batch, num_items, dim, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, dim, generator=g).to(device=device, dtype=dtype)
    item_emb = torch.randn(num_items, dim, generator=g).to(device=device, dtype=dtype)
    return query, item_emb


def random_exclude(batch, width, num_items, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    ex = torch.randint(-1, num_items, (batch, width), generator=g)
    return ex.to(device)
