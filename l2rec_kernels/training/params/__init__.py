"""How many parameters an L2Rec model trains, per component, counted without weights.

``trainable_parameter_report(model)`` counts any built model (real or on the meta device)
by component: the experts of each view and the shared ones, each view's router, the
cross-view fusion, the item scorer, the SASRec view encoder and its item-ID table, the
item-text table (a buffer: data, never trained) and the frozen backbone. Which components
train is read from ``requires_grad``, not assumed: by default the experts, routers, fusion
and scorer (``L2RecConfig.train_view_encoders=False`` freezes the encoder and its table).

``parameter_report_for_config(backbone_config, config)`` builds the model on the meta
device from a transformers config alone (shapes, no storage: a 0.6B backbone costs
nothing), and ``shape_parameter_report("qwen3-0.6b", num_items)`` does it for a named
backbone shape (``BACKBONE_SHAPES``). From the command line:

    python -m l2rec_kernels.training.params --shape qwen3-0.6b --num-items 12101 --preset paper
"""

from __future__ import annotations

import torch
from torch import nn

from ...models.base import L2RecBase
from ...models.config import NUM_VIEWS, L2RecConfig
from ...models.reference import L2Rec
from ...models.shapes import QWEN3_06B_SHAPE

VIEW_NAMES = ("behavioral", "semantic")  # view 0, view 1 (models/config.py NUM_VIEWS)
# Backbones to count without a download: their widths (``models.shapes``, the one home of
# the published config.json widths) and what else their config.json sets that counts.
BACKBONE_SHAPES = {"qwen3-0.6b": (QWEN3_06B_SHAPE, {"tie_word_embeddings": True})}
# Items of the Amazon "Beauty" 2014 5-core set (22,363 users, 12,101 items), a domain the
# sequential-recommendation literature (and L2Rec's reviews: three Amazon domains) uses.
AMAZON_BEAUTY_ITEMS = 12101

# Components whose size is proportional to the catalogue (num_items + 1 rows).
_PER_ITEM = ("item_id_table", "item_text_table")


def _component(name: str) -> str:
    """The component of one of L2Rec's own tensors (its state-dict name, no "backbone.")."""
    head, _, rest = name.partition(".")
    if head == "experts":
        leaf = rest.rsplit(".", 1)[-1]
        return "experts.shared" if leaf.startswith("shared_") else "experts"  # split per view later
    if head == "routers":
        index = rest.partition(".")[0]
        return f"routers.{VIEW_NAMES[int(index)]}" if index.isdigit() and int(index) < NUM_VIEWS \
            else "routers"
    if head == "behavior_encoder":
        return "item_id_table" if rest == "item_emb.weight" else "behavior_encoder"
    return head  # fusion, scorer, item_text_table, and any part added later, under its name


def trainable_parameter_report(model: nn.Module) -> dict:
    """Parameter counts of an L2Rec model (``L2Rec`` or ``FusedL2Rec``, real or on meta).

    Returns ``{"trainable", "frozen", "backbone", "buffers", "num_items",
    "adapted_linears", "components"}``: ``trainable`` the parameters that get gradients,
    ``frozen`` L2Rec's own parameters that do not (the backbone's are ``backbone``),
    ``buffers`` L2Rec's own non-parameter tensors (the item-text table) and
    ``components`` ``{name: {"parameters", "trainable", "kind", "per_item"}}`` with
    ``kind`` "parameter" or "buffer" and ``per_item`` True for the tables that grow with
    the catalogue. The experts are split per view (``experts.behavioral``,
    ``experts.semantic``: each view's slice of every ``lora_a``/``lora_b``) plus
    ``experts.shared``. Tied tensors count once.
    """
    if not isinstance(model, L2RecBase):
        raise TypeError(f"model must be an L2Rec or FusedL2Rec, got {type(model).__name__}")
    parts: dict[str, dict] = {}

    def add(component: str, count: int, trainable: bool, kind: str) -> None:
        entry = parts.setdefault(component, {"parameters": 0, "trainable": 0, "kind": kind,
                                             "per_item": component in _PER_ITEM})
        entry["parameters"] += count
        entry["trainable"] += count if trainable else 0

    backbone = 0
    for name, p in model.named_parameters():  # named_parameters: each tensor once
        if name.startswith("backbone."):
            backbone += p.numel()
            if p.requires_grad:
                add("backbone", p.numel(), True, "parameter")
            continue
        component = _component(name)
        if component == "experts":  # [V, E, ...]: one slice per view
            for view in range(NUM_VIEWS):
                add(f"experts.{VIEW_NAMES[view]}", p[view].numel(), p.requires_grad, "parameter")
        else:
            add(component, p.numel(), p.requires_grad, "parameter")
    buffers = 0
    for name, b in model.named_buffers():
        if not name.startswith("backbone."):
            buffers += b.numel()
            add(_component(name), b.numel(), False, "buffer")
    trainable = sum(c["trainable"] for c in parts.values())
    frozen = sum(c["parameters"] - c["trainable"] for n, c in parts.items()
                 if c["kind"] == "parameter" and n != "backbone")
    return {"trainable": trainable, "frozen": frozen,
            "backbone": backbone, "buffers": buffers, "num_items": model.config.num_items,
            "adapted_linears": len(model.adapted_linears), "components": parts}


