"""DPMoE experts on a frozen backbone, and how a forward reaches them.

Each targeted linear layer of the backbone keeps its frozen weight ``W`` and gets, per view
v and expert e, ``A[v, e] ∈ R^{r×d_in}`` and ``B[v, e] ∈ R^{d_out×r}`` (``DPMoEExperts``).
A linear layer is a ``torch.nn.Linear`` or a subclass of it (Falcon's ``FalconLinear``), or
``transformers.pytorch_utils.Conv1D`` (GPT-2), whose weight is stored ``[d_in, d_out]``:
``linear_weight`` and ``in_out_features`` give every layer's weight as ``[d_out, d_in]``
(for Conv1D a transposed view, never a copy of the frozen weight) and its widths.

How the experts are applied: the targeted linears get a tiny forward shim that asks the
*active routing context* (a ``contextvars.ContextVar``) how to compute their output. With no
context active the shim is the layer class's own forward: the backbone stays a plain model.
A model activates its context only for the duration of its own forward, so

* two threads running the same model at once each see their own context (context variables
  are per thread), and nothing leaks from one call to the next;
* a reference ``L2Rec`` and a ``FusedL2Rec`` can share one backbone: each context only
  answers for the modules it owns;
* ``uninstall`` removes the shim (it is reference-counted across owners).

Under ``torch.compile`` the contexts live in a plain list while Dynamo traces (it cannot
trace a ``ContextVar``); each is pushed and popped inside the traced forward, so the
routing is baked into the graph and nothing is read from the list when the graph runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import sys
import threading
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .config import AUTO_TARGETS, LLAMA_TARGETS, NUM_VIEWS, L2RecConfig


class DPMoEExperts(nn.Module):
    """Both views' low-rank experts for one linear layer, and the shared ones.

    ``lora_a`` [V, E, r, d_in] starts like LoRA's A (uniform ±1/sqrt(d_in)); ``lora_b``
    [V, E, d_out, r] starts at zero, so a fresh model equals the plain backbone. With
    ``num_shared > 0``, ``shared_a`` [Es, r, d_in] and ``shared_b`` [Es, d_out, r] (same
    initialisation) are the ungated experts of both views; otherwise both are None (and
    not in the state dict, so checkpoints without shared experts keep their keys).
    """

    def __init__(self, d_in: int, d_out: int, num_experts: int, rank: int,
                 num_shared: int = 0) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)
        self.lora_a = nn.Parameter(torch.empty(NUM_VIEWS, num_experts, rank, d_in).uniform_(-bound, bound))
        self.lora_b = nn.Parameter(torch.zeros(NUM_VIEWS, num_experts, d_out, rank))
        self.shared_a = self.shared_b = None
        if num_shared:
            self.shared_a = nn.Parameter(torch.empty(num_shared, rank, d_in).uniform_(-bound, bound))
            self.shared_b = nn.Parameter(torch.zeros(num_shared, d_out, rank))


class RoutingContext:
    """What a patched linear asks during a forward; subclasses implement ``linear``."""

    def __init__(self, experts: dict[nn.Module, DPMoEExperts]) -> None:
        self.experts = experts

    def linear(self, module: nn.Module, experts: DPMoEExperts, x: torch.Tensor) -> torch.Tensor:
        """``module``'s output for input ``x`` with ``experts`` applied (the frozen weight is
        ``linear_weight(module)``, ``[d_out, d_in]``)."""
        raise NotImplementedError

    def layer_plan(self, layer: nn.Module):
        """How a shimmed decoder layer should run under this context (None: as usual)."""
        return None


_ACTIVE: contextvars.ContextVar[tuple[RoutingContext, ...]] = contextvars.ContextVar(
    "l2rec_routing_context", default=()
)
# While torch.compile traces a forward, the contexts live here instead: Dynamo cannot trace a
# ContextVar, but it traces a plain list's appends and pops as side effects. A context is
# pushed and popped inside the traced region, so the compiled graph never reads this list
# when it runs (the routing is baked into the graph): threads running compiled code do not
# share anything through it, and eager forwards (any thread) keep using ``_ACTIVE``. The
# exception: a forward that Dynamo splits with a graph break (fullgraph=False) holds its
# context here between its graphs, where another thread's compiled forward could see it.
_TRACING: list[RoutingContext] = []
# How many eager contexts this thread has open (mirrors ``_ACTIVE``). Dynamo traces a
# threading.local (and guards on it), so code compiled outside any forward (a compiled
# plain backbone) sees 0 and traces as the plain model, with fullgraph=True, instead of
# reaching for the ContextVar.
_EAGER = threading.local()


def _active() -> tuple[RoutingContext, ...] | list[RoutingContext]:
    """The active contexts, outermost first.

    While Dynamo traces, those pushed in the traced code (``_TRACING``); when none were,
    none if this thread has no eager forward open (a compiled plain backbone: it traces as
    the plain model), else (a compiled region that began inside an eager forward: a
    compiled backbone, or a forward that Dynamo split with a graph break) the ContextVar's,
    read eagerly at a graph break (so ``fullgraph=True`` compiles only whole forwards).
    Eager code that runs between two graphs of a split forward sees both."""
    if torch.compiler.is_compiling():
        if _TRACING:
            return _TRACING
        if not getattr(_EAGER, "depth", 0):
            return ()
        return _ACTIVE.get()
    if _TRACING:
        return (*_TRACING, *_ACTIVE.get())
    return _ACTIVE.get()


@contextlib.contextmanager
def activate(ctx: RoutingContext) -> Iterator[None]:
    """Make ``ctx`` answer for its modules inside the ``with`` block (this thread only;
    while torch.compile traces, for the traced forward)."""
    if torch.compiler.is_compiling():
        _TRACING.append(ctx)
        try:
            yield
        finally:
            _TRACING.pop()
        return
    token = _ACTIVE.set((*_ACTIVE.get(), ctx))
    _EAGER.depth = getattr(_EAGER, "depth", 0) + 1
    try:
        yield
    finally:
        _EAGER.depth -= 1
        _ACTIVE.reset(token)


def _shim_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # Innermost context first, so a model called inside another model's forward wins.
    for ctx in reversed(_active()):
        experts = ctx.experts.get(self)
        if experts is not None:
            return ctx.linear(self, experts, x)
    return type(self).forward(self, x)  # no context: exactly the plain layer


def active_layer_plan(layer: nn.Module):
    """The innermost active context's plan for decoder ``layer``, or None."""
    for ctx in reversed(_active()):
        plan = ctx.layer_plan(layer)
        if plan is not None:
            return plan
    return None


