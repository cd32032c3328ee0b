"""Timing one call: the one timer the autotuner and the benchmarks use."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def ms_per_call(fn: Callable[[], object], device: torch.device, number: int = 1,
                before: Callable[[], object] | None = None) -> float:
    """Milliseconds per call over ``number`` back-to-back calls of ``fn``: on a CUDA device
    timed with CUDA events on the current stream (``before``, e.g. an L2 flush, runs on the
    stream first, outside the timed span), elsewhere with the host clock (``before`` unused:
    a host-side flush would be timed with the calls' setup, not skipped)."""
    if device.type == "cuda":
        if before is not None:
            before()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(number):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / number
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) * 1e3 / number
