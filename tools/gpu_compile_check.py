"""Compile every Triton kernel for Hopper (sm_90a) and Ampere (sm_80) without a GPU.

    python tools/gpu_compile_check.py [--targets sm_90a,sm_80] [--out FILE] [--jobs N]

The interpreter that CI runs the kernels under has no shared-memory limit, no register
file and no bf16, so a kernel can pass every test there and still fail to launch on a GPU.
This check compiles what a GPU launch would build and reads the result:

1. **Through the package's own launchers.** Each op's launcher is called on CPU tensors of
   realistic shapes inside ``_triton_util.compile_only``, so every launch is handed here
   with exactly the arguments, integer specialisations, block sizes, ``num_warps`` and
   ``num_stages`` that it would launch with. A stand-in Triton driver reports the GPU
   target, and ``JITFunction.warmup`` compiles for it without launching anything.
2. **Sampled down to distinct specialisations.** Launches that Triton would compile to the
   same binary (same kernel, constexprs, options, dtypes, pointer alignment and integer
   specialisations: value 1, multiple of 16) are compiled once, in parallel workers.
3. **Read back**: registers and stack frame (spills) from the cubin (``cuobjdump
   -res-usage``, shipped in the triton wheel); the matrix instruction (wgmma.mma_async,
   which is HGMMA in the SASS, or mma.sync, HMMA) and the width of the global loads from the
   PTX (``--sass``: from the SASS, ten times slower); shared memory from the compiled
   kernel's metadata.

It fails (exit 1) on a compile error; shared memory above the target's per-block limit;
any stack frame in a dpmoe kernel or in a topk kernel with k <= 128; a 16-bit dpmoe
kernel with BLOCK_M >= 64 on sm_90a without wgmma; a 16-bit dpmoe kernel on sm_90a that
reads lora_a or lora_b with scalar loads (attributed to source lines through the PTX line
info); or one specialisation taking over 60 s to compile. The table goes to stdout and ``--out``.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as futures
import contextlib
import dataclasses
import datetime
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

# Compiled triton, never the interpreter: the environment must be set before triton loads.
os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton's default, stated to silence it

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from l2rec_kernels.ops import _dpmoe_linear_triton, _route_triton, _topk_items_triton  # noqa: E402
from l2rec_kernels.ops._triton_util import compile_only  # noqa: E402
from l2rec_kernels.ops.topk_items import TRITON_MAX_K  # noqa: E402

# name -> (compute capability, per-block shared memory limit in bytes: the opt-in maximum)
TARGETS = {"sm_90a": (90, 232_448), "sm_80": (80, 166_912)}
MAX_COMPILE_S = 60.0


class StandInDriver:
    """The part of Triton's CUDA driver that compiling needs, for a GPU that is not here.

    The device index is the compute capability, so each target gets its own JIT cache.
    """

    def __init__(self, capability: int):
        self.capability = capability

    def get_current_device(self):
        return self.capability

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return GPUTarget("cuda", self.capability, 32)

    def get_active_torch_device(self):
        return torch.device("cpu")


# ----------------------------------------------------------------------------- the grid
@dataclasses.dataclass(frozen=True)
class Case:
    op: str
    label: str
    params: tuple  # what ``run_case`` needs to rebuild the launch


BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
DTYPES = {"bf16": BF16, "fp16": FP16, "fp32": FP32}


def dpmoe_cases():
    """M 1..65536, d_in/d_out of real backbones, E 2..8, r 4..64, 3 dtypes, bias or not;
    then shared experts (Es 1, 2) and per-row gates over fewer sizes (the paper preset's
    E=4, r=8 among them): they change the kernels' specialisation, not their tiling."""
    dims = [(896, 4864), (1024, 3072), (4096, 4096), (4096, 11008), (11008, 4096), (512, 512)]
    for dt, m, (d_in, d_out), e, r, bias, s in itertools.product(
            DTYPES, (1, 24, 40, 100, 4096, 65536), dims, (2, 4, 8), (4, 8, 16, 32, 64),
            (True, False), (1, 64)):
        if s > m:
            continue
        yield Case("dpmoe_linear", f"{dt} M={m} {d_in}->{d_out} E={e} r={r} S={s}"
                   f"{' bias' if bias else ''}", (dt, m, d_in, d_out, e, r, bias, s, 0, False))
    for dt, m, (d_in, d_out), e, r, es, per_row in itertools.product(
            DTYPES, (1, 100, 4096), [(1024, 3072), (4096, 11008)], (4,), (4, 8, 16), (0, 1, 2),
            (False, True)):
        if es or per_row:
            yield Case("dpmoe_linear", f"{dt} M={m} {d_in}->{d_out} E={e} r={r} S=1 Es={es}"
                       f"{' per_row' if per_row else ''}", (dt, m, d_in, d_out, e, r, False, 1, es, per_row))


