"""Helpers the ``train`` and ``evaluate`` entry points share."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def ddp_backend() -> str | None:
    """The process-group backend under ``torchrun`` (nccl with CUDA, gloo on the CPU);
    None in a single process (asking for one there would make accelerate expect a group)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def end_process_group() -> None:
    """Wait for every process, then tear the process group down (under ``torchrun``), so no
    process exits while another still talks to it: a gloo group left to the interpreter's
    exit was seen to abort a rank ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def run(main: Callable[[list[str] | None], int], prog: str, argv: list[str] | None = None) -> int:
    """``main(argv)``, with a bad input (ValueError, FileNotFoundError) reported as one
    ``prog: error: ...`` line and exit status 2, like argparse's own errors. L2REC_THREADS
    (when set) is the number of CPU threads torch uses, as in the benchmarks."""
    threads = os.environ.get("L2REC_THREADS")
    if threads:
        if not threads.isdigit() or int(threads) < 1:
            print(f"{prog}: error: L2REC_THREADS must be a positive integer, got {threads!r}",
                  file=sys.stderr)
            return 2
        import torch

        torch.set_num_threads(int(threads))
    try:
        return main(argv)
    except (ValueError, FileNotFoundError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
