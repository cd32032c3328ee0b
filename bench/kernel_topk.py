"""Catalogue top-k timing: ``python bench/kernel_topk.py [--threads 2] [--batches 1,64,1024]``.

Times, side by side in interleaved rounds (bench/_timing.py), the k best of N catalogue
items for B queries (scores = q Eᵀ):

* ``mm_topk``        ``torch.topk(torch.mm(q, E.T), k)``: materialises the [B, N] scores;
* ``torch_chunked``  ``topk_items(..., backend="torch")``: chunks of the catalogue with a
                     running top-k, never more than [B, chunk] scores at once;
* ``triton``         ``topk_items(..., backend="triton")`` (CUDA only: the CPU interpreter
                     is for tests, not timing).

Memory is reported two ways: ``peak_mb``, measured (CPU: the process's resident
high-water mark during one call minus the resident size before it; CUDA: the
allocator's peak over what was allocated), and ``largest_mb``, the bytes of the largest
intermediate the provider creates, computed from the shapes.

``make_inputs``, ``providers`` and ``largest_intermediate_bytes`` are reused by
bench/latency.py.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from _timing import device_name, interleaved, peak_memory_mb  # noqa: E402

from l2rec_kernels._backend import triton_unavailable_reason  # noqa: E402
from l2rec_kernels.ops.topk_items import default_chunk_items, topk_items  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def make_inputs(batch: int, num_items: int = 1_000_000, dim: int = 128, device="cpu",
                dtype=torch.float32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(query [B, d], item_emb [N, d]), random normal, on ``device``."""
    g = torch.Generator().manual_seed(seed)
    item_emb = torch.randn(num_items, dim, generator=g).to(device=device, dtype=dtype)
    query = torch.randn(batch, dim, generator=g).to(device=device, dtype=dtype)
    return query, item_emb


def providers(query: torch.Tensor, item_emb: torch.Tensor, k: int,
              backends: tuple[str, ...] = ("torch",)) -> dict[str, Callable[[], object]]:
    """Name -> zero-argument callable, for ``_timing.interleaved``."""
    out: dict[str, Callable[[], object]] = {
        "mm_topk": lambda: torch.topk(torch.mm(query, item_emb.T), k, dim=1),
    }
    if "torch" in backends:
        out["torch_chunked"] = lambda: topk_items(query, item_emb, k, backend="torch")
    if "triton" in backends:
        out["triton"] = lambda: topk_items(query, item_emb, k, backend="triton")
    return out


def largest_intermediate_bytes(name: str, batch: int, num_items: int, k: int,
                               dtype=torch.float32, dim: int = 128) -> int:
    """Bytes of the largest tensor a provider creates (from the shapes, not measured)."""
    if name == "mm_topk":
        return batch * num_items * dtype.itemsize  # the [B, N] score matrix
    if name == "torch_chunked":
        chunk = min(default_chunk_items(batch), num_items)
        # [B, chunk] fp32 scores, or for half inputs the chunk upcast to fp32 if larger
        upcast = 0 if dtype == torch.float32 else chunk * dim * 4
        return max(batch * chunk * 4, upcast)
    if name == "triton":
        from l2rec_kernels.ops._topk_triton import _blocks

        k_pad = _blocks(k, 1)[3]
        # the per-slice partial keys [B, n_slices·K] int64; n_slices <= ⌈N / BLOCK_N⌉
        return batch * max(1, num_items // max(k_pad, 128)) * k_pad * 8
    raise ValueError(name)


def run(batches, num_items: int, dim: int, k: int, device: torch.device, dtype,
        rounds_small: int, rounds_large: int) -> list[dict]:
    backends = ("torch",) + (("triton",) if device.type == "cuda"
                             and triton_unavailable_reason(device) is None else ())
    _, item_emb = make_inputs(0, num_items, dim, device, dtype)
    rows = []
    for batch in batches:
        query = make_inputs(batch, 1, dim, device, dtype, seed=batch + 1)[0]
        provs = providers(query, item_emb, k, backends)
        large = batch * num_items >= 2**28  # a >1 GB score matrix: few repeats
        stats = interleaved(provs, device, rounds=rounds_large if large else rounds_small,
                            warmup=1)
        ref = stats["mm_topk"]["median"]
        for name, s in stats.items():
            rows.append({"batch": batch, "provider": name, "median_ms": s["median"],
                         "p20_ms": s["p20"], "p80_ms": s["p80"],
                         "speedup_vs_mm_topk": ref / s["median"],
                         "peak_mb": peak_memory_mb(provs[name], device),
                         "largest_mb": largest_intermediate_bytes(name, batch, num_items, k,
                                                                  dtype, dim) / 2**20})
        del query, provs
    return rows


def format_table(rows: list[dict]) -> str:
    head = (f"{'B':>5} {'provider':<14} {'median ms':>10} {'p20':>9} {'p80':>9} "
            f"{'vs mm_topk':>10} {'peak MB':>9} {'largest MB':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['batch']:>5} {r['provider']:<14} {r['median_ms']:>10.1f} "
                     f"{r['p20_ms']:>9.1f} {r['p80_ms']:>9.1f} {r['speedup_vs_mm_topk']:>9.2f}x "
                     f"{r['peak_mb']:>9.1f} {r['largest_mb']:>10.1f}")
    return "\n".join(lines)


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
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    rows = run(batches, args.items, args.dim, args.k, device, DTYPES[args.dtype],
               args.rounds, args.rounds_large)
    print(f"catalogue top-k: N={args.items}, d={args.dim}, k={args.k}, {args.dtype}, "
          f"{device_name(device)}, torch {torch.__version__}")
    print("command: " + shlex.join([sys.executable, *sys.argv]))
    print("peak MB: measured " + ("allocator peak" if device.type == "cuda" else
                                  "resident high-water delta (VmHWM - VmRSS before the call)")
          + "; largest MB: the biggest intermediate, computed from the shapes")
    print(format_table(rows))


if __name__ == "__main__":
    main()
