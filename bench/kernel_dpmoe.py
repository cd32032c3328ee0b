"""DPMoE linear timing: ``python bench/kernel_dpmoe.py [--threads 2] [--rounds 30] [--device cpu]``.

Times, side by side in interleaved rounds (bench/_timing.py), one targeted linear of the
stacked dual-view batch (2 views x B sequences x T tokens):

* ``plain_linear``      ``F.linear(x, W, b)`` over all rows: the floor (no experts at all);
* ``torch``             ``dpmoe_linear(..., backend="torch")`` (on CPU: per-view runs);
* ``torch_concat``      the torch backend's sync-free concatenated path (CUDA, compile);
* ``triton``            ``dpmoe_linear(..., backend="triton")`` (CUDA only: the CPU interpreter
                        is for tests, not timing);
* ``reference_einsum``  the iLoRA formulation the reference model uses: per view, on that
                        view's rows, per-expert einsums, then the gate-weighted sum.

``make_inputs`` and ``providers`` are reused by bench/latency.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from _timing import device_name, interleaved, peak_memory_mb  # noqa: E402

from l2rec_kernels._backend import triton_unavailable_reason  # noqa: E402
from l2rec_kernels.ops.dpmoe_linear import dpmoe_linear, dpmoe_linear_torch  # noqa: E402


@dataclasses.dataclass(frozen=True)
class DpmoeShape:
    views: int = 2
    seqs_per_view: int = 16
    seq_len: int = 96
    d_in: int = 512
    d_out: int = 1376
    experts: int = 4
    rank: int = 8

    @property
    def rows(self) -> int:
        return self.views * self.seqs_per_view * self.seq_len

    def label(self) -> str:
        return (f"{self.views}v x {self.seqs_per_view}seq x {self.seq_len}tok (M={self.rows}), "
                f"{self.d_in}->{self.d_out}, E={self.experts}, r={self.rank}")


CPU_SHAPE = DpmoeShape()


def make_inputs(shape: DpmoeShape = CPU_SHAPE, device="cpu", dtype=torch.float32,
                seed: int = 0, alpha: float = 16.0) -> dict:
    """Keyword arguments of ``dpmoe_linear`` for the stacked batch, view-major like
    FusedL2Rec (all view-0 sequences, then all view-1 sequences)."""
    g = torch.Generator().manual_seed(seed)
    V, E, r = shape.views, shape.experts, shape.rank
    S = V * shape.seqs_per_view

    def rnd(*size, scale=1.0):
        return (torch.randn(*size, generator=g) * scale).to(device=device, dtype=dtype)

    return dict(
        x=rnd(shape.rows, shape.d_in),
        weight=rnd(shape.d_out, shape.d_in, scale=shape.d_in ** -0.5),
        bias=rnd(shape.d_out),
        lora_a=rnd(V, E, r, shape.d_in, scale=shape.d_in ** -0.5),
        lora_b=rnd(V, E, shape.d_out, r, scale=r ** -0.5),
        gates=torch.softmax(torch.randn(S, E, generator=g), -1).to(device=device, dtype=dtype),
        seq_view=torch.arange(V, device=device).repeat_interleave(shape.seqs_per_view),
        cu_seqlens=torch.arange(0, shape.rows + 1, shape.seq_len, dtype=torch.int32, device=device),
        scaling=alpha / r,
    )


def reference_einsum(inp: dict) -> list[torch.Tensor]:
    """The reference model's DPMoE linear (iLoRA style), once per view on that view's rows
    (the reference runs the backbone once per view): [rows_v, E, d_out] is materialised."""
    x, cu, views = inp["x"], inp["cu_seqlens"], inp["seq_view"]
    outs = []
    for v in range(inp["lora_a"].shape[0]):
        seqs = (views == v).nonzero().flatten()
        if seqs.numel() == 0:
            continue
        # view-major layout: view v's sequences are one contiguous block of rows
        lo, hi = int(cu[seqs[0]]), int(cu[seqs[-1] + 1])
        lengths = (cu[seqs + 1] - cu[seqs]).long()
        g_rows = inp["gates"][seqs].repeat_interleave(lengths, dim=0)      # [m, E]
        xv = x[lo:hi]
        base = F.linear(xv, inp["weight"], inp["bias"])
        h = torch.einsum("md,erd->mer", xv, inp["lora_a"][v])
        out = torch.einsum("mer,eor->meo", h, inp["lora_b"][v])
        outs.append(base + inp["scaling"] * torch.einsum("meo,me->mo", out, g_rows))
    return outs


def providers(inp: dict, include_triton: bool | None = None) -> dict[str, Callable[[], object]]:
    """name -> zero-argument callable. ``include_triton=None``: only for CUDA tensors where
    Triton can run (under the CPU interpreter it is orders of magnitude slower)."""
    device = inp["x"].device
    if include_triton is None:
        include_triton = device.type == "cuda" and triton_unavailable_reason(device) is None
    out: dict[str, Callable[[], object]] = {
        "plain_linear": lambda: F.linear(inp["x"], inp["weight"], inp["bias"]),
        "torch": lambda: dpmoe_linear(**inp, backend="torch", validate=False),
        # the torch backend's sync-free path (what CUDA tensors and torch.compile get)
        "torch_concat": lambda: dpmoe_linear_torch(**inp, split_views=False),
        "reference_einsum": lambda: reference_einsum(inp),
    }
    if include_triton:
        out["triton"] = lambda: dpmoe_linear(**inp, backend="triton", validate=False)
    return out


def check_agreement(inp: dict, provs: dict) -> dict[str, float]:
    """Relative error of each DPMoE provider against the reference formulation."""
    with torch.no_grad():
        want = torch.cat(reference_einsum(inp)).double()
        errs = {}
        for name in ("torch", "torch_concat", "triton"):
            if name in provs:
                got = provs[name]().double()
                errs[name] = ((got - want).norm() / want.norm()).item()
    return errs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: leave)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seqs-per-view", type=int, default=CPU_SHAPE.seqs_per_view)
    ap.add_argument("--seq-len", type=int, default=CPU_SHAPE.seq_len)
    ap.add_argument("--d-in", type=int, default=CPU_SHAPE.d_in)
    ap.add_argument("--d-out", type=int, default=CPU_SHAPE.d_out)
    ap.add_argument("--memory", action="store_true", help="also measure peak extra memory")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    shape = dataclasses.replace(CPU_SHAPE, seqs_per_view=args.seqs_per_view, seq_len=args.seq_len,
                                d_in=args.d_in, d_out=args.d_out)
    inp = make_inputs(shape, device, dtype)
    provs = providers(inp)
    print(f"# dpmoe_linear on {device_name(device)}, {args.dtype}, torch {torch.__version__}")
    print(f"# shape: {shape.label()}")
    print(f"# command: python {' '.join(sys.argv)}")
    print("# relative error vs reference: " + ", ".join(
        f"{k} {v:.2e}" for k, v in check_agreement(inp, provs).items()))
    stats = interleaved(provs, device, rounds=args.rounds, warmup=args.warmup)
    floor = stats["plain_linear"]["median"]
    ref = stats["reference_einsum"]["median"]
    print(f"{'provider':18s} {'median ms':>10s} {'p20':>8s} {'p80':>8s} {'x plain':>8s} "
          f"{'ref/this':>8s}" + (f" {'peak MB':>8s}" if args.memory else ""))
    for name, s in stats.items():
        line = (f"{name:18s} {s['median']:10.2f} {s['p20']:8.2f} {s['p80']:8.2f} "
                f"{s['median'] / floor:8.3f} {ref / s['median']:8.2f}")
        if args.memory:
            line += f" {peak_memory_mb(provs[name], device):8.1f}"
        print(line)
    t = stats["torch"]["median"]
    print(f"# medians: torch/plain = {t / floor:.3f}   reference/torch = {ref / t:.2f}")
    q = {k: stats[k]["p20"] for k in ("torch", "plain_linear", "reference_einsum")}
    print(f"# p20s (less sensitive to other load): torch/plain = {q['torch'] / q['plain_linear']:.3f}"
          f"   reference/torch = {q['reference_einsum'] / q['torch']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