def topk_cases():
    """Every k the op accepts (through its power-of-two bucket), d 64..256, N up to 2^20."""
    ks = sorted({1, 2, 3, 5, 10, 20, 50, 100, 128, 129, 200, 256, 500, 1000, 1024, 2000,
                 TRITON_MAX_K})
    for dt, k, d, n, b, x in itertools.product(DTYPES, ks, (64, 128, 256),
                                               (10_000, 1_000_000, 1 << 20), (1, 48), (0, 50)):
        yield Case("topk_items", f"{dt} k={k} d={d} N={n} B={b} X={x}", (dt, k, d, n, b, x))


def route_cases():
    """E 2 .. the largest the op accepts, dense and top-k."""
    for dt, e, top_k, s in itertools.product(DTYPES, (2, 4, 8, 16, 64, 1000, _route_triton.MAX_EXPERTS),
                                             (1, 2, None), (1, 4096)):
        yield Case("route", f"{dt} E={e} top_k={top_k} S={s}", (dt, e, top_k, s))


def run_case(case: Case) -> None:
    """Call the op's launcher for this case (inside ``compile_only``: nothing runs)."""
    empty = torch.empty
    if case.op == "dpmoe_linear":
        dt, m, d_in, d_out, e, r, bias, s, es, per_row = case.params
        dtype = DTYPES[dt]
        x = empty(m, d_in, dtype=dtype)
        cu = torch.linspace(0, m, s + 1).to(torch.int32)
        shared = (empty(es, r, d_in, dtype=dtype), empty(es, d_out, r, dtype=dtype)) if es else (None, None)
        _dpmoe_linear_triton.launch_dpmoe_linear(
            x, empty(d_out, d_in, dtype=dtype), empty(d_out, dtype=dtype) if bias else None,
            empty(2, e, r, d_in, dtype=dtype), empty(2, e, d_out, r, dtype=dtype),
            empty(m if per_row else s, e, dtype=dtype), torch.zeros(s, dtype=torch.int64), cu, 2.0,
            *shared, per_row)
    elif case.op == "topk_items":
        dt, k, d, n, b, x = case.params
        dtype = DTYPES[dt]
        _topk_items_triton._topk_items_impl(empty(b, d, dtype=dtype), empty(n, d, dtype=dtype), k,
                                            torch.zeros(b, x, dtype=torch.int64), 0)
    elif case.op == "route":
        dt, e, top_k, s = case.params
        _route_triton._route_impl(empty(s, e, dtype=DTYPES[dt]), e if top_k is None else top_k, 1.0)
    else:
        raise ValueError(case.op)


# ------------------------------------------------------------------ specialisation keys
def _arg_key(value):
    """What Triton specialises a launch argument on."""
    if isinstance(value, torch.Tensor):
        return (str(value.dtype), value.data_ptr() % 16 == 0)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("int", value == 1, value % 16 == 0, -(2**31) <= value < 2**31)
    if isinstance(value, float):
        return ("float",)
    return (repr(value),)


def launch_key(kernel, args, kwargs) -> tuple:
    """Launches with equal keys are compiled once: the kernel, its constexprs and options,
    tensor dtypes and alignment, and the specialisation of every stride argument. Size
    arguments (M, N, K, counts) are left out: they only move mask bounds, and keeping their
    classes (1 / multiple of 16 / other) would multiply the compiles without exercising a
    different block configuration. Arguments a kernel marks ``do_not_specialize`` are left
    out too: Triton compiles one binary for all their values."""
    return (kernel.fn.__name__,
            tuple(_arg_key(a) for p, a in zip(kernel.params, args)
                  if isinstance(a, torch.Tensor)
                  or (p.name.startswith("stride") and not p.do_not_specialize)),
            tuple(sorted(kwargs.items())))


def collect_launches(case: Case) -> list[tuple]:
    """[(key, kernel name, constexpr/options dict)] for every launch the case makes."""
    seen = []

    def record(kernel, grid, args, kwargs):
        seen.append((launch_key(kernel, args, kwargs), kernel.fn.__name__, dict(kwargs)))

    with compile_only(record):
        run_case(case)
    return seen


# ------------------------------------------------------------------ compile and inspect
def _cuobjdump() -> str:
    import triton.backends.nvidia as nv

    bundled = os.path.join(os.path.dirname(nv.__file__), "bin", "cuobjdump")
    return bundled if os.path.exists(bundled) else (shutil.which("cuobjdump") or "cuobjdump")


