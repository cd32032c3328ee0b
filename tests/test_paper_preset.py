"""The paper's DPMoE as public reviews report it: shared experts, context-aware routers,
top-2 gates, auxiliary losses (L2RecConfig.paper), on every supported backbone; and
checkpoints from before these options still load."""

import itertools
import os
import warnings

import pytest
import torch
from model_utils import (
    NUM_ITEMS,
    assert_same_gradients,
    batch,
    make_backbone,
    make_pair,
    paper_overrides,
    repad,
)
from safetensors.torch import load_file
from tolerances import REL_TOL, assert_close_tol, rel_err

from l2rec_kernels.models.config import ROUTER_INPUTS, L2RecConfig
from l2rec_kernels.models.fused import FusedL2Rec
from l2rec_kernels.models.reference import L2Rec

ARCHS = ("llama", "qwen2", "qwen3", "mistral")
ROUTER_VARIANTS = (("user",), ("context",), ("interaction",), ROUTER_INPUTS)
LEGACY = os.path.join(os.path.dirname(__file__), "data", "l2rec_v1_llama")
# Written at 71ad60b, when experts were patched into the backbone (before adapters became
# wrapper modules): tests/data/README.md.
BEFORE_ADAPTER_MODULES = os.path.join(os.path.dirname(__file__), "data", "l2rec_71ad60b_qwen3_paper")


def test_paper_preset_fields():
    cfg = L2RecConfig.paper(100)
    assert (cfg.rank, cfg.top_k, cfg.num_shared_experts, cfg.num_experts) == (8, 2, 1, 4)
    assert cfg.router_inputs == ROUTER_INPUTS
    assert cfg.load_balance_weight > 0 and cfg.contrastive_weight > 0
    assert L2RecConfig.paper(100, num_shared_experts=2, top_k=1).num_shared_experts == 2
    assert L2RecConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("bad, error", [
    (dict(num_shared_experts=-1), "num_shared_experts"),
    (dict(num_shared_experts=1.0), "num_shared_experts"),
    (dict(router_inputs=()), "router_inputs"),
    (dict(router_inputs=("user", "user")), "router_inputs"),
    (dict(router_inputs=("users",)), "router_inputs"),
    (dict(load_balance_weight=-0.1), "load_balance_weight"),
    (dict(contrastive_weight=float("nan")), "contrastive_weight"),
    (dict(contrastive_temperature=0), "contrastive_temperature"),
])
def test_config_rejects_bad_fields(bad, error):
    with pytest.raises(ValueError, match=error):
        L2RecConfig(num_items=10, **bad)


def test_router_inputs_string_is_a_type_error():
    with pytest.raises(TypeError, match="router_inputs"):
        L2RecConfig(num_items=10, router_inputs="user")


def test_router_inputs_order_does_not_matter():
    a = L2RecConfig(num_items=10, router_inputs=("interaction", "user"))
    assert a == L2RecConfig(num_items=10, router_inputs=("user", "interaction"))


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_matches_reference(arch):
    """Shared experts on/off x top_k None/1/2 x each router-input variant, both padding sides."""
    worst = 0.0
    for shared, top_k, inputs in itertools.product((0, 1), (None, 1, 2), ROUTER_VARIANTS):
        ref, fused = make_pair(arch, num_shared_experts=shared, top_k=top_k, router_inputs=inputs)
        for side in ("left", "right"):
            b = repad(batch(4, seq=11, ragged=True), side, extra=1)
            with torch.no_grad():
                want, got = ref(**b), fused(**b)
            err = rel_err(got.scores, want.scores)
            assert err <= REL_TOL[torch.float32], (shared, top_k, inputs, side, err)
            assert torch.equal(got.gates, want.gates)
            worst = max(worst, err)
    assert fused.shortcuts_for(11)  # the parity above ran through the layer shortcuts


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_gradients_match_with_aux_losses(arch):
    ref, fused = make_pair(arch, **paper_overrides())
    b = batch(4, seq=11, ragged=True)
    labels = torch.randint(1, NUM_ITEMS + 1, (4,))
    names = assert_same_gradients(ref, fused, b, labels)
    assert any(".shared_a" in n for n in names) and any(".shared_b" in n for n in names)
    assert any("context_proj" in n for n in names)


@pytest.mark.interpreter
def test_triton_backend_matches_with_paper_preset():
    ref, fused = make_pair("qwen3", backend="triton", **paper_overrides())
    b = batch(3, seq=9, ragged=True)
    with torch.no_grad():
        assert rel_err(fused(**b).scores, ref(**b).scores) <= REL_TOL[torch.float32]


