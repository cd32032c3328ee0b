"""``model.to_inference_dtype``: the backbone and the experts in 16 bits, L2Rec's own heads in
float32; checked against the float32 model on the same weights, and against a plain
``model.to(dtype)`` of it, on the CPU (bf16 and fp16 both run there)."""

import pytest
import torch
from model_utils import NUM_ITEMS, batch, make_backbone, make_reference
from tolerances import REL_TOL, rel_err

from l2rec_kernels.models.config import ROUTER_INPUTS
from l2rec_kernels.models.fused import FusedL2Rec
from l2rec_kernels.models.reference import L2Rec

LOW = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]

# Preference and scores: 4x one op's bound, the README's bf16 bound for a whole model's
# scores (BF16_SCORE_TOL in test_fused.py; the scores come through every layer), and the
# same factor for fp16. Measured on these 2-layer models (CPU, torch 2.13): at most 2.9e-2
# (bf16) and 2.8e-3 (fp16), for the recipe and for a plain .to(dtype) alike: the backbone's
# rounding dominates both.
SCORE_TOL = {dt: 4 * REL_TOL[dt] for dt in (torch.bfloat16, torch.float16)}
# Gates of a router that reads the prompt context: the only 16-bit value they see is the
# context (the mean of the backbone's input embeddings). Measured 1.4e-5 (bf16) and 1.4e-6
# (fp16), against 2.3e-3 and 3.1e-4 for a plain .to(dtype); bound a hundredth of one op's
# bound (1.5e-4, 2e-5: 10x margin), and at most a tenth of the plain cast's error.
GATE_TOL = {dt: REL_TOL[dt] / 100 for dt in (torch.bfloat16, torch.float16)}

# (backbone, config): routers reading the user only (iLoRA's default) and the paper's setup
# (context-aware routers, a shared expert, top-2).
CASES = {
    "user_router": ("llama", {"top_k": 2}),
    "context_router": ("qwen3", {"router_inputs": ROUTER_INPUTS, "num_shared_experts": 1, "top_k": 2}),
}


def copy_of(ref32: L2Rec, arch: str) -> L2Rec:
    """A new model with ref32's weights (backbone included) on a fresh backbone."""
    model = L2Rec(make_backbone(arch), ref32.config)
    model.load_state_dict(ref32.state_dict())
    return model


def errors(out, want) -> dict[str, float]:
    return {name: rel_err(getattr(out, name).float(), getattr(want, name))
            for name in ("gates", "preference", "scores")}


def test_each_part_lands_in_its_dtype():
    ref = make_reference("llama")
    fused = FusedL2Rec.from_reference(ref, backend="torch")
    table = ref.item_text_table
    assert ref.to_inference_dtype(torch.bfloat16) is ref
    assert all(p.dtype == torch.bfloat16 for p in ref.backbone.parameters())
    assert all(p.dtype == torch.bfloat16 for p in ref.experts.parameters())
    for module in (ref.behavior_encoder, ref.routers, ref.fusion, ref.scorer):
        assert all(p.dtype == torch.float32 for p in module.parameters())
    assert ref.item_text_table.dtype == torch.float32
    # The rotary frequencies stay float32, as from_pretrained(dtype=torch.bfloat16) leaves them.
    rope = {n: b.dtype for n, b in ref.backbone.named_buffers() if n.endswith("inv_freq")}
    assert rope and set(rope.values()) == {torch.float32}
    # The fused model shares every module and the table: it changed too, in place.
    assert fused.item_text_table is ref.item_text_table is table
    assert fused.experts is ref.experts
    assert all(p.requires_grad for p in ref.experts.parameters())
    # float64 runs the heads in float64 too (the wider of the two).
    ref.to_inference_dtype(torch.float64)
    assert {p.dtype for p in ref.parameters()} == {torch.float64}
    assert ref.item_text_table.dtype == torch.float64


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("case", CASES)
def test_recipe_against_fp32_and_a_plain_cast(case, dtype):
    arch, cfg = CASES[case]
    ref32 = make_reference(arch, **cfg)
    b = batch(5, seq=13, ragged=True)
    plain = copy_of(ref32, arch).to(dtype)
    recipe = copy_of(ref32, arch).to_inference_dtype(dtype)
    with torch.no_grad():
        want = ref32(**b)
        pairs = [(recipe, plain), (FusedL2Rec.from_reference(recipe, backend="torch"),
                                   FusedL2Rec.from_reference(plain, backend="torch"))]
        for model, cast in pairs:
            got = model(**b)
            # the heads' outputs come out in float32
            assert got.scores.dtype == got.preference.dtype == got.gates.dtype == torch.float32
            err, base = errors(got, want), errors(cast(**b), want)
            assert err["preference"] < SCORE_TOL[dtype], err
            assert err["scores"] < SCORE_TOL[dtype], err
            # no worse than the plain cast (within 2x, as test_fused asks of the fused kernels)
            for name in ("preference", "scores"):
                assert err[name] <= 2 * base[name] + REL_TOL[dtype] / 10, (name, err, base)
            if case == "user_router":
                # routers and view encoders untouched in float32: the float32 model's gates
                assert err["gates"] <= REL_TOL[torch.float32], err
                assert base["gates"] > 10 * REL_TOL[torch.float32], base
            else:
                assert err["gates"] < GATE_TOL[dtype], err
                assert err["gates"] <= base["gates"] / 10, (err, base)


