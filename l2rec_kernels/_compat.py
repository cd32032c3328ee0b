"""Every private API of a dependency that the package uses, in one place.

Each has a test in ``tests/test_compat.py`` that fails loudly when the dependency changes
it, and ``pyproject.toml`` bounds torch and transformers above at the newest versions the
suite passed with. Nothing else in the package touches a dependency's underscored names,
save ``torch._check`` (documented in torch's API reference despite its name: the condition
check that compiled code and fake-tensor kernels can carry).

* transformers: ``config._attn_implementation`` (which attention kernel a loaded model
  runs; there is no public getter for a config), and the ``Trainer`` methods our trainers
  override (``_save``, ``_load_from_checkpoint``, ``_load_best_model``: where Trainer
  writes and reads checkpoints, so ours are safetensors written by ``save_pretrained``) or
  call (``_prepare_inputs``). An override of a renamed method would silently never run:
  ``check_trainer_private_api`` turns that into an error when a trainer class is defined.
* torch: ``Tensor._version`` (the in-place modification counter, a cache key),
  ``Tensor._base`` (the tensor a view shares memory with: Dynamo guards on view-ness),
  ``torch._subclasses.fake_tensor.is_fake`` (whether a tensor is a tracer's stand-in,
  which has no values to read), and Dynamo's ``_dynamo_marked_constant`` marker (what
  ``torch.compiler.assume_constant_result`` sets; written out because importing
  ``torch.compiler``'s helper imports Dynamo and triton, which must not happen at package
  import), and Dynamo's config (``assume_static_by_default``, ``automatic_dynamic_shapes``:
  how ``torch.compile(dynamic=...)`` says whether sizes may be symbolic, which no public API
  tells a function being traced).
"""

from __future__ import annotations

import inspect

import torch

# Trainer's private methods we override or call -> their parameters (as transformers
# 4.48-5.x declare them; self first).
TRAINER_PRIVATE_METHODS = {
    "_save": ("self", "output_dir", "state_dict"),
    "_load_from_checkpoint": ("self", "resume_from_checkpoint", "model"),
    "_load_best_model": ("self",),
    "_prepare_inputs": ("self", "inputs"),
}


def attn_implementation(config) -> str | None:
    """The attention implementation a transformers config selects (None: unset)."""
    return getattr(config, "_attn_implementation", None)


def set_attn_implementation(config, implementation: str) -> None:
    """Select the attention implementation of a config before its model is built."""
    config._attn_implementation = implementation


def tensor_version(t: torch.Tensor) -> int:
    """The tensor's in-place modification counter (bumped by every in-place op on it)."""
    return t._version


def is_view(t: torch.Tensor) -> bool:
    """Whether ``t`` is a view of another tensor's memory (a slice, a ``view``, ...)."""
    return t._base is not None


def is_fake_tensor(t: torch.Tensor) -> bool:
    """Whether ``t`` is a fake tensor (or wraps one): the stand-in ``make_fx`` and non-strict
    export trace with, which has shapes but no values."""
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(t)


def mark_constant_for_dynamo(fn):
    """``torch.compiler.assume_constant_result(fn)`` without importing Dynamo: compiled code
    calls ``fn`` once while tracing and bakes in the answer. Returns ``fn``."""
    fn._dynamo_marked_constant = True
    return fn


def compile_assumes_static_shapes() -> bool:
    """Whether torch.compile traces every size as a plain int (``dynamic=False`` sets this
    for the compile it runs). Imports Dynamo: ask it only while something compiles."""
    from torch._dynamo import config

    return config.assume_static_by_default and not config.automatic_dynamic_shapes


def check_trainer_private_api(trainer_cls: type) -> None:
    """RuntimeError naming the method when transformers' ``Trainer`` (``trainer_cls``'s
    base) lacks one of ``TRAINER_PRIVATE_METHODS`` or declares other parameters."""
    import transformers

    for name, params in TRAINER_PRIVATE_METHODS.items():
        method = getattr(transformers.Trainer, name, None)
        got = tuple(inspect.signature(method).parameters) if callable(method) else None
        if got != params:
            raise RuntimeError(
                f"transformers {transformers.__version__} changed Trainer.{name} (expected "
                f"parameters {params}, found {got}): {trainer_cls.__name__} overrides or calls "
                "it; see l2rec_kernels/_compat.py")
