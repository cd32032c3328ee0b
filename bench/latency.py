"""l2rec-kernels benchmarks: ``python bench/latency.py [--quick] [--device D] [--dtype T] [--out DIR]``.

Sections (``--sections``): ``model`` (L2Rec vs FusedL2Rec vs the plain backbone),
``dpmoe`` (the grouped DPMoE linear vs its alternatives), ``route``, ``topk``.
``--quick`` is the CPU smoke run behind ``make bench`` (under a minute on 2 cores); without
it the sweep is meant for a GPU. Every measurement becomes one CSV row in ``--out``
(default bench/results/) with the device, versions, git sha, date and this command.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import platform
import shlex
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _timing import device_name, interleaved, peak_memory_mb  # noqa: E402

CSV_FIELDS = ["bench", "provider", "shape", "dtype", "device", "median_ms", "p20_ms", "p80_ms",
              "peak_mem_mb", "tokens_per_s", "users_per_s", "speedup_vs_reference",
              "ratio_vs_floor", "torch", "triton", "git_sha", "date", "command"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "absent"


def _progress(iterable, desc: str):
    try:
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, leave=False, file=sys.stderr)
    except ImportError:
        return iterable


def run_model(args, device, dtype, emit) -> None:
    from model_bench import CPU_SHAPE, QWEN05_SHAPE, model_providers

    if args.quick:
        shape, user_counts, backends = CPU_SHAPE, [16], ["torch"]
    elif device.type == "cuda":
        shape, user_counts = QWEN05_SHAPE, [8, 16, 32, 64]
        backends = ["torch", "triton"] + (["cuda"] if _cuda_ext_ok(device) else [])
    else:
        shape, user_counts, backends = CPU_SHAPE, [4, 8, 16, 32], ["torch"]
    for users in _progress(user_counts, "model"):
        providers, tokens = model_providers(shape, users, device, dtype, tuple(backends))
        stats = interleaved(providers, device, rounds=args.rounds or (3 if args.quick else 10),
                            warmup=1 if args.quick else 3)
        ref_ms, floor_ms = stats["L2Rec"]["median"], stats["plain_backbone_2B"]["median"]
        for name, s in stats.items():
            mem = peak_memory_mb(providers[name], device)
            emit({"bench": "model", "provider": name, "shape": shape.label(users),
                  "median_ms": s["median"], "p20_ms": s["p20"], "p80_ms": s["p80"],
                  "peak_mem_mb": mem, "tokens_per_s": tokens / s["median"] * 1e3,
                  "users_per_s": users / s["median"] * 1e3,
                  "speedup_vs_reference": ref_ms / s["median"],
                  "ratio_vs_floor": s["median"] / floor_ms})
        del providers
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _cuda_ext_ok(device) -> bool:
    from l2rec_kernels._backend import cuda_ext_unavailable_reason

    return cuda_ext_unavailable_reason(device) is None


def print_table(rows: list[dict]) -> None:
    cols = [("bench", 6), ("provider", 28), ("shape", 44), ("median_ms", 10), ("p20_ms", 9),
            ("p80_ms", 9), ("peak_mem_mb", 11), ("speedup_vs_reference", 10),
            ("ratio_vs_floor", 9)]
    heads = {"speedup_vs_reference": "x vs ref", "ratio_vs_floor": "x floor",
             "peak_mem_mb": "peak MB"}
    print("  ".join(heads.get(c, c).ljust(w) for c, w in cols))
    for r in rows:
        cells = []
        for c, w in cols:
            v = r.get(c, "")
            cells.append((f"{v:.3f}" if isinstance(v, float) else str(v))[:w].ljust(w))
        print("  ".join(cells))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="l2rec-kernels benchmarks")
    ap.add_argument("--quick", action="store_true", help="small CPU-friendly run (make bench)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                    help="default: fp32 on CPU, bf16 on CUDA")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="CSV output folder")
    ap.add_argument("--sections", default="model,dpmoe,route,topk",
                    help="comma-separated subset of model,dpmoe,route,topk")
    ap.add_argument("--rounds", type=int, default=0, help="timing rounds (0: per-mode default)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA GPU is visible")
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    meta = {"dtype": str(dtype).replace("torch.", ""), "device": device_name(device),
            "torch": torch.__version__, "triton": _triton_version(), "git_sha": _git_sha(),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python " + " ".join(shlex.quote(a) for a in sys.argv)}
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append({**meta, **row})

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    runners = {"model": run_model}
    for s in sections:
        if s not in runners:
            ap.error(f"unknown section {s!r}; choose from {sorted(runners)}")
    print(f"# l2rec-kernels benchmark on {meta['device']}, {meta['dtype']}, torch "
          f"{meta['torch']}, triton {meta['triton']}, {platform.python_version()}")
    for s in sections:
        runners[s](args, device, dtype, emit)
    print_table(rows)
    os.makedirs(args.out, exist_ok=True)
    tag = "quick" if args.quick else "full"
    kind = "gpu" if device.type == "cuda" else "cpu"
    path = os.path.join(args.out, f"latency_{kind}_{tag}_{dt.datetime.now():%Y%m%d_%H%M%S}.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    print(f"# wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
