"""Any Hugging Face decoder: target_modules="auto", nn.Linear subclasses (Falcon), GPT-2's
Conv1D, and FusedL2Rec's parity with L2Rec on each architecture, built tiny and random."""

from __future__ import annotations

import json
import os

import pytest
import torch
from model_utils import NUM_ITEMS, VOCAB, assert_same_gradients, batch, make_backbone, make_pair, repad
from tolerances import REL_TOL, rel_err

from l2rec_kernels._compat import set_attn_implementation
from l2rec_kernels.models import adapters
from l2rec_kernels.models import fused as fused_module
from l2rec_kernels.models.config import AUTO_TARGETS, LLAMA_TARGETS, L2RecConfig
from l2rec_kernels.models.reference import L2Rec

TOL = REL_TOL[torch.float32]
_SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB)
_GQA = dict(**_SIZES, num_key_value_heads=2, intermediate_size=48, head_dim=8,
            tie_word_embeddings=False)
# model_type -> (config class, model class, config arguments): hidden 32, 2 layers, 4 heads.
SPECS = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",
             dict(n_embd=32, n_layer=2, n_head=4, n_inner=48, n_positions=64, vocab_size=VOCAB,
                  bos_token_id=1, eos_token_id=2)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM",
                 dict(**_SIZES, intermediate_size=48, max_position_embeddings=64, bos_token_id=1,
                      eos_token_id=2)),
    "falcon": ("FalconConfig", "FalconForCausalLM", dict(**_SIZES, bos_token_id=1, eos_token_id=2)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM",
             dict(**{k: v for k, v in _GQA.items() if k != "head_dim"}, pad_token_id=0,
                  bos_token_id=1, eos_token_id=2)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", _GQA),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", dict(_GQA, pad_token_id=0, bos_token_id=1,
                                                      eos_token_id=2)),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                dict(_GQA, num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  dict(_GQA, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                       shared_expert_intermediate_size=32)),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(_GQA, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)),
    # not in AUTO_TARGETS: "auto" falls back to the Llama-style names it has
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", _GQA),
}
ARCHS = tuple(SPECS)


def tiny(model_type: str):
    """A random-weight tiny causal LM of ``model_type`` (nothing downloaded), in eval mode."""
    import transformers

    config_cls, model_cls, kwargs = SPECS[model_type]
    cfg = getattr(transformers, config_cls)(**kwargs)
    set_attn_implementation(cfg, "sdpa")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = getattr(transformers, model_cls)(cfg)
    assert model.config.model_type == model_type
    return model.eval()


def adapted_leaf_names(model) -> set[str]:
    names = {m: n for n, m in adapters.plain_modules(model.backbone)}
    return {names[m].rsplit(".", 1)[-1] for m in model.adapted_linears}


@pytest.mark.parametrize("arch", ARCHS)
def test_auto_targets_and_parity_both_padding_sides(arch):
    """target_modules="auto" picks the architecture's attention and MLP linears, and the
    fused model matches the reference for prompts padded on either side; the reference
    itself gives the same scores whichever side (the position ids follow the mask)."""
    ref, fused = make_pair(backbone=tiny(arch), target_modules="auto")
    want = AUTO_TARGETS.get(arch, LLAMA_TARGETS)
    assert ref.config.target_modules == fused.config.target_modules == want
    assert adapted_leaf_names(ref) == set(want)
    b = batch(3, seq=9, ragged=True)
    scores = {}
    for side in ("left", "right"):
        padded = repad(b, side, extra=1)
        with torch.no_grad():
            r, f = ref(**padded), fused(**padded)
        assert rel_err(f.scores, r.scores) <= TOL, side
        assert rel_err(f.preference, r.preference) <= TOL, side
        scores[side] = r.scores
    assert rel_err(scores["right"], scores["left"]) <= TOL


def test_gpt2_conv1d_layer_matches_the_formula():
    """One Conv1D (weight [d_in, d_out], y = x W + b) with experts, against the DPMoE formula
    in float64: a square c_proj would hide a transposed weight from the parity tests."""
    from transformers.pytorch_utils import Conv1D

    ref, _ = make_pair(backbone=tiny("gpt2"), target_modules="auto")
    module, experts = next((m, e) for m, e in ref.adapted_linears.items()
                           if isinstance(m, Conv1D) and m.nf == m.weight.shape[0])
    assert adapters.in_out_features(module) == (32, 32)
    w = adapters.linear_weight(module)
    assert w.data_ptr() == module.weight.data_ptr() and not w.is_contiguous()  # a view
    x = torch.randn(2, 5, 32)
    gates = torch.softmax(torch.randn(2, ref.config.num_experts), -1)
    wrapper = next(w for w in ref.backbone.modules()
                   if isinstance(w, adapters.AdaptedLinear) and w.base_layer is module)
    with ref.routing.activate(adapters.ReferenceContext(ref._targets, 0, gates, 2.0)):
        y = wrapper(x)
    xd = x.double()
    expect = xd @ module.weight.double() + module.bias.double()
    for e in range(ref.config.num_experts):
        low = (xd @ experts.lora_a[0, e].double().T) @ experts.lora_b[0, e].double().T
        expect = expect + 2.0 * gates[:, e].double()[:, None, None] * low
    assert rel_err(y, expect) < TOL / 10
    assert torch.equal(module(x), Conv1D.forward(module, x))  # outside a forward: plain


