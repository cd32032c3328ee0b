"""Batch scoring throughput: Ray Data actors against a plain in-process loop, in one run.

    python bench/batch_bench.py [--users 20000] [--k 100] [--batch-size 32] [--repeats 1]
                                [--ways loop,ray-1x1,ray-2x1] [--model-shape NAME]
                                [--items 200] [--device auto] [--out bench/results]

The built-in tiny model (or, with ``--model-shape``, a random-weight model of that named
shape, e.g. ``qwen3-0.6b-paper``, whose prompts have the shape's length: 256 tokens) scores
the same synthetic users file (``--users`` users) up to three ways, each with one CPU
thread per model (on a GPU, ``--device cuda``: the model on the GPU, one GPU per actor):

* ``loop``: this process calls the job's own scoring callable (``batch.scorer.UserScorer``:
  row checks, prompts, bucketing, ``recommend``) over the file's batches one after another,
  the model already loaded and one pass over 500 other users done (first-call costs: kernel
  compiles, ``auto``'s measurements): no Ray, no reading or writing;
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
ratios of the ways that ran, the command, the machine and GPU, the versions and the load
average before and after). ``--ways loop`` needs no Ray: on a GPU machine without Ray it
times one GPU actor's work (``UserScorer``: checks, prompts, bucketing, ``recommend``)
in-process, e.g. ``--ways loop --model-shape qwen3-0.6b-paper --device cuda --items 10000
--users 2048 --batch-size 64`` (issue 25's GPU goal, users/s of one GPU actor at T = 256).
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

CSV_FIELDS = ["date", "way", "model", "device", "dtype", "users", "k", "batch_size", "actors", "threads",
              "median_s", "runs_s", "users_per_s", "quarter_s", "fixed_s", "steady_users_per_s",
              "first_pass_s", "forward_s", "machine", "load_avg_1m", "ray", "torch", "pyarrow", "python",
              "git_sha", "command"]
WAYS = {"loop": 0, "ray-1x1": 1, "ray-2x1": 2}  # way -> its Ray actors (of 1 thread each)


def load_avg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return ""


def model_spec(args):
    from l2rec_serving.loading import ServiceSpec

    return ServiceSpec(tiny_num_items=args.items, model_shape=args.model_shape, device=args.device)


def time_loop(users: str, args, warm: str) -> tuple[float, float]:
    """(seconds, seconds in the model) of the plain loop over the file's batches, after one
    pass over the ``warm`` file (first-call costs: kernel compiles, the auto backend's
    measurements, allocator growth)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from l2rec_serving.batch.options import BatchOptions
    from l2rec_serving.batch.scorer import UserScorer

    options = BatchOptions(k=args.k, batch_size=args.batch_size, threads=1)
    scorer = UserScorer(model_spec(args), options, "parquet", {}, pa.string())

    def run(path: str) -> tuple[float, int]:
        table = pq.read_table(path)
        t0 = time.perf_counter()
        rows = sum(scorer(table.slice(off, options.rows_per_call)).num_rows
                   for off in range(0, table.num_rows, options.rows_per_call))
        assert rows == table.num_rows
        return time.perf_counter() - t0, rows

    run(warm)
    scorer.forward_s = 0.0
    seconds, _ = run(users)
    return seconds, scorer.forward_s


def time_job(users: str, out: str, args, actors: int, gpus: float) -> dict:
    from l2rec_serving.batch import BatchOptions, run_job

    options = BatchOptions(k=args.k, batch_size=args.batch_size, actors=actors, threads=1,
                           gpus_per_actor=gpus, overwrite=True)
    summary = run_job(users, out, model_spec(args), options, quiet=True).summary
    assert summary["counts"]["scored"] == summary["counts"]["input"], summary["counts"]
    return summary


