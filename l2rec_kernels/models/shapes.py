"""Named model shapes: the backbone widths and L2Rec preset the benchmarks time and
``python -m l2rec_kernels.tune`` tunes ``backend="auto"`` for.

A shape holds what decides the kernels' sizes (hidden, heads, MLP width, E, r, items), not
weights: ``backbone(...)`` builds a random-weight backbone of it (``models.tiny``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .config import L2RecConfig


@dataclass
class ModelShape:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    seq_len: int
    num_experts: int = 4
    rank: int = 8
    num_items: int = 1000
    arch: str = "llama"
    head_dim: int | None = None  # None: hidden / heads
    preset: str = "default"      # "default" (iLoRA's) or "paper" (L2RecConfig.paper)

    def label(self, users: int) -> str:
        return (f"{self.name} B={users} T={self.seq_len} h={self.hidden} L={self.layers} "
                f"E={self.num_experts} r={self.rank}")

    def config(self) -> L2RecConfig:
        if self.preset == "paper":
            return L2RecConfig.paper(self.num_items, num_experts=self.num_experts, rank=self.rank)
        return L2RecConfig(num_items=self.num_items, num_experts=self.num_experts, rank=self.rank)

    def transformers_widths(self) -> dict[str, int]:
        """The backbone's widths as transformers config fields (``AutoConfig.for_model(
        self.arch, **widths)``)."""
        return {"hidden_size": self.hidden, "num_hidden_layers": self.layers,
                "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads,
                "head_dim": self.head_dim or self.hidden // self.heads,
                "intermediate_size": self.intermediate, "vocab_size": self.vocab}

    def backbone(self, *, layers: int | None = None, dtype: torch.dtype = torch.float32,
                 max_positions: int | None = None):
        """A random-weight backbone of this shape (``layers`` overrides the depth). Built on
        the current default device: under ``torch.device("meta")`` it allocates nothing."""
        from .tiny import tiny_backbone

        return tiny_backbone(self.arch, hidden=self.hidden, layers=layers or self.layers,
                             heads=self.heads, kv_heads=self.kv_heads,
                             intermediate=self.intermediate, head_dim=self.head_dim,
                             vocab=self.vocab, max_positions=max_positions or max(512, self.seq_len),
                             dtype=dtype)


def randomize_experts_(model, std: float = 0.02) -> None:
    """Draw every expert's B (and shared expert's) from N(0, std^2), in place. LoRA-style
    initialisation leaves them zero, which a random-weight model for timing must not keep:
    a kernel could skip work that a trained model makes it do."""
    with torch.no_grad():
        for experts in model.experts.values():
            experts.lora_b.normal_(0, std)
            if experts.shared_b is not None:
                experts.shared_b.normal_(0, std)


# The CPU acceptance shape of the FusedL2Rec issue (Llama, iLoRA defaults) and the same
# widths on Qwen3 with the paper's setup; GPU: Qwen3-0.6B's widths with the paper's setup
# (the headline: the backbone the paper reports) and a Qwen2-0.5B-class shape.
CPU_SHAPE = ModelShape("cpu-small", 512, 4, 8, 4, 1376, 4000, 96)
CPU_QWEN3_PAPER_SHAPE = dataclasses.replace(CPU_SHAPE, name="cpu-small-qwen3-paper", arch="qwen3",
                                            preset="paper")
QWEN05_SHAPE = ModelShape("qwen2-0.5b", 896, 24, 14, 2, 4864, 151936, 256, rank=8, arch="qwen2")
QWEN3_06B_SHAPE = ModelShape("qwen3-0.6b-paper", 1024, 28, 16, 8, 3072, 151936, 256, arch="qwen3",
                             head_dim=128, preset="paper")
MODEL_SHAPES = {s.name: s for s in (CPU_SHAPE, CPU_QWEN3_PAPER_SHAPE, QWEN05_SHAPE, QWEN3_06B_SHAPE)}
