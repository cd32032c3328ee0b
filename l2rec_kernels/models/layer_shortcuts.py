"""Two shortcuts the stacked 2·B batch allows in a Llama-family backbone: work the full
forward does whose result FusedL2Rec never uses, or computes twice.

**1. The last layer, for the last rows only.** L2Rec reads one hidden state per sequence:
the one at its last attended position, after the final norm. In the *last* decoder layer
every other position's output is thrown away, and a position's output depends on the other
positions only through their keys and values. So for that layer, with ``l`` the last row of
a sequence:

    x        = input_norm(h)                      all rows (the keys and values need them)
    k, v     = rope(k_norm(x W_kᵀ)), x W_vᵀ       all rows
    q        = rope(q_norm(x[l] W_qᵀ))            one row per sequence
    a        = softmax(q kᵀ · scale + mask) v     row l attends to its sequence's attended
                                                  positions up to l (causal + padding mask)
    h'       = h[l] + a W_oᵀ
    out      = h' + mlp(post_norm(h'))            one row per sequence

(q_norm, k_norm: Qwen3's per-head RMS norms of queries and keys; the identity elsewhere),
where every targeted projection is still its DPMoE linear (the active routing context
answers for it, with one row per sequence). The query, output and MLP projections, most of
a layer's FLOPs, run for one row per sequence instead of T: at T = 96 and 4 layers, about a
fifth of the backbone's work. The output equals the full layer's at those rows up to
floating-point rounding (the attention is one ``scaled_dot_product_attention`` call here,
whatever kernel the backbone's own attention uses).

**2. The first layer's q/k/v base GEMMs, once for both views.** Both views run the same
prompt, so the first layer's input ``input_norm(embed(ids))`` is the same block of rows
twice; ``x Wᵀ + b`` of its q/k/v projections is computed on one copy and repeated (the
experts, which differ by view, are added to each copy as usual).

Supported: the decoder layers of the model types in ``SUPPORTED_MODEL_TYPES`` (standard
pre-norm attention + MLP with rotary positions, and for Qwen3 per-head q/k norms before the
rotation), on transformers >= 4.54 (where a decoder layer returns its hidden states as a
tensor), and for (1) not under a sliding window narrower than the prompt.
``structure_reason`` and ``window_reason`` say why a backbone does not qualify; then every
layer runs whole, as in the plain model. Not the same change, so not supported: OLMo2
(norms after the attention and MLP, q/k norms over all heads at once) and Gemma3 (four
norms per layer, scaled embeddings, alternating sliding windows).
"""

from __future__ import annotations

import functools
import re

import torch
import torch.nn.functional as F
from torch import nn

from . import adapters

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral", "qwen3")
MIN_TRANSFORMERS = (4, 54)
_QKV = ("q_proj", "k_proj", "v_proj")
_PROJECTIONS = (*_QKV, "o_proj")


@functools.cache  # asked on every forward; the installed version does not change
def _transformers_version() -> tuple[int, int]:
    import transformers

    major, minor = re.match(r"(\d+)\.(\d+)", transformers.__version__).groups()
    return int(major), int(minor)


def last_decoder_layer_name(backbone: nn.Module) -> str | None:
    """The last decoder layer's name in the backbone (None: no ``layers`` list)."""
    layers = getattr(backbone.base_model, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers) > 0:
        for name, module in backbone.named_modules():
            if module is layers:
                return f"{name}.{len(layers) - 1}"
    return None


def last_decoder_layer(backbone: nn.Module) -> nn.Module | None:
    """The backbone's own last decoder layer (behind its wrapper, if it has one)."""
    layers = getattr(backbone.base_model, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers) > 0:
        return adapters.unwrapped(layers[-1])
    return None


def first_layer_input_projections(backbone: nn.Module) -> tuple[nn.Linear, ...]:
    """The frozen projections that read the first layer's normed input (repeated across
    views), behind their wrappers."""
    attn = adapters.unwrapped(backbone.base_model.layers[0]).self_attn
    return tuple(adapters.unwrapped(getattr(attn, p)) for p in _QKV)


