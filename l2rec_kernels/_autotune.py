"""The measured choice behind ``backend="auto"`` for CUDA tensors.

On CPU tensors ``auto`` is the torch path, unmeasured. On CUDA tensors the first eager call
of an op in a (device name, dtype, op, shape bucket) times each path that can run it
(``triton``, ``torch``, and ``cuda`` where the op has one) on that call's own inputs and keeps
the fastest, as Triton's autotuner does for its configs:

* every candidate is warmed up first (Triton's compile, the extension's load stay out of
  the numbers), then timed in interleaved rounds with CUDA events; the median wins. The
  outputs are discarded: the call then runs the chosen path, so a measurement never
  changes a result beyond the chosen path's own tolerance;
* the choice is kept in memory and in a JSON file per device,
  ``$L2REC_CACHE_DIR/autotune/<device-name-slug>.json`` (default cache folder
  ``$XDG_CACHE_HOME/l2rec_kernels``, else ``~/.cache/l2rec_kernels``), so later processes
  reuse it; ``python -m l2rec_kernels.tune`` fills it ahead of time for a model's shapes;
* nothing is measured while ``torch.compile`` traces, while a CUDA graph is being
  captured, or under ``torch.cuda.set_sync_debug_mode`` (a measurement synchronises): the
  cached choice is used there, else the default rule (``_dispatch.select``: cuda >
  triton > torch). Only a graph compiled with ``dynamic=False`` looks its buckets up in the
  cache; one whose sizes may be symbolic (the default, and ``dynamic=True``) takes the
  default rule, since a bucket computed from a symbolic size would specialise the graph on
  it. ``L2REC_AUTOTUNE=0`` turns measuring off everywhere (cached choices still apply).

Shape buckets: each op names its sizes; the row-like one (rows of ``x``, sequences, queries,
users, prompt tokens, exclusions per query) is rounded up to a power of two, every other size
(d_in, d_out, V, E, r, shared experts, catalogue items, k, ...) is kept exact. Entries carry
the package, torch and triton versions they were measured under; an entry from other
versions is measured again.

The file is shared by processes: a writer takes an exclusive ``fcntl.flock`` on a lock file
beside it, re-reads the file, merges its new entries in and replaces the file atomically
(``os.replace`` of a temporary file), so readers never see half a file and concurrent
writers lose nothing. A file that cannot be parsed is ignored with a warning (and replaced
by the next write).

Test hooks: ``set_timer(fn)`` replaces the CUDA-event timer (``fn(thunks, device) ->
{name: ms}``), ``MEASURED_DEVICE_TYPES`` the device types that are measured, and
``clear_memory_cache()`` forgets what was read.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import importlib.metadata
import json
import os
import re
import statistics
import threading
import warnings
from collections.abc import Callable, Mapping

import torch

from . import settings
from ._atomic import atomic_write
from ._compat import compile_assumes_static_shapes, mark_constant_for_dynamo
from ._dtypes import dtype_name
from ._timing import ms_per_call
from ._validation import being_traced
from ._version import __version__

FORMAT_VERSION = 1
# Warm-up calls per candidate, then timed rounds (one sample per candidate per round, each
# sample CALLS back-to-back calls): a few milliseconds per candidate for the model's shapes.
WARMUP = 2
ROUNDS = 7
CALLS = 3

# Device types whose tensors are measured (a test hook: CPU tests add "cpu").
MEASURED_DEVICE_TYPES: tuple[str, ...] = ("cuda",)

Timer = Callable[[Mapping[str, Callable[[], object]], torch.device], Mapping[str, float]]

_lock = threading.RLock()
_memory: dict[str, dict[str, dict]] = {}  # device name -> key -> entry (what the file held + ours)
_timer: Timer | None = None
_warned: set[str] = set()
_tuning = threading.local()  # this thread's ``tuning()`` state: force, log


# ----------------------------------------------------------------------------- hooks
def set_timer(fn: Timer | None) -> Timer | None:
    """Replace the timer (None: the CUDA-event timer); returns the previous one. ``fn(thunks,
    device)`` gets ``{candidate: zero-argument call}`` and returns ``{candidate: ms}``."""
    global _timer
    with _lock:
        previous, _timer = _timer, fn
    return previous


@contextlib.contextmanager
def tuning(force: bool = True, log: list | None = None):
    """Within it (this thread): ``auto`` measures every bucket it meets, even a cached one
    (``force``), and appends each measurement's (key, entry) to ``log``. What
    ``python -m l2rec_kernels.tune`` runs the ops under."""
    saved = getattr(_tuning, "force", False), getattr(_tuning, "log", None)
    _tuning.force, _tuning.log = force, log
    try:
        yield log
    finally:
        _tuning.force, _tuning.log = saved


def clear_memory_cache() -> None:
    """Forget every choice held in memory (the files are read again on the next lookup)."""
    with _lock:
        _memory.clear()


def measuring_enabled() -> bool:
    """False when ``L2REC_AUTOTUNE`` is "0" (or "false", "off", "no")."""
    return settings.autotune_measuring()


def measures(device_type: str) -> bool:
    """Whether ``auto`` is a measured choice for tensors of this device type."""
    return device_type in MEASURED_DEVICE_TYPES


# ----------------------------------------------------------------------------- files
def cache_root() -> str:
    """``$L2REC_CACHE_DIR``, else ``$XDG_CACHE_HOME/l2rec_kernels``, else ``~/.cache/l2rec_kernels``."""
    return settings.cache_dir()


def slug(device_name: str) -> str:
    """A file-name-safe form of a device name: 'NVIDIA H200' -> 'nvidia-h200'."""
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") or "device"


def cache_path(device_name: str) -> str:
    return os.path.join(cache_root(), "autotune", f"{slug(device_name)}.json")


@functools.lru_cache(maxsize=16)
def device_name(device_type: str, index: int | None) -> str:
    """The name a device's choices are filed under (the GPU's marketing name for CUDA)."""
    if device_type == "cuda":
        return torch.cuda.get_device_name(torch.device("cuda", index) if index is not None else None)
    return device_type


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str | None]:
    """What a measurement depends on besides the device: the kernels and their compilers."""
    try:
        triton_version = importlib.metadata.version("triton")  # (importing triton is not free)
    except importlib.metadata.PackageNotFoundError:
        triton_version = None
    return {"l2rec_kernels": __version__, "torch": torch.__version__, "triton": triton_version}


def _warn_once(path: str, message: str) -> None:
    if path not in _warned:
        _warned.add(path)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _read_file(path: str) -> dict[str, dict]:
    """The entries of a cache file; {} when it is missing, and (with a warning) when it
    cannot be read or does not hold this format."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        _warn_once(path, f"ignoring the autotune cache {path}: it cannot be read ({exc}); "
                         "it is replaced on the next measurement")
        return {}
    entries = data.get("entries") if isinstance(data, dict) else None
    if (not isinstance(data, dict) or data.get("format") != FORMAT_VERSION
            or not isinstance(entries, dict)):
        _warn_once(path, f"ignoring the autotune cache {path}: not an l2rec_kernels autotune file "
                         f"of format {FORMAT_VERSION}; it is replaced on the next measurement")
        return {}
    return {k: v for k, v in entries.items()
            if isinstance(v, dict) and isinstance(v.get("choice"), str)}


