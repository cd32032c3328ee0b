"""Input checks shared by the ops and models.

Every check raises ``TypeError`` (wrong type or dtype) or ``ValueError`` (wrong shape,
device or range) naming the argument, what was expected and what was given. Checks that
need a value from the tensor (ranges, monotonicity) cost a device->host sync; callers on a
GPU hot path use only the metadata checks (shape/dtype/device), which are free.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._compat import is_fake_tensor

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def check_tensor(name: str, t, *, ndim: int | None = None,
                 dtypes: Sequence[torch.dtype] | None = None,
                 device: torch.device | None = None) -> torch.Tensor:
    """Type, rank, dtype and device of a tensor argument."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {str(t.dtype).replace('torch.', '')}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device}, got {t.device}")
    return t


def check_float(name: str, t, *, ndim: int | None = None, device=None) -> torch.Tensor:
    return check_tensor(name, t, ndim=ndim, dtypes=FLOAT_DTYPES, device=device)


def check_int(name: str, t, *, ndim: int | None = None, device=None) -> torch.Tensor:
    if isinstance(t, torch.Tensor) and (t.dtype.is_floating_point or t.dtype == torch.bool
                                         or t.is_complex()):
        raise TypeError(f"{name} must be an integer tensor, got dtype {t.dtype}")
    return check_tensor(name, t, ndim=ndim, dtypes=INT_DTYPES, device=device)


def check_shape(name: str, t: torch.Tensor, expected: Sequence[int | None]) -> None:
    """Exact shape, with None as a wildcard."""
    ok = t.dim() == len(expected) and all(e is None or e == s for e, s in zip(expected, t.shape))
    if not ok:
        want = "[" + ", ".join("*" if e is None else str(e) for e in expected) + "]"
        raise ValueError(f"{name} must have shape {want}, got {list(t.shape)}")


def being_traced(*tensors) -> bool:
    """Whether this thread's code is being traced rather than run: Dynamo traces it
    (torch.compile, export), or a tensor among ``tensors`` (None allowed) is a tracer's
    fake tensor (make_fx, non-strict export). Unlike ``torch.compiler.is_compiling()``, a
    process-wide flag that is True in every thread while any thread compiles, this answers
    for the calling thread: a server's eager forwards keep their checks and fast paths while
    another thread compiles."""
    if torch.compiler.is_dynamo_compiling():
        return True
    return any(t is not None and is_fake_tensor(t) for t in tensors)


def values_are_free(t: torch.Tensor) -> bool:
    """Whether reading ``t``'s values on the host is free: a CPU tensor in eager mode. On CUDA
    it would cost a device->host sync, under torch.compile a graph break; value checks and
    host-side planning run only where this is True."""
    return t.device.type == "cpu" and not being_traced(t)


def check_range(name: str, t: torch.Tensor, low: int, high: int) -> None:
    """All values in [low, high] (inclusive). Syncs with the device."""
    if t.numel() == 0:
        return
    lo, hi = int(t.min()), int(t.max())
    if lo < low or hi > high:
        raise ValueError(f"{name} values must be in [{low}, {high}], got min {lo} and max {hi}")


def check_finite(name: str, t: torch.Tensor) -> None:
    """No NaN/inf. Syncs with the device."""
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got NaN or inf values")


def check_exclude(name: str, exclude, *, rows: int, row_name: str, num_items: int,
                  device: torch.device) -> None:
    """An exclusion list: an integer [rows, X] tensor on ``device`` of item rows in
    [-1, num_items - 1] (-1 = padding); the range is checked where ``values_are_free``."""
    check_int(name, exclude, ndim=2, device=device)
    if exclude.shape[0] != rows:
        raise ValueError(f"{name} must have shape [B={rows}, X] (one row per {row_name}), "
                         f"got {list(exclude.shape)}")
    if values_are_free(exclude):
        check_range(name, exclude, -1, num_items - 1)
