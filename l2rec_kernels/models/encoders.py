"""The two views' user summaries.

* Behavioral view: ``SASRecEncoder`` (Kang & McAuley 2018 style): item-ID embeddings plus
  learned positions, causal self-attention blocks, and the state at the last real item:
  ``u_b ∈ R^{d_cf}``.
* Semantic view: ``semantic_summary``: the masked mean of a frozen item-text embedding table
  over the history, ``u_s ∈ R^{d_sem}``; ``build_item_text_table`` makes that table from item
  titles with the backbone itself.

History ids use 0 as padding, real items are 1..num_items; histories may be padded on
either side, and positions follow the padding mask, so the summary does not depend on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class _SASRecBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0, inner: int | None = None) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        inner = inner or dim
        self.ffn = nn.Sequential(nn.Linear(dim, inner), nn.GELU(), nn.Linear(inner, dim))
        # (parameter-free, outside ffn: checkpoints from before dropout keep their keys)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        h = h + self.drop(self.out(a.transpose(1, 2).reshape(b, n, d)))
        return h + self.drop(self.ffn(self.norm2(h)))


class SASRecEncoder(nn.Module):
    """Sequential recommender over item ids; ``item_emb`` doubles as the item-ID table E_cf.

    ``forward`` gives the state at the last real item (the user summary u_b); ``states``
    gives the state at every position, which is what SASRec trains on: state t predicts
    item t + 1 by ``states[:, t] @ item_emb.weight.T`` (``l2rec_kernels.training.sasrec``).
    ``dropout`` (embeddings, attention, residual branches) acts in training mode only;
    ``ffn`` is the feed-forward width (None: ``dim``)."""

    def __init__(self, num_items: int, dim: int, max_len: int, layers: int, heads: int,
                 dropout: float = 0.0, ffn: int | None = None) -> None:
        super().__init__()
        self.item_emb = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(_SASRecBlock(dim, heads, dropout, ffn) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        # SASRec's usual initialisation (BERT's, as RecBole's SASRec uses): N(0, 0.02) for
        # every linear and embedding weight, zero biases. Chosen on ML-100K's validation split
        # over PyTorch's defaults with item embeddings at N(0, 1/dim), which trained far worse
        # (docs/compare.md: the stage-1 rows of the table under "L2Rec's recipe here").
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, history_ids: torch.Tensor) -> torch.Tensor:
        valid = history_ids > 0
        h = self.states(history_ids)
        last = last_true_index(valid)                             # [B]
        u = h[torch.arange(h.shape[0], device=h.device), last]
        # A user with no history has no behavioral signal: a zero summary, not noise.
        return u * valid.any(-1, keepdim=True)

    def states(self, history_ids: torch.Tensor) -> torch.Tensor:
        """The state after each position, [B, H, d] (padding positions hold no meaning)."""
        valid = history_ids > 0                                   # [B, H]
        pos = (valid.long().cumsum(-1) - 1).clamp_min(0)          # positions follow the mask
        h = self.drop((self.item_emb(history_ids) + self.pos_emb(pos)) * valid.unsqueeze(-1))
        n = history_ids.shape[1]
        idx = torch.arange(n, device=history_ids.device)
        causal = idx[None, :] <= idx[:, None]                     # [H, H] query i sees key j<=i
        # A query may always see itself: padding queries would otherwise have no key at all
        # (an all-masked softmax is NaN); real queries never see padding keys.
        allowed = causal & (valid[:, None, :] | torch.eye(n, dtype=torch.bool,
                                                          device=idx.device))  # [B, H, H]
        mask = allowed.unsqueeze(1)                               # broadcast over heads
        for block in self.blocks:
            h = block(h, mask)
        return self.norm(h)


def last_true_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last True/1 in each row of a [B, T] mask (0 for an all-zero row)."""
    t = mask.shape[-1]
    idx = torch.arange(t, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), idx, torch.zeros_like(idx)).amax(-1)


def semantic_summary(history_ids: torch.Tensor, text_table: torch.Tensor) -> torch.Tensor:
    """u_s = masked mean of text_table rows over the non-padding history items."""
    valid = (history_ids > 0).to(text_table.dtype).unsqueeze(-1)   # [B, H, 1]
    summed = (text_table[history_ids] * valid).sum(1)
    return summed / valid.sum(1).clamp_min(1.0)


@torch.no_grad()
def build_item_text_table(titles: Sequence[str], backbone: nn.Module,
                          tokenizer: Callable, batch_size: int = 32,
                          max_length: int = 32) -> torch.Tensor:
    """Embed item titles with the frozen backbone: [len(titles) + 1, hidden], row 0 = zeros.

    Item i (1-based, as in ``history_ids``) is ``titles[i - 1]``; its embedding is the mean
    of the backbone's final hidden states over the title's tokens. ``tokenizer`` is any
    Hugging Face tokenizer (called as ``tokenizer(list_of_str, padding=True,
    truncation=True, max_length=..., return_tensors="pt")``).
    """
    if isinstance(titles, str) or not all(isinstance(t, str) for t in titles):
        raise TypeError("titles must be a sequence of str")
    base = backbone.base_model
    device = next(backbone.parameters()).device
    rows = [torch.zeros(1, backbone.config.hidden_size, device=device)]
    for start in range(0, len(titles), batch_size):
        enc = tokenizer(list(titles[start:start + batch_size]), padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        pos = (mask.long().cumsum(-1) - 1).clamp_min(0)
        hidden = base(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        rows.append(((hidden * m).sum(1) / m.sum(1).clamp_min(1.0)).float())
    return torch.cat(rows)
