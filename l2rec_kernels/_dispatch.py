"""One dispatch for every op: the table of its backends, and the one function that picks.

Each op states here, once, which backends implement it (in ``auto``'s order of preference
on a GPU: cuda, triton, torch) and what each of them can run:

==============  =========  ===========================================================
op              backend    serves
==============  =========  ===========================================================
dpmoe_linear    triton     fp32/fp16/bf16; inference only
                torch      every float dtype; differentiable
route           cuda       fp32/fp16/bf16 logits; inference only
                triton     fp32/fp16/bf16 logits; inference only
                torch      also fp64; differentiable
topk_items      triton     k <= TRITON_MAX_K, items <= TRITON_MAX_ITEMS (never carries grad)
                torch      everything (never carries grad)
batch_metadata  cuda       users <= CUDA_MAX_USERS
                torch      everything
==============  =========  ===========================================================

``select`` is the one place a backend is chosen:

* an explicit name must be in the op's row (ValueError), usable here (ValueError saying
  why: ``_backend``), and serve these inputs (TypeError for a dtype, ValueError for a size);
  an inference-only backend refuses gradients (``refuse_grad``). Never a silent fallback.
* ``"auto"``: the candidates are the op's backends that are usable here and serve these
  inputs, less the inference-only ones when a gradient is wanted (torch always qualifies).
  CPU tensors take torch. For CUDA tensors ``_autotune`` measures the candidates on the
  first call per shape bucket (or reads its cache, or, where nothing can be measured, takes
  the default: the first candidate in table order).

``planned_backend`` is the same resolution without inputs or measurements, for callers that
plan around the path an op will take (``FusedL2Rec``'s torch-only shortcuts).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import _autotune
from ._backend import BACKENDS, unavailable_reason
from ._compat import mark_constant_for_dynamo
from ._dtypes import dtype_name

# The limits behind the table's constraints (the op modules re-export them).
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# The largest k the topk_items triton kernel serves: its partials hold next_power_of_2(k)
# keys per query and catalogue slice, and a merge sorts one such row on chip.
TRITON_MAX_K = 4096
# The most items the topk_items triton kernel serves: its keys hold an item id in 31 bits,
# with room for the empty-slot sentinel.
TRITON_MAX_ITEMS = 2**31 - 2
# Users one launch of the batch_metadata CUDA kernel handles (csrc/l2rec_kernels.h,
# kMetadataMaxUsers): each block keeps every user's offset in shared memory.
CUDA_MAX_USERS = 8192


@dataclass(frozen=True)
class Backend:
    """What one backend of one op serves. ``dtypes`` None: every dtype the op accepts;
    ``max_sizes``: (size name, largest value served), names as the op reports its sizes."""

    dtypes: tuple[torch.dtype, ...] | None = None
    inference_only: bool = False
    max_sizes: tuple[tuple[str, int], ...] = ()


_TORCH = Backend()
# op -> {backend: what it serves}; each row in auto's order on a GPU (cuda, triton, torch).
TABLE: dict[str, dict[str, Backend]] = {
    "dpmoe_linear": {"triton": Backend(FLOAT_DTYPES, inference_only=True), "torch": _TORCH},
    "route": {"cuda": Backend(FLOAT_DTYPES, inference_only=True),
              "triton": Backend(FLOAT_DTYPES, inference_only=True), "torch": _TORCH},
    "topk_items": {"triton": Backend(max_sizes=(("k", TRITON_MAX_K), ("items", TRITON_MAX_ITEMS))),
                   "torch": _TORCH},
    "batch_metadata": {"cuda": Backend(max_sizes=(("users", CUDA_MAX_USERS),)), "torch": _TORCH},
}
# The input whose dtype a backend's ``dtypes`` constrains, named in errors.
DTYPE_INPUT = {"dpmoe_linear": "x", "route": "logits", "topk_items": "query",
               "batch_metadata": "attention_mask"}


def check_backend_name(backend) -> str:
    """``backend`` if it is one of ``BACKENDS``, else a ValueError listing them."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


