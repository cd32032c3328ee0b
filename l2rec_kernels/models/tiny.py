"""Built-in tiny backbones with random weights and synthetic batches.

They let every example, test and benchmark run anywhere, offline: no weights are
downloaded. ``tiny_backbone("llama" | "qwen2" | "mistral", ...)`` builds a random-weight
causal LM of that architecture (grouped-query attention by default).
"""

from __future__ import annotations

import torch
from torch import nn

from .._compat import set_attn_implementation

ARCHITECTURES = ("llama", "qwen2", "mistral", "qwen3")


def tiny_backbone(arch: str = "llama", *, hidden: int = 64, layers: int = 2, heads: int = 4,
                  kv_heads: int = 2, intermediate: int | None = None, head_dim: int | None = None,
                  vocab: int = 256,
                  max_positions: int = 512, seed: int = 0, dtype: torch.dtype = torch.float32,
                  attn_implementation: str = "sdpa") -> nn.Module:
    """A random-weight causal LM of architecture ``arch``, frozen-ready, in eval mode
    (``head_dim`` None: hidden / heads)."""
    import transformers

    classes = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    }
    if arch not in classes:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
    config_cls, model_cls = classes[arch]
    cfg = config_cls(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     num_key_value_heads=kv_heads, intermediate_size=intermediate or 3 * hidden,
                     vocab_size=vocab, max_position_embeddings=max_positions,
                     tie_word_embeddings=False, attention_dropout=0.0,
                     # (explicit: Qwen3's default head_dim is 128 whatever the width)
                     head_dim=head_dim or hidden // heads)
    set_attn_implementation(cfg, attn_implementation)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_cls(cfg)
    return model.to(dtype).eval()


def synthetic_batch(batch: int, seq_len: int, history_len: int, *, vocab: int, num_items: int,
                    padding_side: str = "left", ragged: bool = True, seed: int = 0,
                    device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Random prompts (padded on ``padding_side``) and histories for ``batch`` users."""
    g = torch.Generator().manual_seed(seed)
    lengths = (torch.randint(max(1, seq_len // 2), seq_len + 1, (batch,), generator=g)
               if ragged else torch.full((batch,), seq_len))
    input_ids = torch.randint(1, vocab, (batch, seq_len), generator=g)
    ar = torch.arange(seq_len)
    mask = ar[None, :] < lengths[:, None]
    if padding_side == "left":
        mask = mask.flip(-1)
    elif padding_side != "right":
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    input_ids = input_ids.masked_fill(~mask, 0)
    hist_len = torch.randint(1, history_len + 1, (batch,), generator=g)
    history = torch.randint(1, num_items + 1, (batch, history_len), generator=g)
    history = history.masked_fill(torch.arange(history_len)[None, :] >= hist_len[:, None], 0)
    return {"input_ids": input_ids.to(device), "attention_mask": mask.long().to(device),
            "history_ids": history.to(device)}
