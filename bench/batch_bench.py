"""Batch scoring throughput: Ray Data actors against a plain in-process loop, in one run.

    python bench/batch_bench.py [--users 20000] [--k 100] [--batch-size 32] [--repeats 1]
                                [--out bench/results]

The built-in tiny model scores the same synthetic users file (``--users`` users) three
ways, each with one CPU thread per model:

* ``loop``: this process calls the job's own scoring callable (``batch.scorer.UserScorer``:
  row checks, prompts, bucketing, ``recommend``) over the file's batches one after another,
  the model already loaded: no Ray, no reading or writing;
* ``ray-1x1``: ``batch.run_job`` with 1 actor x 1 thread;
* ``ray-2x1``: ``batch.run_job`` with 2 actors x 1 thread.

A Ray job is timed from reading the input to its verified, published output (``wall_s``:
the first pass over the user ids, the actors' start and model load, scoring, writing and
the commit), on a local Ray started once before (as a cluster would be); a small job before
the measured ones starts Ray's worker processes, and is not counted. Each Ray way also runs
a quarter of the users, so that its time splits into a fixed part and a rate, T(n) = F + n/r:
``fixed_s`` (F: chiefly the actors' process start, imports and model load, which the loop,
timed with its model loaded, does not pay) and ``steady_users_per_s`` (r). With
``--repeats`` every run is repeated in turn that many times and medians count. The goals
(issue 25): 2x1 at least 1.7x 1x1; 1x1 at least 0.85x the loop; both are reported end to
end (users / wall) and at the steady rate.

Writes ``DIR/batch_scoring_<date>.csv`` (a row per way) and ``.md`` (the table, the
ratios, the command, the machine, the versions and the load average before and after).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

CSV_FIELDS = ["date", "way", "users", "k", "batch_size", "actors", "threads", "median_s", "runs_s",
              "users_per_s", "quarter_s", "fixed_s", "steady_users_per_s", "first_pass_s", "forward_s",
              "machine", "load_avg_1m", "ray", "torch", "pyarrow", "python", "git_sha", "command"]


def load_avg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return ""


def time_loop(users: str, k: int, batch_size: int, num_items: int) -> tuple[float, float]:
    """(seconds, seconds in the model) of the plain loop over the file's batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from l2rec_serving.batch.options import BatchOptions
    from l2rec_serving.batch.scorer import UserScorer
    from l2rec_serving.loading import ServiceSpec

    options = BatchOptions(k=k, batch_size=batch_size, threads=1)
    scorer = UserScorer(ServiceSpec(tiny_num_items=num_items), options, "parquet", {}, pa.string())
    table = pq.read_table(users)
    t0 = time.perf_counter()
    rows = sum(scorer(table.slice(off, options.rows_per_call)).num_rows
               for off in range(0, table.num_rows, options.rows_per_call))
    seconds = time.perf_counter() - t0
    assert rows == table.num_rows
    return seconds, scorer.forward_s


