"""Trainable-parameter counts (l2rec_kernels/training/params.py): the meta-device count
equals the count of a real model with weights, and both equal a count written out by hand
from the architecture."""

import pytest
import torch

from l2rec_kernels import FusedL2Rec, L2Rec, L2RecConfig
from l2rec_kernels.cli.params import main
from l2rec_kernels.models.tiny import tiny_backbone
from l2rec_kernels.training.params import (
    backbone_config,
    empty_model,
    format_report,
    parameter_report_for_config,
    trainable_parameter_report,
)

# Odd widths on purpose: GQA (3 heads, 1 kv head, head_dim 6: RoPE wants it even), an MLP of 22.
WIDTHS = dict(hidden=12, layers=2, heads=3, kv_heads=1, intermediate=22, head_dim=6, vocab=40)


def linear(d_in, d_out, bias=True):
    return d_in * d_out + (d_out if bias else 0)


def hand_count(cfg: L2RecConfig, arch: str) -> dict:
    """Every component of L2Rec on the WIDTHS backbone, from the architecture alone."""
    h, i, L = WIDTHS["hidden"], WIDTHS["intermediate"], WIDTHS["layers"]
    q_out, kv_out = WIDTHS["heads"] * WIDTHS["head_dim"], WIDTHS["kv_heads"] * WIDTHS["head_dim"]
    io = {"q_proj": (h, q_out), "k_proj": (h, kv_out), "v_proj": (h, kv_out), "o_proj": (q_out, h),
          "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    per_expert = L * sum(cfg.rank * (a + b) for name, (a, b) in io.items() if name in cfg.target_modules)
    r, d_sem, E = cfg.router_hidden, h, cfg.num_experts

    def router(user_dim):
        parts = len(cfg.router_inputs)
        n = linear(parts * r, E)
        if "user" in cfg.router_inputs or "interaction" in cfg.router_inputs:
            n += linear(user_dim, r)
        if "context" in cfg.router_inputs or "interaction" in cfg.router_inputs:
            n += linear(h, r)
        return n

    d, p = cfg.behavior_dim, cfg.pref_dim
    block = 2 * d + linear(d, 3 * d) + linear(d, d) + 2 * d + 2 * linear(d, d)  # 2 LayerNorms
    sasrec = cfg.max_history * d + cfg.sasrec_layers * block + 2 * d
    # backbone: embeddings, per layer 4 attention + 3 MLP linears (no bias) and 2 RMSNorms
    # (+ q/k norms of head_dim on Qwen3), final norm, untied LM head
    attn = h * q_out + 2 * h * kv_out + q_out * h + (2 * WIDTHS["head_dim"] if arch == "qwen3" else 0)
    layer = attn + 3 * h * i + 2 * h
    return {
        "experts.behavioral": E * per_expert, "experts.semantic": E * per_expert,
        "experts.shared": cfg.num_shared_experts * per_expert,
        "routers.behavioral": router(d), "routers.semantic": router(d_sem),
        "fusion": linear(3 * h, cfg.fusion_hidden) + linear(cfg.fusion_hidden, p) + 2 * linear(h, p),
        "scorer": d * p + d_sem * p,
        "behavior_encoder": sasrec, "item_id_table": (cfg.num_items + 1) * d,
        "item_text_table": (cfg.num_items + 1) * d_sem,
        "backbone": 2 * WIDTHS["vocab"] * h + L * layer + h,
    }


def built(cfg: L2RecConfig, arch: str = "llama", model_cls=L2Rec):
    return model_cls(tiny_backbone(arch, **WIDTHS), cfg)


CONFIGS = {
    "default": lambda: L2RecConfig(num_items=17, num_experts=3, rank=2, behavior_dim=8, pref_dim=6,
                                   router_hidden=7, fusion_hidden=9, max_history=11),
    "paper": lambda: L2RecConfig.paper(23, num_experts=3, rank=3, behavior_dim=6, pref_dim=5,
                                       router_hidden=4, fusion_hidden=5, max_history=7),
    "attention_only_trained_encoders": lambda: L2RecConfig(
        num_items=9, rank=1, target_modules=("q_proj", "v_proj"), num_shared_experts=2,
        router_inputs=("user", "context"), behavior_dim=4, train_view_encoders=True),
}


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_meta_count_equals_real_model_and_hand_count(name, arch):
    cfg = CONFIGS[name]()
    real = built(cfg, arch)
    meta = empty_model(real.backbone.config, cfg)
    assert next(meta.parameters()).device.type == "meta"
    got_real, got_meta = trainable_parameter_report(real), trainable_parameter_report(meta)
    assert got_meta == got_real

    want = hand_count(cfg, arch)
    counts = {n: c["parameters"] for n, c in got_real["components"].items()}
    assert counts == {n: v for n, v in want.items() if v and n != "backbone"}
    assert got_real["backbone"] == want["backbone"]
    # what trains: requires_grad, checked against an independent sum over the model
    assert got_real["trainable"] == sum(p.numel() for p in real.parameters() if p.requires_grad)
    trains = {"experts.behavioral", "experts.semantic", "experts.shared", "routers.behavioral",
              "routers.semantic", "fusion", "scorer"}
    if cfg.train_view_encoders:
        trains |= {"behavior_encoder", "item_id_table"}
    assert got_real["trainable"] == sum(v for n, v in want.items() if n in trains)
    assert got_real["frozen"] == sum(v for n, v in want.items()
                                     if n not in trains | {"backbone", "item_text_table"})
    assert got_real["buffers"] == want["item_text_table"]
    assert got_real["components"]["item_text_table"] == {
        "parameters": want["item_text_table"], "trainable": 0, "kind": "buffer", "per_item": True}
    assert got_real["adapted_linears"] == WIDTHS["layers"] * len(cfg.target_modules)


def test_fused_model_counts_the_same_tensors():
    cfg = CONFIGS["paper"]()
    ref = built(cfg)
    fused = FusedL2Rec.from_reference(ref)
    assert trainable_parameter_report(fused) == trainable_parameter_report(ref)
    assert trainable_parameter_report(empty_model(ref.backbone.config, cfg, FusedL2Rec)) == \
        trainable_parameter_report(ref)


def test_item_tables_scale_with_num_items_and_train_only_when_asked():
    small, big = (trainable_parameter_report(built(L2RecConfig(num_items=n, behavior_dim=8)))
                  for n in (10, 110))
    assert big["trainable"] == small["trainable"]  # frozen tables: the catalogue costs no training
    assert big["components"]["item_id_table"]["parameters"] - \
        small["components"]["item_id_table"]["parameters"] == 100 * 8
    assert big["components"]["item_text_table"]["parameters"] - \
        small["components"]["item_text_table"]["parameters"] == 100 * WIDTHS["hidden"]


def test_qwen3_0_6b_paper_shape_from_config_alone():
    """The paper's backbone, counted on the meta device: the widths are Qwen3-0.6B's
    (596M parameters with its tied embeddings) and the experts follow from them."""
    cfg = L2RecConfig.paper(12101)
    report = parameter_report_for_config(backbone_config("qwen3-0.6b"), cfg)
    assert report["backbone"] == 596_049_920
    assert report["adapted_linears"] == 28 * 7
    per_expert = 28 * 8 * ((1024 + 2048) * 2 + (1024 + 1024) * 2 + (1024 + 3072) * 3)
    comps = report["components"]
    for view in ("behavioral", "semantic"):
        assert comps[f"experts.{view}"]["trainable"] == 4 * per_expert
    assert comps["experts.shared"]["trainable"] == per_expert
    assert comps["item_text_table"]["parameters"] == 12102 * 1024
    assert "item_id_table" in format_report(report)


def test_bad_input():
    with pytest.raises(TypeError, match="model must be an L2Rec"):
        trainable_parameter_report(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="shape must be one of"):
        backbone_config("qwen3-7b")
    with pytest.raises(TypeError, match="backbone_config must be"):
        empty_model({"hidden_size": 8}, CONFIGS["default"]())
    with pytest.raises(SystemExit):
        main(["--num-items", "0"])


def test_cli(capsys):
    assert main(["--num-items", "50", "--preset", "default", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"num_items": 50' in out and '"trainable"' in out
