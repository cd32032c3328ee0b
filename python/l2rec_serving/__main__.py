"""``python -m l2rec_serving``: start the Ray Serve recommender and serve until Ctrl-C.

    python -m l2rec_serving --port 8000                       # built-in tiny random model
    python -m l2rec_serving --port 8000 --checkpoint DIR --backbone PATH [--titles FILE]
    python -m l2rec_serving --ray-address auto --host 0.0.0.0 --replicas 4 --num-gpus 1 ...

Binds to 127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading

from l2rec_kernels.models.compiled import SERVING_MODES

from .admission import DEFAULT_MAX_QUEUED, DEFAULT_REQUEST_TIMEOUT_S, DEFAULT_RETRY_AFTER_S, ServerLimits
from .limits import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HISTORY_ITEMS, DEFAULT_MAX_K
from .model_args import add_model_arguments, spec_from_args


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m l2rec_serving",
                                 description="Serve an L2Rec recommender over HTTP with Ray Serve.")
    ap.add_argument("--port", type=int, required=True, help="HTTP port")
    ap.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)")
    ap.add_argument("--replicas", type=int, default=1, help="model replicas (default 1)")
    ap.add_argument("--max-batch-size", type=int, default=32, help="most requests per forward")
    ap.add_argument("--batch-wait-ms", type=float, default=20.0,
                    help="how long a replica waits to fill a batch (default 20 ms)")
    ap.add_argument("--num-gpus", type=float, default=0, help="GPUs per replica (default 0)")
    ap.add_argument("--num-cpus", type=float, default=1, help="CPUs per replica (default 1)")
    add_model_arguments(ap)
    ap.add_argument("--compile", dest="compile_mode", default=None,
                    choices=SERVING_MODES,
                    help="run the forward as torch.compile graphs over batch/length buckets "
                         "(reduce-overhead: CUDA graphs on a GPU); each replica compiles every "
                         "bucket before it serves (minutes). Default: eager")
    ap.add_argument("--ray-address", help="join a running Ray cluster (e.g. auto) instead of "
                                          "starting a new local one (without it the server never "
                                          "joins a cluster that `ray start` runs on this machine)")
    ap.add_argument("--access-log", action="store_true", help="log every request")
    lim = ap.add_argument_group("limits", "what one request may carry and how much a replica takes on "
                                          "(GET /healthz shows them)")
    lim.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                     help=f"larger request bodies get a 413 (default {DEFAULT_MAX_BODY_BYTES})")
    lim.add_argument("--max-history-items", type=int, default=DEFAULT_MAX_HISTORY_ITEMS,
                     help=f"longest history accepted (default {DEFAULT_MAX_HISTORY_ITEMS})")
    lim.add_argument("--max-k", type=int, default=DEFAULT_MAX_K,
                     help=f"k is at most min(catalogue size, this) (default {DEFAULT_MAX_K})")
    lim.add_argument("--max-prompt-tokens", type=int,
                     help="longest prompt_ids accepted (default: what the backbone reads, at most 8192)")
    lim.add_argument("--max-queued", type=int, default=DEFAULT_MAX_QUEUED,
                     help="requests a replica holds at once; more get a 503 with Retry-After "
                          f"(default {DEFAULT_MAX_QUEUED})")
    lim.add_argument("--request-timeout-s", type=float, default=DEFAULT_REQUEST_TIMEOUT_S,
                     help="a request not answered in this time gets a 504 "
                          f"(default {DEFAULT_REQUEST_TIMEOUT_S:g})")
    lim.add_argument("--retry-after-s", type=float, default=DEFAULT_RETRY_AFTER_S,
                     help=f"the Retry-After of a 503 (default {DEFAULT_RETRY_AFTER_S:g})")
    args = ap.parse_args(argv)
    # The spec's and the limits' own checks, as argument errors before anything starts.
    args.spec = spec_from_args(ap, args, max_body_bytes=args.max_body_bytes,
                               max_history_items=args.max_history_items, max_k=args.max_k,
                               max_prompt_tokens=args.max_prompt_tokens, compile_mode=args.compile_mode)
    try:
        args.limits = ServerLimits(max_queued=args.max_queued, request_timeout_s=args.request_timeout_s,
                                   retry_after_s=args.retry_after_s)
    except ValueError as exc:  # the message names the setting (max_queued for --max-queued, ...)
        ap.error(str(exc))
    # Fail here, not after Ray has started, when a local checkpoint path is wrong. (On a
    # cluster the path need only exist on the replicas' nodes, so it is not checked then.)
    if args.checkpoint and not args.ray_address \
            and not os.path.isfile(os.path.join(args.checkpoint, "l2rec_config.json")):
        ap.error(f"--checkpoint {args.checkpoint}: no l2rec_config.json there (not an L2Rec checkpoint)")
    return args


def _stop_on_signals(done: threading.Event) -> None:
    """SIGINT and SIGTERM set ``done``. Both explicitly: a shell starts background jobs
    with SIGINT ignored, and SIGTERM is how process managers (and tests) stop a server."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())


def main(argv=None) -> None:
    args = parse_args(argv)
    from . import ray_app
    done = threading.Event()
    _stop_on_signals(done)  # a Ctrl-C during start-up stops the server once it is up
    try:  # stop() in finally: a failed start (e.g. a bad checkpoint) leaves no Ray behind
        ray_app.start(args.spec, host=args.host, port=args.port, replicas=args.replicas,
                      max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_ms / 1e3,
                      num_gpus=args.num_gpus, num_cpus=args.num_cpus, ray_address=args.ray_address,
                      access_log=args.access_log, limits=args.limits)
        _stop_on_signals(done)  # again: ray.init replaced the SIGTERM handler with its own
        # (launch.READY_LINE: printed only once our handlers are back, so a caller that waits
        # for it can stop the server with SIGTERM)
        print(f"l2rec_serving: serving on http://{args.host}:{args.port} "
              "(POST /recommend, GET /healthz, GET /stats); Ctrl-C to stop", flush=True)
        while not done.wait(1.0):  # a timed wait, so the signal handler gets to run promptly
            pass
    finally:
        ray_app.stop()


if __name__ == "__main__":
    main()
