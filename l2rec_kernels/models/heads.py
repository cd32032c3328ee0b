"""The small trainable heads around the backbone: routers, cross-view fusion, item scorer."""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from .config import ROUTER_INPUTS


class ViewRouter(nn.Module):
    """Router logits for one view, from the inputs named in ``inputs`` (``ROUTER_INPUTS``):

        p_u = U u + b_U,  p_c = C c + b_C                        (both [hidden])
        f   = [p_u; p_c; p_u ⊙ p_c], the parts named in ``inputs``, in that order
        logits = W · GELU(f) + b_W ∈ R^E

    u is the view's user summary, c the prompt context (one per sequence). With
    ``inputs=("user",)`` this is the iLoRA-style MLP u -> E.
    """

    def __init__(self, user_dim: int, context_dim: int, hidden: int, num_experts: int,
                 inputs: tuple[str, ...] = ("user",)) -> None:
        super().__init__()
        unknown = set(inputs) - set(ROUTER_INPUTS)
        if not inputs or unknown:
            raise ValueError(f"inputs must be a non-empty subset of {ROUTER_INPUTS}, got {inputs!r}")
        self.inputs = tuple(n for n in ROUTER_INPUTS if n in inputs)
        both = "interaction" in inputs
        self.user_proj = nn.Linear(user_dim, hidden) if both or "user" in inputs else None
        self.context_proj = nn.Linear(context_dim, hidden) if both or "context" in inputs else None
        self.out = nn.Linear(len(self.inputs) * hidden, num_experts)
        self.register_load_state_dict_pre_hook(_rename_legacy_keys)

    @property
    def needs_context(self) -> bool:
        return self.context_proj is not None

    def forward(self, u: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.needs_context and context is None:
            raise ValueError(f"this router reads {self.inputs}, which needs the prompt context")
        dtype = self.out.weight.dtype  # the router's; u and c may come in another dtype
        p_u = None if self.user_proj is None else self.user_proj(u.to(dtype))
        p_c = None if self.context_proj is None else self.context_proj(context.to(dtype))
        parts = {"user": p_u, "context": p_c}
        if "interaction" in self.inputs:
            parts["interaction"] = p_u * p_c
        feats = torch.cat([parts[n] for n in self.inputs], dim=-1)
        return self.out(F.gelu(feats))


# Before the context-aware routers, a router was ``net = Sequential(Linear, GELU, Linear)``:
# the same math as inputs=("user",) with user_proj = net.0 and out = net.2.
_LEGACY_ROUTER_KEYS = {"net.0.": "user_proj.", "net.2.": "out."}


_LEGACY_ROUTER_KEY = re.compile(r"((?:^|\.)routers\.\d+\.)net\.([02])\.")


def rename_legacy_router_keys(state: dict) -> dict:
    """``state`` (a model's own state dict) with old-style router keys
    (``routers.<v>.net.0.*``, ``routers.<v>.net.2.*``) renamed to today's."""
    def rename(key: str) -> str:
        return _LEGACY_ROUTER_KEY.sub(
            lambda m: m.group(1) + _LEGACY_ROUTER_KEYS[f"net.{m.group(2)}."], key, count=1)
    return {rename(k): v for k, v in state.items()}


def _rename_legacy_keys(module, state_dict, prefix, *args) -> None:
    # load_state_dict pre-hook: an old checkpoint's router keys load into the new names.
    for old, new in _LEGACY_ROUTER_KEYS.items():
        for key in [k for k in state_dict if k.startswith(prefix + old)]:
            state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)


class CrossViewFusion(nn.Module):
    """Adaptive cross-view fusion.

        β = σ(MLP([h_b; h_s; h_b ⊙ h_s]))          (one gate per preference dimension)
        z = β · P_b h_b + (1 − β) · P_s h_s  ∈ R^{d_pref}


    ``views="behavioral"`` or ``"semantic"`` (an ablation, ``L2RecConfig.fusion_views``)
    fixes β to 1 or 0: the preference is that view's projection alone.
    """

    def __init__(self, hidden: int, pref_dim: int, mlp_hidden: int, views: str = "both") -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(3 * hidden, mlp_hidden), nn.GELU(),
                                  nn.Linear(mlp_hidden, pref_dim))
        self.proj_b = nn.Linear(hidden, pref_dim)
        self.proj_s = nn.Linear(hidden, pref_dim)
        self.views = views

    def forward(self, h_b: torch.Tensor, h_s: torch.Tensor) -> torch.Tensor:
        dtype = self.proj_b.weight.dtype
        h_b, h_s = h_b.to(dtype), h_s.to(dtype)
        if self.views == "behavioral":
            return self.proj_b(h_b)
        if self.views == "semantic":
            return self.proj_s(h_s)
        beta = torch.sigmoid(self.gate(torch.cat([h_b, h_s, h_b * h_s], dim=-1)))
        return beta * self.proj_b(h_b) + (1 - beta) * self.proj_s(h_s)

    def project(self, h_b: torch.Tensor, h_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(P_b h_b, P_s h_s): each view's preference before the fusion gate mixes them."""
        dtype = self.proj_b.weight.dtype
        return self.proj_b(h_b.to(dtype)), self.proj_s(h_s.to(dtype))


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
        """z [B, d] against items [N, d] (shared) or [B, C, d] (per user), in items' dtype."""
        z = z.to(items.dtype)
        if items.dim() == 2:
            return z @ items.T / self.temperature
        return torch.einsum("bd,bcd->bc", z, items) / self.temperature
