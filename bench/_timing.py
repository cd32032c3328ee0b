"""Timing and memory measurement shared by the benchmarks.

* Providers are timed in **interleaved rounds** (A, B, C, A, B, C, ...) so the machine's
  drift (frequency, other load) affects every ratio equally; each reported number is the
  median (with p20/p80) over rounds, after warm-up.
* On CUDA each sample is timed with CUDA events; on the CPU with ``perf_counter``. Ops
  that take microseconds are timed ``number`` calls per sample (``calls_per_sample``
  picks it), so the timer's own cost does not dominate.
* ``flush_cache``: on CUDA a 256 MiB buffer is zeroed before every sample (as
  ``triton.testing.do_bench`` does), so no provider finds its inputs in L2. On the CPU,
  callers rotate between several input sets (``Rotation``) for the same reason.
* Peak memory: on CUDA the allocator's peak; on the CPU the process's resident high-water
  mark (VmHWM), reset before each measurement through ``/proc/self/clear_refs``, minus the
  resident size before the call: the extra memory the call needed at its peak. The heap
  is trimmed first (``malloc_trim``), since glibc would otherwise serve the call from freed
  pages that are still resident and the peak would not show.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable

import torch

from l2rec_kernels._timing import ms_per_call


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Rotation:
    """Calling it returns the next of ``items``, round robin: inputs rotate between calls."""

    def __init__(self, items: list) -> None:
        if not items:
            raise ValueError("Rotation needs at least one item")
        self.items, self.i = list(items), -1

    def __call__(self):
        self.i = (self.i + 1) % len(self.items)
        return self.items[self.i]


_FLUSH: dict[torch.device, torch.Tensor] = {}


def _flush_l2(device: torch.device) -> None:
    buf = _FLUSH.get(device)
    if buf is None:
        buf = _FLUSH[device] = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device=device)
    buf.zero_()


def _time_once(fn: Callable[[], object], device: torch.device, number: int = 1,
               flush_cache: bool = False) -> float:
    """Milliseconds per call, over ``number`` back-to-back calls (``ms_per_call``)."""
    return ms_per_call(fn, device, number, before=(lambda: _flush_l2(device)) if flush_cache else None)


def calls_per_sample(fn: Callable[[], object], device: torch.device, target_ms: float = 2.0,
                     cap: int = 1000) -> int:
    """How many calls make one sample last about ``target_ms`` (1 for anything slower)."""
    with torch.inference_mode():
        fn()
        _sync(device)
        one = _time_once(fn, device, 3) or 1e-6
    return max(1, min(cap, int(target_ms / one)))


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def interleaved(providers: dict[str, Callable[[], object]], device: torch.device, *,
                rounds: int = 10, warmup: int = 2, min_time_s: float = 0.0, number: int = 1,
                flush_cache: bool = False) -> dict[str, dict]:
    """Time every provider in interleaved rounds -> {name: {median, p20, p80, samples}} (ms).

    Each round takes one sample of each provider (``number`` calls, ms per call);
    ``rounds`` rounds at least, more until ``min_time_s`` has passed.
    """
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in providers.values():
                fn()
        _sync(device)
        samples: dict[str, list[float]] = {name: [] for name in providers}
        start = time.perf_counter()
        done = 0
        while done < rounds or time.perf_counter() - start < min_time_s:
            for name, fn in providers.items():
                samples[name].append(_time_once(fn, device, number, flush_cache))
            done += 1
    return {name: {"median": statistics.median(s), "p20": percentile(s, 0.2),
                   "p80": percentile(s, 0.8), "samples": s} for name, s in samples.items()}


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Extra memory (MiB) one call of ``fn`` needs at its peak, beyond what was resident."""
    gc.collect()
    with torch.inference_mode():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            fn()
            torch.cuda.synchronize(device)
            return (torch.cuda.max_memory_allocated(device) - base) / 2**20
        _malloc_trim()  # hand freed heap back, or reused resident pages would hide the peak
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
        except OSError:
            return float("nan")
        base = _rss_kib("VmRSS")
        fn()
        return (_rss_kib("VmHWM") - base) / 1024


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"CPU: {line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