@contextlib.contextmanager
def _file_lock(path: str):
    """An exclusive lock on ``path + '.lock'`` (fcntl; without fcntl, no lock: the atomic
    replace still keeps the file whole, only a concurrent entry may be lost)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    with open(path + ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_entries(name: str, new: dict[str, dict]) -> None:
    """Merge ``new`` into the device's file (under the lock: re-read, merge, atomic replace)."""
    path = cache_path(name)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with _file_lock(path):
            entries = _read_file(path)
            entries.update(new)
            with atomic_write(path, encoding="utf-8") as f:
                json.dump({"format": FORMAT_VERSION, "device": name, "entries": entries}, f,
                          indent=1, sort_keys=True)
                f.write("\n")
    except OSError as exc:
        _warn_once(path, f"cannot write the autotune cache {path} ({exc}); choices stay in memory")
        return
    with _lock:  # what other processes wrote meanwhile is ours now too
        _memory.setdefault(name, {}).update(entries)


def _entries(name: str) -> dict[str, dict]:
    with _lock:
        held = _memory.get(name)
        if held is None:
            held = _memory[name] = _read_file(cache_path(name))
        return held


# ----------------------------------------------------------------------------- keys
def row_bucket(n: int) -> int:
    """A row-like size rounded up to a power of two (0 stays 0)."""
    return 0 if n <= 0 else 1 << (n - 1).bit_length()


def _current(entry: dict) -> bool:
    return entry.get("versions") == versions()


@mark_constant_for_dynamo
def cached_choice(device_type: str, index: int | None, key: str, candidates: tuple[str, ...],
                  default: str) -> str:
    """The cached choice for ``key`` when it is one of ``candidates``, else ``default``. Plain
    constant arguments: a compiled graph calls it once, while tracing."""
    held = _valid_choice(_entries(device_name(device_type, index)).get(key), candidates)
    return default if held is None else held


@mark_constant_for_dynamo
def static_shapes_compile() -> bool:
    """While torch.compile traces: whether every size is a plain int (``dynamic=False``, which
    turns automatic dynamic shapes off). Read once, at trace time."""
    return compile_assumes_static_shapes()


