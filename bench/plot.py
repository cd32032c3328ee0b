"""Plots from a bench/latency.py results CSV: ``python bench/plot.py RESULTS.csv [--out DIR]``.

Writes PNGs named after the CSV (``<name>_...png``, next to it unless ``--out``):

* ``<name>_model_latency.png``: model median latency vs batch size per provider (p20-p80 band);
* ``<name>_train_latency.png``: the same for the train section (one optimizer step per call);
* ``<name>_speedup.png``: speedup over each bench's reference provider, per provider
  (model, train: vs batch size; kernels: per shape);
* ``<name>_<bench>_ms.png`` for each kernel bench (dpmoe_linear, route, topk_items): median ms per
  provider and shape (log scale; whiskers p20-p80).

The x axis and titles come from the CSV's ``x_name``/``x_value``/``config`` columns, never
from parsing the ``shape`` label. Needs matplotlib (the ``plot`` extra: ``pip install -e ".[plot]"``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def read_rows(path: str) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for key in ("median_ms", "p20_ms", "p80_ms", "speedup_vs_reference"):
            r[key] = float(r[key]) if r.get(key) not in (None, "") else float("nan")
    return rows


def _x(r: dict) -> float:
    """The value a case varies along (users per batch for the model section)."""
    return float(r["x_value"])


# ``config`` keys that are a case's check results, not its parameters (train: how far the
# fused model's loss and gradients are from the reference's): never in labels or titles.
CHECK_KEYS = ("loss_rel_err", "grad_rel_err", "grad_rel_err_worst", "grad_worst")


def _config_without_x(r: dict) -> str:
    """The case's parameters except the one on the x axis, as "name=value" pairs."""
    config = json.loads(r["config"])
    return " ".join(f"{k}={v}" for k, v in config.items() if k != r["x_name"] and k not in CHECK_KEYS)


def _shared_config(rows: list[dict]) -> str:
    """The "name=value" pairs (all but x) every row has in common."""
    pairs = [set(_config_without_x(r).split()) for r in rows]
    return " ".join(p for p in _config_without_x(rows[0]).split() if all(p in q for q in pairs))


