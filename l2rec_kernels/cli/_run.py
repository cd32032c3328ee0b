"""How every entry point runs its ``main``: errors as argparse's, and the thread count."""

from __future__ import annotations

import sys
from collections.abc import Callable

from .. import settings


def run(main: Callable[[list[str] | None], int], prog: str, argv: list[str] | None = None) -> int:
    """``main(argv)``, with a bad input (ValueError, FileNotFoundError) reported as one
    ``prog: error: ...`` line and exit status 2, like argparse's own errors. L2REC_THREADS
    (when set) is the number of CPU threads torch uses, as in the benchmarks."""
    try:
        threads = settings.threads()
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:
        return main(argv)
    except (ValueError, FileNotFoundError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
