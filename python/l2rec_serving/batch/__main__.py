"""``python -m l2rec_serving.batch``: score a whole users file offline on Ray Data.

    python -m l2rec_serving.batch --checkpoint CKPT --backbone DIR --titles titles.txt \\
        --users users.parquet --out scores/ --k 100 [--preference] [--ray-address ADDR] \\
        [--actors N] [--batch-size B] [--threads T] [--overwrite]
    python -m l2rec_serving.batch --out /tmp/score-demo     # the tiny model, synthetic users
    python -m l2rec_serving.batch --out /tmp/scores --model-shape qwen3-0.6b-paper --tiny-items 10000

Without ``--checkpoint`` it scores with the built-in tiny model; without ``--users`` too, it
first writes a synthetic users file (``--demo-users`` users plus a few bad rows) and scores
that. Exit status: 0 when the output was published, 2 for bad command-line arguments, 1
when the job did not publish (the message says why; the output directory is unchanged).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile

from l2rec_kernels.models.shapes import MODEL_SHAPES

from ..limits import DEFAULT_MAX_HISTORY_ITEMS
from ..model_args import add_model_arguments, spec_from_args
from .options import DEFAULT_RETRIES, DEFAULT_ROWS_PER_FILE, BatchOptions
from .rows import FORMATS


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m l2rec_serving.batch",
                                 description="Score every user of a users file with an L2Rec model on "
                                             "Ray Data; the output is published whole or not at all.")
    ap.add_argument("--users", help="users file or directory (Parquet, CSV or JSON lines) with user_id, "
                                    "history and optionally prompt; default: a synthetic file (tiny model)")
    ap.add_argument("--out", required=True, help="output directory: scores/, rejected/, _manifest.json")
    ap.add_argument("--format", dest="fmt", choices=FORMATS, help="users file format (default: by extension)")
    add_model_arguments(ap)
    ap.add_argument("--k", type=int, default=100, help="items per user (default 100)")
    ap.add_argument("--preference", action="store_true", help="also write each user's preference vector")
    ap.add_argument("--include-history", action="store_true",
                    help="allow a user's own history items in their recommendations (default: excluded)")
    ap.add_argument("--ray-address", help="join this Ray cluster (e.g. auto) instead of starting a local one")
    ap.add_argument("--actors", type=int, default=1, help="model actors (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per actor (default 1); "
                                                           "actors x threads = the cores to use")
    ap.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per actor (default 0)")
    ap.add_argument("--batch-size", type=int, default=32, help="users per forward (default 32)")
    ap.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                    help="attempts of a failed scoring call or write beyond the first "
                         f"(default {DEFAULT_RETRIES})")
    ap.add_argument("--rows-per-file", type=int, default=DEFAULT_ROWS_PER_FILE,
                    help=f"least rows per output file (default {DEFAULT_ROWS_PER_FILE})")
    ap.add_argument("--max-history-items", type=int, default=DEFAULT_MAX_HISTORY_ITEMS,
                    help=f"longer histories are rejected (default {DEFAULT_MAX_HISTORY_ITEMS})")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an existing output directory (atomically, once this run has succeeded)")
    ap.add_argument("--model-shape", choices=sorted(MODEL_SHAPES),
                    help="instead of the tiny model, a random-weight model of this named shape "
                         "(e.g. qwen3-0.6b-paper) with prompts of its length: to time a job at a "
                         "real model's widths")
    ap.add_argument("--demo-users", type=int, default=2000, help="synthetic users without --users")
    args = ap.parse_args(argv)
    args.spec = spec_from_args(ap, args, model_shape=args.model_shape)
    if args.checkpoint and not args.users:
        ap.error("--users is required with --checkpoint (synthetic users are for the tiny model)")
    try:
        args.options = BatchOptions(k=args.k, batch_size=args.batch_size, actors=args.actors,
                                    threads=args.threads, gpus_per_actor=args.gpus_per_actor,
                                    preference=args.preference, exclude_history=not args.include_history,
                                    max_history_items=args.max_history_items, retries=args.retries,
                                    overwrite=args.overwrite, fmt=args.fmt, rows_per_file=args.rows_per_file)
    except (TypeError, ValueError) as exc:  # the message names the option
        ap.error(str(exc))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from .job import run_job

    users = args.users
    if users is None:
        from .demo import write_users

        users = os.path.join(tempfile.mkdtemp(prefix="l2rec_batch_demo_"), "users.parquet")
        n = write_users(users, args.demo_users, num_items=args.tiny_items, bad_rows=True)
        print(f"l2rec_serving.batch: wrote {n} synthetic users (a few of them bad) to {users}", flush=True)
    command = "python -m l2rec_serving.batch " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    import ray

    had_ray = ray.is_initialized()
    try:
        run_job(users, args.out, args.spec, args.options, ray_address=args.ray_address, command=command)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"l2rec_serving.batch: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if not had_ray:  # (a caller's own Ray stays up)
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