def test_gpt2_fused_passes_the_frozen_weight_itself(monkeypatch):
    """FusedContext hands dpmoe_linear the backbone's weights as views: never a copy."""
    ref, fused = make_pair(backbone=tiny("gpt2"), target_modules="auto")
    frozen = {p.data_ptr() for p in ref.backbone.parameters()}
    seen = []
    real = fused_module.dpmoe_linear

    def spy(rows, weight, *args, **kw):
        seen.append(weight)
        return real(rows, weight, *args, **kw)

    monkeypatch.setattr(fused_module, "dpmoe_linear", spy)
    with torch.no_grad():
        fused(**batch(2, seq=7))
    assert len(seen) == len(ref.adapted_linears)
    assert all(w.data_ptr() in frozen and not w.is_contiguous() for w in seen)


def test_gpt2_gradients_match():
    ref, fused = make_pair(backbone=tiny("gpt2"), target_modules="auto")
    b = repad(batch(3, seq=9, ragged=True), "left")
    names = assert_same_gradients(ref, fused, b, torch.randint(1, NUM_ITEMS + 1, (3,)))
    assert any("lora_a" in n for n in names) and any("lora_b" in n for n in names)


@pytest.mark.interpreter
def test_gpt2_triton_backend_matches():
    ref, fused = make_pair(backend="triton", backbone=tiny("gpt2"), target_modules="auto")
    b = batch(3, seq=9, ragged=True)
    with torch.no_grad():
        assert rel_err(fused(**b).scores, ref(**b).scores) <= TOL


def test_auto_is_saved_resolved_and_the_given_config_is_unchanged(tmp_path):
    cfg = L2RecConfig(num_items=NUM_ITEMS, pref_dim=24, behavior_dim=16, target_modules="auto")
    assert L2RecConfig.from_dict(cfg.to_dict()) == cfg
    model = L2Rec(tiny("gpt2"), cfg)
    assert cfg.target_modules == "auto"
    assert model.config.target_modules == ("c_attn", "c_proj", "c_fc")
    model.save_pretrained(tmp_path)
    with open(os.path.join(tmp_path, "l2rec_config.json")) as f:
        assert json.load(f)["config"]["target_modules"] == ["c_attn", "c_proj", "c_fc"]
    loaded = L2Rec.from_pretrained(tmp_path, model.backbone)
    assert loaded.config == model.config
    b = batch(2, seq=7)
    with torch.no_grad():
        assert torch.equal(loaded(**b).scores, model(**b).scores)


def test_target_modules_string_other_than_auto_is_a_type_error():
    with pytest.raises(TypeError, match="target_modules"):
        L2RecConfig(num_items=5, target_modules="q_proj")


def test_missing_targets_list_the_linear_layers():
    with pytest.raises(ValueError, match=r"linear layers are named: c_attn, c_fc, c_proj \(the LM head"):
        L2Rec(tiny("gpt2"), L2RecConfig(num_items=5, target_modules=("q_proj", "c_attn")))
    with pytest.raises(ValueError, match="named: c_attn, c_fc, c_proj "):  # lm_head is never run
        L2Rec(tiny("gpt2"), L2RecConfig(num_items=5, target_modules=("lm_head",)))


def test_auto_falls_back_to_llama_names_or_lists_the_linears(monkeypatch):
    monkeypatch.delitem(AUTO_TARGETS, "llama")
    assert adapters.auto_target_modules(make_backbone("llama")) == LLAMA_TARGETS
    monkeypatch.delitem(AUTO_TARGETS, "gpt2")
    with pytest.raises(ValueError, match=r"'gpt2'.*named: c_attn, c_fc, c_proj "):
        L2Rec(tiny("gpt2"), L2RecConfig(num_items=5, target_modules="auto"))
    monkeypatch.delitem(AUTO_TARGETS, "mixtral")  # no gate/up/down: the experts are not linears
    with pytest.raises(ValueError, match="named: k_proj, o_proj, q_proj, v_proj "):
        adapters.auto_target_modules(tiny("mixtral"))


def test_non_linear_targets_are_refused_with_what_they_are():
    with pytest.raises(TypeError,
                       match=r"'model\.layers\.0\.mlp\.experts' is a \S+\.MixtralExperts, not a linear"):
        L2Rec(tiny("mixtral"), L2RecConfig(num_items=5, target_modules=("q_proj", "experts")))
    backbone = make_backbone("llama")
    layer = backbone.model.layers[0].self_attn.q_proj
    layer.weight = torch.nn.Parameter(torch.zeros(layer.weight.shape, dtype=torch.int8),
                                      requires_grad=False)
    with pytest.raises(TypeError, match=r"q_proj' is a torch\.nn\.modules\.linear\.Linear whose "
                                        r"weight is torch\.int8 .*quantised"):
        L2Rec(backbone, L2RecConfig(num_items=5))


def test_falcon_linear_subclass_is_adapted():
    from transformers.models.falcon.modeling_falcon import FalconLinear

    ref, _ = make_pair(backbone=tiny("falcon"), target_modules="auto")
    assert ref.adapted_linears and all(type(m) is FalconLinear for m in ref.adapted_linears)
