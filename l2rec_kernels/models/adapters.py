"""DPMoE experts on a frozen backbone, and how a forward reaches them.

Each targeted linear layer of the backbone keeps its frozen weight ``W`` and gets, per view
v and expert e, ``A[v, e] ∈ R^{r×d_in}`` and ``B[v, e] ∈ R^{d_out×r}`` (``DPMoEExperts``).
A linear layer is a ``torch.nn.Linear`` or a subclass of it (Falcon's ``FalconLinear``), or
``transformers.pytorch_utils.Conv1D`` (GPT-2), whose weight is stored ``[d_in, d_out]``:
``linear_weight`` and ``in_out_features`` give every layer's weight as ``[d_out, d_in]``
(for Conv1D a transposed view, never a copy of the frozen weight) and its widths.

How the experts are applied (as PEFT's LoRA layers and vLLM's LoRA wrappers do): each
targeted linear is replaced in the backbone by an ``AdaptedLinear`` wrapper module that
holds the frozen layer as ``base_layer``. The wrapper asks the backbone's ``Routing`` (one
object, owned by the models over that backbone and set by their forwards) for the contexts
of the forward in progress; a context says how to compute the output. With none, the
wrapper is exactly its base layer: the backbone stays a plain model.

* A model sets the routing only for the duration of its own forward. Eager forwards hold
  the routing's lock meanwhile, so two threads running models over one backbone take
  turns, each with its own routing; nothing leaks from one call to the next.
* Under ``torch.compile`` a forward pushes and pops its context inside the traced code
  (``Routing.traced``), so the routing is baked into the graph and the compiled graph
  reads nothing from the routing object when it runs: compiled forwards need no lock.
* A reference ``L2Rec`` and a ``FusedL2Rec`` can share one backbone: each context only
  answers for the layers it owns. ``unwrap`` (reference-counted over the models) puts the
  plain layers back.

The backbone's parameter names gain ``.base_layer`` for the wrapped layers (``plain_name``
removes it); its state dict keeps the plain keys, so a wrapped backbone saves and loads as
the plain model, and L2Rec's own checkpoint keys (``experts.*``, the heads) do not change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import threading
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
    """What an adapted linear asks during a forward; subclasses implement ``linear``.
    ``experts`` maps each frozen base linear that this context answers for to its experts."""

    def __init__(self, experts: dict[nn.Module, DPMoEExperts]) -> None:
        self.experts = experts

    def linear(self, module: nn.Module, experts: DPMoEExperts, x: torch.Tensor) -> torch.Tensor:
        """``module``'s output for input ``x`` with ``experts`` applied (``module`` is the
        frozen base layer; its weight is ``linear_weight(module)``, ``[d_out, d_in]``)."""
        raise NotImplementedError

    def layer_plan(self, layer: nn.Module):
        """How decoder ``layer`` (a base layer) should run under this context (None: as usual)."""
        return None


class Routing:
    """The routing of the forward in progress over one backbone: the contexts its adapted
    layers consult, innermost last. Shared by every wrapper in the backbone and by the
    models over it (each model holds it as ``model.routing``); not a module, not global.

    ``eager``: the contexts of the eager forward holding ``lock`` (an eager forward sets
    them under the lock, so concurrent forwards take turns). ``traced``: the contexts a
    forward that ``torch.compile`` is tracing has pushed; they exist only inside the traced
    code (pushed and popped there), so a whole-graph compiled forward never reads them
    when it runs and needs no lock.

    "Traced" means Dynamo is tracing this code (``torch.compiler.is_dynamo_compiling``), not
    ``torch.compiler.is_compiling``, which is a process-wide flag that is also True in
    other threads' eager code while any thread compiles.

    Not covered, because nothing here knows which thread asks: calling the backbone on its
    own (a plain, unrouted call) from one thread while another thread runs an L2Rec
    forward over it. Hold ``routing.lock`` around such a plain call.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.eager: tuple[RoutingContext, ...] = ()
        self.traced: tuple[RoutingContext, ...] = ()

    def __getstate__(self) -> dict:
        return {}  # (a lock does not pickle; outside a forward there is nothing to keep)

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def active(self) -> tuple[RoutingContext, ...]:
        """The contexts the current code runs under, outermost first.

        While Dynamo traces: those pushed in the traced code; when none were, the eager
        forward's (a compiled region that began inside an eager forward: a compiled
        backbone, or the pieces of a forward that Dynamo split with a graph break; read at
        trace time and guarded on, so such regions recompile per forward and are correct,
        not fast). A backbone compiled on its own outside any L2Rec forward therefore
        traces as the plain model, with ``fullgraph=True``. Eager code sees both (the
        traced ones are a split forward's, set between its graphs)."""
        if torch.compiler.is_dynamo_compiling():
            return self.traced if self.traced else self.eager
        if self.traced:
            return (*self.traced, *self.eager)
        return self.eager

    @contextlib.contextmanager
    def activate(self, ctx: RoutingContext) -> Iterator[None]:
        """Make ``ctx`` answer for its layers inside the ``with`` block (eager: holding the
        lock, so no other thread's forward runs meanwhile; traced: inside the graph)."""
        traced = torch.compiler.is_dynamo_compiling()
        field = "traced" if traced else "eager"
        with contextlib.nullcontext() if traced else self.lock:
            outer = getattr(self, field)
            setattr(self, field, (*outer, ctx))
            try:
                yield
            finally:
                setattr(self, field, outer)


