"""Each private API of a dependency the package uses (``l2rec_kernels._compat``) still
exists and means what we rely on: these fail loudly when torch or transformers change it."""

import pytest
import torch

from l2rec_kernels import _compat
from l2rec_kernels.models.tiny import tiny_backbone


def test_attn_implementation_is_what_the_model_runs():
    backbone = tiny_backbone("llama", attn_implementation="eager")
    assert _compat.attn_implementation(backbone.config) == "eager"
    for layer in backbone.model.layers:  # each attention layer reads it from the config
        assert _compat.attn_implementation(layer.self_attn.config) == "eager"


def test_tensor_version_counts_in_place_changes():
    t = torch.zeros(3)
    before = _compat.tensor_version(t)
    t.add_(1)
    t[0] = 2.0
    assert _compat.tensor_version(t) == before + 2
    t.clone().add_(1)  # a copy's change is not the tensor's
    assert _compat.tensor_version(t) == before + 2


def test_is_view_tells_a_view_from_a_tensor_of_its_own():
    t = torch.arange(6.0)
    assert not _compat.is_view(t) and not _compat.is_view(t.clone())
    assert _compat.is_view(t[1:]) and _compat.is_view(t.view(2, 3)) and _compat.is_view(t[::2][1:])
    assert not _compat.is_view(t.view(2, 3).contiguous().clone())


def test_is_fake_tensor_tells_a_tracers_stand_in_from_a_real_tensor():
    """make_fx traces with fake tensors (as non-strict export does): ``being_traced`` says
    so there, and not for a real tensor in eager code."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    from l2rec_kernels._compat import is_fake_tensor
    from l2rec_kernels._validation import being_traced, values_are_free

    real = torch.ones(2)
    assert not is_fake_tensor(real) and not being_traced(real) and values_are_free(real)
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(real)
    assert is_fake_tensor(fake) and being_traced(fake) and not values_are_free(fake)
    seen = []
    make_fx(lambda t: seen.append(being_traced(t)) or t + 1, tracing_mode="fake")(real)
    assert seen == [True]


def test_the_dynamo_marker_is_assume_constant_result():
    def f():
        return 1

    def g():
        return 1

    torch.compiler.assume_constant_result(f)
    _compat.mark_constant_for_dynamo(g)
    assert {k: v for k, v in vars(f).items()} == {k: v for k, v in vars(g).items()} != {}


def test_a_marked_function_is_called_once_at_trace_time_not_traced():
    calls = []

    @_compat.mark_constant_for_dynamo
    def setting() -> int:
        import json  # noqa: F401 (an import: Dynamo could not trace this body)

        calls.append(1)
        return 3

    @torch.compile(fullgraph=True, backend="eager")
    def f(x):
        return x * setting()

    torch.compiler.reset()
    assert torch.equal(f(torch.ones(2)), torch.full((2,), 3.0))
    f(torch.ones(2))
    assert len(calls) == 1  # baked into the graph


@pytest.mark.parametrize("dynamic, static", [(False, True), (None, False)])
def test_compile_assumes_static_shapes_only_under_dynamic_false(dynamic, static):
    """Asked while a compile runs (here, from its backend): dynamic=False says every size is
    an int; the default (sizes turn symbolic once they change) does not."""
    seen = []

    def backend(gm, example_inputs):
        seen.append(_compat.compile_assumes_static_shapes())
        return gm.forward

    torch.compiler.reset()
    torch.compile(lambda x: x * 2, backend=backend, dynamic=dynamic)(torch.ones(3))
    assert seen == [static]


def test_trainer_private_methods_are_as_our_trainers_expect():
    import inspect

    import transformers

    from l2rec_kernels.training.sasrec import SASRecTrainer
    from l2rec_kernels.training.trainer import L2RecTrainer

    for name, params in _compat.TRAINER_PRIVATE_METHODS.items():
        assert tuple(inspect.signature(getattr(transformers.Trainer, name)).parameters) == params
    overridden = {"_save", "_load_from_checkpoint", "_load_best_model"}
    assert overridden <= set(vars(L2RecTrainer)) and overridden <= set(_compat.TRAINER_PRIVATE_METHODS)
    assert "_prepare_inputs" not in vars(SASRecTrainer)  # called, not overridden


def test_a_changed_trainer_method_is_a_clear_error(monkeypatch):
    import transformers

    def _save(self, output_dir=None, state_dict=None, safe=True):  # a parameter added
        pass

    monkeypatch.setattr(transformers.Trainer, "_save", _save)
    with pytest.raises(RuntimeError, match=r"Trainer\._save.*AnyTrainer"):
        _compat.check_trainer_private_api(type("AnyTrainer", (), {}))
