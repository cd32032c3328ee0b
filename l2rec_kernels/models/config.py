"""``L2RecConfig``: every hyper-parameter of an L2Rec model, serialisable to JSON."""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_TARGETS = LLAMA_TARGETS
_ATTENTION_ONLY = ("q_proj", "k_proj", "v_proj", "o_proj")
_FUSED_QKV = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
# What target_modules="auto" picks, by the backbone's config.model_type: its attention and
# MLP linears (leaf names; GPT-2's c_proj is both the attention's and the MLP's output).
# Mixture-of-experts models: attention only, since their experts are not per-token linears
# (a model type not listed gets LLAMA_TARGETS if it has all of them, else an error).
AUTO_TARGETS = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "olmo2"), LLAMA_TARGETS),
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "gpt_neox": _FUSED_QKV,
    "falcon": _FUSED_QKV,
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    **dict.fromkeys(("mixtral", "qwen2_moe", "qwen3_moe"), _ATTENTION_ONLY),
}
NUM_VIEWS = 2  # view 0: behavioral, view 1: semantic
ROUTER_INPUTS = ("user", "context", "interaction")
FUSION_VIEWS = ("both", "behavioral", "semantic")


@dataclass
class L2RecConfig:
    """Hyper-parameters of L2Rec (docs/design.md section 1).

    The defaults follow iLoRA's public code (E=4 experts of rank 8, alpha=16, so the
    low-rank scaling is alpha/rank; dense gates from the user vector alone; no shared
    experts). ``L2RecConfig.paper(num_items)`` is the setup public reviews of the L2Rec
    paper report (shared experts, context-aware top-2 routers, auxiliary losses).

    DPMoE and routing:
      target_modules: the leaf names of the backbone linears that get experts (every module
        whose name ends in one of them), or "auto": the attention and MLP linears of the
        backbone's architecture (``AUTO_TARGETS``). "auto" is resolved when a model is built
        on a backbone: ``model.config`` then holds the chosen names (the config passed in is
        not changed), so a saved checkpoint names the layers it adapts.
      num_shared_experts: ungated experts both views use on every row (DeepSeekMoE-style),
        added with coefficient ``scaling``; 0 = none.
      router_inputs: what each view's router reads, a subset of ``ROUTER_INPUTS``:
        "user" (the view summary u_v, projected), "context" (the prompt summary c: the mean
        of the backbone's input embeddings over the attended tokens, projected) and
        "interaction" (the element-wise product of the two projections). Gates stay one
        per user per view whatever the inputs.
    Auxiliary training losses (added to ``loss`` when labels are given, each also reported
    unweighted in ``L2RecOutput.aux_losses``; 0 = not computed):
      load_balance_weight: Switch-style E · Σ_e f_e · P_e per view (f: the share of the
        batch's gate mass on expert e, P: mean router probability), averaged over the views.
      contrastive_weight: bidirectional InfoNCE between the two views' preference
        projections P_b h_b and P_s h_s of the same users (other users in the batch are the
        negatives), at temperature ``contrastive_temperature``.
    """

    num_items: int
    num_experts: int = 4
    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] | str = DEFAULT_TARGETS  # or "auto"
    top_k: int | None = None
    gate_temperature: float = 1.0
    num_shared_experts: int = 0
    router_inputs: tuple[str, ...] = ("user",)
    load_balance_weight: float = 0.0
    contrastive_weight: float = 0.0
    contrastive_temperature: float = 0.1
    behavior_dim: int = 64          # d_cf: width of the SASRec item/state embeddings
    pref_dim: int = 128             # d_pref: width of the fused user preference z
    semantic_dim: int | None = None  # d_sem: item-text embedding width; None = backbone hidden
    router_hidden: int = 128
    fusion_hidden: int = 256
    max_history: int = 50           # longest history the SASRec position table covers
    sasrec_layers: int = 2
    sasrec_heads: int = 2
    sasrec_dropout: float = 0.0     # SASRec's dropout while it trains (stage 1, or unfrozen)
    sasrec_ffn: int | None = None   # SASRec's feed-forward width; None = behavior_dim
    fusion_views: str = "both"      # an ablation: "behavioral" or "semantic" alone makes z
    score_temperature: float = 1.0  # tau_s in scores = z e_i^T / tau_s
    train_view_encoders: bool = False  # the paper freezes SASRec and the text table

    @classmethod
    def paper(cls, num_items: int, **overrides) -> L2RecConfig:
        """The setup public third-party reviews of the L2Rec paper report (unverified; the
        paper's full text is not available to us): rank 8, shared experts plus
        view-specific experts, routers over context, user and their interaction, top-2
        gates, a load-balance and a cross-view contrastive loss. The counts (one shared
        expert, four per view) and the loss weights are our choices, not reported values.
        ``overrides`` replace any field."""
        preset = dict(num_items=num_items, rank=8, alpha=16.0, num_experts=4, top_k=2,
                      num_shared_experts=1, router_inputs=ROUTER_INPUTS,
                      load_balance_weight=0.01, contrastive_weight=0.1)
        return cls(**{**preset, **overrides})

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            if self.target_modules != "auto":
                raise TypeError(f'L2RecConfig.target_modules must be "auto" or a tuple of module '
                                f"names, got the string {self.target_modules!r}")
        else:
            self.target_modules = tuple(self.target_modules)
        if isinstance(self.router_inputs, str):
            raise TypeError(f"L2RecConfig.router_inputs must be a tuple of names from "
                            f"{ROUTER_INPUTS}, got the string {self.router_inputs!r}")
        self.router_inputs = tuple(self.router_inputs)
        if not self.router_inputs or len(set(self.router_inputs)) != len(self.router_inputs) \
                or not set(self.router_inputs) <= set(ROUTER_INPUTS):
            raise ValueError(f"L2RecConfig.router_inputs must be a non-empty subset of "
                             f"{ROUTER_INPUTS} without repeats, got {self.router_inputs!r}")
        # (kept in the canonical order, so equal sets give equal configs)
        self.router_inputs = tuple(n for n in ROUTER_INPUTS if n in self.router_inputs)
        n = self.num_shared_experts
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"L2RecConfig.num_shared_experts must be an int >= 0, got {n!r}")
        for name in ("load_balance_weight", "contrastive_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"L2RecConfig.{name} must be a finite number >= 0, got {v!r}")
        for name in ("num_items", "num_experts", "rank", "behavior_dim", "pref_dim",
                     "router_hidden", "fusion_hidden", "max_history", "sasrec_layers",
                     "sasrec_heads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"L2RecConfig.{name} must be a positive int, got {v!r}")
        if self.semantic_dim is not None and (not isinstance(self.semantic_dim, int)
                                              or self.semantic_dim < 1):
            raise ValueError(f"L2RecConfig.semantic_dim must be None or a positive int, "
                             f"got {self.semantic_dim!r}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or not 1 <= self.top_k <= self.num_experts):
            raise ValueError(f"L2RecConfig.top_k must be None or an int in [1, num_experts="
                             f"{self.num_experts}], got {self.top_k!r}")
        if self.sasrec_ffn is not None and (isinstance(self.sasrec_ffn, bool)
                                            or not isinstance(self.sasrec_ffn, int) or self.sasrec_ffn < 1):
            raise ValueError(f"L2RecConfig.sasrec_ffn must be None or a positive int, "
                             f"got {self.sasrec_ffn!r}")
        if self.fusion_views not in FUSION_VIEWS:
            raise ValueError(f"L2RecConfig.fusion_views must be one of {FUSION_VIEWS}, "
                             f"got {self.fusion_views!r}")
        d = self.sasrec_dropout
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < 1:
            raise ValueError(f"L2RecConfig.sasrec_dropout must be a number in [0, 1), got {d!r}")
        for name in ("alpha", "gate_temperature", "score_temperature", "contrastive_temperature"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"L2RecConfig.{name} must be a positive finite number, got {v!r}")
        if self.target_modules != "auto" and (
                not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules)):
            raise ValueError(f"L2RecConfig.target_modules must be non-empty module names, "
                             f"got {self.target_modules!r}")
        if self.behavior_dim % self.sasrec_heads:
            raise ValueError(f"L2RecConfig.behavior_dim ({self.behavior_dim}) must be divisible "
                             f"by sasrec_heads ({self.sasrec_heads})")

    @property
    def scaling(self) -> float:
        """The low-rank update's scale s = alpha / r."""
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if self.target_modules != "auto":
            d["target_modules"] = list(self.target_modules)
        d["router_inputs"] = list(self.router_inputs)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> L2RecConfig:
        """The config a ``to_dict`` wrote; older checkpoints' dicts lack the newer fields
        (their defaults are the old behaviour) and may carry the removed ``extra`` field."""
        d = dict(d)
        extra = d.pop("extra", None)
        if extra:
            warnings.warn(f"L2RecConfig no longer has an 'extra' field; ignoring the saved "
                          f"value {extra!r}", stacklevel=2)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown L2RecConfig fields: {sorted(unknown)}")
        return cls(**d)
