"""DPMoE experts on a frozen backbone, and how a forward reaches them.

Each targeted ``nn.Linear`` of the backbone keeps its frozen weight ``W`` and gets, per view
v and expert e, ``A[v, e] ∈ R^{r×d_in}`` and ``B[v, e] ∈ R^{d_out×r}`` (``DPMoEExperts``).

How the experts are applied: the targeted linears get a tiny forward shim that asks the
*active routing context* (a ``contextvars.ContextVar``) how to compute their output. With no
context active the shim is exactly ``F.linear``: the backbone stays usable as a plain model.
A model activates its context only for the duration of its own forward, so

* two threads running the same model at once each see their own context (context variables
  are per thread), and nothing leaks from one call to the next;
* a reference ``L2Rec`` and a ``FusedL2Rec`` can share one backbone: each context only
  answers for the modules it owns;
* ``uninstall`` removes the shim (it is reference-counted across owners).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .config import NUM_VIEWS


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

    def linear(self, module: nn.Linear, experts: DPMoEExperts, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def layer_plan(self, layer: nn.Module):
        """How a shimmed decoder layer should run under this context (None: as usual)."""
        return None


_ACTIVE: contextvars.ContextVar[tuple[RoutingContext, ...]] = contextvars.ContextVar(
    "l2rec_routing_context", default=()
)


@contextlib.contextmanager
def activate(ctx: RoutingContext) -> Iterator[None]:
    """Make ``ctx`` answer for its modules inside the ``with`` block (this thread only)."""
    token = _ACTIVE.set((*_ACTIVE.get(), ctx))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def _shim_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    # Innermost context first, so a model called inside another model's forward wins.
    for ctx in reversed(_ACTIVE.get()):
        experts = ctx.experts.get(self)
        if experts is not None:
            return ctx.linear(self, experts, x)
    return F.linear(x, self.weight, self.bias)


def active_layer_plan(layer: nn.Module):
    """The innermost active context's plan for decoder ``layer``, or None."""
    for ctx in reversed(_ACTIVE.get()):
        plan = ctx.layer_plan(layer)
        if plan is not None:
            return plan
    return None


def find_target_linears(backbone: nn.Module, targets: tuple[str, ...]) -> dict[str, nn.Linear]:
    """Modules whose name's last component is in ``targets``; each must be an nn.Linear."""
    found: dict[str, nn.Linear] = {}
    for name, module in backbone.named_modules():
        if name.rsplit(".", 1)[-1] in targets:
            if type(module) is not nn.Linear:
                raise TypeError(
                    f"target module {name!r} is a {type(module).__name__}, but DPMoE adapts "
                    "plain torch.nn.Linear layers only (quantised or fused layers are not supported)"
                )
            found[name] = module
    if not found:
        raise ValueError(f"none of target_modules={targets} was found in the backbone")
    missing = set(targets) - {n.rsplit(".", 1)[-1] for n in found}
    if missing:
        raise ValueError(f"target_modules {sorted(missing)} were not found in the backbone")
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
        base = F.linear(x, module.weight, module.bias)
        a = experts.lora_a[self.view].to(x.dtype)                   # [E, r, d_in]
        b = experts.lora_b[self.view].to(x.dtype)                   # [E, d_out, r]
        h = torch.einsum("btd,erd->bter", x, a)
        per_expert = torch.einsum("bter,eor->bteo", h, b)           # [B, T, E, d_out]
        mixed = torch.einsum("bteo,be->bto", per_expert, self.gates.to(x.dtype))
        if experts.shared_a is not None:
            h = torch.einsum("btd,frd->btfr", x, experts.shared_a.to(x.dtype))
            mixed = mixed + torch.einsum("btfr,for->bto", h, experts.shared_b.to(x.dtype))
        return base + self.scaling * mixed
