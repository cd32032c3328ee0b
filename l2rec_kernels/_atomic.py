"""Writing a file atomically: the one way the package, the serving package and the
benchmarks write files that readers may open at any moment (the autotune cache, batch
scoring's output parts, benchmark CSVs).

The content goes to a temporary file in the same directory, which ``os.replace`` then
moves over the target: a reader, or a kill mid-write, sees the old file or the new one,
never half of one. On an error the temporary file is removed and the target left alone.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """``with atomic_write(path) as f: ...``: ``f`` is open on a temporary file (``mode``
    "w" or "wb", ``open_kwargs`` as for ``open``) that replaces ``path`` when the block ends
    without an exception. The directory is created if needed."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