def _lines(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows per plotted line: per provider, and per configuration when the rows hold several
    (e.g. ``--set model.seq_len=96,256``: the label adds what differs); points sorted by x."""
    shared = set(_shared_config(rows).split())
    out: dict[str, list[dict]] = {}
    for r in rows:
        differs = " ".join(p for p in _config_without_x(r).split() if p not in shared)
        out.setdefault(f"{r['provider']} [{differs}]" if differs else r["provider"], []).append(r)
    return {label: sorted(sub, key=_x) for label, sub in out.items()}


def _case(r: dict) -> str:
    return "\n".join(textwrap.wrap(f"{r['shape']} {r['dtype']}", 28))


def _colors(names: list[str]) -> dict[str, str]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {n: cycle[i % len(cycle)] for i, n in enumerate(names)}


def _providers(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["provider"] for r in rows))


def _title(rows: list[dict], what: str) -> str:
    r = rows[0]
    return f"{what}\n{r['device']}, torch {r['torch']}, git {r['git_sha']}, {r['date']}"


def _tight_below_suptitle(fig) -> None:
    """tight_layout that leaves the top 0.6 inch to the two-line suptitle."""
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))


# Sections plotted against the batch size (users per batch), not as bars per shape.
BY_USERS = ("model", "train")


def plot_model(rows: list[dict], path: str, *, what: str = "model latency",
               ylabel: str = "median latency per forward (ms)") -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, pts in _lines(rows).items():
        xs = [_x(r) for r in pts]
        ax.plot(xs, [r["median_ms"] for r in pts], marker="o", label=label)
        ax.fill_between(xs, [r["p20_ms"] for r in pts], [r["p80_ms"] for r in pts], alpha=0.2)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({_x(r) for r in rows}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("users per batch (B; the backbone sees 2B sequences)")
    ax.set_ylabel(ylabel)
    what = textwrap.fill(f"{what}: {_shared_config(rows)}, {rows[0]['dtype']}", 110)
    ax.set_title(_title(rows, what), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _grouped_barh(ax, rows: list[dict], key: str) -> None:
    """Horizontal bars from 0: one group per case (shape, dtype), one bar per provider."""
    cases = list(dict.fromkeys(_case(r) for r in rows))
    names = _providers(rows)
    colors = _colors(names)
    height = 0.8 / len(names)
    by = {(_case(r), r["provider"]): r for r in rows}
    for j, name in enumerate(names):
        pts = [(i + (j - (len(names) - 1) / 2) * height, by[(case, name)][key])
               for i, case in enumerate(cases) if (case, name) in by]
        ax.barh([y for y, _ in pts], [v for _, v in pts], height=height, label=name,
                color=colors[name])
    ax.set_yticks(range(len(cases)))
    ax.set_yticklabels(cases, fontsize=7)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def plot_kernel_ms(rows: list[dict], bench: str, path: str) -> None:
    """One small bar chart per case (shape, dtype): median ms per provider, p20-p80 whiskers."""
    cases = list(dict.fromkeys(_case(r) for r in rows))
    names = _providers(rows)
    colors = _colors(names)
    ncols = min(3, len(cases))
    nrows = -(-len(cases) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows + 0.6), squeeze=False)
    for ax, case in zip(axes.flat, cases):
        sub = [r for r in rows if _case(r) == case]
        xs = range(len(sub))
        err = [[r["median_ms"] - r["p20_ms"] for r in sub], [r["p80_ms"] - r["median_ms"] for r in sub]]
        ax.bar(xs, [r["median_ms"] for r in sub], color=[colors[r["provider"]] for r in sub],
               yerr=err, capsize=3)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([r["provider"] for r in sub], rotation=35, ha="right", fontsize=7)
        ax.set_ylabel("median ms", fontsize=8)
        ax.set_title(case, fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(cases):]:
        ax.set_visible(False)
    fig.suptitle(_title(rows, f"{bench}: median ms per call (whiskers p20-p80)"), fontsize=9)
    _tight_below_suptitle(fig)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_speedup(by_bench: dict[str, list[dict]], path: str) -> None:
    benches = list(by_bench)
    heights = [4 if b in BY_USERS else
               1.2 + 0.12 * len(by_bench[b]) + 0.25 * len({_case(r) for r in by_bench[b]})
               for b in benches]
    fig, axes = plt.subplots(len(benches), 1, figsize=(10, sum(heights)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, bench in zip(axes[:, 0], benches):
        rows = by_bench[bench]
        ref = next((r["provider"] for r in rows if r["speedup_vs_reference"] == 1.0), "reference")
        if bench in BY_USERS:
            for label, pts in _lines(rows).items():
                ax.plot([_x(r) for r in pts], [r["speedup_vs_reference"] for r in pts], marker="o",
                        label=label)
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted({_x(r) for r in rows}))
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.set_xlabel("users per batch (B)")
            ax.set_ylabel(f"speedup over {ref}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        else:
            _grouped_barh(ax, rows, "speedup_vs_reference")
            ax.axvline(1.0, color="k", lw=0.8)
            ax.set_xlabel(f"speedup over {ref} (> 1 is faster)")
        ax.set_title(f"{bench}: speedup over {ref}", fontsize=9)
    fig.suptitle(_title(next(iter(by_bench.values())), "speedup over the reference"), fontsize=9)
    _tight_below_suptitle(fig)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", help="a results CSV written by bench/latency.py")
    ap.add_argument("--out", default=None, help="output folder (default: the CSV's folder)")
    args = ap.parse_args(argv)
    rows = read_rows(args.csv)
    if not rows:
        print(f"{args.csv}: no rows", file=sys.stderr)
        return 1
    out = args.out or os.path.dirname(os.path.abspath(args.csv))
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, os.path.splitext(os.path.basename(args.csv))[0])
    by_bench: dict[str, list[dict]] = {}
    for r in rows:
        by_bench.setdefault(r["bench"], []).append(r)
    written = []
    if "model" in by_bench:
        written.append(stem + "_model_latency.png")
        plot_model(by_bench["model"], written[-1])
    if "train" in by_bench:
        written.append(stem + "_train_latency.png")
        plot_model(by_bench["train"], written[-1], what="training step latency (forward, backward, AdamW)",
                   ylabel="median latency per optimizer step (ms)")
    written.append(stem + "_speedup.png")
    plot_speedup(by_bench, written[-1])
    for bench, sub in by_bench.items():
        if bench not in BY_USERS:
            written.append(f"{stem}_{bench}_ms.png")
            plot_kernel_ms(sub, bench, written[-1])
    for p in written:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