def sliding_window(backbone: nn.Module) -> int | None:
    """The last layer's attention window in tokens, or None for full attention."""
    window = getattr(last_decoder_layer(backbone).self_attn, "sliding_window", None)
    if window is None and backbone.config.model_type == "mistral":
        window = getattr(backbone.config, "sliding_window", None)
    return window


def window_reason(backbone: nn.Module, seq_len: int | None) -> str | None:
    """Why the last-rows shortcut cannot run on ``seq_len``-token prompts (None: it can):
    a sliding window narrower than the prompt, where the last row must not see every
    earlier key. Assumes ``structure_reason(backbone)`` is None."""
    window = sliding_window(backbone)
    if window is not None and seq_len is not None and seq_len > window:
        return f"a sliding window of {window} is narrower than the prompt ({seq_len} tokens)"
    return None


def structure_reason(backbone: nn.Module) -> str | None:
    """Why ``backbone`` does not qualify for either shortcut (None: it does)."""
    if _transformers_version() < MIN_TRANSFORMERS:
        return f"transformers < {'.'.join(map(str, MIN_TRANSFORMERS))}"
    model_type = getattr(backbone.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model_type {model_type!r} is not one of {SUPPORTED_MODEL_TYPES}"
    layer = last_decoder_layer(backbone)
    attn = getattr(layer, "self_attn", None)
    if attn is None or not all(isinstance(adapters.unwrapped(getattr(attn, p, None)), nn.Linear)
                               for p in _PROJECTIONS) \
            or not all(hasattr(layer, n) for n in ("input_layernorm", "post_attention_layernorm", "mlp")):
        return "the last decoder layer is not a standard pre-norm attention + MLP layer"
    if (hasattr(attn, "q_norm") or hasattr(attn, "k_norm")) and model_type != "qwen3":
        return "the attention normalises queries/keys in a way the shortcut does not repeat"
    return None


class LastRowsPlan:
    """One forward's instructions for the last layer (built per call, so two threads never
    share one). ``rows`` [S] are the last rows of the S sequences in the layer input
    flattened to [N, hidden]; ``key_index`` [S, Tk] (packed input only; None when padded,
    where sequence s owns rows s·T .. s·T+T-1) the rows of each sequence's keys;
    ``key_valid`` [S, Tk] which of those the last row attends to; ``row_context`` routes
    the projections that see one row per sequence."""

    def __init__(self, rows: torch.Tensor, key_index: torch.Tensor | None,
                 key_valid: torch.Tensor, row_context: adapters.RoutingContext) -> None:
        self.rows, self.key_index, self.key_valid = rows, key_index, key_valid
        self.row_context = row_context

    @classmethod
    def padded(cls, mask: torch.Tensor, last_index: torch.Tensor, num_views: int,
               row_context: adapters.RoutingContext) -> LastRowsPlan:
        """Sequences s = v·B + b are rows of a [num_views·B, T] batch with mask ``mask[b]``."""
        users, tokens = mask.shape
        last = last_index.repeat(num_views)
        seqs = torch.arange(num_views * users, device=mask.device)
        positions = torch.arange(tokens, device=mask.device)
        valid = mask.repeat(num_views, 1) & (positions <= last[:, None])
        return cls(seqs * tokens + last, None, valid, row_context)

    @classmethod
    def packed(cls, cu_seqlens: torch.Tensor, last_row: torch.Tensor, width: int,
               row_context: adapters.RoutingContext) -> LastRowsPlan:
        """Sequence s owns packed rows cu_seqlens[s] .. cu_seqlens[s+1]-1 (at most ``width``),
        all attended."""
        starts, lengths = cu_seqlens[:-1].long(), (cu_seqlens[1:] - cu_seqlens[:-1]).long()
        offsets = torch.arange(width, device=cu_seqlens.device)
        valid = offsets < lengths[:, None]
        index = torch.where(valid, starts[:, None] + offsets, 0)  # row 0 exists: it is masked
        return cls(last_row.long(), index, valid, row_context)

    def run(self, layer: nn.Module, routing: adapters.Routing, hidden: torch.Tensor,
            cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """The last layer's output at the last rows: [S, 1, hidden] for padded input,
        [1, S, hidden] for packed, so the backbone's final norm applies as usual.
        ``routing``: the backbone's, where the one-row-per-sequence context goes."""
        attn = layer.self_attn
        head_dim = attn.head_dim
        width = hidden.shape[-1]
        flat = hidden.reshape(-1, width)
        seqs = self.rows.shape[0]
        cos = cos.expand(*hidden.shape[:2], -1).reshape(-1, 1, head_dim)
        sin = sin.expand(*hidden.shape[:2], -1).reshape(-1, 1, head_dim)

        x = layer.input_layernorm(hidden)              # keys and values: every row
        keys = _rope(_head_norm(attn, "k_norm", attn.k_proj(x).reshape(flat.shape[0], -1, head_dim)),
                     cos, sin)
        values = attn.v_proj(x).reshape(flat.shape[0], -1, head_dim)
        if self.key_index is None:                      # padded: [S, T, kv_heads, head_dim]
            keys, values = keys.view(seqs, -1, *keys.shape[1:]), values.view(seqs, -1, *values.shape[1:])
        else:
            keys, values = keys[self.key_index], values[self.key_index]
        kv_heads = keys.shape[2]

        with routing.activate(self.row_context):        # one row per sequence from here on
            query = attn.q_proj(x.reshape(-1, width)[self.rows]).view(seqs, -1, head_dim)
            query = _rope(_head_norm(attn, "q_norm", query), cos[self.rows], sin[self.rows])
            # Grouped-query attention: the query heads sharing a kv head (head h uses kv head
            # h // group, as transformers' repeat_kv does) are that kv head's queries; there
            # is no causal mask between them, so no kv head is ever copied.
            query = query.view(seqs, kv_heads, -1, head_dim)
            mixed = F.scaled_dot_product_attention(
                query, keys.transpose(1, 2), values.transpose(1, 2),
                attn_mask=self.key_valid[:, None, None, :], scale=attn.scaling)
            out = flat[self.rows] + attn.o_proj(mixed.reshape(seqs, -1))
            out = out + layer.mlp(layer.post_attention_layernorm(out))
        return out[:, None] if self.key_index is None else out[None]


def _head_norm(attn: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """Qwen3's per-head RMS norm of queries or keys ([..., heads, head_dim]), if the
    attention has it, as its own forward applies it: before the rotation."""
    norm = getattr(attn, name, None)
    return x if norm is None else norm(x)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, the Llama convention (rotate the two halves): x·cos + rot(x)·sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class ShortcutDecoderLayer(adapters.BackboneWrapper):
    """The last decoder layer (``base_layer``) behind a wrapper: the innermost active
    context's plan for it if one has a plan (a ``FusedL2Rec`` forward taking the last-rows
    shortcut), else the layer's own forward, so the backbone stays a plain model."""

    def __init__(self, base_layer: nn.Module, routing: adapters.Routing) -> None:
        super().__init__(base_layer, routing)
        # What a decoder loop reads from its layers besides calling them (Qwen2/3 pick each
        # layer's attention mask by it).
        if hasattr(base_layer, "attention_type"):
            self.attention_type = base_layer.attention_type

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        for ctx in reversed(self.routing.active()):   # innermost first
            plan = ctx.layer_plan(self.base_layer)
            if plan is not None:
                embeddings = kwargs.get("position_embeddings")
                if embeddings is None:  # every supported model passes them; guard a change
                    raise RuntimeError(
                        f"{type(self.base_layer).__name__} was called without "
                        "position_embeddings; this transformers version is not supported for "
                        "last-row pruning: set model.layer_shortcuts = False")
                return plan.run(self.base_layer, self.routing, hidden_states, *embeddings)
        return self.base_layer(hidden_states, *args, **kwargs)