def empty_model(backbone_config, config: L2RecConfig, model_cls: type[L2RecBase] = L2Rec) -> L2RecBase:
    """``model_cls`` over a backbone built from ``backbone_config`` (a transformers
    ``PretrainedConfig``), all on the meta device: shapes only, no storage, no weights."""
    from transformers import AutoModelForCausalLM, PretrainedConfig

    if not isinstance(backbone_config, PretrainedConfig):
        raise TypeError("backbone_config must be a transformers PretrainedConfig, got "
                        f"{type(backbone_config).__name__}")
    if not isinstance(config, L2RecConfig):
        raise TypeError(f"config must be an L2RecConfig, got {type(config).__name__}")
    with torch.device("meta"):
        backbone = AutoModelForCausalLM.from_config(backbone_config)
        return model_cls(backbone, config)


def parameter_report_for_config(backbone_config, config: L2RecConfig) -> dict:
    """``trainable_parameter_report`` of the model ``config`` builds on a backbone with
    ``backbone_config`` (e.g. ``AutoConfig.from_pretrained(dir)``: no weights are read)."""
    return trainable_parameter_report(empty_model(backbone_config, config))


def backbone_config(shape: str):
    """The transformers config of a named backbone shape (``BACKBONE_SHAPES``)."""
    from transformers import AutoConfig

    if shape not in BACKBONE_SHAPES:
        raise ValueError(f"shape must be one of {', '.join(BACKBONE_SHAPES)}, got {shape!r}")
    widths, extra = BACKBONE_SHAPES[shape]
    return AutoConfig.for_model(widths.arch, **widths.transformers_widths(), **extra)


def shape_parameter_report(shape: str = "qwen3-0.6b", num_items: int = AMAZON_BEAUTY_ITEMS,
                           config: L2RecConfig | None = None) -> dict:
    """The report for a named backbone shape; ``config`` None: ``L2RecConfig.paper(num_items)``
    (a given config's own ``num_items`` is used)."""
    return parameter_report_for_config(backbone_config(shape), config or L2RecConfig.paper(num_items))


def format_report(report: dict) -> str:
    """The report as a table: one line per component, then the totals."""
    rows = [(name, c["parameters"], c["trainable"],
             c["kind"] + (", per item" if c["per_item"] else ""))
            for name, c in sorted(report["components"].items())]
    lines = [f"{'component':<22}{'parameters':>14}{'trainable':>14}  kind", "-" * 62]
    lines += [f"{n:<22}{p:>14,}{t:>14,}  {k}" for n, p, t, k in rows]
    lines += ["-" * 62,
              f"{'trainable':<22}{report['trainable']:>14,}",
              f"{'frozen (own)':<22}{report['frozen']:>14,}",
              f"{'backbone (frozen)':<22}{report['backbone']:>14,}",
              f"{'buffers (own)':<22}{report['buffers']:>14,}",
              f"num_items {report['num_items']:,}; {report['adapted_linears']} adapted linears"]
    return "\n".join(lines)
