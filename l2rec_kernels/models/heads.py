"""The small trainable heads around the backbone: routers, cross-view fusion, item scorer."""

from __future__ import annotations

import torch
from torch import nn


class ViewRouter(nn.Module):
    """Router logits for one view: an MLP from the view summary to E expert logits."""

    def __init__(self, in_dim: int, hidden: int, num_experts: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, num_experts))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.net(u)


class CrossViewFusion(nn.Module):
    """Adaptive cross-view fusion.

        β = σ(MLP([h_b; h_s; h_b ⊙ h_s]))          (one gate per preference dimension)
        z = β · P_b h_b + (1 − β) · P_s h_s  ∈ R^{d_pref}
    """

    def __init__(self, hidden: int, pref_dim: int, mlp_hidden: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(3 * hidden, mlp_hidden), nn.GELU(),
                                  nn.Linear(mlp_hidden, pref_dim))
        self.proj_b = nn.Linear(hidden, pref_dim)
        self.proj_s = nn.Linear(hidden, pref_dim)

    def forward(self, h_b: torch.Tensor, h_s: torch.Tensor) -> torch.Tensor:
        dtype = self.proj_b.weight.dtype
        h_b, h_s = h_b.to(dtype), h_s.to(dtype)
        beta = torch.sigmoid(self.gate(torch.cat([h_b, h_s, h_b * h_s], dim=-1)))
        return beta * self.proj_b(h_b) + (1 - beta) * self.proj_s(h_s)


class ItemScorer(nn.Module):
    """Item representations e_i = W_id E_cf[i] + W_txt E_txt[i], and z e_iᵀ / τ_s scores."""

    def __init__(self, behavior_dim: int, semantic_dim: int, pref_dim: int,
                 temperature: float) -> None:
        super().__init__()
        self.id_proj = nn.Linear(behavior_dim, pref_dim, bias=False)
        self.text_proj = nn.Linear(semantic_dim, pref_dim, bias=False)
        self.temperature = temperature

    def item_embeddings(self, id_table: torch.Tensor, text_table: torch.Tensor,
                        item_ids: torch.Tensor | None = None) -> torch.Tensor:
        """e_i for ``item_ids`` (any shape), or for every row of the tables when None."""
        if item_ids is not None:
            id_table, text_table = id_table[item_ids], text_table[item_ids]
        w = self.id_proj.weight
        return self.id_proj(id_table.to(w.dtype)) + self.text_proj(text_table.to(w.dtype))

    def score(self, z: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """z [B, d] against items [N, d] (shared) or [B, C, d] (per user)."""
        if items.dim() == 2:
            return z @ items.T / self.temperature
        return torch.einsum("bd,bcd->bc", z, items) / self.temperature