def _may_measure(device: torch.device) -> bool:
    if not measuring_enabled():  # (choose has returned already while being traced)
        return False
    if device.type == "cuda":
        # A measurement synchronises, and cannot run inside a graph capture.
        return not torch.cuda.is_current_stream_capturing() and torch.cuda.get_sync_debug_mode() == 0
    return True


# ----------------------------------------------------------------------------- choosing
def choose(op: str, device: torch.device, dtype: torch.dtype, rows: tuple[tuple[str, int], ...],
           exact: tuple[tuple[str, int], ...], candidates: tuple[str, ...], default: str,
           thunks: Callable[[], Mapping[str, Callable[[], object]]], *, force: bool = False) -> str:
    """The backend ``auto`` runs ``op`` with on these inputs.

    The bucket: ``rows`` ((name, size), ...) are the row-like sizes, rounded up to a power of
    two here, the first being the batch (0: nothing is timed); ``exact`` the sizes kept as
    they are. ``candidates``: the backends that can run these inputs, the default first
    (ties go to it); ``thunks()``: {candidate: zero-argument call on this call's inputs},
    built only when a measurement runs. ``force`` measures even when a choice is cached
    (``python -m l2rec_kernels.tune``).
    """
    if len(candidates) < 2:
        return default
    if being_traced():
        # Only a graph compiled with static shapes (dynamic=False) may look its bucket up:
        # where a size can be symbolic, computing the bucket would specialise the graph on
        # it (a recompile per size), so such graphs take the default.
        if not static_shapes_compile():
            return default
        key = bucket_key(op, dtype, rows, exact)
        return cached_choice(device.type, device.index, key, candidates, default)
    if rows and rows[0][1] == 0:  # an empty batch: nothing worth timing
        return default
    force = force or getattr(_tuning, "force", False)
    key = bucket_key(op, dtype, rows, exact)
    name = device_name(device.type, device.index)
    if not force:
        held = _valid_choice(_entries(name).get(key), candidates)
        if held is not None:
            return held
    if not _may_measure(device):
        return default
    with _lock:  # one measurement at a time: threads timing at once would disturb each other
        held = None if force else _valid_choice(_entries(name).get(key), candidates)
        if held is not None:
            return held
        calls = dict(thunks())
        timer = _timer or _event_timer
        with torch.no_grad():
            times = {c: float(t) for c, t in timer({c: calls[c] for c in candidates}, device).items()}
        missing = [c for c in candidates if c not in times]
        if missing:
            raise RuntimeError(f"the autotune timer returned no time for {missing} ({op})")
        choice = min(candidates, key=lambda c: times[c])  # ties: the earlier (default-first) order
        entry = {"choice": choice, "ms": {c: round(times[c], 6) for c in candidates},
                 "versions": versions(), "date": dt.datetime.now().isoformat(timespec="seconds")}
        _entries(name)[key] = entry
    _write_entries(name, {key: entry})
    log = getattr(_tuning, "log", None)
    if log is not None:
        log.append((key, entry))
    return choice


def bucket_key(op: str, dtype: torch.dtype, rows: tuple[tuple[str, int], ...],
               exact: tuple[tuple[str, int], ...]) -> str:
    """'dpmoe_linear bfloat16 rows=1024 d_in=1024 ...': the op, the dtype, then the bucket."""
    parts = [f"{k}={row_bucket(v)}" for k, v in rows] + [f"{k}={v}" for k, v in exact]
    return " ".join([op, dtype_name(dtype), *parts])


def _valid_choice(entry: dict | None, candidates: tuple[str, ...]) -> str | None:
    if entry is not None and _current(entry) and entry["choice"] in candidates:
        return entry["choice"]
    return None


def _event_timer(thunks: Mapping[str, Callable[[], object]], device: torch.device) -> dict[str, float]:
    """Median ms per call of each candidate: WARMUP calls each, then ROUNDS interleaved rounds
    of CALLS calls each, timed with CUDA events on the current stream (host clock elsewhere)."""
    for fn in thunks.values():
        for _ in range(WARMUP):
            fn()
    samples: dict[str, list[float]] = {c: [] for c in thunks}
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    for _ in range(ROUNDS):
        for c, fn in thunks.items():
            samples[c].append(ms_per_call(fn, device, CALLS))
    return {c: statistics.median(s) for c, s in samples.items()}


# ----------------------------------------------------------------------------- reporting
def cached_choices(device_type: str = "cuda", index: int | None = None) -> dict[str, object]:
    """What ``backend_info()`` shows: the cache file and {key: choice (ms per candidate)}."""
    name = device_name(device_type, index)
    entries = _entries(name)
    return {"path": cache_path(name),
            "choices": {k: {"choice": e["choice"], "ms": e.get("ms"), "current": _current(e)}
                        for k, e in sorted(entries.items())}}
