"""The ``dpmoe_linear`` section of bench/latency.py (a library: no command line of its own).

Times, side by side in interleaved rounds (bench/_timing.py), one targeted linear of the
stacked dual-view batch (2 views x B sequences x T tokens):

* ``plain_linear``           ``F.linear(x, W, b)`` over all rows: the floor (no experts);
* ``dpmoe_linear[torch]``    ``dpmoe_linear(..., backend="torch")`` (on CPU: per-view runs);
* ``dpmoe_linear[torch_concat]``  the torch backend's sync-free concatenated path (what
                             CUDA tensors and torch.compile get; CPU only here, since on
                             CUDA it is what ``dpmoe_linear[torch]`` runs);
* ``dpmoe_linear[triton]``   ``backend="triton"`` (CUDA only: the CPU interpreter is for
                             tests, not timing);
* ``reference_einsum``       the iLoRA formulation the reference model uses: per view, on
                             that view's rows, per-expert einsums, then the gate-weighted sum;
* ``peft_loop``              PEFT's way with mixed adapter batches, one LoRA adapter per
                             (view, expert): gather the rows using it, x A^T B^T x gate,
                             scatter-add into the base output.

Shapes: ``CPU_SHAPE`` / ``GPU_SHAPE`` is the base (``--quick`` times it alone); a full run
adds every other dtype at the base and then varies one axis at a time around it
(``CPU_AXES`` / ``GPU_AXES``). ``--set dpmoe_linear.AXIS=V1,V2`` (axes: ``AXES``) runs
instead every combination of the values given, the other axes at the base shape's, in
``--dtype`` only; e.g. one custom shape:

    python bench/latency.py --set dpmoe_linear.d_in=1024 --set dpmoe_linear.d_out=2816
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _report import Axis, Case, RunConfig, all_sizes, dtype_name, grid, stats_rows
from _timing import Rotation, interleaved

from l2rec_kernels._backend import triton_unavailable_reason
from l2rec_kernels.ops.dpmoe_linear import dpmoe_linear, dpmoe_linear_torch


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
        return (f"M={self.rows} ({self.views}v x {self.seqs_per_view}seq x {self.seq_len}tok) "
                f"{self.d_in}->{self.d_out} E={self.experts} r={self.rank}")


CPU_SHAPE = DpmoeShape()                                  # cpu-small's up/gate projection
GPU_SHAPE = DpmoeShape(seq_len=256, d_in=896, d_out=4864)  # Qwen2-0.5B's, 16 users
# Full sweeps vary one axis at a time around the base shape (then every dtype at the base).
CPU_AXES = {"seqs_per_view": [4, 64], "d_in,d_out": [(1376, 512), (1024, 2816)],
            "experts": [2, 8], "rank": [4, 16]}
GPU_AXES = {"seqs_per_view": [4, 64, 256], "d_in,d_out": [(4864, 896), (2048, 8192), (4096, 14336)],
            "experts": [2, 8, 16], "rank": [4, 16, 32]}
# The sizes ``latency.py --set dpmoe_linear.AXIS=...`` chooses (DpmoeShape fields).
AXES = {
    "seqs_per_view": Axis("sequences per view (B); the linear sees M = 2 x B x seq_len rows"),
    "seq_len": Axis("tokens per sequence (T)"),
    "d_in": Axis("input features of the linear"),
    "d_out": Axis("output features of the linear"),
    "experts": Axis("experts per view (E)"),
    "rank": Axis("LoRA rank of every expert (r)"),
}


def sweep(base: DpmoeShape, axes: dict, dtypes: list[torch.dtype]) -> list[tuple[DpmoeShape, torch.dtype]]:
    """The base shape in every dtype, then each axis' other values in the first dtype."""
    out = [(base, d) for d in dtypes]
    for fields, values in axes.items():
        for value in values:
            names = fields.split(",")
            vals = value if len(names) > 1 else (value,)
            out.append((dataclasses.replace(base, **dict(zip(names, vals))), dtypes[0]))
    return out


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


def peft_loop(inp: dict) -> torch.Tensor:
    """Mixed-adapter batches the way PEFT's LoRA layer serves them
    (``peft.tuners.lora.layer.Linear._mixed_batch_forward``), with one adapter per
    (view, expert) and the gate as a per-row factor: the base output, then for each adapter
    the rows that use it (their view, a non-zero gate) are gathered, run through A and B,
    scaled, and added back into their rows."""
    x, gates, lora_a, lora_b = inp["x"], inp["gates"], inp["lora_a"], inp["lora_b"]
    y = F.linear(x, inp["weight"], inp["bias"])
    lengths = (inp["cu_seqlens"][1:] - inp["cu_seqlens"][:-1]).long()
    row_view = inp["seq_view"].repeat_interleave(lengths)
    row_gate = gates.repeat_interleave(lengths, dim=0) * inp["scaling"]     # [M, E]
    for v in range(lora_a.shape[0]):
        in_view = row_view == v
        for e in range(lora_a.shape[1]):
            rows = (in_view & (row_gate[:, e] != 0)).nonzero().flatten()
            if rows.numel() == 0:
                continue
            sub = x.index_select(0, rows)
            out = F.linear(F.linear(sub, lora_a[v, e]), lora_b[v, e])
            y.index_add_(0, rows, out * row_gate.index_select(0, rows)[:, e:e + 1])
    return y


