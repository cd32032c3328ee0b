"""Routing timing: ``l2rec_kernels.route`` backends vs a plain torch softmax / top-k.

Router logits [S, E] (S = 2·B sequences, both views of every user) -> dense gates:

* ``route[torch]``, ``route[triton]`` (CUDA), ``route[cuda]`` (CUDA, where the extension
  is built): the package's op, input checks included;
* ``torch_softmax_topk``: the reference, what a model would write inline:
  ``softmax(x / τ)``, or for top-k ``topk`` then a softmax over the kept logits scattered
  into zeros.

These ops take microseconds, so each sample times many calls (``calls_per_sample``).
``python bench/latency.py --sections route`` runs the sweep; this module has no CLI.
"""

from __future__ import annotations

import dataclasses

import torch
from _report import Case, RunConfig, dtype_name, stats_rows
from _timing import Rotation, calls_per_sample, interleaved

from l2rec_kernels import route
from l2rec_kernels._backend import cuda_ext_unavailable_reason, triton_unavailable_reason


@dataclasses.dataclass(frozen=True)
class RouteShape:
    seqs: int
    experts: int
    top_k: int | None
    temperature: float = 1.0

    def label(self) -> str:
        return f"S={self.seqs} E={self.experts} top_k={self.top_k or 'dense'}"


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


def shapes(cfg: RunConfig) -> list[RouteShape]:
    if cfg.quick:
        return [RouteShape(64, 4, None), RouteShape(64, 4, 2)]
    seqs = [64, 2048, 65536] if cfg.cuda else [64, 2048, 32768]
    return [RouteShape(s, e, k) for s in seqs for e in (4, 16) for k in (None, 2)]


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


def cases(cfg: RunConfig, emit) -> list[Case]:
    return [Case(f"route {s.label()} {dtype_name(cfg.dtype)}", lambda s=s: run_case(cfg, s, emit))
            for s in shapes(cfg)]