def way_list(text: str) -> list[str]:
    ways = [w for w in text.split(",") if w]
    bad = [w for w in ways if w not in WAYS]
    if bad or not ways:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(WAYS)}")
    return ways


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--items", "--tiny-items", dest="items", type=int, default=200,
                    help="catalogue size of the model (default 200)")
    ap.add_argument("--model-shape", default=None,
                    help="a named shape's random-weight model instead of the tiny one")
    ap.add_argument("--device", default="auto", help="auto (cuda where a GPU is visible), cpu, cuda")
    ap.add_argument("--ways", type=way_list, default=list(WAYS), help=f"any of {','.join(WAYS)}")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    argv_used = sys.argv[1:] if argv is None else argv
    command = "python bench/batch_bench.py " + " ".join(shlex.quote(a) for a in argv_used)

    import pyarrow
    import torch
    from _report import dtype_name, git_sha
    from l2rec_serving.batch.demo import write_users
    from load_test import client_machine

    spec = model_spec(args)  # (checks --model-shape before anything is built)
    device = spec.resolved_device()
    torch.set_num_threads(1)
    load_before = load_avg()
    tmp = tempfile.mkdtemp(prefix="l2rec_batch_bench_")
    users = os.path.join(tmp, "users.parquet")
    write_users(users, args.users, num_items=args.items)
    warm = os.path.join(tmp, "warm.parquet")
    write_users(warm, 500, num_items=args.items, seed=1)
    ray_ways = [w for w in args.ways if WAYS[w]]
    quarter = os.path.join(tmp, "quarter.parquet")
    if ray_ways:  # (the Ray ways' split into a fixed part and a rate)
        write_users(quarter, args.users // 4, num_items=args.items, seed=2)
    runs: dict[str, list] = {w: [] for w in args.ways}
    ray_version = "not used"
    if ray_ways:
        import ray

        ray_version = ray.__version__
        ray.init(address="local", num_cpus=3, include_dashboard=False, logging_level="ERROR")
        ray.data.DataContext.get_current().enable_progress_bars = False
    gpus = 1.0 if device.type == "cuda" else 0.0
    try:
        if ray_ways:  # starts Ray's worker processes; not counted
            time_job(warm, os.path.join(tmp, "warm_out"), args, WAYS[ray_ways[-1]], gpus)
        for r in range(args.repeats):
            print(f"batch_bench: repeat {r + 1}/{args.repeats} (load {load_avg()})", file=sys.stderr,
                  flush=True)
            if "loop" in runs:
                runs["loop"].append(time_loop(users, args, warm))
            for way in ray_ways:
                actors = WAYS[way]
                out = os.path.join(tmp, f"out{actors}")
                small = time_job(quarter, out, args, actors, gpus)
                full = time_job(users, out, args, actors, gpus)
                runs[way].append((full["wall_s"], full["first_pass_s"], small["wall_s"]))
    finally:
        if ray_ways:
            ray.shutdown()
    load_after = load_avg()

    date = dt.datetime.now(dt.timezone.utc)
    machine = client_machine()
    if device.type == "cuda":
        machine += f"; GPU {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    meta = {"date": date.isoformat(timespec="seconds"), "users": args.users, "k": args.k,
            "batch_size": args.batch_size, "threads": 1, "machine": machine,
            "model": f"{args.model_shape or 'tiny'} ({args.items} items)", "device": device.type,
            "dtype": dtype_name(spec.resolved_dtype(device)),
            "load_avg_1m": f"{load_before.split()[0] if load_before else ''} -> "
                           f"{load_after.split()[0] if load_after else ''}",
            "ray": ray_version, "torch": torch.__version__, "pyarrow": pyarrow.__version__,
            "python": platform.python_version(), "git_sha": git_sha(), "command": command}
    rows = [summarise(way, samples, args.users, meta) for way, samples in runs.items()]
    e2e = {r["way"]: r["users_per_s"] for r in rows}
    steady = {r["way"]: r["steady_users_per_s"] for r in rows}
    ratios = {}
    for (a, b), goal in ((("ray-2x1", "ray-1x1"), 1.7), (("ray-1x1", "loop"), 0.85)):
        if a in e2e and b in e2e:
            ratios[f"{a} / {b}, end to end (goal >= {goal})"] = e2e[a] / e2e[b]
            ratios[f"{a} / {b}, steady rate (goal >= {goal})"] = steady[a] / steady[b]
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
    row = {**meta, "way": way, "actors": WAYS[way],
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
             f"Model: {meta['model']} on {meta['device']} in {meta['dtype']}; {meta['users']} synthetic "
             f"users, k = {meta['k']}, {meta['batch_size']} users per forward, 1 CPU thread per model.",
             "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    lines += ["", *(f"- {name}: **{value:.2f}**" for name, value in ratios.items()), "",
              "loop: the job's scoring callable in this process over the same batches, model loaded "
              "and one pass over 500 other users done first, no reading or writing; forward_s its "
              "time in the model. ray-AxT: a whole job (first "
              "pass, actors' start and model load, scoring, writing, commit) with A actors of T threads "
              "on a local Ray started before; first_pass_s its first pass over the user ids; quarter_s "
              "the same job over a quarter of the users; fixed_s and steady_users_per_s the split "
              "T(n) = fixed + n / steady rate through the two."]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"batch_bench: wrote {stem}.csv and .md", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
