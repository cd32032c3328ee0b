"""The reference L2Rec: API contract, model semantics, invariances, checkpoints, bad input."""

from __future__ import annotations

import pytest
import torch
from model_utils import NUM_ITEMS, VOCAB, batch, make_backbone, randomize_, repad
from tolerances import REL_TOL, assert_close_tol, rel_err

from l2rec_kernels.models import adapters
from l2rec_kernels.models.base import gather_last
from l2rec_kernels.models.config import L2RecConfig
from l2rec_kernels.models.inputs import position_ids_from_mask
from l2rec_kernels.models.reference import L2Rec

ARCHS = ("llama", "qwen2", "mistral", "qwen3")
# Another padding or batch changes the order of the backbone's fp32 sums, and the
# difference compounds over the layers: 10x the fp32 bound.
REPAD_TOL = assert_close_tol(torch.float32, scale=10)


def make_model(arch="llama", **cfg):
    cfg.setdefault("num_items", NUM_ITEMS)
    cfg.setdefault("pref_dim", 24)
    cfg.setdefault("behavior_dim", 16)
    return L2Rec(make_backbone(arch), L2RecConfig(**cfg))


def plain_last_hidden(model, b):
    mask = b["attention_mask"].bool()
    h = model.backbone.base_model(input_ids=b["input_ids"], attention_mask=mask.long(),
                                  position_ids=position_ids_from_mask(mask)).last_hidden_state
    return gather_last(h, mask)


@pytest.mark.parametrize("arch", ARCHS)
def test_output_shapes_and_gates(arch):
    model = make_model(arch)
    b = batch(4)
    out = model(**b)
    assert out.scores.shape == (4, NUM_ITEMS + 1)
    assert torch.isneginf(out.scores[:, 0]).all() and torch.isfinite(out.scores[:, 1:]).all()
    assert out.preference.shape == (4, 24)
    assert out.gates.shape == (2, 4, 4)
    torch.testing.assert_close(out.gates.sum(-1), torch.ones(2, 4))
    assert out.loss is None
    cand = torch.randint(1, NUM_ITEMS + 1, (4, 7))
    out = model(**b, candidate_ids=cand, labels=torch.tensor([0, 3, 6, 2]))
    assert out.scores.shape == (4, 7) and out.loss.ndim == 0 and torch.isfinite(out.loss)
    shared = model(**b, candidate_ids=torch.arange(1, 6))
    assert shared.scores.shape == (4, 5)
    # Candidate scores are the catalogue scores at those ids.
    full = model(**b).scores
    torch.testing.assert_close(model(**b, candidate_ids=cand).scores, full.gather(1, cand))


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_top_k_gates_are_sparse_and_normalised(top_k):
    model = make_model(top_k=top_k)
    randomize_(model)
    gates = model(**batch(5)).gates
    torch.testing.assert_close(gates.sum(-1), torch.ones(2, 5))
    assert ((gates > 0).sum(-1) <= top_k).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_expert_b_gives_plain_backbone_hidden_states(arch):
    model = make_model(arch)  # expert B starts at zero
    randomize_(model)
    with torch.no_grad():
        for experts in model.experts.values():
            experts.lora_b.zero_()
    b = batch(3)
    mask = b["attention_mask"].bool()
    gates = model.route_gates(model.gate_logits(b["history_ids"]))
    h_b, h_s = model._dual_hidden(b["input_ids"], mask, gates)
    plain = plain_last_hidden(model, b)
    torch.testing.assert_close(h_b, plain, **assert_close_tol(torch.float32))
    torch.testing.assert_close(h_s, plain, **assert_close_tol(torch.float32))
    # ... and with random experts the views differ from the plain backbone and each other.
    randomize_(model, seed=3)
    h_b, h_s = model._dual_hidden(b["input_ids"], mask, gates)
    assert (h_b - plain).abs().max() > 1e-3 and (h_b - h_s).abs().max() > 1e-3


