"""``FusedL2Rec``: the same model as ``L2Rec``, run the fast way (docs/design.md section 2).

* Both views of all B users are stacked into one batch of 2·B sequences and the backbone
  runs **once**: every frozen weight is read once per layer instead of twice.
* Every targeted linear calls ``dpmoe_linear``: one grouped kernel over the shared frozen
  weight, with each sequence's view and gate, and no [rows, E, d_out] tensor.
* Work the plain forward does but L2Rec never reads, or does twice, is skipped
  (``layer_shortcuts``): the last decoder layer runs its query, output and MLP projections
  for the one row per sequence the model reads, and the first layer's q/k/v base GEMMs run
  once for both views' identical rows. ``layer_shortcuts = False`` turns both off.
* Both views' gates come from a single ``route`` call; the per-batch bookkeeping
  (positions, last rows, sequence offsets) from a single ``batch_metadata`` call.
* ``recommend`` never builds the [B, N] score matrix: the item table e_i is computed once
  and cached (until a weight it depends on changes), and ``topk_items`` finds each user's
  k best items with the exclusions applied in the same pass.

It shares every tensor with the model it was made from (``from_reference``), has the same
``state_dict()`` keys and forward signature, and loads the same checkpoints.

Gradients: with ``backend="torch"`` the whole forward is made of differentiable aten ops,
so training through it gives the reference's gradients. With ``backend="auto"`` (the
default) a forward under grad mode whose experts or routers require grad takes the torch
path for every op that carries gradients, on any device: training needs no flag. The
Triton/CUDA paths are for inference; asked for explicitly, ``dpmoe_linear`` and ``route``
raise a clear error if gradients are wanted there.

Host syncs: on a GPU a padded forward reads no tensor value on the host, forward or
backward, when ``validate_inputs`` is False (the input value checks are the one deliberate
read), in training (grad) mode too: the backbone then gets a prepared 4-D attention mask
(sdpa/eager attention), where its own mask preparation would test the 2-D mask for padding
on the host. Packed input (flash attention) has data-dependent shapes and does sync.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .._compat import attn_implementation, tensor_version
from .._dispatch import check_backend_name, planned_backend
from .._validation import being_traced, values_are_free
from ..ops.batch_metadata import batch_metadata
from ..ops.dpmoe_linear import dpmoe_linear, dpmoe_linear_torch
from ..ops.route import route
from ..ops.topk_items import topk_items
from . import adapters, layer_shortcuts
from .base import L2RecBase
from .config import NUM_VIEWS, L2RecConfig

PACKING_MODES = ("auto", "packed", "padded")
# Attention kernels that take variable-length packed sequences natively (cu_seqlens);
# for the others (sdpa, eager) packing would mean a block-diagonal [total, total] mask,
# which costs more than the padding it saves.
_VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")


def _op_backends(backend: str, grad: bool = False) -> dict[str, str]:
    """Which backend each op runs for a model-level backend choice (``grad``: gradients flow
    through the experts or routers, so ``auto`` takes the differentiable torch path)."""
    if backend == "auto" and grad:
        return {"route": "torch", "metadata": "auto", "dpmoe_linear": "torch", "topk_items": "auto"}
    if backend == "cuda":  # the extension does routing and metadata; GEMMs are Triton's
        return {"route": "cuda", "metadata": "cuda", "dpmoe_linear": "triton", "topk_items": "triton"}
    if backend == "triton":
        return {"route": "triton", "metadata": "torch", "dpmoe_linear": "triton", "topk_items": "triton"}
    return {"route": backend, "metadata": backend, "dpmoe_linear": backend, "topk_items": backend}


def stacked_attention_mask(mask: torch.Tensor, num_views: int, impl: str,
                           dtype: torch.dtype) -> torch.Tensor:
    """The causal + padding attention mask of ``num_views`` stacked copies of the batch
    ``mask`` [B, T]: [num_views·B, 1, T, T], bool (True = attend) for sdpa, additive (0 or
    the dtype's minimum) for eager attention. Every query also sees itself, so the queries
    of padding positions (never read) attend to something: a fully masked row would give
    NaN, which masked-out keys would then carry into real rows (0 x NaN)."""
    tokens = mask.shape[1]
    keys = mask.bool().repeat(num_views, 1)[:, None, None, :]                  # [S, 1, 1, T]
    pos = torch.arange(tokens, device=mask.device)
    causal = pos[None, :] <= pos[:, None]                                      # [T, T]
    allowed = (causal & keys) | torch.eye(tokens, dtype=torch.bool, device=mask.device)
    if impl == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min)


@dataclasses.dataclass(frozen=True)
class _Shortcuts:
    """The backbone modules the layer shortcuts use (none when the backbone does not
    qualify): the last decoder layer's wrapper and the first layer's frozen q/k/v linears
    that carry experts. A plain object, so the model does not register backbone modules
    as its own submodules (they would add backbone keys to its state_dict)."""

    last_layer: layer_shortcuts.ShortcutDecoderLayer | None = None
    first_qkv: tuple = ()


class FusedContext(adapters.RoutingContext):
    """Routing for the stacked 2·B batch: each sequence's view and gate, for every layer."""

    def __init__(self, experts, gates, seq_view, cu_seqlens, scaling, backend,
                 rows_per_seq: int | None = None) -> None:
        super().__init__(experts)
        self.gates, self.seq_view, self.cu_seqlens = gates, seq_view, cu_seqlens
        self.scaling, self.backend = scaling, backend
        # Rows per sequence when every sequence has the same number (padded input, or one
        # row each): the view-major layout is then known from shapes alone.
        self.rows_per_seq = rows_per_seq
        self.layer_plans: dict = {}
        # module -> rows of one copy, for linears whose input is that block of rows repeated
        # (on the torch backend only: the triton kernel fuses the base GEMM with the experts)
        self.repeated_input: dict = {}

    def for_rows(self, cu_seqlens, rows_per_seq: int | None = None) -> FusedContext:
        """The same routing over other rows of the same sequences (``cu_seqlens``)."""
        return FusedContext(self.experts, self.gates, self.seq_view, cu_seqlens,
                            self.scaling, self.backend, rows_per_seq)

    def _static_view_runs(self, device) -> list | None:
        """The two view runs (rows of view 0, then of view 1) for the torch path while
        torch.compile traces a padded forward: from shapes, so the path can skip the zero
        half of the concatenated expert GEMMs without reading metadata on the host (which
        it does in eager mode on the CPU)."""
        if self.rows_per_seq is None or not being_traced(self.gates):
            return None
        which = planned_backend("dpmoe_linear", self.backend, device.type)
        if which != "torch":
            return None
        users, r = self.gates.shape[0] // NUM_VIEWS, self.rows_per_seq
        return [(0, users * r, 0, users, 0), (users * r, 2 * users * r, users, 2 * users, 1)]

    def layer_plan(self, layer):
        return self.layer_plans.get(layer)

    def linear(self, module, experts, x):
        lead = x.shape[:-1]
        rows = x.reshape(-1, x.shape[-1])
        weight = adapters.linear_weight(module)  # [d_out, d_in]; Conv1D's is a view, not a copy
        args = (weight, module.bias, experts.lora_a.to(x.dtype), experts.lora_b.to(x.dtype),
                self.gates.to(x.dtype), self.seq_view, self.cu_seqlens, self.scaling)
        shared = {}
        if experts.shared_a is not None:
            shared = {"shared_a": experts.shared_a.to(x.dtype), "shared_b": experts.shared_b.to(x.dtype)}
        block = self.repeated_input.get(module)
        runs = self._static_view_runs(x.device)
        if block is not None:  # one base GEMM for the block, copied once per repeat
            base = F.linear(rows[:block], weight, module.bias)
            y = dpmoe_linear_torch(rows, *args, base=base.repeat(rows.shape[0] // block, 1),
                                   view_runs=runs, **shared)
        elif runs is not None:
            y = dpmoe_linear_torch(rows, *args, view_runs=runs, **shared)
        else:  # metadata built by us (checked in tests): no value checks
            y = dpmoe_linear(rows, *args, backend=self.backend, validate=False, **shared)
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
        self.layer_shortcuts = True
        self._item_cache: tuple[tuple, torch.Tensor] | None = None
        self._shortcuts = _Shortcuts()
        if layer_shortcuts.structure_reason(backbone) is None:  # checked once, here
            wrapper = adapters.wrap(backbone, layer_shortcuts.last_decoder_layer_name(backbone),
                                    layer_shortcuts.ShortcutDecoderLayer, self.routing)
            self._shortcuts = _Shortcuts(wrapper, tuple(
                m for m in layer_shortcuts.first_layer_input_projections(backbone) if m in self._targets))

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
        self._backend = check_backend_name(value)

    @property
    def packing(self) -> str:
        return self._packing

    @packing.setter
    def packing(self, value: str) -> None:
        if value not in PACKING_MODES:
            raise ValueError(f"packing must be one of {PACKING_MODES}, got {value!r}")
        self._packing = value

    @property
    def layer_shortcuts(self) -> bool:
        """Skip the work L2Rec never reads or would do twice (``models/layer_shortcuts.py``):
        the last layer for the last rows only, the first layer's q/k/v base GEMMs once for
        both views. Default True; ``shortcuts_for`` says which apply."""
        return self._layer_shortcuts

    @layer_shortcuts.setter
    def layer_shortcuts(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"layer_shortcuts must be a bool, got {type(value).__name__}")
        self._layer_shortcuts = value

    def shortcuts_for(self, seq_len: int | None = None, device: str = "cpu", *,
                      grad: bool = False) -> tuple[str, ...]:
        """Which shortcuts a forward over ``seq_len``-token prompts on ``device`` takes
        (``grad``: a training forward, whose gradients flow through the experts or routers):
        ``"last_rows"`` (the last layer for the last rows only) and ``"shared_first_qkv"``
        (the torch path only). Empty when ``layer_shortcuts`` is off or the backbone does
        not qualify (``layer_shortcuts.structure_reason`` and ``window_reason`` say why)."""
        if not self._layer_shortcuts or self._shortcuts.last_layer is None:  # structure_reason
            return ()
        taken = []
        if layer_shortcuts.window_reason(self.backbone, seq_len) is None:
            taken.append("last_rows")
        dpmoe = _op_backends(self._backend, grad)["dpmoe_linear"]
        if dpmoe == "auto":  # "auto" never raises; an explicit backend is taken as named
            dpmoe = planned_backend("dpmoe_linear", dpmoe, device)
        if dpmoe == "torch" and self._shortcuts.first_qkv:
            taken.append("shared_first_qkv")
        return tuple(taken)

    def remove_adapters(self) -> None:
        if self._shortcuts.last_layer is not None:
            adapters.unwrap(self.backbone, self._shortcuts.last_layer)
            self._shortcuts = _Shortcuts()
        super().remove_adapters()

    def uses_packing(self) -> bool:
        """Whether a forward sends packed (unpadded) sequences to the attention (in eager
        mode: a forward compiled with torch.compile always runs padded)."""
        if self._packing != "auto":
            return self._packing == "packed"
        return attn_implementation(self.backbone.config) in _VARLEN_ATTENTION

    def route_gates(self, logits: torch.Tensor) -> torch.Tensor:
        v, b, e = logits.shape
        cfg = self.config
        gates = route(logits.reshape(v * b, e), top_k=cfg.top_k,
                      temperature=cfg.gate_temperature,
                      backend=_op_backends(self._backend)["route"])
        return gates.view(v, b, e)

    def _wants_grad(self, gates: torch.Tensor) -> bool:
        """Whether this forward trains: grad mode, and the gates or the experts require grad."""
        return torch.is_grad_enabled() and (
            gates.requires_grad or any(p.requires_grad for p in self.experts.parameters()))

    def _dual_hidden(self, input_ids, mask, gates):
        batch, seq = input_ids.shape
        seqs, device = NUM_VIEWS * batch, input_ids.device
        grad = self._wants_grad(gates)
        backends = _op_backends(self._backend, grad)
        meta = batch_metadata(mask, num_views=NUM_VIEWS, backend=backends["metadata"])
        stacked_ids = input_ids.repeat(NUM_VIEWS, 1)                  # view-major: [2B, T]
        positions = meta.position_ids.repeat(NUM_VIEWS, 1)
        # Packed input has data-dependent shapes (the number of attended tokens), which a
        # compiled graph cannot take: under torch.compile the padded path runs instead.
        packed = self.uses_packing() and not being_traced(input_ids)
        if packed:  # sequence s owns packed rows cu_seqlens[s] .. cu_seqlens[s+1]-1
            cu = meta.cu_seqlens
        else:       # ... or padded rows s·T .. s·T+T-1
            cu = torch.arange(0, (seqs + 1) * seq, seq, dtype=torch.int32, device=device)
        ctx = FusedContext(self._targets, gates.reshape(seqs, -1), meta.seq_view, cu,
                           self.config.scaling, backends["dpmoe_linear"],
                           rows_per_seq=None if packed else seq)
        shortcuts = self.shortcuts_for(seq, device.type, grad=grad)
        if "shared_first_qkv" in shortcuts and (not packed or device.type == "cpu"):
            # both views' first-layer input is view 0's rows twice (reading cu_seqlens[B]
            # is a host sync on a GPU, so packed input shares only on the CPU)
            block = batch * seq if not packed else int(cu[batch])
            ctx.repeated_input = dict.fromkeys(self._shortcuts.first_qkv, block)
        prune = "last_rows" in shortcuts
        if prune:  # the last layer's output is then already one row per sequence
            one_row_each = ctx.for_rows(torch.arange(seqs + 1, dtype=torch.int32, device=device),
                                    rows_per_seq=1)
            plan = (layer_shortcuts.LastRowsPlan.packed(cu, meta.packed_last_row, seq, one_row_each)
                    if packed else
                    layer_shortcuts.LastRowsPlan.padded(mask, meta.last_index, NUM_VIEWS, one_row_each))
            ctx.layer_plans[self._shortcuts.last_layer.base_layer] = plan
        base = self.backbone.base_model
        with self.routing.activate(ctx):
            if packed:
                # One row of all attended tokens; positions restart per sequence, which is
                # how Hugging Face attention finds the sequence boundaries of packed input.
                keep = mask.repeat(NUM_VIEWS, 1)
                hidden = base(input_ids=stacked_ids[keep][None], position_ids=positions[keep][None],
                              use_cache=False).last_hidden_state[0]
            else:
                attention = self._prepared_mask(mask, grad) if grad else None
                if attention is None:
                    attention = mask.long().repeat(NUM_VIEWS, 1)
                hidden = base(input_ids=stacked_ids, attention_mask=attention,
                              position_ids=positions, use_cache=False).last_hidden_state
        if prune:
            last = hidden.reshape(seqs, -1)
        elif packed:
            last = hidden[meta.packed_last_row]
        else:
            last = hidden[torch.arange(seqs, device=device), meta.last_index.repeat(NUM_VIEWS)]
        return last[:batch], last[batch:]

    def _prepared_mask(self, mask: torch.Tensor, grad: bool) -> torch.Tensor | None:
        """The stacked batch's attention mask as the backbone's attention takes it, [2B, 1,
        T, T], for a training forward on a GPU in eager mode, or None (the backbone prepares
        the 2-D mask itself). Hugging Face's preparation tests the 2-D mask for padding on
        the host (a sync per forward); a prepared mask skips it. Only for the backbones the
        layer shortcuts know (their masks are plain causal + padding), without a sliding
        window narrower than the prompt, under sdpa or eager attention."""
        if not grad or values_are_free(mask) or being_traced(mask):
            return None  # (compiled, the backbone's preparation reads no values either)
        impl = attn_implementation(self.backbone.config)
        if (impl not in ("sdpa", "eager") or self._shortcuts.last_layer is None
                or layer_shortcuts.window_reason(self.backbone, mask.shape[1]) is not None):
            return None
        return stacked_attention_mask(mask, NUM_VIEWS, impl,
                                      self.backbone.get_input_embeddings().weight.dtype)

    # ----------------------------------------------------------------- recommendation
    def _item_table_sources(self) -> tuple[torch.Tensor, ...]:
        return (self.behavior_encoder.item_emb.weight, self.item_text_table,
                self.scorer.id_proj.weight, self.scorer.text_proj.weight)

    def item_table(self) -> torch.Tensor:
        """The whole item table e_i, [num_items + 1, pref_dim], cached between calls.

        The cache key is each source tensor's identity, storage, version counter, device
        and dtype: any in-place change (``load_state_dict``, ``set_item_text_table``, an
        edit through the reference model sharing these tensors), a replaced parameter or a
        ``.to()`` recomputes it. Some in-place updates leave the version counter alone
        (``torch.optim.AdamW(fused=True)``, Trainer's default optimiser, does), so
        ``train()`` and ``eval()`` also drop the cache: a training loop switching to
        evaluation always scores with the current weights. It costs one extra
        [num_items + 1, pref_dim] tensor of memory; ``clear_item_cache()`` frees it.
        """
        key = tuple((id(t), t.data_ptr(), tensor_version(t), t.device, t.dtype)
                    for t in self._item_table_sources())
        cached = self._item_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad():
            table = self.item_embeddings().contiguous()
        self._item_cache = (key, table)  # one assignment: safe for concurrent readers
        return table

    def train(self, mode: bool = True) -> FusedL2Rec:
        # (see item_table: fused optimisers update the weights without a version bump)
        self.clear_item_cache()
        return super().train(mode)

    def clear_item_cache(self) -> None:
        """Drop the cached item table (it is rebuilt on the next ``recommend``)."""
        self._item_cache = None

    @torch.no_grad()
    def recommend(self, input_ids, attention_mask, history_ids, k: int = 10,
                  exclude_history: bool = True, exclude_ids: torch.Tensor | None = None,
                  return_preference: bool = False) -> tuple[torch.Tensor, ...]:
        """The k best catalogue items per user: (scores [B, k] descending, item_ids [B, k]).

        Same answer and arguments as ``L2Rec.recommend`` (scores z·e_i / τ_s; the padding
        item 0 never returned; with ``exclude_history`` the history items neither;
        ``exclude_ids`` [B, X] more per-user exclusions, -1 = none; missing slots, when
        exclusions leave fewer than k items, come last with score -inf and id -1),
        computed with the cached item table and ``topk_items``: no [B, N] score matrix.
        ``return_preference``: also return z [B, pref_dim], as ``L2Rec.recommend`` does.
        """
        # the same steps as the reference's; only ``_top_k`` (the item table) is this class's
        return super().recommend(input_ids, attention_mask, history_ids, k, exclude_history,
                                 exclude_ids, return_preference)

    def _top_k(self, z, history_ids, k: int, exclude_history: bool,
               exclude_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``recommend`` from the preference z [B, pref_dim] on (arguments checked)."""
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
                                 backend=_op_backends(self._backend)["topk_items"])
        return scores.to(z.dtype), ids
