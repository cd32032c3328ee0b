"""What every benchmark section shares: run settings, sizes, result rows, progress, table, CSV.

A section is a library module that bench/latency.py (the one front end) drives through
three names:

* ``AXES``: ``{axis: Axis}``, the sizes a user may choose with
  ``latency.py --set SECTION.AXIS=V1,V2,...``;
* ``default_sizes(cfg)``: ``{axis: [values]}`` the section runs with when no ``--set``
  names it (and the values of the axes a ``--set`` leaves alone);
* ``cases(cfg, emit, sizes=None)``: its list of ``Case`` (one per shape); ``sizes`` holds
  the ``--set`` values of the section. Each case times its providers side by side with
  ``_timing.interleaved`` and emits one row per provider through ``stats_rows``: median and
  p20/p80 ms, peak memory, the speedup over the case's reference provider and the ratio to
  its floor provider (the plain work with no personalisation), when it has one.

Sizes a section cannot run together (``k`` above the catalogue size, ``top_k`` above the
experts) raise ``SizeError`` while the cases are built, before anything is timed.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import itertools
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator

import torch
from _timing import device_name, peak_memory_mb

from l2rec_kernels._atomic import atomic_write
from l2rec_kernels._dtypes import SHORT_DTYPES as DTYPES  # noqa: F401 (the bench CLIs' --dtype)
from l2rec_kernels._dtypes import dtype_name

HERE = os.path.dirname(os.path.abspath(__file__))
CSV_FIELDS = ["bench", "provider", "shape", "x_name", "x_value", "config", "dtype", "device",
              "median_ms", "p20_ms", "p80_ms",
              "peak_mem_mb", "tokens_per_s", "users_per_s", "speedup_vs_reference",
              "ratio_vs_floor", "torch", "triton", "git_sha", "date", "command"]
Emit = Callable[[dict], None]


@dataclasses.dataclass
class RunConfig:
    """Settings every section reads. ``rounds``/``warmup`` 0 = the section's default."""

    device: torch.device
    dtype: torch.dtype
    quick: bool = False
    rounds: int = 0
    warmup: int = 0
    memory: bool = True
    dtype_given: bool = False  # --dtype was given: sweep that dtype only
    compile: bool = False      # --compile: the model section adds compiled providers

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def timing(self, rounds: int, warmup: int) -> dict:
        """Keyword arguments for ``interleaved``: the user's --rounds, else the defaults."""
        return {"rounds": self.rounds or rounds, "warmup": self.warmup or warmup}

    def sweep_dtypes(self) -> list[torch.dtype]:
        """The dtypes a full kernel sweep covers: the default dtype first."""
        if self.quick or self.dtype_given:
            return [self.dtype]
        extra = [torch.float16, torch.float32] if self.cuda else [torch.bfloat16]
        return [self.dtype] + [d for d in extra if d != self.dtype]


