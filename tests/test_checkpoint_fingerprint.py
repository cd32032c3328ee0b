"""Checkpoints record a digest of the backbone's weights; ``from_pretrained`` refuses a backbone
of the right shape with other weights (unless told not to check), and lets the same weights
through in another dtype."""

import json
import os
import warnings

import pytest
import torch
from model_utils import VOCAB, batch, make_backbone, make_reference
from safetensors.torch import load_file
from tolerances import REL_TOL, rel_err

from l2rec_kernels.models import adapters, base
from l2rec_kernels.models import digest as digest_module
from l2rec_kernels.models.fused import FusedL2Rec
from l2rec_kernels.models.reference import L2Rec
from l2rec_kernels.models.tiny import tiny_backbone

LEGACY = os.path.join(os.path.dirname(__file__), "data", "l2rec_v1_llama")
MISMATCH = "backbone weights do not match the checkpoint"


@pytest.fixture
def saved(tmp_path):
    """A checkpoint saved over make_backbone("llama") (float32): its directory."""
    make_reference("llama", top_k=2).save_pretrained(tmp_path)
    return tmp_path


def read_meta(path) -> dict:
    with open(os.path.join(path, base.CONFIG_NAME)) as f:
        return json.load(f)


def write_meta(path, meta: dict) -> None:
    with open(os.path.join(path, base.CONFIG_NAME), "w") as f:
        json.dump(meta, f)


def edited(**kw):
    """make_backbone("llama") with layer 1's up_proj weight scaled by kw["scale"]."""
    backbone = make_backbone("llama")
    with torch.no_grad():
        backbone.model.layers[1].mlp.up_proj.weight.mul_(kw.get("scale", 1.05))
    return backbone


def assert_no_wrappers(backbone):
    """Nothing of L2Rec is left on a backbone a failed load was given."""
    assert not any(adapters.is_wrapper(m) for m in backbone.modules())


def test_the_digest_samples_every_parameter_the_model_runs(saved):
    meta = read_meta(saved)
    backbone = make_backbone("llama")
    # "backbone" is unchanged (older versions of the package compare it whole and load this)
    assert meta["backbone"] == base._backbone_fingerprint(backbone)
    digest = meta["backbone_digest"]
    assert digest["version"] == digest_module.DIGEST_VERSION
    names = [n for n, p in backbone.named_parameters() if not n.startswith("lm_head.")]
    assert list(digest["tensors"]) == names  # the LM head, never run, is left out
    for name, entry in digest["tensors"].items():
        p = dict(backbone.named_parameters())[name]
        assert entry["shape"] == list(p.shape)
        assert len(entry["values"]) == min(digest_module.DIGEST_SAMPLES, p.numel())
    # compact: each list of numbers on one line
    with open(os.path.join(saved, base.CONFIG_NAME)) as f:
        text = f.read()
    assert len(text.splitlines()) < 60 + 4 * len(names)


@pytest.mark.parametrize("cls", [L2Rec, FusedL2Rec])
def test_the_same_backbone_loads(saved, cls):
    ref = make_reference("llama", top_k=2)  # the saved weights (same seeds)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = cls.from_pretrained(saved, make_backbone("llama"))
    b = batch(3)
    with torch.no_grad():
        assert rel_err(model(**b).scores, ref(**b).scores) < REL_TOL[torch.float32]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_the_same_weights_in_another_dtype_load(saved, dtype):
    def loads(backbone):  # the checkpoint's own tensors, exactly
        model = L2Rec.from_pretrained(saved, backbone)
        want = load_file(os.path.join(saved, base.WEIGHTS_NAME))
        for k, v in model.own_state_dict().items():
            assert torch.equal(v.to(want[k].dtype), want[k]), k

    loads(make_backbone("llama").to(dtype))   # saved fp32, loaded 16-bit
    # ... and saved with a 16-bit backbone (to_inference_dtype), loaded in fp32 or the other dtype
    low = make_reference("llama").to_inference_dtype(dtype)
    low.save_pretrained(saved)
    loads(make_backbone("llama"))
    other = torch.float16 if dtype == torch.bfloat16 else torch.bfloat16
    loads(make_backbone("llama").to(other))
    # The check did run at these dtypes: one weight changed by 5% is still refused.
    with pytest.raises(ValueError, match="up_proj"):
        L2Rec.from_pretrained(saved, edited(scale=1.05).to(dtype))


