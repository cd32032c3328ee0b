"""Ray Serve deployment: ``RecommenderService`` behind HTTP JSON with dynamic batching.

    POST /recommend  {"history": [ids], "k": 10, "exclude_history": true, "prompt_ids": [...]?}
                     -> 200 {"items": [...], "scores": [...]} (scores descending)
                     -> 400/413/422 {"error": "...", "errors": [{"field", "message"}]} if bad
                     -> 503 (+ Retry-After) when the replica is full, 504 after request_timeout_s
    GET  /healthz    -> {"status": "ok", model, limits, "stats": batch statistics}
    GET  /stats      -> the batch statistics of the replica that answered
    GET  /openapi.json

Each replica builds its model once (from a picklable ``ServiceSpec``) and runs requests
that arrive close together as one forward (``@serve.batch``). Requests are validated
*before* they join a batch, so one bad request never fails the others' forward. The
routes, error handling, limits and admission control are ``http_api.create_api``'s, the
same app the FastAPI example serves; each replica builds its own (``__serve_build_asgi_app__``).

Overload: a replica admits ``max_queued`` requests at once and answers the next at once
with our 503 + ``Retry-After`` (``admission``). Ray's own limits are set above ours so
that ours is what clients see: ``max_ongoing_requests`` (requests Ray lets into a replica)
is ``max_queued`` plus room for the 503s and /healthz, so an excess request reaches the
replica and is refused there instead of waiting in Ray's proxy. Ray's
``max_queued_requests`` (requests a proxy holds while it picks a replica, or while every
replica is at ``max_ongoing_requests`` or none is alive, e.g. one restarting) is what the
replicas take in together; past it Ray's proxy answers 503 itself, with our Retry-After
but a plain-text body (a burst larger than all replicas hold can meet it). Ray's proxy
timeout (``request_timeout_s`` + 5 s, a backstop behind our 504) answers 408 in plain
text. A deployment Ray deems unavailable gets Ray's plain-text 503 without Retry-After.

Locally: ``python -m l2rec_serving --port 8000`` (see ``__main__``). On a Ray cluster, the
same application via ``serve run`` (arguments as ``key=value``)::

    ray start --head                                   # head node
    ray start --address HEAD_IP:6379                   # each GPU node
    serve run l2rec_serving.ray_app:app_builder checkpoint=/ckpt backbone=/models/qwen \\
        titles=/ckpt/titles.json replicas=4 num_gpus=1 max_batch_size=64

or ``python -m l2rec_serving --ray-address auto --host 0.0.0.0 --replicas 4 --num-gpus 1
--checkpoint /ckpt --backbone /models/qwen``. Each replica gets ``num_gpus`` GPUs
(``ray_actor_options={"num_gpus": ...}``) and builds its model on one; the checkpoint and
backbone paths must exist on every node.
"""

# No ``from __future__ import annotations`` here: Serve wraps this class and its methods.
import asyncio
import inspect
import os

import ray
from ray import serve

# This module uses two recent Ray Serve features: an ingress whose app a replica builds
# itself (``serve.ingress()`` + ``__serve_build_asgi_app__``: the app needs the replica's
# model and limits) and ``BackpressureConfig`` (Retry-After on Ray's own 503). Say so
# plainly on an older Ray instead of failing obscurely when the app starts.
try:
    from ray.serve.config import BackpressureConfig
except ImportError:
    BackpressureConfig = None
if BackpressureConfig is None or inspect.signature(serve.ingress).parameters["app"].default is not None:
    raise ImportError(f"l2rec_serving.ray_app needs a newer Ray Serve than ray {ray.__version__} "
                      "(serve.ingress() with __serve_build_asgi_app__, and BackpressureConfig); "
                      "install a recent ray[serve] (tested with 2.60)")

from .admission import DEFAULT_MAX_QUEUED, DEFAULT_REQUEST_TIMEOUT_S, DEFAULT_RETRY_AFTER_S, ServerLimits
from .http_api import create_api
from .limits import check_positive_int
from .loading import ServiceSpec, build_service