def _conv1d_class() -> type | None:
    """transformers' ``Conv1D``, if transformers is loaded (if it is not, no module of the
    backbone can be one; transformers is never imported here)."""
    return getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)


def _is_conv1d(module: nn.Module) -> bool:
    conv1d = _conv1d_class()
    return conv1d is not None and isinstance(module, conv1d)


def is_linear(module: nn.Module) -> bool:
    """Whether ``module`` is a linear layer DPMoE can adapt: an ``nn.Linear`` (or a subclass)
    or transformers' ``Conv1D``."""
    return isinstance(module, nn.Linear) or _is_conv1d(module)


def in_out_features(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a linear layer (Conv1D: ``weight.shape[0]``, ``nf``)."""
    if _is_conv1d(module):
        return module.weight.shape[0], module.nf
    return module.in_features, module.out_features


def linear_weight(module: nn.Module) -> torch.Tensor:
    """A linear layer's weight as ``[d_out, d_in]`` (y = x Wᵀ + b), the layout ``F.linear``
    and ``dpmoe_linear`` take. Conv1D stores ``[d_in, d_out]`` (y = x W + b): its weight is
    returned transposed, a strided view of the frozen weight, never a copy."""
    return module.weight.T if _is_conv1d(module) else module.weight


def _describe(module: nn.Module) -> str:
    cls = type(module)
    return f"a {cls.__module__}.{cls.__qualname__}"


def _check_linear(name: str, module: nn.Module) -> None:
    if not is_linear(module):
        raise TypeError(
            f"target module {name!r} is {_describe(module)}, not a linear layer: DPMoE adapts "
            "torch.nn.Linear layers (and subclasses) and transformers' Conv1D")
    weight = module.weight
    d_in, d_out = in_out_features(module)
    want = (d_in, d_out) if _is_conv1d(module) else (d_out, d_in)
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point() \
            or tuple(weight.shape) != want:
        what = (f"{weight.dtype} {list(weight.shape)}" if isinstance(weight, torch.Tensor)
                else type(weight).__name__)
        raise TypeError(
            f"target module {name!r} is {_describe(module)} whose weight is {what}, not a "
            f"floating-point {list(want)} matrix (quantised or packed weights are not supported)")


def _runs(backbone: nn.Module) -> set[int]:
    """ids of the modules L2Rec runs: the backbone's base model (not the LM head)."""
    return {id(m) for m in getattr(backbone, "base_model", backbone).modules()}


def linear_leaf_names(backbone: nn.Module) -> list[str]:
    """The sorted, unique last name components of the backbone's linear layers (nn.Linear
    and subclasses, Conv1D), those of its base model only: the LM head, which L2Rec never
    runs, is left out."""
    runs = _runs(backbone)
    return sorted({name.rsplit(".", 1)[-1] for name, m in backbone.named_modules()
                   if name and id(m) in runs and is_linear(m)})


def _candidates(backbone: nn.Module) -> str:
    names = linear_leaf_names(backbone)
    listed = ", ".join(names) if names else "(none)"
    return f"the backbone's linear layers are named: {listed} (the LM head, never run, is left out)"


def auto_target_modules(backbone: nn.Module) -> tuple[str, ...]:
    """What ``target_modules="auto"`` means for ``backbone``: the attention and MLP linears
    of its ``model_type`` (``config.AUTO_TARGETS``; attention only for mixture-of-experts
    models, whose experts are not per-token linears); for another model type, the
    Llama-style names when it has all of them. Raises ValueError, listing the backbone's
    linear layer names, when it cannot decide."""
    model_type = getattr(getattr(backbone, "config", None), "model_type", None)
    if model_type in AUTO_TARGETS:
        return AUTO_TARGETS[model_type]
    if set(LLAMA_TARGETS) <= set(linear_leaf_names(backbone)):
        return LLAMA_TARGETS
    raise ValueError(
        f'target_modules="auto" does not know model_type {model_type!r} (known: '
        f"{', '.join(sorted(AUTO_TARGETS))}) and the backbone lacks some of the Llama-style "
        f"names {LLAMA_TARGETS}: pass target_modules explicitly; {_candidates(backbone)}")


def resolve_targets(config: L2RecConfig, backbone: nn.Module) -> L2RecConfig:
    """``config`` itself when its ``target_modules`` are names; for ``"auto"`` a copy naming
    the modules chosen for ``backbone`` (so a saved checkpoint says what it adapts)."""
    if config.target_modules != "auto":
        return config
    return dataclasses.replace(config, target_modules=auto_target_modules(backbone))


def find_target_linears(backbone: nn.Module, targets: tuple[str, ...]) -> dict[str, nn.Module]:
    """Modules of the backbone's base model whose name's last component is in ``targets``;
    each must be a linear layer (``is_linear``) with a floating-point weight."""
    found: dict[str, nn.Module] = {}
    runs = _runs(backbone)
    for name, module in backbone.named_modules():
        if name.rsplit(".", 1)[-1] in targets and id(module) in runs:
            _check_linear(name, module)
            found[name] = module
    if not found:
        raise ValueError(f"none of target_modules={targets} was found in the backbone; "
                         f"{_candidates(backbone)}")
    missing = set(targets) - {n.rsplit(".", 1)[-1] for n in found}
    if missing:
        raise ValueError(f"target_modules {sorted(missing)} were not found in the backbone; "
                         f"{_candidates(backbone)}")
    return found


def expert_key(module_name: str) -> str:
    """ModuleDict keys may not contain '.', so module paths use '__' instead."""
    return module_name.replace(".", "__")


def install(module: nn.Module, shim=_shim_forward) -> None:
    """Put ``shim`` (by default the linear shim) on ``module`` as its forward (idempotent,
    reference-counted: every owner installs, the last ``uninstall`` removes it)."""
    count = getattr(module, "_l2rec_shim_count", 0)
    if count == 0:
        module.forward = types.MethodType(shim, module)
    module._l2rec_shim_count = count + 1


def uninstall(module: nn.Module) -> None:
    """Drop one reference to the shim; the last one restores the class's forward."""
    count = getattr(module, "_l2rec_shim_count", 0)
    if count <= 1:
        module.__dict__.pop("forward", None)
        module.__dict__.pop("_l2rec_shim_count", None)
    else:
        module._l2rec_shim_count = count - 1


class ReferenceContext(RoutingContext):
    """One view for the whole batch, written the way iLoRA's public code writes it: every
    expert's low-rank product as an einsum over all experts, then a gate-weighted sum, and
    the shared experts' products summed ungated:

        y = x Wᵀ + b + s · Σ_e g[b, e] · (x A[v, e]ᵀ) B[v, e]ᵀ + s · Σ_f (x A_f ᵀ) B_fᵀ
    """

    def __init__(self, experts, view: int, gates: torch.Tensor, scaling: float) -> None:
        super().__init__(experts)
        self.view, self.gates, self.scaling = view, gates, scaling

    def linear(self, module, experts, x):
        base = F.linear(x, linear_weight(module), module.bias)
        a = experts.lora_a[self.view].to(x.dtype)                   # [E, r, d_in]
        b = experts.lora_b[self.view].to(x.dtype)                   # [E, d_out, r]
        h = torch.einsum("btd,erd->bter", x, a)
        per_expert = torch.einsum("bter,eor->bteo", h, b)           # [B, T, E, d_out]
        mixed = torch.einsum("bteo,be->bto", per_expert, self.gates.to(x.dtype))
        if experts.shared_a is not None:
            h = torch.einsum("btd,frd->btfr", x, experts.shared_a.to(x.dtype))
            mixed = mixed + torch.einsum("btfr,for->bto", h, experts.shared_b.to(x.dtype))
        return base + self.scaling * mixed
