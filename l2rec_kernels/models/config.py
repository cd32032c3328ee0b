"""``L2RecConfig``: every hyper-parameter of an L2Rec model, serialisable to JSON."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NUM_VIEWS = 2  # view 0: behavioral, view 1: semantic


@dataclass
class L2RecConfig:
    """Hyper-parameters of L2Rec (docs/design.md section 1).

    What the paper leaves open (expert count, rank, router and fusion forms) follows iLoRA's
    public defaults: E=4 experts of rank 8, alpha=16 (so the low-rank scaling is alpha/rank).
    """

    num_items: int
    num_experts: int = 4
    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    top_k: int | None = None
    gate_temperature: float = 1.0
    behavior_dim: int = 64          # d_cf: width of the SASRec item/state embeddings
    pref_dim: int = 128             # d_pref: width of the fused user preference z
    semantic_dim: int | None = None  # d_sem: item-text embedding width; None = backbone hidden
    router_hidden: int = 128
    fusion_hidden: int = 256
    max_history: int = 50           # longest history the SASRec position table covers
    sasrec_layers: int = 2
    sasrec_heads: int = 2
    score_temperature: float = 1.0  # tau_s in scores = z e_i^T / tau_s
    train_view_encoders: bool = False  # the paper freezes SASRec and the text table
    extra: dict = field(default_factory=dict)  # free-form metadata, saved with the config

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
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
        for name in ("alpha", "gate_temperature", "score_temperature"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"L2RecConfig.{name} must be a positive finite number, got {v!r}")
        if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
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
        d["target_modules"] = list(self.target_modules)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> L2RecConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown L2RecConfig fields: {sorted(unknown)}")
        return cls(**d)