@mark_constant_for_dynamo
def planned_backend(op: str, backend: str, device_type: str) -> str:
    """The backend ``op`` takes on ``device_type`` tensors before inputs are seen: an explicit
    name, checked against the table and the environment (ValueError), or for ``"auto"`` torch
    on the CPU and the first usable backend in table order on a GPU. Plain-constant
    arguments: a compiled graph evaluates it once, at trace time."""
    check_backend_name(backend)
    row = TABLE[op]
    if backend == "auto":
        return _usable(op, device_type)[0] if device_type == "cuda" else "torch"
    if backend not in row:
        raise ValueError(f"backend={backend!r} is not implemented for {op}; it supports "
                         f"{tuple(row)}")
    reason = unavailable_reason(backend, torch.device(device_type))
    if reason is not None:
        raise ValueError(f"backend={backend!r} cannot run {op} here: {reason}")
    return backend


@mark_constant_for_dynamo
def _usable(op: str, device_type: str) -> tuple[str, ...]:
    device = torch.device(device_type)
    return tuple(b for b in TABLE[op] if unavailable_reason(b, device) is None)


def needs_grad(*tensors) -> bool:
    """Grad mode is on and a tensor among ``tensors`` (None allowed) requires grad: then
    ``auto`` takes a differentiable path."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def refuse_grad(op: str, backend: str, *tensors) -> None:
    """The one way an inference-only backend refuses gradients: RuntimeError when
    ``needs_grad(*tensors)``, naming the op, the backend and what to do instead."""
    if needs_grad(*tensors):
        raise RuntimeError(
            f"{op} backend={backend!r} is inference-only (no backward) and an input requires "
            "grad with grad mode on: use backend='torch' for training, or run under "
            "torch.no_grad() / torch.inference_mode()")


def _unserved(op: str, backend: str, dtype: torch.dtype, sizes) -> tuple[type, str] | None:
    """None when ``backend`` of ``op`` serves inputs of ``dtype`` and ``sizes`` ((name,
    value), ...; every size the backend limits must be among them), else (the error type
    to raise: TypeError for a dtype, ValueError for a size, and why)."""
    spec = TABLE[op][backend]
    if spec.dtypes is not None and dtype not in spec.dtypes:
        names = ", ".join(dtype_name(d) for d in spec.dtypes)
        return TypeError, f"{DTYPE_INPUT[op]} dtypes {names}, got {dtype_name(dtype)}"
    values = dict(sizes)
    for name, limit in spec.max_sizes:
        if values[name] > limit:
            return ValueError, f"{name} <= {limit}, got {name}={values[name]}"
    return None


def check_serves(op: str, backend: str, dtype: torch.dtype, sizes) -> None:
    """Raise when ``backend`` cannot serve these inputs: TypeError for a dtype, ValueError
    for a size, naming the op, the backend and the limit."""
    problem = _unserved(op, backend, dtype, sizes)
    if problem is not None:
        error, reason = problem
        raise error(f"{op} backend={backend!r} supports {reason}; use backend='torch' or 'auto'")


def select(op: str, backend: str, device: torch.device, dtype: torch.dtype, *,
           rows: tuple[tuple[str, int], ...] = (), exact: tuple[tuple[str, int], ...] = (),
           grad_inputs: tuple = (), run: Callable[[str], object] | None = None) -> str:
    """The backend that runs ``op`` on these inputs (see the module docstring).

    ``rows`` are the row-like sizes (the first is the batch) and ``exact`` the others: they
    are checked against the table's limits and make ``auto``'s shape bucket. ``grad_inputs``:
    the tensors whose gradient an inference-only backend cannot give. ``run(name)`` runs the
    op on this call's inputs with backend ``name``: what ``auto`` times on a GPU.
    """
    planned = planned_backend(op, backend, device.type)
    sizes = (*rows, *exact)
    if backend != "auto":
        check_serves(op, planned, dtype, sizes)
        if TABLE[op][planned].inference_only:
            refuse_grad(op, planned, *grad_inputs)
        return planned
    grad = needs_grad(*grad_inputs)
    candidates = tuple(
        b for b in _usable(op, device.type)
        if _unserved(op, b, dtype, sizes) is None and not (grad and TABLE[op][b].inference_only))
    default = "torch" if device.type != "cuda" else candidates[0]
    if not _autotune.measures(device.type) or run is None:
        return default
    candidates = (default, *(b for b in candidates if b != default))  # ties go to the default
    return _autotune.choose(op, device, dtype, rows, exact, candidates, default,
                            lambda: {b: functools.partial(run, b) for b in candidates})

