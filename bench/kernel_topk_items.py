"""The ``topk_items`` section of bench/latency.py (a library: no command line of its own).

Times, side by side in interleaved rounds (bench/_timing.py), the k best of N catalogue
items for B queries (scores = q Eᵀ):

* ``mm_topk``              ``torch.topk(torch.mm(q, E.T), k)``: the reference; materialises
                           the [B, N] scores;
* ``mm_only``              ``torch.mm(q, E.T)`` alone: the floor (the score GEMM any method pays);
* ``topk_items[torch]``    ``topk_items(..., backend="torch")``: chunks of the catalogue with a
                           running top-k, never more than [B, chunk] scores at once;
* ``topk_items[triton]``   ``backend="triton"`` (CUDA only: the CPU interpreter is for tests).

Peak memory (``peak MB``) is measured: on the CPU the process's resident high-water mark
during one call minus the resident size before it; on CUDA the allocator's peak over what
was allocated. Queries rotate between calls; the catalogue (N·d values, far beyond any
cache at full size) is shared by every case with the same N and d.

Sizes (``AXES``; ``default_sizes``): every combination of items (N), dim (d), k and batch
(B); ``--set topk_items.AXIS=V1,V2`` replaces an axis' values, e.g.

    python bench/latency.py --sections topk_items --set topk_items.k=10,100,1000
    python bench/latency.py --set topk_items.items=5000000 --set topk_items.batch=1,4096

A case whose [B, N] score matrix passes 1 GB gets 3 timing rounds instead of 10
(``--rounds`` sets both).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from _report import Axis, Case, RunConfig, SizeError, all_sizes, dtype_name, grid, stats_rows
from _timing import Rotation, interleaved

from l2rec_kernels._backend import triton_unavailable_reason
from l2rec_kernels.ops.topk_items import TRITON_MAX_K, topk_items

# The sizes ``latency.py --set topk_items.AXIS=...`` chooses.
AXES = {
    "items": Axis("catalogue items (N)"),
    "dim": Axis("embedding width (d)"),
    "k": Axis("items returned per query"),
    "batch": Axis("queries per call (B)"),
}
LARGE_SCORES = 2**28  # B·N scores (1 GB in fp32) from which a case gets fewer rounds


def make_inputs(batch: int, num_items: int = 1_000_000, dim: int = 128, device="cpu",
                dtype=torch.float32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(query [B, d], item_emb [N, d]), random normal, on ``device``."""
    g = torch.Generator().manual_seed(seed)
    item_emb = torch.randn(num_items, dim, generator=g).to(device=device, dtype=dtype)
    query = torch.randn(batch, dim, generator=g).to(device=device, dtype=dtype)
    return query, item_emb


def providers(queries: list[torch.Tensor], item_emb: torch.Tensor, k: int,
              backends: tuple[str, ...] = ("torch",)) -> dict[str, Callable[[], object]]:
    """Name -> zero-argument callable, each rotating through ``queries``."""
    fns: dict[str, Callable[[torch.Tensor], object]] = {
        "mm_topk": lambda q: torch.topk(torch.mm(q, item_emb.T), k, dim=1),
        "mm_only": lambda q: torch.mm(q, item_emb.T),
    }
    for b in backends:
        fns[f"topk_items[{b}]"] = lambda q, b=b: topk_items(q, item_emb, k, backend=b)
    out = {}
    for name, fn in fns.items():
        nxt = Rotation(queries)
        out[name] = lambda fn=fn, nxt=nxt: fn(nxt())
    return out


def default_sizes(cfg: RunConfig) -> dict[str, list]:
    return {"items": [100_000 if cfg.quick else 1_000_000], "dim": [128], "k": [10],
            "batch": [1, 64] if cfg.quick else [1, 64, 1024]}


def catalogue_cases(cfg: RunConfig, num_items: int, dim: int, ks: list[int], batches: list[int],
                    emit, rounds: tuple[int, int] = (10, 3)) -> list[Case]:
    """One case per (k, batch) over one shared catalogue, built by the first case and freed
    after the last; ``rounds``: (timing rounds, rounds past LARGE_SCORES)."""
    backends = ("torch",) + (("triton",) if cfg.cuda and triton_unavailable_reason(cfg.device) is None
                             else ())
    todo = [(k, b) for k in ks for b in batches]
    items: list[torch.Tensor] = []

    def run(k: int, batch: int) -> None:
        if not items:
            items.append(make_inputs(0, num_items, dim, cfg.device, cfg.dtype)[1])
        queries = [make_inputs(batch, 1, dim, cfg.device, cfg.dtype, seed=batch + s)[0] for s in range(3)]
        # the Triton kernel keeps k <= TRITON_MAX_K; above it only the torch backend runs
        provs = providers(queries, items[0], k, backends if k <= TRITON_MAX_K else ("torch",))
        large = batch * num_items >= LARGE_SCORES
        stats = interleaved(provs, cfg.device, **cfg.timing(rounds[1] if large else rounds[0], 1))
        for row in stats_rows("topk_items", f"N={num_items} d={dim} k={k} B={batch}", stats,
                              x=("batch", batch),
                              config={"num_items": num_items, "dim": dim, "k": k, "batch": batch},
                              reference="mm_topk", floor="mm_only", dtype=cfg.dtype,
                              device=cfg.device, providers=provs if cfg.memory else None):
            emit(row)
        if (k, batch) == todo[-1]:
            items.clear()  # free the catalogue for the next one

    return [Case(f"topk N={num_items} d={dim} k={k} B={b} {dtype_name(cfg.dtype)}",
                 lambda k=k, b=b: run(k, b)) for k, b in todo]


def cases(cfg: RunConfig, emit, sizes: dict[str, list] | None = None) -> list[Case]:
    """Every combination of the sizes, one catalogue (items, dim) at a time."""
    s = all_sizes(default_sizes(cfg), sizes)
    out: list[Case] = []
    for point in grid({"items": s["items"], "dim": s["dim"]}):
        too_big = [k for k in s["k"] if k > point["items"]]
        if too_big:
            raise SizeError(f"topk_items: k={too_big[0]} is more than items={point['items']} "
                            f"(topk_items.k takes 1..items)")
        out += catalogue_cases(cfg, point["items"], point["dim"], s["k"], s["batch"], emit)
    return out
