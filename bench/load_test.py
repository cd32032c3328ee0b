"""Bounded HTTP load test of the Ray Serve recommender, on loopback.

    python bench/load_test.py [--requests 2000] [--concurrency 32] [--max-batch-size 32]
                              [--batch-wait-ms 20] [--replicas 1] [--url URL] [--out DIR]

Without ``--url`` it starts ``python -m l2rec_serving`` (the built-in tiny model) on a free
127.0.0.1 port itself and stops it at the end. ``--concurrency`` clients send
``--requests`` requests in all (random histories, k and exclude flags), after a warm-up
that is not counted. It stops by itself: a bounded count, a per-request timeout and a
whole-run timeout (``--timeout-s``); requests left unanswered are counted, not waited for.

Reports p50/p90/p99 latency, throughput, errors, answered requests and the mean batch
size that dynamic batching reached (from the server's ``/stats`` before and after the run;
with several replicas that is the replica that answered ``/stats``). Prints a JSON summary,
writes it to ``DIR/load_test.json`` and appends a row to ``DIR/load_test.csv`` (default
bench/results/). Exits non-zero if any request failed or went unanswered.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import random
import shlex
import sys

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _http_client import run_phase  # noqa: E402
from _timing import percentile  # noqa: E402

CSV_FIELDS = ["date", "server", "requests", "concurrency", "answered", "errors", "unanswered", "wall_s",
              "throughput_rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_batch_size",
              "max_batch_size", "max_batch_size_setting", "batch_wait_ms", "replicas",
              "server_device", "client_machine", "load_avg_1m", "command"]


def make_bodies(n: int, num_items: int, max_history: int, seed: int) -> list[dict]:
    """n varied requests: histories of 1..2·max_history items, k in {5, 10, 20}, 1 in 5
    without history exclusion."""
    rng = random.Random(seed)
    bodies = []
    for _ in range(n):
        history = [rng.randint(1, num_items) for _ in range(rng.randint(1, 2 * max_history))]
        bodies.append({"history": history, "k": min(rng.choice((5, 10, 20)), num_items - len(history)),
                       "exclude_history": rng.random() >= 0.2})
    return bodies


def run_load(url: str, bodies: list[dict], concurrency: int, request_timeout_s: float,
             timeout_s: float) -> dict:
    """Send every body over keep-alive connections (``_http_client``); return the latencies
    (s) of the good answers, one message per error, the wall time and the load average,
    bounded by timeout_s."""
    phase = run_phase(url, bodies, concurrency, request_timeout_s, timeout_s, fresh_connections=False)
    records = phase["records"]
    return {"latencies": [r.latency_s for r in records if r.kind == "ok"],
            "errors": [r.detail for r in records if r.kind != "ok"], "wall_s": phase["wall_s"],
            "timed_out": phase["timed_out"], "load_avg_1m": phase["load_avg_1m"]}


def client_machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores"


def summarise(args, info: dict, before: dict, after: dict, result: dict) -> dict:
    lat_ms = [x * 1e3 for x in result["latencies"]]
    batches = after["batches"] - before["batches"]
    served = after["requests"] - before["requests"]
    answered = len(lat_ms)
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "requests": args.requests, "concurrency": args.concurrency, "answered": answered,
        "errors": len(result["errors"]), "unanswered": args.requests - answered - len(result["errors"]),
        "timed_out": result["timed_out"], "wall_s": round(result["wall_s"], 3),
        "throughput_rps": round(answered / result["wall_s"], 1),
        "p50_ms": round(percentile(lat_ms, 0.50), 2), "p90_ms": round(percentile(lat_ms, 0.90), 2),
        "p99_ms": round(percentile(lat_ms, 0.99), 2), "max_ms": round(max(lat_ms, default=float("nan")), 2),
        "mean_batch_size": round(served / batches, 2) if batches else 0.0,
        "max_batch_size": after["max_batch_size"], "forwards": batches,
        # The server's settings are known only for a server this script started.
        "max_batch_size_setting": None if args.url else args.max_batch_size,
        "batch_wait_ms": None if args.url else args.batch_wait_ms,
        "replicas": None if args.url else args.replicas,
        "server": args.url or "ray_app (started by this script)",
        "server_device": info.get("device"), "server_model": info.get("model"),
        "server_backend": info.get("backend"), "client_machine": client_machine(),
        "load_avg_1m": result["load_avg_1m"],
        "first_errors": result["errors"][:5],
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    }


def write_results(summary: dict, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "load_test.json"), "w") as f:
        json.dump(summary, f, indent=2)
    path = os.path.join(out_dir, "load_test.csv")
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(summary)


def measure(url: str, args) -> dict:
    info = httpx.get(url + "/healthz", timeout=30).json()
    n_items, max_hist = info["num_items"], info["max_history"]
    warm = make_bodies(2 * args.concurrency, n_items, max_hist, args.seed + 1)
    run_load(url, warm, args.concurrency, args.request_timeout_s, args.timeout_s)  # not counted
    before = httpx.get(url + "/stats", timeout=30).json()
    # (run_load reports the load average: other work on a shared machine shows up there)
    result = run_load(url, make_bodies(args.requests, n_items, max_hist, args.seed), args.concurrency,
                      args.request_timeout_s, args.timeout_s)
    after = httpx.get(url + "/stats", timeout=30).json()
    return summarise(args, info, before, after, result)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--url", help="a running server (default: start one on 127.0.0.1)")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--batch-wait-ms", type=float, default=20.0)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--tiny-items", type=int, default=200)
    ap.add_argument("--request-timeout-s", type=float, default=60.0)
    ap.add_argument("--timeout-s", type=float, default=600.0, help="bound on the whole measured run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()

    if args.url:
        summary = measure(args.url.rstrip("/"), args)
    else:
        from l2rec_serving.launch import ServerProcess

        server_args = ["--max-batch-size", str(args.max_batch_size),
                       "--batch-wait-ms", str(args.batch_wait_ms),
                       "--replicas", str(args.replicas), "--tiny-items", str(args.tiny_items)]
        with ServerProcess(server_args) as server:
            summary = measure(server.url, args)
    print(json.dumps(summary, indent=2))
    write_results(summary, args.out)
    return 0 if summary["errors"] == 0 and summary["unanswered"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
