"""The ``batch_metadata`` section of bench/latency.py (a library: no command line of its own).

Times ``l2rec_kernels.batch_metadata``, FusedL2Rec's per-forward bookkeeping from one
attention mask [B, T] (positions, last rows, packed offsets and views of the 2·B stacked
sequences), through each backend it has:

* ``batch_metadata[torch]``: the aten path (a fixed sequence of small ops, no host sync);
  the reference;
* ``batch_metadata[cuda]``: one launch of the compiled extension (CUDA, where it is built;
  at most ``CUDA_MAX_USERS`` users).

The op has no Triton path. Masks are ragged (every row's length drawn at random), padded on
the side ``padding`` names (``mixed``: half the rows each side), and rotate between calls.
These calls take microseconds, so each sample times many calls (``calls_per_sample``).

Sizes (``AXES``; ``default_sizes``): every combination of users (B), tokens (T), views and
padding; ``--set batch_metadata.AXIS=V1,V2`` replaces an axis' values, e.g.

    python bench/latency.py --sections batch_metadata --set batch_metadata.users=1,64,4096
"""

from __future__ import annotations

import dataclasses

import torch
from _report import Axis, Case, RunConfig, all_sizes, grid, stats_rows
from _timing import Rotation, calls_per_sample, interleaved

from l2rec_kernels import batch_metadata
from l2rec_kernels._backend import cuda_ext_unavailable_reason
from l2rec_kernels.ops.batch_metadata import CUDA_MAX_USERS

PADDING = ("left", "right", "mixed")


def padding_side(text: str) -> str:
    if text not in PADDING:
        raise ValueError(f"expected one of {', '.join(PADDING)}")
    return text


# The sizes ``latency.py --set batch_metadata.AXIS=...`` chooses (MetadataShape fields).
AXES = {
    "users": Axis("users per batch (B): rows of the mask"),
    "tokens": Axis("prompt tokens (T): columns of the mask"),
    "views": Axis("views stacked per user (FusedL2Rec: 2)"),
    "padding": Axis(f"which side prompts are padded on: {', '.join(PADDING)}", parse=padding_side),
}


@dataclasses.dataclass(frozen=True)
class MetadataShape:
    users: int
    tokens: int
    views: int = 2
    padding: str = "left"

    def label(self) -> str:
        return f"B={self.users} T={self.tokens} V={self.views} {self.padding}-padded"


def make_mask(users: int, tokens: int, padding: str, seed: int = 0,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """A ragged int64 0/1 mask: row lengths uniform in [1, T], padded on ``padding``."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, tokens + 1, (users,), generator=g)
    mask = torch.arange(tokens)[None, :] < lengths[:, None]                # right-padded
    left = torch.ones(users, dtype=torch.bool) if padding == "left" else (
        torch.arange(users) % 2 == 0 if padding == "mixed" else torch.zeros(users, dtype=torch.bool))
    mask = torch.where(left[:, None], mask.flip(-1), mask)
    return mask.long().to(device)


def backends(device: torch.device, users: int) -> list[str]:
    out = ["torch"]
    if device.type == "cuda" and cuda_ext_unavailable_reason(device) is None and users <= CUDA_MAX_USERS:
        out.append("cuda")
    return out


def default_sizes(cfg: RunConfig) -> dict[str, list]:
    if cfg.quick:
        return {"users": [16], "tokens": [96], "views": [2], "padding": ["left"]}
    if cfg.cuda:
        return {"users": [1, 64, 1024, 8192], "tokens": [256, 2048], "views": [2], "padding": ["left"]}
    return {"users": [1, 16, 256], "tokens": [96, 512], "views": [2], "padding": ["left"]}


def shapes(cfg: RunConfig, sizes: dict[str, list] | None = None) -> list[MetadataShape]:
    return [MetadataShape(**point) for point in grid(all_sizes(default_sizes(cfg), sizes))]


def run_case(cfg: RunConfig, shape: MetadataShape, emit) -> None:
    masks = [make_mask(shape.users, shape.tokens, shape.padding, seed=s, device=cfg.device)
             for s in range(4)]
    provs = {}
    for b in backends(cfg.device, shape.users):
        nxt = Rotation(masks)
        provs[f"batch_metadata[{b}]"] = lambda b=b, nxt=nxt: batch_metadata(nxt(), shape.views, backend=b)
    number = calls_per_sample(provs["batch_metadata[torch]"], cfg.device)
    stats = interleaved(provs, cfg.device, number=number,
                        **(cfg.timing(10, 2) if cfg.quick else cfg.timing(20, 3)))
    big = shape.users * shape.tokens >= 2**20
    for row in stats_rows("batch_metadata", shape.label(), stats, x=("users", shape.users),
                          config=dataclasses.asdict(shape), reference="batch_metadata[torch]",
                          dtype=torch.int64, device=cfg.device,
                          providers=provs if cfg.memory and big else None):
        emit(row)


def cases(cfg: RunConfig, emit, sizes: dict[str, list] | None = None) -> list[Case]:
    return [Case(f"batch_metadata {s.label()}", lambda s=s: run_case(cfg, s, emit))
            for s in shapes(cfg, sizes)]
