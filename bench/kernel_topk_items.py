"""Catalogue top-k timing: ``python bench/kernel_topk_items.py [--threads 2] [--batches 1,64,1024]``.

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
cache at full size) is shared.

``python bench/latency.py --sections topk_items`` runs the sweep; this script takes its own sizes.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable

import torch
from _report import DTYPES, Case, RunConfig, dtype_name, format_table, stats_rows
from _timing import Rotation, interleaved

from l2rec_kernels._backend import triton_unavailable_reason
from l2rec_kernels.ops.topk_items import topk_items


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


def sizes(cfg: RunConfig) -> tuple[int, int, list[int]]:
    """(N, d, batches) of the section."""
    return (100_000, 128, [1, 64]) if cfg.quick else (1_000_000, 128, [1, 64, 1024])


def run_batches(cfg: RunConfig, num_items: int, dim: int, k: int, batches: list[int], emit,
                rounds: tuple[int, int] = (10, 3)) -> list[Case]:
    """One case per batch size over one shared catalogue (built on the first case)."""
    backends = ("torch",) + (("triton",) if cfg.cuda and triton_unavailable_reason(cfg.device) is None
                             else ())
    items: list[torch.Tensor] = []

    def run(batch: int) -> None:
        if not items:
            items.append(make_inputs(0, num_items, dim, cfg.device, cfg.dtype)[1])
        queries = [make_inputs(batch, 1, dim, cfg.device, cfg.dtype, seed=batch + s)[0] for s in range(3)]
        provs = providers(queries, items[0], k, backends)
        large = batch * num_items >= 2**28  # a >1 GB score matrix: few repeats
        stats = interleaved(provs, cfg.device, **cfg.timing(rounds[1] if large else rounds[0], 1))
        for row in stats_rows("topk_items", f"N={num_items} d={dim} k={k} B={batch}", stats,
                              x=("batch", batch),
                              config={"num_items": num_items, "dim": dim, "k": k, "batch": batch},
                              reference="mm_topk", floor="mm_only", dtype=cfg.dtype,
                              device=cfg.device, providers=provs if cfg.memory else None):
            emit(row)
        if batch == batches[-1]:
            items.clear()  # free the catalogue for the next section

    return [Case(f"topk N={num_items} B={b} {dtype_name(cfg.dtype)}", lambda b=b: run(b))
            for b in batches]


def cases(cfg: RunConfig, emit) -> list[Case]:
    num_items, dim, batches = sizes(cfg)
    return run_batches(cfg, num_items, dim, 10, batches, emit)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,64,1024")
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("-k", "--k", type=int, default=10)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    ap.add_argument("--rounds", type=int, default=10, help="rounds for small batches")
    ap.add_argument("--rounds-large", type=int, default=3,
                    help="rounds when the [B, N] score matrix passes 1 GB")
    args = ap.parse_args(argv)
    cfg = RunConfig(torch.device(args.device), DTYPES[args.dtype])
    if cfg.device.type == "cpu":
        torch.set_num_threads(args.threads)
    rows: list[dict] = []
    for case in run_batches(cfg, args.items, args.dim, args.k, [int(b) for b in args.batches.split(",")],
                            rows.append, (args.rounds, args.rounds_large)):
        case.run()
    print("command: " + shlex.join([sys.executable, *sys.argv]))
    print(format_table(rows))


if __name__ == "__main__":
    main()