DEFAULT_MAX_BATCH_SIZE = 32
# How long a replica waits to fill a batch: longer buys throughput under load, shorter
# lowers light-load latency (bench/load_test.py --batch-wait-ms measures the trade).
DEFAULT_BATCH_WAIT_S = 0.020
# Requests Ray lets into a replica beyond max_queued: the ones our admission refuses (each
# is "ongoing" for Ray until its 503 is sent) and /healthz or /stats. Generous, so a burst
# reaches the replica and gets our 503 rather than Ray's plain-text one from its proxy
# queue (a refusal costs the replica almost nothing).
RAY_MIN_HEADROOM = 64
# Ray's proxy gives up on a request this long after ours would have (a backstop: ours is a
# 504 in the API's error shape, Ray's a plain-text 408).
RAY_TIMEOUT_MARGIN_S = 5.0


def ray_max_ongoing(max_queued: int) -> int:
    """Ray's ``max_ongoing_requests`` per replica for our ``max_queued``."""
    return max_queued + max(RAY_MIN_HEADROOM, max_queued)


@serve.deployment(name="L2RecRecommender")
@serve.ingress()  # the app comes from __serve_build_asgi_app__, once the model is built
class RecommenderDeployment:
    """One replica: a model, a validator, a dynamic batcher and the HTTP API over them."""

    def __init__(self, spec: ServiceSpec, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_S,
                 limits: ServerLimits | None = None) -> None:
        self.service = build_service(spec)
        self.limits = limits or ServerLimits()
        # The decorator's values are defaults; each application sets its own.
        self._batched.set_max_batch_size(max_batch_size)
        self._batched.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def __serve_build_asgi_app__(self):
        return create_api(lambda: self.service, self._batched, self.limits, title="L2Rec recommender",
                          extra_info=lambda: {"replica_pid": os.getpid()})

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def _batched(self, requests: list) -> list:
        # The forward runs in a worker thread so this replica's event loop keeps accepting
        # and validating requests meanwhile: they form the next batch. (Requests whose
        # callers timed out before the batch started are dropped by @serve.batch.)
        return await asyncio.to_thread(self.service.recommend_batch_isolated, requests)


def build_app(spec: ServiceSpec | None = None, *, replicas: int = 1,
              max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
              batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_S, num_gpus: float = 0,
              num_cpus: float = 1, limits: ServerLimits | None = None):
    """The Serve application (unstarted): ``replicas`` replicas of ``num_cpus`` CPUs and
    ``num_gpus`` GPUs each, each holding at most ``limits.max_queued`` requests."""
    check_positive_int("replicas", replicas)
    check_positive_int("max_batch_size", max_batch_size)
    for name, v in (("batch_wait_timeout_s", batch_wait_timeout_s), ("num_gpus", num_gpus),
                    ("num_cpus", num_cpus)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {v!r}")
    limits = limits or ServerLimits()
    return RecommenderDeployment.options(
        num_replicas=replicas,
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
        # Above our admission limit, so an excess request reaches the replica and gets our
        # 503 at once (Ray's default of 5 would also cap every batch at 5).
        max_ongoing_requests=ray_max_ongoing(limits.max_queued),
        # The proxy's own queue: a request counts in it while the proxy picks a replica, and
        # waits in it while every replica is at max_ongoing_requests or none is alive (e.g.
        # one restarting). As many as the replicas together take in, so a burst they can
        # take never meets it (max_queued here would refuse bursts the replicas have room
        # for); past it the proxy's 503 carries the same Retry-After.
        max_queued_requests=replicas * ray_max_ongoing(limits.max_queued),
        backpressure_config=BackpressureConfig(retry_after_s=limits.retry_after_s),
    ).bind(spec or ServiceSpec(), max_batch_size, batch_wait_timeout_s, limits)


APP_BUILDER_KEYS = {
    # key: the type its value (a string from the command line) converts to
    "checkpoint": str, "backbone": str, "titles": str, "prompt_template": str, "device": str, "dtype": str,
    "compile_mode": str,
    "tiny_items": int, "replicas": int, "max_batch_size": int, "batch_wait_ms": float, "num_gpus": float,
    "num_cpus": float, "max_body_bytes": int, "max_history_items": int, "max_k": int,
    "max_prompt_tokens": int, "max_queued": int, "request_timeout_s": float, "retry_after_s": float,
}


def _typed_args(args: dict) -> dict:
    unknown = set(args) - set(APP_BUILDER_KEYS)
    if unknown:
        raise ValueError(f"unknown arguments {sorted(unknown)}; known: {sorted(APP_BUILDER_KEYS)}")
    out = {}
    for key, value in args.items():
        kind = APP_BUILDER_KEYS[key]
        try:
            out[key] = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key}={value!r}: expected {'an int' if kind is int else 'a number'}") from None
    return out