def providers(inps: list[dict], include_triton: bool | None = None) -> dict[str, Callable[[], object]]:
    """name -> zero-argument callable; each provider rotates through the input sets ``inps``.
    ``include_triton=None``: only for CUDA tensors where Triton can run (under the CPU
    interpreter it is orders of magnitude slower)."""
    device = inps[0]["x"].device
    if include_triton is None:
        include_triton = device.type == "cuda" and triton_unavailable_reason(device) is None
    fns: dict[str, Callable[[dict], object]] = {
        "plain_linear": lambda i: F.linear(i["x"], i["weight"], i["bias"]),
        "dpmoe_linear[torch]": lambda i: dpmoe_linear(**i, backend="torch", validate=False),
    }
    if device.type == "cpu":  # on CUDA the torch backend already runs this path
        fns["dpmoe_linear[torch_concat]"] = lambda i: dpmoe_linear_torch(**i, split_views=False)
    if include_triton:
        fns["dpmoe_linear[triton]"] = lambda i: dpmoe_linear(**i, backend="triton", validate=False)
    fns["peft_loop"] = peft_loop
    fns["reference_einsum"] = reference_einsum

    def rotating(fn):
        nxt = Rotation(inps)
        return lambda: fn(nxt())

    return {name: rotating(fn) for name, fn in fns.items()}


def check_agreement(inp: dict, names) -> dict[str, float]:
    """Relative error of each provider (on one input set) against the reference formulation."""
    fns = providers([inp])
    with torch.inference_mode():
        want = torch.cat(reference_einsum(inp)).double()
        return {name: ((fns[name]().double() - want).norm() / want.norm()).item()
                for name in names if name not in ("plain_linear", "reference_einsum")}


def run_case(cfg: RunConfig, shape: DpmoeShape, dtype: torch.dtype, emit, rotate: int = 0) -> None:
    """Time one shape; ``rotate`` input sets (0: 2 on CUDA, 3 on the CPU)."""
    inps = [make_inputs(shape, cfg.device, dtype, seed=s) for s in range(rotate or (2 if cfg.cuda else 3))]
    provs = providers(inps)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for name, err in check_agreement(inps[0], provs).items():
        if not err <= tol:
            print(f"# WARNING dpmoe {name} {shape.label()} {dtype_name(dtype)}: relative error "
                  f"{err:.2e} vs reference_einsum (tolerance {tol:g})", file=sys.stderr)
    stats = interleaved(provs, cfg.device, flush_cache=True,
                        **(cfg.timing(10, 2) if cfg.quick else cfg.timing(15, 3)))
    for row in stats_rows("dpmoe_linear", shape.label(), stats, x=("rows", shape.rows),
                          config={**dataclasses.asdict(shape), "rows": shape.rows},
                          reference="reference_einsum",
                          floor="plain_linear", dtype=dtype, device=cfg.device,
                          providers=provs if cfg.memory else None):
        emit(row)


def base_shape(cfg: RunConfig) -> DpmoeShape:
    return GPU_SHAPE if cfg.cuda else CPU_SHAPE


def default_sizes(cfg: RunConfig) -> dict[str, list]:
    """The base shape's value of every axis (a full run also sweeps ``CPU_AXES``/``GPU_AXES``)."""
    base = base_shape(cfg)
    return {axis: [getattr(base, axis)] for axis in AXES}


def cases(cfg: RunConfig, emit, sizes: dict[str, list] | None = None) -> list[Case]:
    """The base shape (quick), or a one-axis-at-a-time sweep around it (full); with ``sizes``
    (--set) every combination of the given values, the other axes at the base's."""
    base = base_shape(cfg)
    if sizes:
        todo = [(dataclasses.replace(base, **point), cfg.dtype)
                for point in grid(all_sizes(default_sizes(cfg), sizes))]
    elif cfg.quick:
        todo = [(base, cfg.dtype)]
    else:
        todo = sweep(base, GPU_AXES if cfg.cuda else CPU_AXES, cfg.sweep_dtypes())
    return [Case(f"dpmoe {s.label()} {dtype_name(d)}", lambda s=s, d=d: run_case(cfg, s, d, emit))
            for s, d in todo]