def test_adapted_linear_matches_float64_formula():
    """One adapted layer, checked against the DPMoE formula written out in float64."""
    from l2rec_kernels.models import adapters

    model = make_model()
    randomize_(model)
    module, experts = next(iter(model._targets.items()))
    x = torch.randn(2, 5, module.in_features)
    gates = torch.softmax(torch.randn(2, 4), -1)
    wrapper = next(w for w in model.backbone.modules()
                   if isinstance(w, adapters.AdaptedLinear) and w.base_layer is module)
    with model.routing.activate(adapters.ReferenceContext(model._targets, 1, gates, 2.0)):
        y = wrapper(x)
    xd, w, bias = x.double(), module.weight.double(), module.bias
    expect = xd @ w.T + (0 if bias is None else bias.double())
    for e in range(4):
        low = (xd @ experts.lora_a[1, e].double().T) @ experts.lora_b[1, e].double().T
        expect = expect + 2.0 * gates[:, e].double()[:, None, None] * low
    assert rel_err(y, expect) < REL_TOL[torch.float32] / 10  # one small layer: no long sums
    # Outside a forward the backbone is plain again.
    torch.testing.assert_close(wrapper(x), torch.nn.functional.linear(x, module.weight, module.bias))


@pytest.mark.parametrize("arch", ("llama", "qwen2"))
def test_padding_side_and_batch_composition_do_not_change_results(arch):
    model = make_model(arch, top_k=2)
    randomize_(model)
    b = batch(4, seq=10)
    ref = model(**repad(b, "left"))
    for side, extra in (("right", 0), ("left", 3), ("right", 2)):
        out = model(**repad(b, side, extra))
        torch.testing.assert_close(out.scores, ref.scores, **REPAD_TOL)
        torch.testing.assert_close(out.gates, ref.gates)
    # A user alone gets the same result as inside the batch.
    single = {k: v[2:3] for k, v in repad(b, "left").items()}
    alone = model(**repad(single, "left"))
    torch.testing.assert_close(alone.scores, ref.scores[2:3], **REPAD_TOL)


def test_history_padding_side_does_not_change_results():
    model = make_model()
    randomize_(model)
    b = batch(3, hist=6)
    h = b["history_ids"]
    left = torch.zeros_like(h)
    for i in range(h.shape[0]):
        items = h[i][h[i] > 0]
        left[i, h.shape[1] - items.numel():] = items
    out_r, out_l = model(**b), model(**{**b, "history_ids": left})
    torch.testing.assert_close(out_r.scores, out_l.scores, **REPAD_TOL)


def test_empty_history_is_allowed():
    model = make_model()
    b = batch(2)
    b["history_ids"] = torch.zeros_like(b["history_ids"])
    out = model(**b)
    assert torch.isfinite(out.scores[:, 1:]).all()


def test_save_load_round_trip_is_bit_exact(tmp_path):
    model = make_model("qwen2", top_k=2)
    randomize_(model)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l2rec_config.json", "l2rec_weights.safetensors"]
    loaded = L2Rec.from_pretrained(tmp_path, backbone=model.backbone)
    assert loaded.config == model.config
    sd1, sd2 = model.state_dict(), loaded.state_dict()
    assert sd1.keys() == sd2.keys()
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), k
    b = batch(3)
    assert torch.equal(model(**b).scores, loaded(**b).scores)


def test_from_pretrained_rejects_a_different_backbone(tmp_path):
    model = make_model("llama")
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="backbone does not match"):
        L2Rec.from_pretrained(tmp_path, backbone=make_backbone("qwen2"))
    with pytest.raises(FileNotFoundError):
        L2Rec.from_pretrained(tmp_path / "nope", backbone=make_backbone("llama"))


def test_gradients_reach_experts_routers_fusion_and_backbone_stays_frozen():
    model = make_model(top_k=2)
    randomize_(model)
    b = batch(3)
    out = model(**b, labels=torch.tensor([1, 5, 9]))
    out.loss.backward()
    assert all(not p.requires_grad for p in model.backbone.parameters())
    named = dict(model.named_parameters())
    for prefix in ("experts.", "routers.0.", "routers.1.", "fusion.", "scorer."):
        params = [p for n, p in named.items() if n.startswith(prefix)]
        assert params, prefix
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params), prefix
    # Both views' experts of a layer get gradient (view 0 via h_b, view 1 via h_s).
    grad = next(iter(model.experts.values())).lora_b.grad
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() > 0
    # The frozen view encoders get none.
    assert all(p.grad is None for p in model.behavior_encoder.parameters())