@pytest.mark.parametrize("cls", [L2Rec, FusedL2Rec])
def test_a_backbone_with_one_weight_changed_is_refused(saved, cls):
    backbone = edited(scale=1.05)
    with pytest.raises(ValueError, match=MISMATCH) as info:
        cls.from_pretrained(saved, backbone)
    message = str(info.value)
    assert "model.layers.1.mlp.up_proj.weight" in message and "8 of 8 sampled values" in message
    assert "check_backbone_weights=False" in message
    assert "embed_tokens" not in message  # only what differs is named
    assert_no_wrappers(backbone)  # checked before anything was installed on it


def test_another_backbone_of_the_same_shape_is_refused(saved):
    with pytest.raises(ValueError, match=MISMATCH) as info:
        L2Rec.from_pretrained(saved, make_backbone("llama", seed=1))
    assert "model.embed_tokens.weight" in str(info.value) and "more" in str(info.value)


def test_the_threshold_is_above_rounding_and_below_a_real_change(saved):
    L2Rec.from_pretrained(saved, edited(scale=1 + 2 ** -9))  # one bf16 rounding step: passes
    with pytest.raises(ValueError, match=MISMATCH):
        L2Rec.from_pretrained(saved, edited(scale=1 + 2 ** -6))  # 1.6%: caught


@pytest.mark.parametrize("cls", [L2Rec, FusedL2Rec])
def test_the_override_loads_onto_another_backbone(saved, cls):
    backbone = edited()
    model = cls.from_pretrained(saved, backbone, check_backbone_weights=False)
    assert model.backbone is backbone
    with torch.no_grad():
        assert torch.isfinite(model(**batch(2)).scores[:, 1:]).all()
    with pytest.raises(TypeError, match="check_backbone_weights must be a bool"):
        cls.from_pretrained(saved, make_backbone("llama"), check_backbone_weights="no")


def test_the_override_does_not_skip_the_shape_check(saved):
    with pytest.raises(ValueError, match="backbone does not match"):
        L2Rec.from_pretrained(saved, tiny_backbone("llama", hidden=16, layers=2, vocab=VOCAB),
                              check_backbone_weights=False)


def test_checkpoints_without_a_digest_load_unchecked_and_silently(saved):
    """Checkpoints from before the digest (tests/data/l2rec_v1_llama is one) cannot be
    checked; they load as before, without a warning their owner could do nothing about."""
    meta = read_meta(saved)
    del meta["backbone_digest"]
    write_meta(saved, meta)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        L2Rec.from_pretrained(saved, edited())
        L2Rec.from_pretrained(LEGACY, make_backbone("llama"))
    assert "backbone_digest" not in read_meta(LEGACY)


def test_renamed_parameters_are_not_compared_but_said(saved):
    """A backbone whose parameter names changed (another transformers version) cannot be
    compared: the load goes on with a warning, rather than refusing the right weights."""
    meta = read_meta(saved)
    tensors = meta["backbone_digest"]["tensors"]
    meta["backbone_digest"]["tensors"] = {"renamed." + k: v for k, v in tensors.items()}
    write_meta(saved, meta)
    with pytest.warns(UserWarning, match="were not checked"):
        L2Rec.from_pretrained(saved, edited())


def test_a_shape_change_of_a_sampled_parameter_is_named(saved):
    meta = read_meta(saved)
    meta["backbone_digest"]["tensors"]["model.norm.weight"]["shape"] = [33]
    write_meta(saved, meta)
    with pytest.raises(ValueError, match=r"model.norm.weight has shape \[32\], saved \[33\]"):
        L2Rec.from_pretrained(saved, make_backbone("llama"))


def test_the_serving_loader_checks_and_can_be_told_not_to(tmp_path):
    from l2rec_serving.loading import ServiceSpec, load_checkpoint_model

    make_reference("llama", top_k=2).save_pretrained(tmp_path / "ckpt")
    edited().save_pretrained(tmp_path / "other")
    make_backbone("llama").save_pretrained(tmp_path / "same")
    args = (str(tmp_path / "ckpt"),)
    cpu = torch.device("cpu")
    load_checkpoint_model(*args, str(tmp_path / "same"), cpu, torch.bfloat16, backend="torch")
    with pytest.raises(ValueError, match=MISMATCH):
        load_checkpoint_model(*args, str(tmp_path / "other"), cpu, torch.float32, backend="torch")
    model, _ = load_checkpoint_model(*args, str(tmp_path / "other"), cpu, torch.float32,
                                     backend="torch", check_backbone_weights=False)
    assert isinstance(model, FusedL2Rec)
    spec = ServiceSpec(checkpoint="c", backbone="b", check_backbone_weights=False)
    assert spec.check_backbone_weights is False
    with pytest.raises(TypeError, match="check_backbone_weights must be a bool"):
        ServiceSpec(check_backbone_weights=1)
