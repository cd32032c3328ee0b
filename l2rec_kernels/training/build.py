"""The pieces a training or evaluation run is made of, shared by ``l2rec_kernels.train`` and
``l2rec_kernels.evaluate``: the config from a preset, the model over a backbone with its
item-text table, the item titles and the prompt builder.

Prompts are built by the server's own ``TitlePromptBuilder`` (``l2rec_serving.prompts``),
so a model is trained on exactly the prompts it will be served with.
"""

from __future__ import annotations

import torch

from ..models.config import L2RecConfig
from ..models.encoders import build_item_text_table
from ..models.fused import FusedL2Rec

PRESETS = ("default", "paper")


def default_template() -> str:
    from l2rec_kernels.prompts import DEFAULT_TEMPLATE

    return DEFAULT_TEMPLATE


def make_config(preset: str, num_items: int, max_history: int, **overrides) -> L2RecConfig:
    """``L2RecConfig`` (``"default"``) or ``L2RecConfig.paper`` (``"paper"``) for
    ``num_items`` items and ``max_history``; ``overrides`` whose value is None are ignored."""
    fields = {k: v for k, v in overrides.items() if v is not None}
    fields["max_history"] = max_history
    if preset == "paper":
        return L2RecConfig.paper(num_items, **fields)
    if preset == "default":
        return L2RecConfig(num_items=num_items, **fields)
    raise ValueError(f"--preset must be one of {PRESETS}, got {preset!r}")


def item_titles(data) -> list[str]:
    """The titles the prompts and the item-text table are built from: the data's, or
    ``"item <raw id>"`` when the source has none (the semantic view then sees ids as text)."""
    if data.titles is not None:
        return list(data.titles)
    return [f"item {raw}" for raw in data.item_ids]


def prompt_builder(titles: list[str], tokenizer, max_tokens: int, template: str | None = None):
    """The server's ``TitlePromptBuilder`` over these titles (history -> prompt token ids)."""
    from l2rec_kernels.prompts import TitlePromptBuilder

    return TitlePromptBuilder(titles, tokenizer, max_tokens, template or default_template())


def build_model(backbone, tokenizer, config: L2RecConfig, titles: list[str], *, backend: str = "auto",
                device: torch.device | str = "cpu", text_batch_size: int = 64) -> FusedL2Rec:
    """A new ``FusedL2Rec`` on ``backbone`` (moved to ``device``; frozen) with its item-text
    table embedded from ``titles`` by the backbone itself."""
    if len(titles) != config.num_items:
        raise ValueError(f"{len(titles)} titles for {config.num_items} items")
    backbone = backbone.to(device)
    model = FusedL2Rec(backbone, config, backend=backend)
    model.set_item_text_table(build_item_text_table(titles, backbone, tokenizer,
                                                    batch_size=text_batch_size))
    return model


def parameter_summary(model) -> str:
    """The trainable parameter count by component (``training.params``)."""
    from .params import format_report, trainable_parameter_report

    return format_report(trainable_parameter_report(model))
