"""l2rec-kernels benchmarks: ``python bench/latency.py [--quick] [--device D] [--dtype T] [--out DIR]``.

Sections (``--sections``, all by default):

* ``model``: L2Rec vs FusedL2Rec vs the plain frozen backbone vs PEFT's mixed-adapter batch
  inference (top-1) on the same stacked tokens (bench/model_bench.py);
* ``dpmoe_linear``: the grouped DPMoE linear vs the reference einsum, a PEFT-style per-adapter
  loop and the plain base GEMM (bench/kernel_dpmoe_linear.py);
* ``route``: ``route`` backends vs a plain torch softmax/top-k (bench/kernel_route.py);
* ``topk_items``: ``topk_items`` vs ``torch.mm`` + ``torch.topk`` (bench/kernel_topk_items.py).

``--quick`` is the CPU smoke run behind ``make bench`` (under a minute on 2 cores: one shape
per section). Without it the sweep is meant for a GPU (sizes, E, r and dtypes vary); on
the CPU it runs a reduced sweep in a few minutes. Every provider of every shape is timed
side by side in interleaved rounds after warm-up (bench/_timing.py) and becomes one CSV row
in ``--out`` (default bench/results/) with the device, versions, git sha, date and this
command; a table per section with the speedups is printed at the end.
``python bench/plot.py <csv>`` draws the plots.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import kernel_dpmoe_linear  # noqa: E402
import kernel_route  # noqa: E402
import kernel_topk_items  # noqa: E402
import model_bench  # noqa: E402
from _report import DTYPES, RunConfig, format_table, progress, run_meta, write_csv  # noqa: E402

SECTIONS = ("model", "dpmoe_linear", "route", "topk_items")


def fused_backends(device: torch.device, quick: bool) -> tuple[str, ...]:
    """FusedL2Rec backends worth timing on ``device`` (Triton only on CUDA)."""
    if device.type != "cuda":
        return ("torch",)
    from l2rec_kernels._backend import cuda_ext_unavailable_reason, triton_unavailable_reason

    out = ["triton"] if triton_unavailable_reason(device) is None else []
    if not quick:
        out = ["torch", *out] + (["cuda"] if cuda_ext_unavailable_reason(device) is None else [])
    return tuple(out) or ("torch",)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="l2rec-kernels benchmarks")
    ap.add_argument("--quick", action="store_true", help="small CPU-friendly run (make bench)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                    help="default: fp32 on CPU, bf16 on CUDA; full kernel sweeps then also "
                         "cover the other dtypes unless --dtype is given")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="CSV output folder")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--rounds", type=int, default=0, help="timing rounds (0: per-section default)")
    ap.add_argument("--warmup", type=int, default=0, help="warm-up rounds (0: per-section default)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory calls")
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA GPU is visible")
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    for s in sections:
        if s not in SECTIONS:
            ap.error(f"unknown section {s!r}; choose from {', '.join(SECTIONS)}")
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = RunConfig(device, dtype, quick=args.quick, rounds=args.rounds, warmup=args.warmup,
                    memory=not args.no_memory, dtype_given=args.dtype is not None)
    meta = run_meta(device, dtype)
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append({**meta, **row})

    builders = {"model": lambda: model_bench.cases(cfg, emit, fused_backends(device, args.quick)),
                "dpmoe_linear": lambda: kernel_dpmoe_linear.cases(cfg, emit),
                "route": lambda: kernel_route.cases(cfg, emit),
                "topk_items": lambda: kernel_topk_items.cases(cfg, emit)}
    cases = [c for s in sections for c in builders[s]()]
    print(f"# l2rec-kernels benchmark ({'quick' if args.quick else 'full'}) on {meta['device']}, "
          f"{meta['dtype']}, torch {meta['torch']}, triton {meta['triton']}, python "
          f"{platform.python_version()}, git {meta['git_sha']}; {len(cases)} shapes", flush=True)
    for case in progress(cases, "bench"):
        case.run()
    print(format_table(rows))
    kind = "gpu" if device.type == "cuda" else "cpu"
    path = os.path.join(args.out, f"latency_{kind}_{'quick' if args.quick else 'full'}_"
                                  f"{dt.datetime.now():%Y%m%d_%H%M%S}.csv")
    write_csv(rows, path)
    print(f"# wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
