"""``L2Rec``: the readable PyTorch reference (docs/design.md section 1).

It runs the backbone twice, once per view, and applies each targeted layer's experts the
way iLoRA's public code does (``adapters.ReferenceContext``). It is the honest baseline the
fused model must reproduce and is measured against: clear and correct, not slow on purpose.
"""

from __future__ import annotations

import torch

from ..ops.route import route
from . import adapters
from .base import L2RecBase, gather_last
from .config import NUM_VIEWS
from .inputs import position_ids_from_mask


class L2Rec(L2RecBase):
    """L2Rec on a frozen Hugging Face causal LM: ``L2Rec(backbone, L2RecConfig(...))``."""

    def route_gates(self, logits: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        return torch.stack([route(logits[v], top_k=cfg.top_k, temperature=cfg.gate_temperature,
                                  backend="torch") for v in range(NUM_VIEWS)])

    def _dual_hidden(self, input_ids, mask, gates):
        positions = position_ids_from_mask(mask)
        last = []
        for view in range(NUM_VIEWS):
            ctx = adapters.ReferenceContext(self._targets, view, gates[view], self.config.scaling)
            with self.routing.activate(ctx):
                hidden = self.backbone.base_model(
                    input_ids=input_ids, attention_mask=mask.long(), position_ids=positions,
                    use_cache=False).last_hidden_state
            last.append(gather_last(hidden, mask))
        return last[0], last[1]
