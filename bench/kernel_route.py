"""The ``route`` section of bench/latency.py (a library: no command line of its own).

Times ``l2rec_kernels.route`` backends against a plain torch softmax / top-k, router
logits [S, E] (S = 2·B sequences, both views of every user) -> dense gates:

* ``route[torch]``, ``route[triton]`` (CUDA), ``route[cuda]`` (CUDA, where the extension
  is built): the package's op, input checks included;
* ``torch_softmax_topk``: the reference, what a model would write inline:
  ``softmax(x / τ)``, or for top-k ``topk`` then a softmax over the kept logits scattered
  into zeros.

These ops take microseconds, so each sample times many calls (``calls_per_sample``).

Sizes (``AXES``; ``default_sizes``): every combination of seqs (S), experts (E), top_k (an
int, or ``dense``: no top-k) and temperature; ``--set route.AXIS=V1,V2`` replaces an axis'
values, e.g.

    python bench/latency.py --sections route --set route.seqs=128,8192 --set route.top_k=dense,1,2
"""

from __future__ import annotations

import dataclasses

import torch
from _report import Axis, Case, RunConfig, SizeError, all_sizes, dtype_name, grid, positive_float, stats_rows
from _timing import Rotation, calls_per_sample, interleaved

from l2rec_kernels import route
from l2rec_kernels._backend import cuda_ext_unavailable_reason, triton_unavailable_reason


def parse_top_k(text: str) -> int | None:
    """``dense`` (None: a softmax over every expert) or a positive int."""
    if text.strip().lower() in ("dense", "none"):
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError("expected dense or an integer >= 1")
    return value


# The sizes ``latency.py --set route.AXIS=...`` chooses (RouteShape fields).
AXES = {
    "seqs": Axis("router rows (S = 2 x users: both views)"),
    "experts": Axis("experts (E)"),
    "top_k": Axis("experts kept per row, or dense: every expert", parse=parse_top_k,
                  show=lambda v: "dense" if v is None else str(v)),
    "temperature": Axis("softmax temperature", parse=positive_float),
}


@dataclasses.dataclass(frozen=True)
class RouteShape:
    seqs: int
    experts: int
    top_k: int | None
    temperature: float = 1.0

    def label(self) -> str:
        tau = f" tau={self.temperature:g}" if self.temperature != 1.0 else ""
        return f"S={self.seqs} E={self.experts} top_k={self.top_k or 'dense'}{tau}"


def torch_softmax_topk(logits: torch.Tensor, top_k: int | None, temperature: float) -> torch.Tensor:
    x = logits.float() / temperature
    if top_k is None:
        return torch.softmax(x, dim=-1).to(logits.dtype)
    vals, idx = torch.topk(x, top_k, dim=-1)
    return torch.zeros_like(x).scatter_(-1, idx, torch.softmax(vals, dim=-1)).to(logits.dtype)


def backends(device: torch.device) -> list[str]:
    out = ["torch"]
    if device.type == "cuda":
        out += [b for b, why in (("triton", triton_unavailable_reason(device)),
                                 ("cuda", cuda_ext_unavailable_reason(device))) if why is None]
    return out


def default_sizes(cfg: RunConfig) -> dict[str, list]:
    if cfg.quick:
        return {"seqs": [64], "experts": [4], "top_k": [None, 2], "temperature": [1.0]}
    return {"seqs": [64, 2048, 65536] if cfg.cuda else [64, 2048, 32768], "experts": [4, 16],
            "top_k": [None, 2], "temperature": [1.0]}


def shapes(cfg: RunConfig, sizes: dict[str, list] | None = None) -> list[RouteShape]:
    """Every combination of the sizes."""
    out = [RouteShape(**point) for point in grid(all_sizes(default_sizes(cfg), sizes))]
    for s in out:
        if s.top_k is not None and s.top_k > s.experts:
            raise SizeError(f"route: top_k={s.top_k} is more than experts={s.experts} (route.top_k "
                            f"takes dense or 1..experts)")
    return out


def run_case(cfg: RunConfig, shape: RouteShape, emit) -> None:
    g = torch.Generator().manual_seed(shape.seqs)
    logits = [torch.randn(shape.seqs, shape.experts, generator=g).to(cfg.device, cfg.dtype)
              for _ in range(4)]
    fns = {f"route[{b}]": lambda x, b=b: route(x, shape.top_k, shape.temperature, backend=b)
           for b in backends(cfg.device)}
    fns["torch_softmax_topk"] = lambda x: torch_softmax_topk(x, shape.top_k, shape.temperature)
    provs = {}
    for name, fn in fns.items():
        nxt = Rotation(logits)
        provs[name] = lambda fn=fn, nxt=nxt: fn(nxt())
    number = calls_per_sample(provs["torch_softmax_topk"], cfg.device)
    stats = interleaved(provs, cfg.device, number=number,
                        **(cfg.timing(10, 2) if cfg.quick else cfg.timing(20, 3)))
    for row in stats_rows("route", shape.label(), stats, x=("seqs", shape.seqs),
                          config=dataclasses.asdict(shape), reference="torch_softmax_topk",
                          dtype=cfg.dtype, device=cfg.device,
                          providers=provs if cfg.memory and shape.seqs >= 2048 else None):
        emit(row)


def cases(cfg: RunConfig, emit, sizes: dict[str, list] | None = None) -> list[Case]:
    return [Case(f"route {s.label()} {dtype_name(cfg.dtype)}", lambda s=s: run_case(cfg, s, emit))
            for s in shapes(cfg, sizes)]
