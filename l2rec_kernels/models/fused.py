"""``FusedL2Rec``: the same model as ``L2Rec``, run the fast way (DESIGN.md section 2).

* Both views of all B users are stacked into one batch of 2·B sequences and the backbone
  runs **once**: every frozen weight is read once per layer instead of twice.
* Every targeted linear calls ``dpmoe_linear``: one grouped kernel over the shared frozen
  weight, with each sequence's view and gate, and no [rows, E, d_out] tensor.
* Both views' gates come from a single ``route`` call; the per-batch bookkeeping
  (positions, last rows, sequence offsets) from a single ``batch_metadata`` call.
* ``recommend`` never builds the [B, N] score matrix: the item table e_i is computed once
  and cached (until a weight it depends on changes), and ``topk_items`` finds each user's
  k best items with the exclusions applied in the same pass.

It shares every tensor with the model it was made from (``from_reference``), has the same
``state_dict()`` keys and forward signature, and loads the same checkpoints.

Gradients: with ``backend="torch"`` the whole forward is made of differentiable aten ops,
so training through it gives the reference's gradients. The Triton/CUDA paths are for
inference; ``dpmoe_linear`` and ``route`` raise a clear error if asked for gradients there.
"""

from __future__ import annotations

import torch

from .._backend import BACKENDS
from ..ops.batch_metadata import batch_metadata
from ..ops.dpmoe_linear import dpmoe_linear
from ..ops.route import route
from ..ops.topk_items import topk_items
from . import adapters
from .base import L2RecBase
from .config import NUM_VIEWS, L2RecConfig

PACKING_MODES = ("auto", "packed", "padded")
# Attention kernels that take variable-length packed sequences natively (cu_seqlens);
# for the others (sdpa, eager) packing would mean a block-diagonal [total, total] mask,
# which costs more than the padding it saves.
_VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")


def _op_backends(backend: str) -> dict[str, str]:
    """Which backend each op runs for a model-level backend choice."""
    if backend == "cuda":  # the extension does routing and metadata; GEMMs are Triton's
        return {"route": "cuda", "metadata": "cuda", "dpmoe": "triton", "topk": "triton"}
    if backend == "triton":
        return {"route": "triton", "metadata": "torch", "dpmoe": "triton", "topk": "triton"}
    return {"route": backend, "metadata": backend, "dpmoe": backend, "topk": backend}


class FusedContext(adapters.RoutingContext):
    """Routing for the stacked 2·B batch: each sequence's view and gate, for every layer."""

    def __init__(self, experts, gates, seq_view, cu_seqlens, scaling, backend) -> None:
        super().__init__(experts)
        self.gates, self.seq_view, self.cu_seqlens = gates, seq_view, cu_seqlens
        self.scaling, self.backend = scaling, backend

    def linear(self, module, experts, x):
        lead = x.shape[:-1]
        y = dpmoe_linear(
            x.reshape(-1, x.shape[-1]), module.weight, module.bias,
            experts.lora_a.to(x.dtype), experts.lora_b.to(x.dtype),
            self.gates.to(x.dtype), self.seq_view, self.cu_seqlens, self.scaling,
            backend=self.backend, validate=False)  # metadata built by us, checked in tests
        return y.view(*lead, y.shape[-1])