def test_backbone_usable_after_remove_adapters():
    model = make_model()
    randomize_(model)
    bb = model.backbone
    b = batch(2)
    before = plain_last_hidden(model, b)
    model.remove_adapters()
    assert not any(adapters.is_wrapper(m) for m in bb.modules())
    torch.testing.assert_close(plain_last_hidden(model, b), before)


# ----------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def small_model():
    return make_model()


def _bad(small_model, err, match, **override):
    b = batch(2, seq=6, hist=4)
    b.update(override)
    with pytest.raises(err, match=match):
        small_model(**b)


def test_bad_input_ids(small_model):
    _bad(small_model, TypeError, "input_ids", input_ids=torch.rand(2, 6))
    _bad(small_model, ValueError, "input_ids", input_ids=torch.full((2, 6), VOCAB))
    _bad(small_model, ValueError, "input_ids", input_ids=torch.full((2, 6), -1))
    _bad(small_model, ValueError, "input_ids", input_ids=torch.ones(2, 6, 1, dtype=torch.long))
    _bad(small_model, TypeError, "input_ids", input_ids=[[1, 2]])


def test_bad_attention_mask(small_model):
    _bad(small_model, ValueError, "attention_mask", attention_mask=torch.ones(2, 5, dtype=torch.long))
    _bad(small_model, TypeError, "attention_mask", attention_mask=torch.ones(2, 6))
    _bad(small_model, ValueError, "attention_mask", attention_mask=torch.full((2, 6), 2))
    _bad(small_model, ValueError, "attention_mask", attention_mask=torch.zeros(2, 6, dtype=torch.long))


def test_bad_history_ids(small_model):
    _bad(small_model, ValueError, "history_ids", history_ids=torch.full((2, 4), NUM_ITEMS + 1))
    _bad(small_model, ValueError, "history_ids", history_ids=torch.full((2, 4), -3))
    _bad(small_model, ValueError, "batch size", history_ids=torch.ones(3, 4, dtype=torch.long))
    _bad(small_model, TypeError, "history_ids", history_ids=torch.ones(2, 4))
    _bad(small_model, ValueError, "max_history", history_ids=torch.ones(2, 51, dtype=torch.long))


def test_bad_candidates_and_labels(small_model):
    _bad(small_model, ValueError, "candidate_ids", candidate_ids=torch.tensor([0, 1]))
    _bad(small_model, ValueError, "candidate_ids", candidate_ids=torch.tensor([NUM_ITEMS + 1]))
    _bad(small_model, TypeError, "candidate_ids", candidate_ids=torch.tensor([1.0]))
    _bad(small_model, ValueError, "batch size", candidate_ids=torch.ones(3, 2, dtype=torch.long))
    _bad(small_model, ValueError, "labels", candidate_ids=torch.tensor([1, 2]), labels=torch.tensor([0, 2]))
    _bad(small_model, ValueError, "labels", labels=torch.tensor([0, 1]))  # 0 is the padding item
    _bad(small_model, ValueError, "labels", labels=torch.tensor([1, 2, 3]))
    _bad(small_model, TypeError, "labels", labels=torch.tensor([1.0, 2.0]))


def test_bad_config_and_backbone():
    with pytest.raises(ValueError, match="top_k"):
        L2RecConfig(num_items=5, top_k=5)
    with pytest.raises(ValueError, match="num_items"):
        L2RecConfig(num_items=0)
    with pytest.raises(ValueError, match="gate_temperature"):
        L2RecConfig(num_items=5, gate_temperature=0.0)
    with pytest.raises(ValueError, match="not found"):
        L2Rec(make_backbone(), L2RecConfig(num_items=5, target_modules=("q_proj", "nope")))
    with pytest.raises(TypeError, match="backbone"):
        L2Rec(torch.nn.Linear(2, 2), L2RecConfig(num_items=5))
    with pytest.raises(TypeError, match="config"):
        L2Rec(make_backbone(), {"num_items": 5})


def test_recommend_excludes_history_and_padding(small_model):
    b = batch(3)
    scores, ids = small_model.recommend(**b, k=8)
    assert scores.shape == ids.shape == (3, 8)
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    assert (ids > 0).all()
    for i in range(3):
        assert not set(ids[i].tolist()) & set(b["history_ids"][i].tolist())
    with pytest.raises(ValueError, match="k must be"):
        small_model.recommend(**b, k=0)