def _dump(cubin: bytes, flag: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([_cuobjdump(), flag, f.name], capture_output=True, text=True,
                              check=True).stdout


def resource_usage(cubin: bytes) -> dict:
    """Registers per thread and the stack frame (bytes; > 0 means spills), as ptxas
    allocated them: ``cuobjdump -res-usage`` reads them from the cubin in milliseconds."""
    res = _dump(cubin, "-res-usage")
    return {"regs": int(re.search(r"REG:(\d+)", res).group(1)),
            "stack": int(re.search(r"STACK:(\d+)", res).group(1))}


# a global load: ld.global with its qualifiers (cache hints such as L1::evict_last included),
# or an asynchronous copy from global into shared memory
_GLOBAL_LOAD = re.compile(r"(ld\.global[.\w:]*|cp\.async\.c[ag]\.shared\.global)")


def ptx_instructions(ptx: str) -> dict:
    """The matrix instruction (``wgmma`` = wgmma.mma_async, which ptxas turns into HGMMA;
    ``mma`` = mma.sync, HMMA; ``-`` = none), the scalar 16-bit global loads and the 128-bit
    ones (vector loads and 16-byte cp.async), counted in the PTX.

    The PTX, not the SASS, because disassembling a cubin costs nvdisasm about half a
    CPU-second, most of the whole check's time. ptxas keeps these in kind: wgmma becomes
    HGMMA, mma.sync HMMA, and a load keeps its width. The counts differ in number from the
    SASS's (unrolling, scheduling), not in being zero or not: on the full grid the two
    readings agree on every row (docs/gpu.md). ``--sass`` reads the SASS instead."""
    matrix = "wgmma" if "wgmma.mma_async" in ptx else "mma" if "mma.sync" in ptx else "-"
    scalar16 = vector = 0
    for line in ptx.splitlines():
        load = _GLOBAL_LOAD.search(line)
        if load:
            width = _load_bytes(load.group(1), line)
            scalar16 += width == 2 and load.group(1).startswith("ld.global")
            vector += width == 16
    return {"matrix": matrix, "ldg_u16": scalar16, "ld128": vector}


def sass_instructions(cubin: bytes) -> dict:
    """``ptx_instructions``' counts from the SASS (``cuobjdump -sass``), with the same names
    for the matrix instruction (HGMMA -> wgmma, HMMA -> mma)."""
    sass = _dump(cubin, "-sass")
    ops = collections.Counter(re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", sass))
    names = " ".join(ops)
    matrix = "wgmma" if "HGMMA" in names else "mma" if "HMMA" in names else "-"
    scalar16 = sum(n for op, n in ops.items() if op.startswith("LDG") and (".U16" in op or ".S16" in op))
    vector = sum(n for op, n in ops.items() if op.startswith(("LDG", "LDGSTS")) and op.endswith(".128"))
    return {"matrix": matrix, "ldg_u16": scalar16, "ld128": vector}


# the lines that read lora_a / lora_b / shared_a / shared_b
_LORA_LOAD = re.compile(r"tl\.load\((a_ptr|lb_ptr|sa_ptr|sb_ptr)\b")
_PTX_LOC = re.compile(r"\.loc\s+\d+\s+(\d+)\s+\d+\s+//\s*(\S+?):\d+")


def _load_bytes(instr: str, line: str) -> int:
    """Bytes moved per thread by one PTX global load instruction."""
    if instr.startswith("cp.async"):
        return int(re.search(r",\s*(0x[0-9a-f]+|\d+)\s*(?:,|;)", line.split("]", 2)[-1]).group(1), 0)
    vec = re.search(r"\.v(\d)", instr)
    bits = re.search(r"\.[bsuf](\d+)$", instr)
    return (int(vec.group(1)) if vec else 1) * int(bits.group(1)) // 8


def lora_load_bytes(ptx: str, source_lines: dict[int, str]) -> int | None:
    """The narrowest global load (bytes per thread) on the source lines that read the LoRA
    operands, from the PTX's line info; None if the kernel has no such line."""
    widths = []
    line_no = None
    for raw in ptx.splitlines():
        text = raw.strip()
        loc = _PTX_LOC.match(text)
        if loc:
            line_no = int(loc.group(1))
            continue
        load = _GLOBAL_LOAD.search(text)
        if load and line_no is not None and _LORA_LOAD.search(source_lines.get(line_no, "")):
            widths.append(_load_bytes(load.group(1), text))
    return min(widths) if widths else None


def _source_lines(kernel) -> dict[int, str]:
    import inspect

    lines, first = inspect.getsourcelines(kernel.fn)
    return {first + i: text for i, text in enumerate(lines)}


def compile_case(target_name: str, case: Case, wanted: list[tuple], read_sass: bool = False) -> list[dict]:
    """Compile the launches of ``case`` whose keys are in ``wanted`` for ``target_name``."""
    capability, _ = TARGETS[target_name]
    driver.set_active(StandInDriver(capability))
    rows = []
    todo = set(wanted)

    def build(kernel, grid, args, kwargs):
        key = launch_key(kernel, args, kwargs)
        if key not in todo:
            return
        todo.discard(key)
        row = {"target": target_name, "kernel": kernel.fn.__name__, "case": case.label,
               "dtype": case.params[0],
               "op": case.op, "config": _config_text(kwargs), "kwargs": dict(kwargs)}
        t0 = time.perf_counter()
        try:
            with _stderr_to(log):
                compiled = kernel.warmup(*args, grid=grid, **kwargs)
        except Exception as exc:  # any compile failure is a finding, reported below
            log.seek(0)
            errors = [ln.strip() for ln in log.read().decode(errors="replace").splitlines()
                      if "error:" in ln]
            message = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            reason = errors[0] if errors else " ".join(message[:1] + message[-1:])
            row.update(error=f"{type(exc).__name__}: {reason[:300]}",
                       seconds=time.perf_counter() - t0)
            rows.append(row)
            return
        row["seconds"] = time.perf_counter() - t0
        row["shared"] = compiled.metadata.shared
        row.update(resource_usage(compiled.asm["cubin"]))
        row.update(sass_instructions(compiled.asm["cubin"]) if read_sass
                   else ptx_instructions(compiled.asm["ptx"]))
        row["lora_bytes"] = lora_load_bytes(compiled.asm["ptx"], _source_lines(kernel))
        rows.append(row)

    with tempfile.TemporaryFile() as log, compile_only(build):
        run_case(case)
    return rows


@contextlib.contextmanager
def _stderr_to(file):
    """The MLIR compiler prints whole modules to fd 2 on failure: keep them in ``file``."""
    sys.stderr.flush()
    saved = os.dup(2)
    file.seek(0)
    file.truncate()
    os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _config_text(kwargs) -> str:
    short = {"num_warps": "w", "num_stages": "st"}
    return " ".join(f"{short.get(k, k)}={v}" for k, v in kwargs.items())


def _worker(job):
    target_name, case, wanted, read_sass = job
    return compile_case(target_name, case, wanted, read_sass)


# ----------------------------------------------------------------------------- the rules
def problems(row: dict) -> list[str]:
    if "error" in row:
        return [f"compile error: {row['error']}"]
    found = []
    limit = TARGETS[row["target"]][1]
    kw = row["kwargs"]
    if row["shared"] > limit:
        found.append(f"shared memory {row['shared']} B > {limit} B")
    if row["seconds"] > MAX_COMPILE_S:
        found.append(f"compile took {row['seconds']:.0f} s > {MAX_COMPILE_S:.0f} s")
    if row["stack"] > 0:
        if row["op"] == "dpmoe_linear":
            found.append(f"spills: {row['stack']} B stack")
        elif row["op"] == "topk_items" and 2 ** kw["LOG_K"] <= 128:
            found.append(f"spills at K={2 ** kw['LOG_K']}: {row['stack']} B stack")
    if row["op"] == "dpmoe_linear" and row["dtype"] != "fp32" and row["target"] == "sm_90a":
        if kw["BLOCK_M"] >= 64 and row["matrix"] != "wgmma":
            found.append(f"no wgmma (matrix instruction {row['matrix']})")
        if row["lora_bytes"] is not None and row["lora_bytes"] < 4:
            found.append(f"scalar LoRA operand loads ({row['lora_bytes']} B per load)")
    return found


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="sm_90a,sm_80")
    parser.add_argument("--ops", default="dpmoe_linear,topk_items,route")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--first", type=int, default=0,
                        help="compile only the first N distinct specialisations of each op "
                             "(a quick smoke run; 0 = all)")
    parser.add_argument("--sass", action="store_true",
                        help="count the matrix instruction and the loads in the SASS (nvdisasm, "
                             "about 0.5 CPU-s per kernel) instead of the PTX")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "gpu_compile_check.md"))
    args = parser.parse_args(argv)
    targets = args.targets.split(",")
    ops = args.ops.split(",")
    for t in targets:
        if t not in TARGETS:
            parser.error(f"--targets: unknown target {t!r}; choose from {', '.join(TARGETS)}")
    makers = {"dpmoe_linear": dpmoe_cases, "topk_items": topk_cases, "route": route_cases}
    for op in ops:
        if op not in makers:
            parser.error(f"--ops: unknown op {op!r}; choose from {', '.join(makers)}")
    # A fresh cache, so compile times are real and nothing is reused from an earlier run.
    cache = tempfile.mkdtemp(prefix="l2rec-compile-check-")
    os.environ["TRITON_CACHE_DIR"] = cache
    t_start = time.perf_counter()

    first_case: dict[tuple, Case] = {}
    launches_per_op = collections.Counter()
    cases_per_op = collections.Counter()
    for op in ops:
        for case in makers[op]():
            cases_per_op[op] += 1
            for key, _, _ in collect_launches(case):
                launches_per_op[op] += 1
                if key not in first_case and (
                        not args.first or sum(c.op == op for c in first_case.values()) < args.first):
                    first_case[key] = case
    by_case = collections.defaultdict(list)
    for key, case in first_case.items():
        by_case[case].append(key)
    jobs = [(t, case, keys, args.sass) for t in targets for case, keys in by_case.items()]
    # Slow compiles (topk with a wide k) first, so the pool does not end on one long job.
    jobs.sort(key=lambda j: (j[1].op != "topk_items", -j[1].params[1] if j[1].op == "topk_items" else 0))
    print(f"{sum(cases_per_op.values())} grid points, {sum(launches_per_op.values())} launches, "
          f"{len(first_case)} distinct specialisations x {len(targets)} targets; "
          f"{args.jobs} workers", flush=True)

    rows = []
    ctx = __import__("multiprocessing").get_context("spawn")
    with futures.ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        for done, result in enumerate(pool.map(_worker, jobs, chunksize=1), 1):
            rows.extend(result)
            if done % 25 == 0 or done == len(jobs):
                print(f"  compiled {done}/{len(jobs)} jobs ({time.perf_counter() - t_start:.0f} s)",
                      flush=True)
    shutil.rmtree(cache, ignore_errors=True)

    rows.sort(key=lambda r: (r["target"], r["op"], r["kernel"], r["case"]))
    failures = [(r, p) for r in rows for p in problems(r)]
    table = render(rows, failures, cases_per_op, targets, time.perf_counter() - t_start, args.sass)
    print(table)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(table)
    print(f"written to {args.out}")
    return 1 if failures else 0


