"""FusedL2Rec's layer shortcuts (models/layer_shortcuts.py): the last layer run for the
last rows only, the first layer's q/k/v base GEMMs shared by both views.

With them the model must give the same answer as without: against the reference L2Rec and
against the same fused model with ``layer_shortcuts = False``, on every supported
architecture, both padding sides, ragged prompts, masks with holes, packed input, one-token
prompts and one user; and they must step aside (run the whole layer) where they cannot apply.
"""

from __future__ import annotations

import pytest
import torch
from model_utils import (
    VOCAB,
    assert_same_gradients,
    batch,
    make_backbone,
    make_pair,
    repad,
)
from tolerances import REL_TOL, rel_err

from l2rec_kernels.models import adapters, layer_shortcuts
from l2rec_kernels.models.fused import FusedL2Rec
from l2rec_kernels.models.layer_shortcuts import ShortcutDecoderLayer


def make_models(arch="llama", backend="torch"):
    """(reference, fused with the shortcuts, fused without them), all sharing one set of
    randomised tensors."""
    ref, shortcut = make_pair(arch, backend)
    full = FusedL2Rec.from_reference(ref, backend=backend)
    full.layer_shortcuts = False
    return ref, shortcut, full


def preferences(models, b):
    with torch.no_grad():
        return [m(**b).preference for m in models]


def assert_same(ref, pruned, full, b, tol=REL_TOL[torch.float32]):
    r, p, f = preferences((ref, pruned, full), b)
    assert rel_err(p, r) < tol
    assert rel_err(p, f) < tol
    assert rel_err(f, r) < tol


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "qwen3"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_pruned_equals_full_layer_and_reference(arch, side):
    ref, pruned, full = make_models(arch)
    assert pruned.shortcuts_for(11) == ("last_rows", "shared_first_qkv")
    assert full.shortcuts_for(11) == ()
    assert_same(ref, pruned, full, repad(batch(5, seq=11, ragged=True), side, extra=2))


def test_mask_with_holes():
    """Attended tokens need not be contiguous: the last row attends to exactly the
    attended keys before it, as the full layer's causal + padding mask does."""
    ref, pruned, full = make_models("qwen2")
    b = batch(4, seq=10, ragged=False, seed=3)
    b["attention_mask"][:, [2, 5]] = 0
    b["attention_mask"][1, 9] = 0      # this row's last attended token is at 8
    b["input_ids"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, 0)
    assert_same(ref, pruned, full, b)


def test_packed_input():
    ref, pruned, full = make_models("llama")
    for m in (pruned, full):
        m.packing = "packed"
    assert pruned.uses_packing() and pruned.shortcuts_for(12) == ("last_rows", "shared_first_qkv")
    assert_same(ref, pruned, full, batch(6, seq=12, ragged=True, seed=5))


@pytest.mark.parametrize("users,seq", [(1, 1), (1, 7), (3, 1)])
def test_one_user_and_one_token_prompts(users, seq):
    ref, pruned, full = make_models("llama")
    assert_same(ref, pruned, full, batch(users, seq=seq, ragged=False, seed=users + seq))


@pytest.mark.interpreter
def test_triton_backend_under_interpreter():
    ref, pruned, full = make_models("qwen2", backend="triton")
    assert pruned.shortcuts_for(7) == ("last_rows",)
    assert_same(ref, pruned, full, batch(3, seq=7, ragged=True, seed=2))


def test_narrow_sliding_window_runs_the_whole_layer():
    """Mistral with a window narrower than the prompt: the pruned attention (which sees
    every earlier key) would be wrong, so the layer runs whole and parity still holds."""
    backbone = make_backbone("mistral")
    backbone.config.sliding_window = 4
    ref, fused = make_pair(backend="auto", backbone=backbone)
    assert layer_shortcuts.structure_reason(backbone) is None
    assert "sliding window" in layer_shortcuts.window_reason(backbone, 9)
    assert fused.shortcuts_for(9) == ("shared_first_qkv",)
    assert fused.shortcuts_for(4) == ("last_rows", "shared_first_qkv")
    b = batch(3, seq=9, ragged=False, seed=4)
    r, f = preferences((ref, fused), b)
    assert rel_err(f, r) < REL_TOL[torch.float32]


def test_unsupported_model_type_is_reported():
    backbone = make_backbone("llama")
    backbone.config.model_type = "my_llama_variant"
    reason = layer_shortcuts.structure_reason(backbone)
    assert "my_llama_variant" in reason


def test_layer_shortcuts_setting():
    _, pruned, _ = make_models("llama")
    with pytest.raises(TypeError, match="layer_shortcuts"):
        pruned.layer_shortcuts = 1
    pruned.backend = "triton"  # the triton kernel fuses the base GEMM: no shared q/k/v
    assert pruned.shortcuts_for(8) == ("last_rows",)
    pruned.layer_shortcuts = False
    assert pruned.shortcuts_for(8) == ()


def test_remove_adapters_restores_the_layer():
    ref, pruned, full = make_models("llama")
    layers = pruned.backbone.base_model.layers
    wrapper = layers[-1]
    assert isinstance(wrapper, ShortcutDecoderLayer) and wrapper.owners == 2  # pruned, full
    pruned.remove_adapters()
    assert layers[-1] is wrapper and wrapper.owners == 1  # ``full`` still uses it
    full.remove_adapters()
    ref.remove_adapters()
    assert layers[-1] is wrapper.base_layer
    assert not any(adapters.is_wrapper(m) for m in pruned.backbone.modules())


def test_gradients_flow_through_the_pruned_layer():
    ref, pruned, _ = make_models("llama")
    names = assert_same_gradients(ref, pruned, batch(3, seq=8), torch.tensor([3, 7, 11]))
    last = f"layers__{len(pruned.backbone.base_model.layers) - 1}__mlp"
    assert any(last in n for n in names)  # the pruned layer's experts get gradients


def test_plain_backbone_is_untouched_by_the_wrappers():
    _, pruned, _ = make_models("llama")
    base = pruned.backbone.base_model
    ids = torch.randint(1, VOCAB, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    out = base(input_ids=ids, attention_mask=mask).last_hidden_state
    assert out.shape == (2, 6, pruned.backbone.config.hidden_size)


def _other_qk_norm_backbone(model_type: str):
    """A tiny OLMo2 or Gemma3 (text): q/k-norm decoders whose layers are not Qwen3's shape."""
    import transformers

    cls = {"olmo2": (transformers.Olmo2Config, transformers.Olmo2ForCausalLM),
           "gemma3_text": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM)}[model_type]
    cfg = cls[0](hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=8, intermediate_size=48, vocab_size=VOCAB, max_position_embeddings=128,
                 tie_word_embeddings=False)
    torch.manual_seed(0)
    return cls[1](cfg).eval()


@pytest.mark.parametrize("model_type", ["olmo2", "gemma3_text"])
def test_other_qk_norm_decoders_run_whole_layers(model_type):
    """OLMo2 and Gemma3 normalise queries and keys too, but around a different layer: no
    shortcut applies, the reason says so, and the fused model still matches the reference."""
    backbone = _other_qk_norm_backbone(model_type)
    assert model_type in layer_shortcuts.structure_reason(backbone)
    ref, fused = make_pair(backend="auto", backbone=backbone)
    assert fused.shortcuts_for(9) == ()
    b = batch(3, seq=9, ragged=True)
    r, f = preferences((ref, fused), b)
    assert rel_err(f, r) < REL_TOL[torch.float32]