def time_job(users: str, out: str, k: int, batch_size: int, actors: int, num_items: int) -> dict:
    from l2rec_serving.batch import BatchOptions, run_job
    from l2rec_serving.loading import ServiceSpec

    options = BatchOptions(k=k, batch_size=batch_size, actors=actors, threads=1, overwrite=True)
    summary = run_job(users, out, ServiceSpec(tiny_num_items=num_items), options, quiet=True).summary
    assert summary["counts"]["scored"] == summary["counts"]["input"], summary["counts"]
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--tiny-items", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    argv_used = sys.argv[1:] if argv is None else argv
    command = "python bench/batch_bench.py " + " ".join(shlex.quote(a) for a in argv_used)

    import pyarrow
    import ray
    import torch
    from _report import git_sha
    from l2rec_serving.batch.demo import write_users
    from load_test import client_machine

    torch.set_num_threads(1)
    load_before = load_avg()
    tmp = tempfile.mkdtemp(prefix="l2rec_batch_bench_")
    users = os.path.join(tmp, "users.parquet")
    write_users(users, args.users, num_items=args.tiny_items)
    quarter = os.path.join(tmp, "quarter.parquet")
    write_users(quarter, args.users // 4, num_items=args.tiny_items, seed=2)
    ray.init(address="local", num_cpus=3, include_dashboard=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        warm = os.path.join(tmp, "warm.parquet")
        write_users(warm, 500, num_items=args.tiny_items, seed=1)
        time_job(warm, os.path.join(tmp, "warm_out"), args.k, args.batch_size, 2, args.tiny_items)
        runs: dict[str, list] = {"loop": [], "ray-1x1": [], "ray-2x1": []}
        for r in range(args.repeats):
            print(f"batch_bench: repeat {r + 1}/{args.repeats} (load {load_avg()})", file=sys.stderr,
                  flush=True)
            runs["loop"].append(time_loop(users, args.k, args.batch_size, args.tiny_items))
            for actors in (1, 2):
                out = os.path.join(tmp, f"out{actors}")
                small = time_job(quarter, out, args.k, args.batch_size, actors, args.tiny_items)
                full = time_job(users, out, args.k, args.batch_size, actors, args.tiny_items)
                runs[f"ray-{actors}x1"].append((full["wall_s"], full["first_pass_s"], small["wall_s"]))
    finally:
        ray.shutdown()
    load_after = load_avg()

    date = dt.datetime.now(dt.timezone.utc)
    meta = {"date": date.isoformat(timespec="seconds"), "users": args.users, "k": args.k,
            "batch_size": args.batch_size, "threads": 1, "machine": client_machine(),
            "load_avg_1m": f"{load_before.split()[0] if load_before else ''} -> "
                           f"{load_after.split()[0] if load_after else ''}",
            "ray": ray.__version__, "torch": torch.__version__, "pyarrow": pyarrow.__version__,
            "python": platform.python_version(), "git_sha": git_sha(), "command": command}
    rows = [summarise(way, samples, args.users, meta) for way, samples in runs.items()]
    e2e = {r["way"]: r["users_per_s"] for r in rows}
    steady = {r["way"]: r["steady_users_per_s"] for r in rows}
    ratios = {"2x1 / 1x1, end to end (goal >= 1.7)": e2e["ray-2x1"] / e2e["ray-1x1"],
              "1x1 / loop, end to end (goal >= 0.85)": e2e["ray-1x1"] / e2e["loop"],
              "2x1 / 1x1, steady rate (goal >= 1.7)": steady["ray-2x1"] / steady["ray-1x1"],
              "1x1 / loop, steady rate (goal >= 0.85)": steady["ray-1x1"] / steady["loop"]}
    write_results(rows, ratios, meta, args.out, date)
    for r in rows:
        print(f"{r['way']:8s} {r['users_per_s']:8.1f} users/s  ({r['median_s']} s)")
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    return 0


def summarise(way: str, samples: list[tuple], users: int, meta: dict) -> dict:
    """One result row: medians of the runs, and for a Ray way its split T(n) = F + n/r from
    the full and the quarter runs (the loop: F = 0, r = users / its time)."""
    def med(i: int) -> float:
        return statistics.median(s[i] for s in samples)

    full = med(0)
    row = {**meta, "way": way, "actors": {"loop": 0, "ray-1x1": 1, "ray-2x1": 2}[way],
           "median_s": round(full, 3), "runs_s": " ".join(f"{s[0]:.2f}" for s in samples),
           "users_per_s": round(users / full, 1), "quarter_s": "", "fixed_s": 0.0,
           "steady_users_per_s": round(users / full, 1), "first_pass_s": "", "forward_s": ""}
    if way == "loop":
        row["forward_s"] = round(med(1), 3)
        return row
    quarter = med(2)
    rate = (users - users // 4) / (full - quarter) if full > quarter else float("nan")
    row.update(quarter_s=round(quarter, 3), fixed_s=round(full - users / rate, 2),
               steady_users_per_s=round(rate, 1), first_pass_s=round(med(1), 3))
    return row


def write_results(rows: list[dict], ratios: dict, meta: dict, out_dir: str, date: dt.datetime) -> None:
    import csv

    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"batch_scoring_{date.strftime('%Y%m%d_%H%M%S')}")
    with open(stem + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    cols = ["way", "actors", "threads", "median_s", "runs_s", "users_per_s", "quarter_s", "fixed_s",
            "steady_users_per_s", "first_pass_s", "forward_s"]
    lines = [f"# Batch scoring throughput ({meta['date']})", "",
             f"Command: `{meta['command']}`.  ",
             f"Machine: {meta['machine']}; load average (1 min) {meta['load_avg_1m']} (before -> after).  ",
             f"Versions: ray {meta['ray']}, torch {meta['torch']}, pyarrow {meta['pyarrow']}, "
             f"python {meta['python']}; git {meta['git_sha']}.  ",
             f"Tiny model, {meta['users']} synthetic users, k = {meta['k']}, {meta['batch_size']} users "
             "per forward, 1 thread per model.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    lines += ["", *(f"- {name}: **{value:.2f}**" for name, value in ratios.items()), "",
              "loop: the job's scoring callable in this process over the same batches, model loaded, "
              "no reading or writing; forward_s its time in the model. ray-AxT: a whole job (first "
              "pass, actors' start and model load, scoring, writing, commit) with A actors of T threads "
              "on a local Ray started before; first_pass_s its first pass over the user ids; quarter_s "
              "the same job over a quarter of the users; fixed_s and steady_users_per_s the split "
              "T(n) = fixed + n / steady rate through the two."]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"batch_bench: wrote {stem}.csv and .md", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
