"""The runtime environment variables: every one the package reads, read here.

* ``L2REC_THREADS``: CPU threads torch uses in the commands, the benchmarks and the tests
  (a positive integer; default torch's own, 1 in the tests).
* ``L2REC_CACHE_DIR``: the folder of the ``backend="auto"`` cache (its ``autotune/``;
  default ``$XDG_CACHE_HOME/l2rec_kernels``, else ``~/.cache/l2rec_kernels``).
* ``L2REC_AUTOTUNE``: ``0`` (or false, off, no) never measures; cached choices still apply.

Build-time variables (``setup.py``: ``L2REC_FORCE_CUDA_BUILD``, ``L2REC_SKIP_CUDA_BUILD``)
and the test suite's own (``L2REC_CUDA_EXT_PATH``, ``L2REC_TESTS_TERM_AS_INTERRUPT``,
``L2REC_BATCH_TEST``) are not runtime settings; docs/settings.md lists all eight.
"""

from __future__ import annotations

import os

THREADS = "L2REC_THREADS"
CACHE_DIR = "L2REC_CACHE_DIR"
AUTOTUNE = "L2REC_AUTOTUNE"


def threads() -> int | None:
    """``L2REC_THREADS`` as an int (None when unset); ValueError naming it when it is not a
    positive integer."""
    value = os.environ.get(THREADS)
    if value is None:
        return None
    if not value.strip().isdigit() or int(value) < 1:
        raise ValueError(f"{THREADS} must be a positive integer, got {value!r}")
    return int(value)


def autotune_measuring() -> bool:
    """False when ``L2REC_AUTOTUNE`` is "0", "false", "off" or "no"."""
    return os.environ.get(AUTOTUNE, "1").strip().lower() not in ("0", "false", "off", "no")


def cache_dir() -> str:
    """``L2REC_CACHE_DIR``, else ``$XDG_CACHE_HOME/l2rec_kernels``, else
    ``~/.cache/l2rec_kernels`` (absolute)."""
    value = os.environ.get(CACHE_DIR)
    if value:
        return os.path.abspath(os.path.expanduser(value))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "l2rec_kernels")
