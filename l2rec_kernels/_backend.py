"""Backend discovery and choice.

Three implementations stand behind every op:

* ``"torch"``  pure PyTorch; runs everywhere and is the CPU default.
* ``"triton"`` Triton kernels; CUDA tensors, or CPU tensors when ``TRITON_INTERPRET=1`` was
  set before triton was imported (that is how CI tests them).
* ``"cuda"``   the optional compiled extension ``l2rec_kernels._C`` (routing and batch
  metadata only); CUDA tensors, where the extension was built.

``"auto"`` is the torch path for CPU tensors. For CUDA tensors it is a measured choice
(``_autotune``): the first eager call of an op in a (device, dtype, shape bucket) times
every usable path and keeps the fastest, cached in memory and on disk; where nothing can be
measured (torch.compile tracing, CUDA-graph capture) the cached choice or the default rule
(cuda > triton > torch, ``resolve_backend``) applies. Under grad mode, when an input requires
grad, ``auto`` takes each op's differentiable path (torch), whatever the device. Nothing here
runs at import time: the extension is imported and CUDA is queried only when first asked.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os

import torch

from . import settings
from ._compat import mark_constant_for_dynamo

BACKENDS = ("auto", "triton", "cuda", "torch")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=1)
def _triton_import_error() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    try:
        importlib.import_module("triton")
    except Exception as exc:  # a broken install must not break the package
        return f"importing triton failed: {exc!r}"
    return None


@functools.lru_cache(maxsize=1)
def _cuda_ext_import_error() -> str | None:
    try:
        importlib.import_module("l2rec_kernels._C")
    except ImportError as exc:
        return (
            "the CUDA extension l2rec_kernels._C is not built here "
            f"({exc}); it is built by `pip install --no-build-isolation -e .` where CUDA "
            "torch and nvcc exist"
        )
    return None


def triton_unavailable_reason(device: torch.device) -> str | None:
    """None when Triton kernels can run on tensors of ``device``, else why not."""
    err = _triton_import_error()
    if err is not None:
        return err
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if _interpreting():
            return None
        return "CPU tensors need TRITON_INTERPRET=1 set before triton is imported"
    return f"triton kernels do not support device type {device.type!r}"


def cuda_ext_unavailable_reason(device: torch.device) -> str | None:
    """None when the compiled extension can run on tensors of ``device``, else why not."""
    if device.type != "cuda":
        return f"the CUDA extension needs CUDA tensors, got device {device.type!r}"
    return _cuda_ext_import_error()


def load_cuda_ext():
    """The imported extension module; call only after ``cuda_ext_unavailable_reason`` is None."""
    return importlib.import_module("l2rec_kernels._C")


def resolve_backend(backend: str, device: torch.device, op: str,
                    supported: tuple[str, ...] = ("triton", "torch")) -> str:
    """Turn a requested backend into the one that will run ``op`` on ``device``.

    ``auto`` prefers cuda > triton > torch among ``supported`` for CUDA tensors, and torch for
    CPU tensors (the interpreter is for testing, not speed). An explicit backend that cannot
    run raises ``ValueError`` saying why, never a silent fallback.
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda":
            for cand in ("cuda", "triton"):
                if cand in supported and _unavailable(cand, device) is None:
                    return cand
        return "torch"
    if backend not in supported:
        raise ValueError(
            f"backend={backend!r} is not implemented for {op}; it supports {supported}"
        )
    reason = _unavailable(backend, device)
    if reason is not None:
        raise ValueError(f"backend={backend!r} cannot run {op} here: {reason}")
    return backend


@mark_constant_for_dynamo
def resolve_backend_traceable(backend: str, device_type: str, op: str,
                              supported: tuple[str, ...]) -> str:
    """``resolve_backend`` for the ops' hot path: plain-constant arguments only (a device
    *type* string), so that a compiled graph evaluates it once, at trace time. The choice
    depends only on the environment, never on tensor values."""
    return resolve_backend(backend, torch.device(device_type), op, supported=supported)


@mark_constant_for_dynamo
def usable_backends(device_type: str, supported: tuple[str, ...]) -> tuple[str, ...]:
    """The backends among ``supported`` that can run on tensors of ``device_type``, in the
    default rule's order (cuda, triton, torch): what ``auto`` measures on a GPU."""
    device = torch.device(device_type)
    return tuple(b for b in ("cuda", "triton", "torch")
                 if b in supported and _unavailable(b, device) is None)


def needs_grad(*tensors) -> bool:
    """Grad mode is on and a tensor among ``tensors`` (None allowed) requires grad: then
    ``auto`` takes the differentiable (torch) path."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def refuse_grad(op: str, backend: str, *tensors) -> None:
    """The one way an inference-only backend refuses gradients: RuntimeError when
    ``needs_grad(*tensors)``, naming the op, the backend and what to do instead."""
    if needs_grad(*tensors):
        raise RuntimeError(
            f"{op} backend={backend!r} is inference-only (no backward) and an input requires "
            "grad with grad mode on: use backend='torch' for training, or run under "
            "torch.no_grad() / torch.inference_mode()")


def _unavailable(backend: str, device: torch.device) -> str | None:
    if backend == "torch":
        return None
    if backend == "triton":
        return triton_unavailable_reason(device)
    if backend == "cuda":
        return cuda_ext_unavailable_reason(device)
    raise ValueError(backend)


def backend_info() -> dict[str, dict[str, object]]:
    """Which backends are usable here, and why not the others.

    Returns ``{name: {"available": bool, "reason": str}}`` for ``torch``, ``triton`` and
    ``cuda``, judged for CUDA tensors when a GPU is visible and for CPU tensors otherwise;
    ``device`` names the GPU; ``autotune`` says whether ``auto`` is measured here and adds
    ``path`` (the cache file) and ``choices`` ({bucket: {"choice", "ms", "current"}}, the
    cached choices for this GPU; ``current`` False: measured under other versions, so
    measured again on next use).
    """
    has_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if has_gpu else "cpu")
    info: dict[str, dict[str, object]] = {
        "torch": {"available": True, "reason": f"torch {torch.__version__}"},
    }
    for name in ("triton", "cuda"):
        reason = _unavailable(name, device)
        if reason is None:
            if name == "triton":
                import triton

                where = "GPU" if has_gpu else "CPU via TRITON_INTERPRET=1"
                reason = f"triton {triton.__version__} ({where})"
            else:
                reason = f"l2rec_kernels._C loaded ({torch.cuda.get_device_name()})"
            info[name] = {"available": True, "reason": reason}
        else:
            info[name] = {"available": False, "reason": reason}
    info["device"] = {
        "available": has_gpu,
        "reason": torch.cuda.get_device_name() if has_gpu else "no CUDA GPU visible",
    }
    info["autotune"] = _autotune_info(has_gpu)
    return info


def _autotune_info(has_gpu: bool) -> dict[str, object]:
    from . import _autotune  # (it imports this module)

    if not has_gpu:
        return {"available": False, "path": None, "choices": {},
                "reason": "auto is measured for CUDA tensors only; CPU tensors take the torch path"}
    cached = _autotune.cached_choices("cuda", torch.cuda.current_device())
    count = f"{len(cached['choices'])} cached choice(s) in {cached['path']}"
    if _autotune.measuring_enabled():
        reason = f"auto times each op's paths on the first call per shape bucket; {count}"
    else:
        reason = (f"{settings.AUTOTUNE}=0: nothing is measured; auto takes the cached choice, "
                  f"else cuda > triton > torch; {count}")
    return {"available": _autotune.measuring_enabled(), "reason": reason, **cached}
