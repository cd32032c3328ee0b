"""Running under ``torchrun``: the process-group backend, and ending the group cleanly."""

from __future__ import annotations

import os


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
