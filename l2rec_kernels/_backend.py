"""Which backends can run here, and why not the others.

Three implementations stand behind the ops:

* ``"torch"``  pure PyTorch; runs everywhere and is the CPU default.
* ``"triton"`` Triton kernels; CUDA tensors, or CPU tensors when triton runs its interpreter
  (``TRITON_INTERPRET=1`` set before the kernels are defined: that is how CI tests them).
* ``"cuda"``   the optional compiled extension ``l2rec_kernels._C`` (routing and batch
  metadata only); CUDA tensors, where the extension was built.

Which op has which backend, what each serves and how one is picked (explicitly, or
``"auto"``: torch for CPU tensors, measured for CUDA tensors) is ``_dispatch``'s job; this
module only answers whether a backend can run on a device (``unavailable_reason``) and
reports it all (``backend_info``). Nothing here runs at import time: the extension is
imported and CUDA is queried only when first asked.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util

import torch

from . import settings

BACKENDS = ("auto", "triton", "cuda", "torch")


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


@functools.lru_cache(maxsize=1)
def triton_interpreter() -> bool:
    """Whether triton runs kernels in its interpreter (``TRITON_INTERPRET=1`` when the kernels
    are defined): asked of triton itself, once per process, by defining a probe kernel. The
    one answer every module uses. Imports triton: call only once triton is known usable."""
    import triton
    from triton.runtime.jit import JITFunction

    @triton.jit
    def probe():
        pass

    return not isinstance(probe, JITFunction)


def triton_unavailable_reason(device: torch.device) -> str | None:
    """None when Triton kernels can run on tensors of ``device``, else why not."""
    err = _triton_import_error()
    if err is not None:
        return err
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if triton_interpreter():
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


def unavailable_reason(backend: str, device: torch.device) -> str | None:
    """None when ``backend`` ("torch", "triton" or "cuda") can run on tensors of ``device``,
    else why not."""
    if backend == "torch":
        return None
    if backend == "triton":
        return triton_unavailable_reason(device)
    if backend == "cuda":
        return cuda_ext_unavailable_reason(device)
    raise ValueError(f"backend must be one of ('triton', 'cuda', 'torch'), got {backend!r}")


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
        reason = unavailable_reason(name, device)
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