class BackboneWrapper(nn.Module):
    """A module of the backbone (``base_layer``) put behind a wrapper that consults the
    backbone's ``routing``: ``AdaptedLinear`` here, ``ShortcutDecoderLayer`` in
    ``layer_shortcuts``. ``owners`` counts the models using it (``wrap`` / ``unwrap``)."""

    def __init__(self, base_layer: nn.Module, routing: Routing) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.routing = routing   # a plain attribute (not a module): shared, never saved
        self.owners = 0
        # The backbone's state dict keeps its plain keys while wrapped (so a wrapped
        # backbone saved with save_pretrained loads as the plain model), and plain keys
        # load into it.
        self.register_state_dict_post_hook(_plain_state_keys)
        self.register_load_state_dict_pre_hook(_wrapped_state_keys)


def _plain_state_keys(module, state_dict, prefix, local_metadata) -> None:
    inner = prefix + "base_layer."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner):]] = state_dict.pop(key)


def _wrapped_state_keys(module, state_dict, prefix, *args) -> None:
    inner = prefix + "base_layer."
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]:
        state_dict[inner + key[len(prefix):]] = state_dict.pop(key)


class AdaptedLinear(BackboneWrapper):
    """A frozen linear layer of the backbone (``base_layer``) whose output the forward in
    progress may change: the innermost active context that owns ``base_layer``'s experts
    computes it; with none, it is ``base_layer(x)`` exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for ctx in reversed(self.routing.active()):   # innermost first
            experts = ctx.experts.get(self.base_layer)
            if experts is not None:
                return ctx.linear(self.base_layer, experts, x)
        return self.base_layer(x)


def is_wrapper(module: nn.Module) -> bool:
    return isinstance(module, BackboneWrapper)


def unwrapped(module: nn.Module) -> nn.Module:
    """The backbone's own module behind a wrapper (the module itself if it is none)."""
    return module.base_layer if is_wrapper(module) else module


def plain_name(name: str) -> str:
    """A backbone parameter's or module's name with the wrappers' ``.base_layer`` removed:
    its name in the plain backbone."""
    return name.replace(".base_layer", "")


def routing_of(backbone: nn.Module) -> Routing:
    """The routing the backbone's wrappers share, or a new one if it has no wrapper yet."""
    for m in backbone.modules():
        if is_wrapper(m):
            return m.routing
    return Routing()


def _parent(backbone: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(parent module, attribute name) of the outermost module at plain name ``name``: the
    wrapper there, if there is one (wrappers elsewhere on the path are looked through)."""
    actual = next(n for n, _ in backbone.named_modules() if plain_name(n) == name)
    path, _, leaf = actual.rpartition(".")
    return (backbone.get_submodule(path) if path else backbone), leaf


def wrap(backbone: nn.Module, name: str, wrapper_cls: type[BackboneWrapper],
         routing: Routing) -> BackboneWrapper:
    """Replace the module at ``name`` (a plain name) by a ``wrapper_cls`` around it, or reuse
    the wrapper already there; one more owner either way. Returns the wrapper."""
    parent, leaf = _parent(backbone, name)
    current = getattr(parent, leaf)
    if isinstance(current, wrapper_cls):
        if current.routing is not routing:
            raise ValueError(f"{name} is wrapped with another routing")
    else:
        current = wrapper_cls(current, routing)
        setattr(parent, leaf, current)
    current.owners += 1
    return current


def unwrap(backbone: nn.Module, wrapper: BackboneWrapper) -> None:
    """Drop one owner of ``wrapper``; the last one puts its base layer back in its place."""
    wrapper.owners -= 1
    if wrapper.owners > 0:
        return
    for name, m in backbone.named_modules():
        if m is wrapper:
            path, _, leaf = name.rpartition(".")
            setattr(backbone.get_submodule(path) if path else backbone, leaf, wrapper.base_layer)
            return


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


def plain_modules(backbone: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) of the backbone as if unwrapped: wrappers left out, the modules they
    hold under their plain names."""
    for name, module in backbone.named_modules():
        if not is_wrapper(module):
            yield plain_name(name), module


def linear_leaf_names(backbone: nn.Module) -> list[str]:
    """The sorted, unique last name components of the backbone's linear layers (nn.Linear
    and subclasses, Conv1D), those of its base model only: the LM head, which L2Rec never
    runs, is left out."""
    runs = _runs(backbone)
    return sorted({name.rsplit(".", 1)[-1] for name, m in plain_modules(backbone)
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
    """Modules of the backbone's base model whose name's last component is in ``targets``
    (plain names and the frozen layers themselves, wrapped or not); each must be a linear
    layer (``is_linear``) with a floating-point weight."""
    found: dict[str, nn.Module] = {}
    runs = _runs(backbone)
    for name, module in plain_modules(backbone):
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
