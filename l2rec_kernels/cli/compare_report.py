"""The comparison's outputs: a Markdown table with its protocol and machine, a CSV, the JSON
``{row: {"HR@10", "NDCG@10", "MRR"}}`` and a bar chart (PNG) of HR@10 / NDCG@10 per row."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
from dataclasses import dataclass, field

PROTOCOL = ("Full ranking over every item of the catalogue; users' items in time order (ties in "
            "file order), k-core filtered, leave-one-out (last item = test, second last = "
            "validation, the rest = training); the user's history is excluded from the ranking "
            "and ties count against the target; every model chosen on the validation split "
            "(early stopping on NDCG@10), evaluated once on the test split by our evaluator "
            "(l2rec_kernels.metrics). HR@10, NDCG@10 and MRR over all test users.")


@dataclass
class Row:
    """One model's line: test metrics (our evaluator) and how it got there."""

    name: str
    metrics: dict
    valid_ndcg: float | None = None
    seconds: float | None = None
    epochs: float | None = None
    own: dict | None = None       # a peer's own evaluator on its own protocol
    notes: str = ""
    extra: dict = field(default_factory=dict)


def _git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+changes" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> str:
    """CPU (or GPU) name, cores and torch version, for the report."""
    import torch

    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads{gpu}, "
            f"torch {torch.__version__}")


def _fmt(v, digits: int = 4) -> str:
    return "" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def write_report(rows: list[Row], *, out: str, data_name: str, spec: str, data, budget_min: float,
                 backbone: str, argv: list[str], total_seconds: float) -> dict[str, str]:
    """Write ``compare_<data>_<date>.{md,csv,json,png}`` into ``out``; returns their paths."""
    os.makedirs(out, exist_ok=True)
    now = dt.datetime.now()
    stem = os.path.join(out, f"compare_{data_name}_{now:%Y%m%d_%H%M%S}")
    paths = {"md": stem + ".md", "csv": stem + ".csv", "json": stem + ".json", "png": stem + ".png"}
    with open(paths["json"], "w") as f:
        json.dump({r.name: r.metrics for r in rows}, f, indent=2)
        f.write("\n")
    header = ["row", "HR@10", "NDCG@10", "MRR", "valid NDCG@10", "train s", "epochs",
              "own HR@10", "own NDCG@10", "notes"]
    lines = []
    for r in rows:
        own = r.own or {}
        lines.append([r.name, _fmt(r.metrics["HR@10"]), _fmt(r.metrics["NDCG@10"]), _fmt(r.metrics["MRR"]),
                      _fmt(r.valid_ndcg), _fmt(r.seconds, 0), _fmt(r.epochs, 1),
                      _fmt(own.get("hit@10")), _fmt(own.get("ndcg@10")), r.notes])
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(lines)
    stats = data.stats
    backbone_note = ("the tiny random-weight Llama (a frozen stand-in: its weights carry no language "
                     "knowledge; the paper's setting is --backbone DIR with a real checkpoint, on a GPU)"
                     if backbone == "tiny" else backbone)
    md = [f"# {data_name}: L2Rec next to SASRec and the peers, {budget_min:g} minutes of training per row",
          "",
          f"`python -m l2rec_kernels.compare {shlex.join(argv)}` ({now:%Y-%m-%d %H:%M}, commit "
          f"{_git_commit()}, {total_seconds / 60:.1f} min in all).",
          f"Data: `{spec}`: {stats.get('users')} users, {stats.get('items')} items, "
          f"{stats.get('interactions')} interactions after the {data_name} k-core. Machine: {machine()}. "
          f"Backbone: {backbone_note}.",
          "",
          "| " + " | ".join(header) + " |",
          "|" + "|".join(["---"] + ["---:"] * (len(header) - 2) + ["---"]) + "|"]
    md += ["| " + " | ".join(line) + " |" for line in lines]
    md += ["", f"**Protocol.** {PROTOCOL}",
           "", "Columns: HR@10, NDCG@10, MRR on the test split by our evaluator; `valid NDCG@10` the "
           "validation score the row was chosen on; `train s` its training wall-clock seconds (the budget "
           "caps each row; L2Rec's counts both stages); `own` the peer library's own evaluator on its own "
           "protocol (RecBole: sequential models' history is *not* excluded, and its Pop counts an item at "
           "most once per training batch), shown for reference only."]
    with open(paths["md"], "w") as f:
        f.write("\n".join(md) + "\n")
    _plot(rows, paths["png"], f"{data_name}: test split, {budget_min:g} min per row")
    return paths


def _plot(rows: list[Row], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name + ("" if r.seconds is None else f"\n{r.seconds:.0f} s") for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 4))
    width = 0.4
    ax.bar([i - width / 2 for i in x], [r.metrics["HR@10"] for r in rows], width, label="HR@10")
    ax.bar([i + width / 2 for i in x], [r.metrics["NDCG@10"] for r in rows], width, label="NDCG@10")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, fontsize=8)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