# ----------------------------------------------------------------------------- sizes
class SizeError(ValueError):
    """Sizes of a section that cannot run together; the message names the section and axes."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError("expected an integer >= 1") from None
    if value < 1:
        raise ValueError("expected an integer >= 1")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("expected a number > 0") from None
    if not 0 < value < float("inf"):
        raise ValueError("expected a number > 0")
    return value


@dataclasses.dataclass(frozen=True)
class Axis:
    """A size of a section: ``parse`` turns one ``--set`` value into it (ValueError if it
    can't), ``show`` writes it back (for --help and labels)."""

    help: str
    parse: Callable[[str], object] = positive_int
    show: Callable[[object], str] = str


def all_sizes(defaults: dict[str, list], sizes: dict[str, list] | None) -> dict[str, list]:
    """The section's default values with the ``--set`` ones in their place."""
    return {**defaults, **(sizes or {})}


def grid(sizes: dict[str, list]) -> list[dict]:
    """Every combination of the axes' values, ``{axis: value}``, the last axis varying fastest."""
    return [dict(zip(sizes, combo)) for combo in itertools.product(*sizes.values())]


def stats_rows(bench: str, shape: str, stats: dict[str, dict], *, x: tuple[str, float],
               config: dict, reference: str, floor: str | None = None,
               dtype: torch.dtype | None = None,
               providers: dict[str, Callable[[], object]] | None = None,
               device: torch.device | None = None, extra: Callable[[str, dict], dict] | None = None
               ) -> list[dict]:
    """One result row per provider of one case. ``shape`` is the human label; ``x`` (name,
    value) is the quantity the case varies along (plots use it as their x axis) and
    ``config`` every parameter of the case, stored as JSON, so nothing is parsed back out of
    the label. ``providers``+``device``: measure peak memory (one more call each);
    ``extra(name, stats)``: more columns (tokens/s, ...)."""
    ref_ms = stats[reference]["median"]
    floor_ms = stats[floor]["median"] if floor else None
    rows = []
    for name, s in stats.items():
        row = {"bench": bench, "provider": name, "shape": shape, "x_name": x[0], "x_value": x[1],
               "config": json.dumps(config, sort_keys=True), "median_ms": s["median"],
               "p20_ms": s["p20"], "p80_ms": s["p80"],
               "speedup_vs_reference": ref_ms / s["median"],
               "ratio_vs_floor": s["median"] / floor_ms if floor_ms else ""}
        if dtype is not None:
            row["dtype"] = dtype_name(dtype)
        if providers is not None:
            row["peak_mem_mb"] = peak_memory_mb(providers[name], device)
        if extra is not None:
            row.update(extra(name, s))
        rows.append(row)
    return rows


def progress(items: Iterable, desc: str, total: int | None = None) -> Iterator:
    """tqdm on a terminal when it is installed; otherwise one stderr line per step."""
    items = list(items)
    total = len(items) if total is None else total
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm

            bar = tqdm(items, desc=desc, total=total, leave=False, file=sys.stderr)
            for item in bar:
                bar.set_postfix_str(getattr(item, "label", ""))
                yield item
            return
        except ImportError:
            pass
    for i, item in enumerate(items, 1):
        print(f"[{desc} {i}/{total}] {getattr(item, 'label', '')}", file=sys.stderr, flush=True)
        yield item


# ----------------------------------------------------------------------------- run metadata
def git_sha() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               text=True, capture_output=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "absent"


def run_meta(device: torch.device, dtype: torch.dtype) -> dict:
    """The columns every row of one run shares."""
    return {"dtype": dtype_name(dtype), "device": device_name(device), "torch": torch.__version__,
            "triton": triton_version(), "git_sha": git_sha(),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python " + shlex.join(sys.argv)}


# ----------------------------------------------------------------------------- output
_COLUMNS = [("provider", "provider", "s"), ("shape", "shape", "s"), ("dtype", "dtype", "s"),
            ("median_ms", "median ms", ".3f"), ("p20_ms", "p20", ".3f"), ("p80_ms", "p80", ".3f"),
            ("peak_mem_mb", "peak MB", ".1f"), ("speedup_vs_reference", "x vs ref", ".2f"),
            ("ratio_vs_floor", "x floor", ".2f"), ("tokens_per_s", "tokens/s", ".0f"),
            ("users_per_s", "users/s", ".1f")]
REFERENCE_NOTE = {
    "model": "reference = L2Rec (two backbone passes); floor = plain_backbone_2B (no experts)",
    "dpmoe_linear": "reference = reference_einsum (iLoRA formulation); floor = plain_linear (F.linear)",
    "route": "reference = torch_softmax_topk (plain torch); no floor",
    "topk_items": "reference = mm_topk (torch.mm + torch.topk); floor = mm_only (the score GEMM alone)",
}


def _cell(value, fmt: str) -> str:
    if value == "" or value is None:
        return ""
    return format(value, fmt) if isinstance(value, (int, float)) and fmt != "s" else str(value)


def _format_bench(bench: str, sub: list[dict]) -> list[str]:
    cols = [c for c in _COLUMNS if any(r.get(c[0], "") != "" for r in sub)]
    cells = [[_cell(r.get(key, ""), fmt) for key, _, fmt in cols] for r in sub]
    widths = [max(len(head), *(len(c[i]) for c in cells)) for i, (_, head, _) in enumerate(cols)]

    def line(vals: list[str]) -> str:
        return "  ".join(v.ljust(w) if key in ("provider", "shape", "dtype") else v.rjust(w)
                         for v, w, (key, _, _) in zip(vals, widths, cols))

    out = [f"== {bench}: {REFERENCE_NOTE.get(bench, '')}", line([h for _, h, _ in cols]),
           "-" * (sum(widths) + 2 * (len(widths) - 1))]
    prev = None
    for r, c in zip(sub, cells):
        if prev is not None and (r["shape"], r.get("dtype")) != prev:
            out.append("")  # a blank line between shapes
        prev = (r["shape"], r.get("dtype"))
        out.append(line(c))
    return [*out, ""]


def format_table(rows: list[dict]) -> str:
    """A table per bench: 'x vs ref' = reference median / this median (higher is faster),
    'x floor' = this median / floor median (1.0 = as fast as the plain work)."""
    out: list[str] = []
    for bench in dict.fromkeys(r["bench"] for r in rows):
        out += _format_bench(bench, [r for r in rows if r["bench"] == bench])
    return "\n".join(out)


def write_csv(rows: list[dict], path: str) -> None:
    """Write ``rows`` to ``path`` atomically (a reader, or a kill mid-write, never sees half
    a file: the benchmark rewrites its CSV after every shape)."""
    with atomic_write(path, newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


@dataclasses.dataclass
class Case:
    """One measurement of a section (a shape): ``run()`` times its providers and emits rows."""

    label: str
    run: Callable[[], None]