def render(rows, failures, cases_per_op, targets, seconds, sass: bool = False) -> str:
    today = datetime.date.today().isoformat()
    lines = [
        "# GPU compile check",
        "",
        f"`python tools/gpu_compile_check.py` on {today}: triton {triton.__version__}, "
        f"torch {torch.__version__}, targets {', '.join(targets)}, {seconds:.0f} s on "
        f"{os.cpu_count()} CPU cores (no GPU). Grid points per op: "
        + ", ".join(f"{op} {n}" for op, n in cases_per_op.items())
        + f"; {len(rows)} distinct compiles.",
        "",
        "Columns: registers per thread, stack frame bytes (spills), shared memory bytes, the "
        "matrix instruction (wgmma, mma.sync or none), scalar 16-bit global loads and 128-bit "
        f"global loads (these three counted in the {'SASS' if sass else 'PTX'}), the narrowest "
        "load of a LoRA operand in bytes per thread (from the PTX line info; `-` where the "
        "kernel reads none), compile seconds. One row per distinct specialisation; `case` is "
        "the first grid point that needed it.",
        "",
        "| target | kernel | case | config | regs | stack | smem | mma | ldg16 | ld128 | lora B | s |",
        "|---|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['target']} | {r['kernel']} | {r['case']} | {r['config']} | "
                         f"ERROR: {r['error']} ||||||| {r['seconds']:.1f} |")
            continue
        lines.append(f"| {r['target']} | {r['kernel']} | {r['case']} | {r['config']} | {r['regs']} | "
                     f"{r['stack']} | {r['shared']} | {r['matrix']} | {r['ldg_u16']} | {r['ld128']} | "
                     f"{r['lora_bytes'] if r['lora_bytes'] is not None else '-'} | {r['seconds']:.1f} |")
    lines.append("")
    if failures:
        lines.append(f"**FAILED: {len(failures)} problems**")
        lines.append("")
        lines += [f"- {r['target']} {r['kernel']} [{r['case']}; {r['config']}]: {p}" for r, p in failures]
    else:
        lines.append("**PASSED**: no compile errors, shared memory within limits, no spills where "
                     "forbidden, wgmma and vector loads where required, every compile under "
                     f"{MAX_COMPILE_S:.0f} s.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