def app_builder(args: dict[str, str]):
    """For ``serve run l2rec_serving.ray_app:app_builder key=value ...``. Keys: checkpoint,
    backbone, titles, prompt_template, device, dtype, compile_mode, tiny_items, replicas, max_batch_size,
    batch_wait_ms, num_gpus, num_cpus; the limits max_body_bytes, max_history_items, max_k,
    max_prompt_tokens, max_queued, request_timeout_s, retry_after_s (defaults: README).
    (Ray's proxy timeout is the Serve config's http_options.request_timeout_s here.)"""
    a = _typed_args(args)
    spec = ServiceSpec(**{k: a[k] for k in ("checkpoint", "backbone", "titles", "prompt_template", "device",
                                            "dtype", "max_body_bytes", "max_history_items", "max_k",
                                            "max_prompt_tokens", "compile_mode") if k in a},
                       **({"tiny_num_items": a["tiny_items"]} if "tiny_items" in a else {}))
    limits = ServerLimits(max_queued=a.get("max_queued", DEFAULT_MAX_QUEUED),
                          request_timeout_s=a.get("request_timeout_s", DEFAULT_REQUEST_TIMEOUT_S),
                          retry_after_s=a.get("retry_after_s", DEFAULT_RETRY_AFTER_S))
    return build_app(spec, replicas=a.get("replicas", 1),
                     max_batch_size=a.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE),
                     batch_wait_timeout_s=a.get("batch_wait_ms", DEFAULT_BATCH_WAIT_S * 1e3) / 1e3,
                     num_gpus=a.get("num_gpus", 0.0), num_cpus=a.get("num_cpus", 1.0), limits=limits)


def start(spec: ServiceSpec | None = None, *, host: str = "127.0.0.1", port: int = 8000,
          replicas: int = 1, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
          batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_S, num_gpus: float = 0,
          num_cpus: float = 1, ray_address: str | None = None, access_log: bool = False,
          limits: ServerLimits | None = None):
    """Start Ray, Serve's HTTP proxy on ``host:port`` and the application; returns once every
    replica is ready. Without ``ray_address``, always a new local Ray instance, never one
    that ``ray start`` already runs on this machine (``ray.init()`` alone would join it)."""
    import ray

    limits = limits or ServerLimits()
    app = build_app(spec, replicas=replicas, max_batch_size=max_batch_size,  # checks the arguments first
                    batch_wait_timeout_s=batch_wait_timeout_s, num_gpus=num_gpus, num_cpus=num_cpus,
                    limits=limits)
    if not ray.is_initialized():
        if ray_address:
            ray.init(address=ray_address)
        else:
            # Enough logical CPUs for the replicas even on a 2-core machine; no dashboard.
            cpus = max(os.cpu_count() or 1, int(replicas * num_cpus + 0.999))
            ray.init(address="local", num_cpus=cpus, include_dashboard=False)
    serve.start(http_options={"host": host, "port": port,
                              "request_timeout_s": limits.request_timeout_s + RAY_TIMEOUT_MARGIN_S})
    # Per-request access logs cost real CPU at high request rates; opt in with access_log.
    return serve.run(app, name="l2rec", route_prefix="/",
                     logging_config={"enable_access_log": access_log})


def stop() -> None:
    """Shut the application, Serve and (if this process started it) Ray down."""
    serve.shutdown()
    ray.shutdown()