def test_aux_losses_reported_and_added():
    ref, _ = make_pair("llama", **paper_overrides())
    b = batch(4, seq=9)
    labels = torch.randint(1, NUM_ITEMS + 1, (4,))
    out = ref(**b, labels=labels)
    assert set(out.aux_losses) == {"load_balance", "contrastive"}
    ce = torch.nn.functional.cross_entropy(out.scores.float(), labels)
    cfg = ref.config
    want = (ce + cfg.load_balance_weight * out.aux_losses["load_balance"]
            + cfg.contrastive_weight * out.aux_losses["contrastive"])
    torch.testing.assert_close(out.loss, want)
    assert ref(**b).aux_losses is None  # no labels: no training losses
    plain, _ = make_pair("llama")
    assert plain(**b, labels=labels).aux_losses == {}


def test_load_balance_loss_is_one_when_balanced_and_grows_when_not():
    from l2rec_kernels.models.base import load_balance_loss

    uniform = torch.zeros(2, 8, 4)
    assert abs(load_balance_loss(uniform, torch.full((2, 8, 4), 0.25), 1.0).item() - 1.0) < 1e-6
    skewed = torch.tensor([5.0, 0, 0, 0]).expand(2, 8, 4)
    gates = torch.softmax(skewed, -1)
    assert load_balance_loss(skewed, gates, 1.0).item() > 3.0


def test_contrastive_loss_prefers_matching_views():
    from l2rec_kernels.models.base import cross_view_contrastive_loss

    p = torch.randn(6, 8)
    aligned = cross_view_contrastive_loss(p, p, 0.1)
    shuffled = cross_view_contrastive_loss(p, p.roll(1, 0), 0.1)
    assert aligned < shuffled
    # symmetric in the two views
    q = torch.randn(6, 8)
    torch.testing.assert_close(cross_view_contrastive_loss(p, q, 0.1), cross_view_contrastive_loss(q, p, 0.1))


def test_context_router_reads_the_prompt():
    ref, _ = make_pair("llama", router_inputs=("context",))
    b = batch(2, seq=9)
    other = dict(b, input_ids=(b["input_ids"] + 1) % 128)
    with torch.no_grad():
        assert not torch.equal(ref(**b).gates, ref(**other).gates)
    user_only, _ = make_pair("llama")
    with torch.no_grad():
        assert torch.equal(user_only(**b).gates, user_only(**other).gates)
    with pytest.raises(ValueError, match="input_ids and attention_mask"):
        ref.gate_logits(b["history_ids"])


def test_context_ignores_padding():
    ref, _ = make_pair("llama", router_inputs=ROUTER_INPUTS)
    b = batch(3, seq=9, ragged=True)
    with torch.no_grad():
        left, right = ref(**repad(b, "left", extra=2)), ref(**repad(b, "right"))
    torch.testing.assert_close(left.gates, right.gates, **assert_close_tol(torch.float32))


def test_save_and_load_paper_model(tmp_path):
    ref, _ = make_pair("qwen3", **paper_overrides())
    ref.save_pretrained(tmp_path)
    again = L2Rec.from_pretrained(tmp_path, ref.backbone)
    assert again.config == ref.config
    want = ref.own_state_dict()
    got = again.own_state_dict()
    assert want.keys() == got.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert any(".shared_a" in k for k in got) and any("context_proj" in k for k in got)


@pytest.mark.parametrize("cls", [L2Rec, FusedL2Rec])
def test_checkpoint_from_before_the_new_fields_loads(cls):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its ``extra`` is empty: dropping it is silent
        model = cls.from_pretrained(LEGACY, make_backbone("llama"))
    cfg = model.config
    assert cfg.num_shared_experts == 0 and cfg.router_inputs == ("user",)
    assert cfg.load_balance_weight == 0 and cfg.contrastive_weight == 0
    data = load_file(os.path.join(LEGACY, "expected.safetensors"))
    want = data.pop("scores")
    with torch.no_grad():
        got = model(**data).scores
    assert rel_err(got, want) <= REL_TOL[torch.float32]


@pytest.mark.parametrize("cls", [L2Rec, FusedL2Rec])
def test_checkpoint_from_before_the_adapter_modules_loads_with_its_keys(cls):
    """A paper-preset Qwen3 checkpoint from 71ad60b loads (its backbone digest matches the
    same tiny backbone), every saved tensor lands under its saved key, and the model gives
    the scores that commit's model gave."""
    path = BEFORE_ADAPTER_MODULES
    model = cls.from_pretrained(path, make_backbone("qwen3")).eval()
    saved = load_file(os.path.join(path, "l2rec_weights.safetensors"))
    own = model.own_state_dict()
    assert own.keys() == saved.keys()
    assert all(torch.equal(own[k], saved[k]) for k in saved)
    data = load_file(os.path.join(path, "expected.safetensors"))
    want = data.pop("scores")
    with torch.no_grad():
        got = model(**data).scores
    assert rel_err(got, want) <= REL_TOL[torch.float32]


def test_nonempty_extra_is_dropped_with_a_warning():
    d = L2RecConfig(num_items=5).to_dict()
    d["extra"] = {"note": 1}
    with pytest.warns(UserWarning, match="extra"):
        assert L2RecConfig.from_dict(d) == L2RecConfig(num_items=5)
