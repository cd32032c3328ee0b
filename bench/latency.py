"""l2rec-kernels benchmarks, the one entry point:

    python bench/latency.py [--quick] [--sections S1,S2] [--set SECTION.AXIS=V1[,V2...]]...
                            [--device D] [--dtype T] [--rounds N] [--warmup N] [--threads N]
                            [--no-memory] [--compile] [--out DIR]

Sections (``--sections``, all by default), each a library module with no command line of
its own:

* ``model``: L2Rec vs FusedL2Rec vs the plain frozen backbone vs PEFT's mixed-adapter batch
  inference (top-1) on the same stacked tokens (bench/model_bench.py);
* ``dpmoe_linear``: the grouped DPMoE linear vs the reference einsum, a PEFT-style per-adapter
  loop and the plain base GEMM (bench/kernel_dpmoe_linear.py);
* ``route``: ``route`` backends vs a plain torch softmax/top-k (bench/kernel_route.py);
* ``topk_items``: ``topk_items`` vs ``torch.mm`` + ``torch.topk`` (bench/kernel_topk_items.py);
* ``batch_metadata``: the per-forward bookkeeping from the attention mask, torch vs the CUDA
  extension (bench/kernel_batch_metadata.py);
* ``train``: one optimizer step (forward with labels, backward, AdamW) of FusedL2Rec vs L2Rec
  on the same weights and batches (bench/train_bench.py).

``--quick`` is the CPU smoke run behind ``make bench`` (one or two shapes per section).
Without it the sweep is meant for a GPU (sizes, E, r and dtypes vary); on the CPU it runs a
reduced sweep in a few minutes.

Sizes: ``--set SECTION.AXIS=V1,V2,...`` (repeatable, one axis per flag) gives an axis of a
section its own values; ``--help`` lists every axis with its defaults. A section named by a
``--set`` runs every combination of its axes' values, the axes left alone keeping their
defaults (for ``dpmoe_linear``: the base shape's), in ``--dtype`` only. Without
``--sections``, a run with ``--set`` runs only the sections it names. Examples:

    python bench/latency.py --set topk_items.k=10,100,1000
    python bench/latency.py --set topk_items.items=100000 --set topk_items.batch=1,64 --quick
    python bench/latency.py --set dpmoe_linear.seqs_per_view=4,64
    python bench/latency.py --set dpmoe_linear.d_in=1024 --set dpmoe_linear.d_out=2816 --dtype bf16
    python bench/latency.py --set route.top_k=dense,1,2 --set route.experts=8
    python bench/latency.py --set model.users=1,4 --sections model,topk_items

Every provider of every shape is timed side by side in interleaved rounds after warm-up
(bench/_timing.py) and becomes one CSV row in ``--out`` (default bench/results/) with the
device, versions, git sha, date and this command; a table per section with the speedups is
printed at the end. ``python bench/plot.py <csv>`` draws the plots.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import signal
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import kernel_batch_metadata  # noqa: E402
import kernel_dpmoe_linear  # noqa: E402
import kernel_route  # noqa: E402
import kernel_topk_items  # noqa: E402
import model_bench  # noqa: E402
import train_bench  # noqa: E402
from _report import DTYPES, RunConfig, SizeError, format_table, progress, run_meta, write_csv  # noqa: E402

from l2rec_kernels import settings  # noqa: E402

# name -> module with AXES, default_sizes(cfg) and cases(cfg, emit, sizes) (see _report.py)
SECTIONS = {"model": model_bench, "dpmoe_linear": kernel_dpmoe_linear, "route": kernel_route,
            "topk_items": kernel_topk_items, "batch_metadata": kernel_batch_metadata, "train": train_bench}
SET_SYNTAX = "SECTION.AXIS=V1[,V2...]"


def parse_set(text: str) -> tuple[str, str, list]:
    """``SECTION.AXIS=V1,V2`` -> (section, axis, [values]); ValueError with what is wrong."""
    key, eq, values = text.partition("=")
    section, dot, axis = key.strip().partition(".")
    if not eq or not dot or not section or not axis:
        raise ValueError(f"--set {text!r}: expected {SET_SYNTAX}, e.g. topk_items.k=10,100")
    if section not in SECTIONS:
        raise ValueError(f"--set {text!r}: unknown section {section!r}; sections: {', '.join(SECTIONS)}")
    axes = SECTIONS[section].AXES
    if axis not in axes:
        raise ValueError(f"--set {text!r}: section {section} has no axis {axis!r}; "
                         f"its axes: {', '.join(axes)}")
    parsed = []
    for raw in values.split(","):
        try:
            parsed.append(axes[axis].parse(raw.strip()))
        except ValueError as e:
            raise ValueError(f"--set {text!r}: bad value {raw.strip()!r} for {section}.{axis} "
                             f"({axes[axis].help}): {e}") from None
    return section, axis, list(dict.fromkeys(parsed))


def axes_help() -> str:
    """The --help epilog: every SECTION.AXIS with its default values per kind of run."""
    kinds = {"quick CPU": RunConfig(torch.device("cpu"), torch.float32, quick=True),
             "full CPU": RunConfig(torch.device("cpu"), torch.float32),
             "full GPU": RunConfig(torch.device("cuda"), torch.bfloat16)}
    width = max(len(f"{name}.{axis}") for name, module in SECTIONS.items() for axis in module.AXES)
    lines = [f"sizes: --set {SET_SYNTAX} (defaults: {' | '.join(kinds)})"]
    for name, module in SECTIONS.items():
        defaults = {kind: module.default_sizes(cfg) for kind, cfg in kinds.items()}
        for axis, spec in module.AXES.items():
            shown = [",".join(spec.show(v) for v in d[axis]) for d in defaults.values()]
            lines.append(f"  {name + '.' + axis:<{width}}  [{' | '.join(shown)}]  {spec.help}")
    lines += ["A section named by a --set runs every combination of its axes' values (the others at",
              "their defaults), in --dtype only. Without a --set, a full dpmoe_linear run varies",
              "seqs_per_view, d_in,d_out, experts and rank one at a time around the base shape",
              "(kernel_dpmoe_linear.CPU_AXES / GPU_AXES) and covers every dtype at the base."]
    return "\n".join(lines)


def default_threads() -> int:
    """$L2REC_THREADS, else the cores this process may run on (never more threads than
    cores: oversubscribed threads only contend)."""
    try:
        env = settings.threads()
    except ValueError:
        return 0  # rejected with a message in main
    if env is not None:
        return env
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="l2rec-kernels benchmarks (the one entry point; "
                                             "the module docstring has examples)", epilog=axes_help(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small CPU-friendly run (make bench)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                    help="default: fp32 on CPU, bf16 on CUDA; a full dpmoe_linear sweep then "
                         "also covers the other dtypes, unless --dtype or a --set dpmoe_linear.* "
                         "is given")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="CSV output folder")
    ap.add_argument("--sections", default=None,
                    help=f"comma-separated subset of {','.join(SECTIONS)} (default: all, or with "
                         "--set the sections it names)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar=SET_SYNTAX,
                    help="the values of one size axis of a section, e.g. topk_items.k=10,100,1000 "
                         "(repeatable; the axes and their defaults are listed below)")
    ap.add_argument("--rounds", type=int, default=0, help="timing rounds (0: per-section default)")
    ap.add_argument("--warmup", type=int, default=0, help="warm-up rounds (0: per-section default)")
    ap.add_argument("--threads", type=int, default=default_threads(),
                    help="CPU threads torch uses (default: $L2REC_THREADS, else the cores this "
                         "process may run on)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory calls")
    ap.add_argument("--compile", action="store_true",
                    help="model section: also time the compiled FusedL2Rec and plain backbone "
                         "(torch.compile; CUDA graphs on a GPU); compiling takes minutes")
    args = ap.parse_args(argv)

    sizes: dict[str, dict[str, list]] = {}  # section -> axis -> values
    set_by: dict[str, str] = {}  # section -> its first --set, for messages
    for text in args.sets:
        try:
            section, axis, values = parse_set(text)
        except ValueError as e:
            ap.error(str(e))
        if axis in sizes.get(section, {}):
            ap.error(f"--set {text!r}: {section}.{axis} is already set; give all its values in one "
                     f"--set, comma-separated")
        sizes.setdefault(section, {})[axis] = values
        set_by.setdefault(section, text)
    if args.sections is None:
        sections = [s for s in SECTIONS if s in sizes] if sizes else list(SECTIONS)
    else:
        sections = list(dict.fromkeys(s.strip() for s in args.sections.split(",") if s.strip()))
        for s in sections:
            if s not in SECTIONS:
                ap.error(f"--sections: unknown section {s!r}; choose from {', '.join(SECTIONS)}")
        for s in sizes:
            if s not in sections:
                ap.error(f"--set {set_by[s]!r}: section {s} is not among --sections "
                         f"{','.join(sections)}; add it there or drop the --set")

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA GPU is visible")
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    if args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = RunConfig(device, dtype, quick=args.quick, rounds=args.rounds, warmup=args.warmup,
                    memory=not args.no_memory, dtype_given=args.dtype is not None,
                    compile=args.compile)
    meta = run_meta(device, dtype)
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append({**meta, **row})

    try:  # builds the shapes only: inconsistent sizes fail here, before anything is timed
        cases = [c for s in sections for c in SECTIONS[s].cases(cfg, emit, sizes.get(s))]
    except SizeError as e:
        ap.error(f"--set: {e}")
    chosen = " ".join(f"{s}.{a}={','.join(SECTIONS[s].AXES[a].show(v) for v in vals)}"
                      for s, axes in sizes.items() for a, vals in axes.items())
    print(f"# l2rec-kernels benchmark ({'quick' if args.quick else 'full'}) on {meta['device']}, "
          f"{meta['dtype']}, torch {meta['torch']}, triton {meta['triton']}, python "
          f"{platform.python_version()}, git {meta['git_sha']}; sections {','.join(sections)}"
          f"{'; sizes ' + chosen if chosen else ''}; {len(cases)} shapes", flush=True)
    kind = "gpu" if device.type == "cuda" else "cpu"
    path = os.path.join(args.out, f"latency_{kind}_{'quick' if args.quick else 'full'}_"
                                  f"{dt.datetime.now():%Y%m%d_%H%M%S}.csv")
    # A run cut off by a time limit keeps what it measured: the CSV is rewritten after every
    # shape (a SIGKILL loses at most the shape under way), and SIGTERM (what `timeout`
    # sends first) ends the loop so that the table and the CSV still come out.
    previous = signal.signal(signal.SIGTERM, _cut_off)
    done = 0
    try:
        for case in progress(cases, "bench"):
            case.run()
            done += 1
            write_csv(rows, path)
    except CutOff:
        print(f"# cut off (SIGTERM) after {done} of {len(cases)} shapes", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(format_table(rows))
    write_csv(rows, path)
    print(f"# wrote {path}")
    return 0


class CutOff(Exception):
    """SIGTERM during the timing loop."""


def _cut_off(signum, frame):
    raise CutOff


if __name__ == "__main__":
    sys.exit(main())