class FusedL2Rec(L2RecBase):
    """Drop-in replacement for ``L2Rec``: same weights, same outputs, one backbone pass.

    ``backend`` ("auto", "triton", "cuda", "torch") is settable at any time; ``packing``
    ("auto", "packed", "padded") chooses how the 2·B sequences reach the attention: packed
    without padding tokens where the backbone's attention takes varlen input (flash
    attention), padded otherwise.
    """

    def __init__(self, backbone, config: L2RecConfig, *, backend: str = "auto",
                 packing: str = "auto", share_from: L2RecBase | None = None) -> None:
        super().__init__(backbone, config, share_from=share_from)
        self.backend = backend
        self.packing = packing
        self._item_cache: tuple[tuple, torch.Tensor] | None = None

    @classmethod
    def from_reference(cls, ref: L2RecBase, backend: str = "auto",
                       packing: str = "auto") -> FusedL2Rec:
        """A fused model over ``ref``'s backbone and tensors: nothing is copied, so
        later changes to ``ref``'s weights show in both."""
        if not isinstance(ref, L2RecBase):
            raise TypeError(f"ref must be an L2Rec model, got {type(ref).__name__}")
        return cls(ref.backbone, ref.config, backend=backend, packing=packing, share_from=ref)

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        if not isinstance(value, str) or value not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {value!r}")
        self._backend = value

    @property
    def packing(self) -> str:
        return self._packing

    @packing.setter
    def packing(self, value: str) -> None:
        if value not in PACKING_MODES:
            raise ValueError(f"packing must be one of {PACKING_MODES}, got {value!r}")
        self._packing = value

    def uses_packing(self) -> bool:
        """Whether a forward sends packed (unpadded) sequences to the attention."""
        if self._packing != "auto":
            return self._packing == "packed"
        impl = getattr(self.backbone.config, "_attn_implementation", None)
        return impl in _VARLEN_ATTENTION

    def route_gates(self, logits: torch.Tensor) -> torch.Tensor:
        v, b, e = logits.shape
        cfg = self.config
        gates = route(logits.reshape(v * b, e), top_k=cfg.top_k,
                      temperature=cfg.gate_temperature,
                      backend=_op_backends(self._backend)["route"])
        return gates.view(v, b, e)

    def _dual_hidden(self, input_ids, mask, gates):
        batch, seq = input_ids.shape
        backends = _op_backends(self._backend)
        meta = batch_metadata(mask, num_views=NUM_VIEWS, backend=backends["metadata"])
        stacked_ids = input_ids.repeat(NUM_VIEWS, 1)                  # view-major: [2B, T]
        positions = meta.position_ids.repeat(NUM_VIEWS, 1)
        flat_gates = gates.reshape(NUM_VIEWS * batch, -1)
        base = self.backbone.base_model
        if self.uses_packing():
            # One row of all attended tokens; positions restart per sequence, which is how
            # Hugging Face attention finds the sequence boundaries of packed input.
            keep = mask.repeat(NUM_VIEWS, 1)
            ctx = FusedContext(self._targets, flat_gates, meta.seq_view, meta.cu_seqlens,
                               self.config.scaling, backends["dpmoe"])
            with adapters.activate(ctx):
                hidden = base(input_ids=stacked_ids[keep][None], position_ids=positions[keep][None],
                              use_cache=False).last_hidden_state[0]
            last = hidden[meta.packed_last_row]
        else:
            cu = torch.arange(0, (NUM_VIEWS * batch + 1) * seq, seq, dtype=torch.int32,
                              device=input_ids.device)
            ctx = FusedContext(self._targets, flat_gates, meta.seq_view, cu,
                               self.config.scaling, backends["dpmoe"])
            with adapters.activate(ctx):
                hidden = base(input_ids=stacked_ids, attention_mask=mask.long().repeat(NUM_VIEWS, 1),
                              position_ids=positions, use_cache=False).last_hidden_state
            rows = torch.arange(NUM_VIEWS * batch, device=hidden.device)
            last = hidden[rows, meta.last_index.repeat(NUM_VIEWS)]
        return last[:batch], last[batch:]

    # ----------------------------------------------------------------- recommendation
    def _item_table_sources(self) -> tuple[torch.Tensor, ...]:
        return (self.behavior_encoder.item_emb.weight, self.item_text_table,
                self.scorer.id_proj.weight, self.scorer.text_proj.weight)

    def item_table(self) -> torch.Tensor:
        """The whole item table e_i, [num_items + 1, pref_dim], cached between calls.

        The cache key is each source tensor's identity, storage, version counter, device
        and dtype: any in-place change (``load_state_dict``, an optimiser step,
        ``set_item_text_table``, an edit through the reference model sharing these
        tensors), a replaced parameter or a ``.to()`` recomputes it. It costs one extra
        [num_items + 1, pref_dim] tensor of memory; ``clear_item_cache()`` frees it.
        """
        key = tuple((id(t), t.data_ptr(), t._version, t.device, t.dtype)
                    for t in self._item_table_sources())
        cached = self._item_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad():
            table = self.item_embeddings().contiguous()
        self._item_cache = (key, table)  # one assignment: safe for concurrent readers
        return table

    def clear_item_cache(self) -> None:
        """Drop the cached item table (it is rebuilt on the next ``recommend``)."""
        self._item_cache = None

    @torch.no_grad()
    def recommend(self, input_ids, attention_mask, history_ids, k: int = 10,
                  exclude_history: bool = True, exclude_ids: torch.Tensor | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best catalogue items per user: (scores [B, k] descending, item_ids [B, k]).

        Same answer and arguments as ``L2Rec.recommend`` (scores z·e_i / τ_s; the padding
        item 0 never returned; with ``exclude_history`` the history items neither;
        ``exclude_ids`` [B, X] more per-user exclusions, -1 = none; missing slots, when
        exclusions leave fewer than k items, come last with score -inf and id -1),
        computed with the cached item table and ``topk_items``: no [B, N] score matrix.
        """
        self._check_recommend_args(history_ids, k, exclude_history, exclude_ids)
        z, _ = self._preference(input_ids, attention_mask, history_ids)
        table = self.item_table()
        query = (z / self.scorer.temperature).to(table.dtype)
        pad = torch.zeros(z.shape[0], 1, dtype=torch.long, device=z.device)  # the padding item
        parts = [pad]
        if exclude_history:
            parts.append(history_ids.long())
        if exclude_ids is not None:
            parts.append(exclude_ids.long())
        exclude = torch.cat(parts, dim=1)
        scores, ids = topk_items(query, table, k, exclude=exclude,
                                 backend=_op_backends(self._backend)["topk"])
        return scores.to(z.dtype), ids
