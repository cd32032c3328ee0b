"""A training step through FusedL2Rec (forward, loss, backward): one compiled graph for the
forward and one for the backward, the eager gradients, and no tensor value read on the host
on the GPU path.

* CPU: ``torch.compile(fullgraph=True)`` through AOTAutograd, whose recording backend proves
  that the forward and the backward were each traced whole, with no graph break.
* CPU, as the GPU runs it: the ops' host-side shortcuts for CPU tensors (``values_are_free``)
  switched off, a forward under a mode that fails on every Python-level read of a tensor
  value (``item``, ``bool(t)``, ``nonzero``, boolean indexing, ...), then the backward; the
  gradients equal the reference's.
* GPU: the same step with ``torch.cuda.set_sync_debug_mode("error")`` (the backward's kernels
  included), after a warm-up step.
"""

import pytest
import torch
from model_utils import GRAD_TOL, batch, make_backbone, make_pair, paper_overrides
from tolerances import rel_err
from torch._dynamo.utils import counters
from torch.overrides import TorchFunctionMode

from l2rec_kernels.models import fused as fused_module
from l2rec_kernels.ops import batch_metadata, dpmoe_linear, route, topk_items

PRESETS = {"llama-default": ("llama", {}), "qwen3-paper": ("qwen3", paper_overrides())}
LABELS = torch.tensor([3, 7, 11])


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def step_gradients(model, step, b, labels):
    """Gradients of one step's loss (the model's own gradients zeroed first)."""
    model.zero_grad(set_to_none=True)
    loss = step(b, labels)
    loss.backward()
    return loss.detach(), grads(model)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_training_step_compiles_to_one_forward_and_one_backward_graph():
    """The paper preset (Qwen3 backbone, shared experts, top-2 routers over the prompt, both
    auxiliary losses): the richest step; one preset, since tracing a backward takes time."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    arch, cfg = PRESETS["qwen3-paper"]
    _, fused = make_pair(arch, backend="auto", **cfg)  # the default backend: no training flag
    traced = []

    def recorder(kind):
        def compiler(gm, example_inputs):
            traced.append(kind)
            return make_boxed_func(gm.forward)
        return compiler

    backend = aot_autograd(fw_compiler=recorder("forward"), bw_compiler=recorder("backward"))

    def step(b, labels):
        return fused(**b, labels=labels).loss

    b = batch(3, 9, 5)
    want_loss, want = step_gradients(fused, step, b, LABELS)
    got_loss, got = step_gradients(fused, torch.compile(step, fullgraph=True, backend=backend), b, LABELS)
    assert traced == ["forward", "backward"]  # each traced whole, once
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    assert rel_err(got_loss, want_loss) < 1e-6
    assert want.keys() == got.keys() and len(want) > 10
    for name in want:  # fp32, the same aten ops: only the order of a few sums may differ
        assert rel_err(got[name], want[name]) < 1e-5, name


# Python-level reads of tensor values: each is a device->host sync on a GPU.
HOST_READS = {"item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__",
              "nonzero", "masked_select", "unique", "unique_consecutive", "argwhere"}


def _bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in items)


class NoHostReads(TorchFunctionMode):
    """Fails on any call that needs a tensor's values on the host (a sync on a GPU) or makes
    a shape from them: the CPU stand-in for ``torch.cuda.set_sync_debug_mode("error")``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        bad = name in HOST_READS
        if name in ("__getitem__", "__setitem__") and len(args) > 1 and _bool_index(args[1]):
            bad = True  # boolean-mask indexing: the result's size comes from the values
        if name == "repeat_interleave" and "output_size" not in kwargs and any(
                isinstance(a, torch.Tensor) for a in args[1:2]):
            bad = True  # tensor repeats without output_size: the size is summed on the host
        if bad:
            raise AssertionError(f"host read of tensor values: {name}")
        return func(*args, **kwargs)


@pytest.fixture
def as_on_a_gpu(monkeypatch):
    """The ops' and the model's host-side shortcuts off, as for CUDA tensors."""
    for module in (fused_module, dpmoe_linear, route, batch_metadata, topk_items):
        if hasattr(module, "values_are_free"):
            monkeypatch.setattr(module, "values_are_free", lambda t: False)


@pytest.mark.parametrize("preset, attention", [("llama-default", "sdpa"), ("qwen3-paper", "sdpa"),
                                                ("llama-default", "eager")])
def test_training_step_reads_no_value_on_the_host_on_the_gpu_path(preset, attention, as_on_a_gpu):
    arch, cfg = PRESETS[preset]
    backbone = make_backbone(arch, attn_implementation=attention)
    ref, fused = make_pair(arch, backend="auto", backbone=backbone, **cfg)
    fused.validate_inputs = False  # the input value checks are the one deliberate read
    b = batch(3, 9, 5)             # ragged, left-padded prompts
    with NoHostReads():
        fused(**b, labels=LABELS)  # the mode sees the forward's Python-level calls
    # ... and the same step gives the reference's loss and gradients (the prepared 4-D
    # attention mask included)
    assert fused._prepared_mask(b["attention_mask"], grad=True) is not None
    ref.zero_grad(set_to_none=True)
    ref_loss = ref(**b, labels=LABELS).loss
    ref_loss.backward()
    want = grads(ref)
    loss, got = step_gradients(fused, lambda b, labels: fused(**b, labels=labels).loss, b, LABELS)
    assert rel_err(loss, ref_loss.detach()) < 1e-6
    assert want.keys() == got.keys()
    for name in want:
        assert rel_err(got[name], want[name]) < GRAD_TOL, name


def test_the_host_read_detector_catches_reads(as_on_a_gpu):
    """The detector above is not vacuous: the eager CPU-style path it must not see (reading
    the view runs of dpmoe_linear's metadata) and a plain item() both fail under it."""
    seq_view, cu = torch.tensor([0, 0, 1]), torch.tensor([0, 4, 7, 9])
    with NoHostReads(), pytest.raises(AssertionError, match="host read"):
        dpmoe_linear._view_runs(seq_view, cu, 1)
    with NoHostReads(), pytest.raises(AssertionError, match="host read"):
        torch.ones(2)[torch.tensor([True, False])]


@pytest.mark.gpu
@pytest.mark.parametrize("preset", PRESETS)
def test_training_step_has_no_host_sync_on_the_gpu(preset, device):
    arch, cfg = PRESETS[preset]
    _, fused = make_pair(arch, backend="auto", **cfg)
    fused.to(device)
    fused.validate_inputs = False
    b = {k: v.to(device) for k, v in batch(3, 9, 5).items()}
    labels = LABELS.to(device)
    fused(**b, labels=labels).loss.backward()  # warm-up: lazy inits, the autotune measurements
    torch.cuda.synchronize()
    fused.zero_grad(set_to_none=True)
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = fused(**b, labels=labels).loss
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss) and any(p.grad is not None for p in fused.experts.parameters())
