"""What ``L2Rec`` and ``FusedL2Rec`` share: parameters, view encoders, heads, checkpoints.

The two models differ only in how the backbone is run for the two views
(``_dual_hidden``) and how the gates are routed; everything else lives here, so they have
the same ``state_dict()`` keys, the same forward signature and the same checkpoint format.
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .._validation import check_exclude
from . import adapters
from .config import NUM_VIEWS, L2RecConfig
from .digest import backbone_digest, backbone_digest_mismatches, json_text
from .encoders import SASRecEncoder, last_true_index, semantic_summary
from .heads import CrossViewFusion, ItemScorer, ViewRouter, rename_legacy_router_keys
from .inputs import L2RecOutput, validated_forward_inputs

CONFIG_NAME = "l2rec_config.json"
WEIGHTS_NAME = "l2rec_weights.safetensors"
FORMAT_VERSION = 1


def _backbone_fingerprint(backbone: nn.Module) -> dict:
    cfg = backbone.config
    return {"model_type": getattr(cfg, "model_type", None), "hidden_size": cfg.hidden_size,
            "num_hidden_layers": getattr(cfg, "num_hidden_layers", None),
            "vocab_size": getattr(cfg, "vocab_size", None)}


# The dtypes ``to_inference_dtype`` takes (what the backbone's GEMMs can run in).
INFERENCE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Backbone buffers that keep their dtype: the rotary frequencies, which Hugging Face keeps
# in float32 when a model is loaded with from_pretrained(dtype=...) and reads as float32.
_FP32_BUFFERS = ("inv_freq", "original_inv_freq")


class L2RecBase(nn.Module):
    """Parameters and heads of an L2Rec model over a frozen Hugging Face backbone."""

    def __init__(self, backbone: nn.Module, config: L2RecConfig, *,
                 share_from: L2RecBase | None = None) -> None:
        super().__init__()
        if not isinstance(config, L2RecConfig):
            raise TypeError(f"config must be an L2RecConfig, got {type(config).__name__}")
        if not isinstance(backbone, nn.Module) or not hasattr(backbone, "config") \
                or not hasattr(backbone.config, "hidden_size"):
            raise TypeError("backbone must be a transformers PreTrainedModel (a torch Module "
                            f"with .config.hidden_size), got {type(backbone).__name__}")
        self.config = config
        self.backbone = backbone
        for p in backbone.parameters():
            p.requires_grad_(False)
        hidden = backbone.config.hidden_size
        d_sem = config.semantic_dim or hidden
        device = next(backbone.parameters()).device

        # target_modules="auto" -> this backbone's names, in a copy of the config (so
        # checkpoints name the layers they adapt; the caller's config is left as it is)
        config = self.config = adapters.resolve_targets(config, backbone)
        linears = adapters.find_target_linears(backbone, config.target_modules)
        if share_from is not None:
            self._share_modules(share_from)
        else:
            self._build_modules(linears, hidden, d_sem)
            self._to_backbone_device(device)
        # Plain dict (not a registered submodule): which frozen linear owns which experts.
        self._targets = {m: self.experts[adapters.expert_key(n)] for n, m in linears.items()}
        # The targeted linears become AdaptedLinear wrappers (shared with any other model
        # over this backbone), reading the routing this model's forwards set.
        self.routing = adapters.routing_of(backbone)
        self._wrappers = [adapters.wrap(backbone, n, adapters.AdaptedLinear, self.routing)
                          for n in linears]
        self.validate_inputs = True

    def _build_modules(self, linears: dict[str, nn.Linear], hidden: int, d_sem: int) -> None:
        config = self.config
        self.experts = nn.ModuleDict({
            adapters.expert_key(name): adapters.DPMoEExperts(
                *adapters.in_out_features(m), config.num_experts, config.rank,
                config.num_shared_experts)
            for name, m in linears.items()
        })
        self.behavior_encoder = SASRecEncoder(config.num_items, config.behavior_dim,
                                              config.max_history, config.sasrec_layers,
                                              config.sasrec_heads, config.sasrec_dropout,
                                              config.sasrec_ffn)
        table = torch.randn(config.num_items + 1, d_sem) * d_sem ** -0.5
        table[0] = 0.0
        # The item-text table is data, not a parameter: set it from titles with
        # ``set_item_text_table(build_item_text_table(...))``.
        self.register_buffer("item_text_table", table)
        self.routers = nn.ModuleList([
            ViewRouter(dim, hidden, config.router_hidden, config.num_experts, config.router_inputs)
            for dim in (config.behavior_dim, d_sem)
        ])
        self.fusion = CrossViewFusion(hidden, config.pref_dim, config.fusion_hidden, config.fusion_views)
        self.scorer = ItemScorer(config.behavior_dim, d_sem, config.pref_dim,
                                 config.score_temperature)
        if not config.train_view_encoders:
            self.behavior_encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> L2RecBase:
        """``Module.train``, but a frozen view encoder (``train_view_encoders=False``, the
        paper's stage 2) stays in eval mode: its dropout must not act while it is not trained."""
        super().train(mode)
        if not self.config.train_view_encoders:
            self.behavior_encoder.eval()
        return self

    def _share_modules(self, other: L2RecBase) -> None:
        """Use ``other``'s modules and tables themselves: nothing is allocated or copied."""
        if other.backbone is not self.backbone or other.config != self.config:
            raise ValueError("share_from must be a model over the same backbone and config")
        for name in ("experts", "behavior_encoder", "routers", "fusion", "scorer"):
            setattr(self, name, getattr(other, name))
        self.register_buffer("item_text_table", other.item_text_table)

    def _to_backbone_device(self, device: torch.device) -> None:
        for name, child in self.named_children():
            if name != "backbone":
                child.to(device)
        self.item_text_table = self.item_text_table.to(device)

    # ----------------------------------------------------------------- pieces of a forward
    @property
    def num_items(self) -> int:
        return self.config.num_items

    @property
    def adapted_linears(self) -> dict[nn.Linear, adapters.DPMoEExperts]:
        """Each frozen backbone linear that carries experts (the ``base_layer`` of its
        ``AdaptedLinear`` wrapper) -> its experts (a copy: read-only)."""
        return dict(self._targets)

    def encode_views(self, history_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u_b [B, d_cf], u_s [B, d_sem]) from the interaction history."""
        return self.behavior_encoder(history_ids), semantic_summary(history_ids, self.item_text_table)

    def prompt_context(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """c [B, hidden]: the mean of the backbone's input embeddings over each prompt's
        attended tokens (what a context-aware router reads; one per sequence)."""
        emb = self.backbone.get_input_embeddings()(input_ids)
        m = attention_mask.unsqueeze(-1).to(emb.dtype)
        return ((emb * m).sum(1) / m.sum(1).clamp_min(1.0)).float()

    def gate_logits(self, history_ids: torch.Tensor, input_ids: torch.Tensor | None = None,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Router logits for both views, [2, B, E]. ``input_ids`` and ``attention_mask`` (the
        prompt) are needed when ``config.router_inputs`` has "context" or "interaction"."""
        u_b, u_s = self.encode_views(history_ids)
        context = None
        if self.routers[0].needs_context:
            if input_ids is None or attention_mask is None:
                raise ValueError(f"router_inputs={self.config.router_inputs} read the prompt: "
                                 "pass input_ids and attention_mask to gate_logits")
            context = self.prompt_context(input_ids, attention_mask)
        return torch.stack([self.routers[0](u_b, context), self.routers[1](u_s, context)])

    def item_embeddings(self, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        """e_i for ``item_ids``, or the whole table [num_items + 1, pref_dim] when None."""
        return self.scorer.item_embeddings(self.behavior_encoder.item_emb.weight,
                                           self.item_text_table, item_ids)

    def score(self, z: torch.Tensor, candidate_ids: torch.Tensor | None) -> torch.Tensor:
        if candidate_ids is None:
            scores = self.scorer.score(z, self.item_embeddings())
            scores[:, 0] = float("-inf")  # the padding item is never a recommendation
            return scores
        items = self.item_embeddings(candidate_ids)
        return self.scorer.score(z, items)

    def route_gates(self, logits: torch.Tensor) -> torch.Tensor:
        """[2, B, E] logits -> [2, B, E] gates; subclasses choose how."""
        raise NotImplementedError

    def _dual_hidden(self, input_ids: torch.Tensor, mask: torch.Tensor,
                     gates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_b, h_s): the last attended hidden state of each view's pass, [B, hidden] each."""
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                history_ids: torch.Tensor, candidate_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> L2RecOutput:
        """Score items for each user (docs/design.md section 1).

        input_ids [B, T], attention_mask [B, T] (prompts padded on either side),
        history_ids [B, H] (0 = padding), candidate_ids [C] or [B, C] (None: the whole
        catalogue), labels [B] (indices into candidate_ids, or item ids for the catalogue).
        """
        parts = self._forward_parts(input_ids, attention_mask, history_ids, candidate_ids, labels)
        z, gates = parts["z"], parts["gates"]
        candidate_ids, labels = parts["candidate_ids"], parts["labels"]  # checked (compile)
        scores = self.score(z, candidate_ids)
        loss = aux = None
        if labels is not None:
            loss = F.cross_entropy(scores.float(), labels.long())
            aux = self.aux_losses(parts)
            for name, value in aux.items():
                loss = loss + getattr(self.config, f"{name}_weight") * value
        return L2RecOutput(scores=scores, preference=z, gates=gates, loss=loss, aux_losses=aux)

    def aux_losses(self, parts: dict) -> dict[str, torch.Tensor]:
        """The auxiliary training losses with a non-zero weight, unweighted (L2RecConfig)."""
        cfg, out = self.config, {}
        if cfg.load_balance_weight > 0:
            out["load_balance"] = load_balance_loss(parts["logits"], parts["gates"],
                                                    cfg.gate_temperature)
        if cfg.contrastive_weight > 0:
            p_b, p_s = self.fusion.project(parts["h_b"], parts["h_s"])
            out["contrastive"] = cross_view_contrastive_loss(p_b, p_s, cfg.contrastive_temperature)
        return out

    def _preference(self, input_ids, attention_mask, history_ids):
        """(z [B, pref_dim], gates [2, B, E]) after checking the inputs."""
        parts = self._forward_parts(input_ids, attention_mask, history_ids)
        return parts["z"], parts["gates"]

    def _forward_parts(self, input_ids, attention_mask, history_ids, candidate_ids=None,
                       labels=None, *, check_values: bool | None = None) -> dict:
        """Check the inputs, route and run the backbone: z, gates, logits, h_b, h_s, and the
        checked candidate_ids and labels (``validated_forward_inputs``: under torch.compile
        they depend on the value checks, so the caller must use these).

        ``check_values`` None follows ``validate_inputs``; False is for callers that checked
        the values already (``models.compiled``: its graphs must not sync with the host)."""
        if check_values is None:
            check_values = self.validate_inputs
        mask, input_ids, history_ids, candidate_ids, labels = validated_forward_inputs(
            input_ids, attention_mask, history_ids, candidate_ids, labels,
            vocab_size=self.backbone.config.vocab_size, num_items=self.num_items,
            max_history=self.config.max_history, check_values=check_values)
        if input_ids.shape[0] == 0:
            raise ValueError("input_ids must have at least one row (got an empty batch)")
        logits = self.gate_logits(history_ids, input_ids, mask)
        gates = self.route_gates(logits)
        h_b, h_s = self._dual_hidden(input_ids, mask, gates)
        return {"z": self.fusion(h_b, h_s), "gates": gates, "logits": logits, "h_b": h_b,
                "h_s": h_s, "candidate_ids": candidate_ids, "labels": labels}

    def _check_recommend_args(self, history_ids, k, exclude_history, exclude_ids,
                              return_preference=False) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.num_items:
            raise ValueError(f"k must be an int in [1, num_items={self.num_items}], got {k!r}")
        for name, flag in (("exclude_history", exclude_history), ("return_preference", return_preference)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        if exclude_ids is not None:  # item ids 0..num_items: the table's num_items + 1 rows
            check_exclude("exclude_ids", exclude_ids, rows=history_ids.shape[0], row_name="user",
                          num_items=self.num_items + 1, device=history_ids.device)

    @torch.no_grad()
    def recommend(self, input_ids, attention_mask, history_ids, k: int = 10,
                  exclude_history: bool = True, exclude_ids: torch.Tensor | None = None,
                  return_preference: bool = False) -> tuple[torch.Tensor, ...]:
        """The k best catalogue items per user: (scores [B, k] descending, item_ids [B, k]).

        The padding item 0 is never returned; with ``exclude_history`` neither are the
        items in ``history_ids``, and ``exclude_ids`` [B, X] (integer, -1 = no item) adds
        per-user exclusions (e.g. a history longer than ``max_history``). When exclusions
        leave fewer than k items, the missing slots come last with score -inf and id -1.
        ``return_preference``: also return the users' preference z [B, pref_dim] (the
        forward's ``preference``), e.g. for an approximate-nearest-neighbour index.

        This is the plain formulation (every item scored, then ``torch.topk``), the oracle
        that ``FusedL2Rec.recommend`` is tested against.
        """
        self._check_recommend_args(history_ids, k, exclude_history, exclude_ids, return_preference)
        z, _ = self._preference(input_ids, attention_mask, history_ids)
        scores, ids = self._top_k(z, history_ids, k, exclude_history, exclude_ids)
        return (scores, ids, z) if return_preference else (scores, ids)

    def _top_k(self, z, history_ids, k: int, exclude_history: bool,
               exclude_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``recommend`` from the preference z [B, pref_dim] on (arguments checked)."""
        scores = self.score(z, None)
        if exclude_history:
            scores = scores.scatter(1, history_ids.long(), float("-inf"))
        if exclude_ids is not None:  # -1 entries are sent to column 0, already -inf
            scores = scores.scatter(1, exclude_ids.long().clamp_min(0), float("-inf"))
        top = torch.topk(scores, k, dim=-1)
        ids = torch.where(torch.isneginf(top.values), -1, top.indices)
        return top.values, ids

    # ----------------------------------------------------------------- adapters lifecycle
    def remove_adapters(self) -> None:
        """Give the backbone back its plain linears (this model can no longer run); a
        wrapper that another model over the backbone still uses stays."""
        for wrapper in self._wrappers:
            adapters.unwrap(self.backbone, wrapper)
        self._targets, self._wrappers = {}, []

    def set_item_text_table(self, table: torch.Tensor) -> None:
        """Replace the semantic view's item-text table, [num_items + 1, d_sem]."""
        want = tuple(self.item_text_table.shape)
        if not isinstance(table, torch.Tensor) or tuple(table.shape) != want:
            got = tuple(table.shape) if isinstance(table, torch.Tensor) else type(table).__name__
            raise ValueError(f"table must be a tensor of shape {want}, got {got}")
        with torch.no_grad():  # in place, so a model sharing this table sees the change
            self.item_text_table.copy_(table)

    # ----------------------------------------------------------------- precision
    def to_inference_dtype(self, dtype: torch.dtype) -> L2RecBase:
        """Run the backbone in ``dtype`` (e.g. ``torch.bfloat16``) and keep L2Rec's own
        numerically sensitive parts in float32. In place, like ``Module.to``; returns self.

        Cast to ``dtype``: the backbone's parameters and the experts (what the backbone's
        GEMMs read). Its rotary frequency buffers (``inv_freq``) keep their dtype, as
        ``from_pretrained(dtype=...)`` leaves them. Kept in float32 (``dtype`` if that is
        wider): the view encoders and the item-text table, the routers (their softmax makes
        the gates), the cross-view fusion and the item scorer. So the gates see no 16-bit
        rounding (unless the router reads the prompt context, itself an average of the
        backbone's embeddings), and the preference and scores see it only through the
        backbone's hidden states. ``model.to(torch.bfloat16)`` instead casts everything.

        Modules this model shares (``FusedL2Rec.from_reference``) change with it.
        """
        if not isinstance(dtype, torch.dtype) or dtype not in INFERENCE_DTYPES:
            raise TypeError(f"dtype must be one of {', '.join(map(str, INFERENCE_DTYPES))}, "
                            f"got {dtype!r}")
        heads = torch.promote_types(dtype, torch.float32)
        keep = [(m, n, b) for m in self.backbone.modules()
                for n, b in m.named_buffers(recurse=False) if n in _FP32_BUFFERS]
        self.backbone.to(dtype)
        for m, n, b in keep:
            setattr(m, n, b)  # (a registered buffer's name: assigning replaces the buffer)
        self.experts.to(dtype)
        for module in (self.behavior_encoder, self.routers, self.fusion, self.scorer):
            module.to(heads)
        # in place (not a new tensor), so a model sharing the table sees it too
        self.item_text_table.data = self.item_text_table.data.to(heads)
        return self

    # ----------------------------------------------------------------- checkpoints
    def own_state_dict(self) -> dict[str, torch.Tensor]:
        """L2Rec's own tensors: everything but the user-supplied backbone."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``l2rec_config.json`` and ``l2rec_weights.safetensors`` (no pickle).

        The JSON records the backbone's shape (``backbone``) and a digest of its weights
        (``backbone_digest``: a few values of each parameter) that ``from_pretrained``
        checks; the backbone itself is not saved."""
        os.makedirs(path, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.own_state_dict().items()}
        save_file(tensors, os.path.join(path, WEIGHTS_NAME), metadata={"format": "pt"})
        # The digest is a key of its own (not inside "backbone", which older versions of
        # this package compare as a whole): they load these checkpoints and ignore it.
        meta = {"format_version": FORMAT_VERSION, "config": self.config.to_dict(),
                "backbone": _backbone_fingerprint(self.backbone),
                "backbone_digest": backbone_digest(self.backbone)}
        with open(os.path.join(path, CONFIG_NAME), "w") as f:
            f.write(json_text(meta) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, backbone: nn.Module, *,
                        check_backbone_weights: bool = True, **kwargs):
        """Rebuild a saved model on ``backbone`` (which the user loads; it is not saved).

        ``backbone`` must have the saved one's model type and sizes (always checked) and,
        with ``check_backbone_weights`` (default), its weights: a ValueError names the
        parameters whose sampled values differ beyond a dtype change (the same weights in
        bf16, fp16 or fp32 pass). ``check_backbone_weights=False`` loads onto a different
        backbone on purpose. Checkpoints saved before the digest existed load unchecked
        (and without a warning). ``kwargs`` go to the model class (e.g. ``backend``)."""
        if not isinstance(check_backbone_weights, bool):
            raise TypeError("check_backbone_weights must be a bool, got "
                            f"{type(check_backbone_weights).__name__}")
        meta, w_path = read_checkpoint(path)
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported checkpoint format_version {meta.get('format_version')!r}")
        saved, given = meta["backbone"], _backbone_fingerprint(backbone)
        if saved != given:
            raise ValueError(f"backbone does not match the checkpoint: saved for {saved}, got {given}")
        digest = meta.get("backbone_digest")
        if check_backbone_weights and digest is not None:
            problems = backbone_digest_mismatches(digest, backbone)
            if problems:
                listed = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more"
                                                    if len(problems) > 3 else "")
                raise ValueError(
                    "backbone weights do not match the checkpoint: this backbone has the shape "
                    f"of the one the model was saved with, but other weights ({listed}; the same "
                    "weights in another dtype would agree to within 1%). Load the backbone the "
                    "model was trained on, or pass check_backbone_weights=False to load onto "
                    "this one anyway.")
        model = cls(backbone, L2RecConfig.from_dict(meta["config"]), **kwargs)
        model.load_own_state_dict(load_file(w_path))
        return model

    def load_own_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        tensors = rename_legacy_router_keys(tensors)  # checkpoints from before router_inputs
        expected = self.own_state_dict()
        missing, unexpected = set(expected) - set(tensors), set(tensors) - set(expected)
        if missing or unexpected:
            raise ValueError(f"checkpoint keys do not match the model: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")
        for k, v in tensors.items():
            if v.shape != expected[k].shape:
                raise ValueError(f"checkpoint tensor {k!r} has shape {list(v.shape)}, the model "
                                 f"expects {list(expected[k].shape)}")
        self.load_state_dict(tensors, strict=False)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, str]:
    """(the parsed ``l2rec_config.json``, the weights file's path) of a checkpoint directory;
    FileNotFoundError naming the file that is missing."""
    cfg_path, w_path = os.path.join(path, CONFIG_NAME), os.path.join(path, WEIGHTS_NAME)
    for p in (cfg_path, w_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p} not found: is {os.fspath(path)} an L2Rec checkpoint?")
    with open(cfg_path) as f:
        return json.load(f), w_path


def load_balance_loss(logits: torch.Tensor, gates: torch.Tensor, temperature: float) -> torch.Tensor:
    """Switch-style balance over the experts, averaged over the views: E · Σ_e f_e · P_e,
    f_e the share of the batch's gate mass on expert e (no gradient; with top-k only the
    users routed to e add to it), P_e the mean router probability; 1 when balanced."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)          # [V, B, E]
    share = gates.detach().float().mean(1)
    share = share / share.sum(-1, keepdim=True).clamp_min(1e-12)         # [V, E]
    return (logits.shape[-1] * (share * probs.mean(1)).sum(-1)).mean()


def cross_view_contrastive_loss(p_b: torch.Tensor, p_s: torch.Tensor,
                                temperature: float) -> torch.Tensor:
    """Bidirectional InfoNCE: user b's two views are the positive pair, the other users'
    other view the negatives, behavioral -> semantic and back, averaged."""
    p_b, p_s = F.normalize(p_b.float(), dim=-1), F.normalize(p_s.float(), dim=-1)
    sim = p_b @ p_s.T / temperature                                        # [B, B]
    target = torch.arange(sim.shape[0], device=sim.device)
    return 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target))


def gather_last(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """hidden [B, T, H] at each row's last attended position -> [B, H]."""
    idx = last_true_index(mask)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]


__all__ = ["NUM_VIEWS", "L2RecBase", "gather_last"]