@pytest.mark.parametrize("dtype", LOW)
def test_recommend_under_the_recipe(dtype):
    ref32 = make_reference("qwen2", top_k=2)
    recipe = copy_of(ref32, "qwen2").to_inference_dtype(dtype)
    b = batch(4, seq=11, ragged=True)
    with torch.no_grad():
        want = ref32(**b).scores
    for model in (recipe, FusedL2Rec.from_reference(recipe, backend="torch")):
        scores, ids = model.recommend(**b, k=6)
        assert scores.dtype == torch.float32 and ids.shape == (4, 6)
        assert ((ids >= 1) & (ids <= NUM_ITEMS)).all()
        for row, history in zip(ids.tolist(), b["history_ids"].tolist()):
            assert not set(row) & set(history)
        assert (scores[:, :-1] >= scores[:, 1:]).all()
        # each returned score is the fp32 model's score of that item, to the model bound
        assert rel_err(scores, want.gather(1, ids)) < SCORE_TOL[dtype]


@pytest.mark.interpreter
def test_fused_triton_backend_under_the_recipe():
    """fp16 (the interpreter has no bf16 arithmetic): dpmoe_linear in fp16 with float32
    gates cast to it, route on float32 logits, topk_items on the float32 item table."""
    ref32 = make_reference("qwen2", top_k=2)
    recipe = copy_of(ref32, "qwen2").to_inference_dtype(torch.float16)
    fused = FusedL2Rec.from_reference(recipe, backend="triton")
    b = batch(3, seq=7, ragged=True)
    with torch.no_grad():
        want, got = ref32(**b), fused(**b)
        err = errors(got, want)
        assert err["scores"] < SCORE_TOL[torch.float16] and err["preference"] < SCORE_TOL[torch.float16]
        assert err["gates"] <= REL_TOL[torch.float32], err
        scores, ids = fused.recommend(**b, k=5)
    assert rel_err(scores, want.scores.gather(1, ids)) < SCORE_TOL[torch.float16]


def test_float32_changes_nothing_on_a_float32_model():
    ref = make_reference("llama", top_k=2)
    b = batch(3)
    with torch.no_grad():
        before = ref(**b)
        after = ref.to_inference_dtype(torch.float32)(**b)
    for name in ("gates", "preference", "scores"):
        assert torch.equal(getattr(before, name), getattr(after, name)), name


@pytest.mark.parametrize("bad", [torch.int8, torch.bool, torch.complex64, "bfloat16", None])
def test_a_non_float_dtype_is_a_type_error(bad):
    ref = make_reference("llama")
    with pytest.raises(TypeError, match="dtype must be one of"):
        ref.to_inference_dtype(bad)
    assert all(p.dtype == torch.float32 for p in ref.parameters())  # nothing was cast
