"""Model benchmark: L2Rec vs FusedL2Rec vs the plain frozen backbone, side by side.

All three see the same prompts; the plain backbone runs once over the same 2·B stacked
sequences the fused model runs (its floor: the frozen GEMMs and attention with no
personalisation). Inputs rotate between a few batches so caches don't flatter a provider.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from l2rec_kernels import FusedL2Rec, L2Rec, L2RecConfig
from l2rec_kernels.models.inputs import position_ids_from_mask
from l2rec_kernels.models.tiny import synthetic_batch, tiny_backbone


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

    def label(self, users: int) -> str:
        return (f"{self.name} B={users} T={self.seq_len} h={self.hidden} L={self.layers} "
                f"E={self.num_experts} r={self.rank}")


# The CPU acceptance shape of the FusedL2Rec issue, and a Qwen2-0.5B-class GPU shape.
CPU_SHAPE = ModelShape("cpu-small", 512, 4, 8, 4, 1376, 4000, 96)
QWEN05_SHAPE = ModelShape("qwen2-0.5b", 896, 24, 14, 2, 4864, 151936, 256, rank=8)


def build_models(shape: ModelShape, device: torch.device, dtype: torch.dtype,
                 fused_backends: tuple[str, ...]):
    arch = "qwen2" if shape.name.startswith("qwen2") else "llama"
    backbone = tiny_backbone(arch, hidden=shape.hidden, layers=shape.layers, heads=shape.heads,
                             kv_heads=shape.kv_heads, intermediate=shape.intermediate,
                             vocab=shape.vocab, max_positions=max(512, shape.seq_len),
                             dtype=dtype).to(device)
    cfg = L2RecConfig(num_items=shape.num_items, num_experts=shape.num_experts, rank=shape.rank)
    ref = L2Rec(backbone, cfg).to(device)
    with torch.no_grad():  # random experts: a zero expert B would let a kernel skip work
        for experts in ref.experts.values():
            experts.lora_b.normal_(0, 0.02)
    ref.validate_inputs = fused_validate = False  # time the models, not the input checks
    fused = {b: FusedL2Rec.from_reference(ref, backend=b) for b in fused_backends}
    for f in fused.values():
        f.validate_inputs = fused_validate
    return ref, fused


def model_providers(shape: ModelShape, users: int, device: torch.device, dtype: torch.dtype,
                    fused_backends: tuple[str, ...] = ("torch",), rotate: int = 2):
    """{provider: zero-arg callable} for one batch size, plus (tokens, users) per call."""
    ref, fused = build_models(shape, device, dtype, fused_backends)
    batches = [synthetic_batch(users, shape.seq_len, 20, vocab=shape.vocab,
                               num_items=shape.num_items, ragged=False, seed=s, device=device)
               for s in range(rotate)]
    base = ref.backbone.base_model
    state = {"i": 0}

    def next_batch():
        state["i"] = (state["i"] + 1) % rotate
        return batches[state["i"]]

    def plain():
        b = next_batch()
        ids, mask = b["input_ids"].repeat(2, 1), b["attention_mask"].repeat(2, 1)
        return base(input_ids=ids, attention_mask=mask,
                    position_ids=position_ids_from_mask(mask.bool()), use_cache=False)

    providers = {"plain_backbone_2B": plain, "L2Rec": lambda: ref(**next_batch())}
    for name, model in fused.items():
        providers[f"FusedL2Rec[{name}]"] = lambda model=model: model(**next_batch())
    tokens = 2 * users * shape.seq_len
    return providers, tokens
