"""Ray Serve deployment: ``RecommenderService`` behind HTTP JSON with dynamic batching.

    POST /recommend  {"history": [ids], "k": 10, "exclude_history": true, "prompt_ids": [...]?}
                     -> 200 {"items": [...], "scores": [...]} (scores descending)
                     -> 400/413/422 {"error": "...", "errors": [{"field", "message"}]} if bad
    GET  /healthz    -> {"status": "ok", model, limits, "stats": batch statistics}
    GET  /stats      -> the batch statistics of the replica that answered

Each replica builds its model once (from a picklable ``ServiceSpec``) and runs requests
that arrive close together as one forward (``@serve.batch``). Requests are validated
*before* they join a batch, so one bad request never fails the others' forward.

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

# No ``from __future__ import annotations`` here: Serve's ingress wraps these methods and
# FastAPI must see ``request: Request`` as a class, not a string, to inject the request.
import asyncio
import os

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from .loading import ServiceSpec, build_service
from .validation import RequestError

DEFAULT_MAX_BATCH_SIZE = 32
# How long a replica waits to fill a batch: longer buys throughput under load, shorter
# lowers light-load latency (bench/load_test.py --batch-wait-ms measures the trade).
DEFAULT_BATCH_WAIT_S = 0.020

api = FastAPI(title="L2Rec recommender", docs_url=None, redoc_url=None)


@serve.deployment(name="L2RecRecommender")
@serve.ingress(api)
class RecommenderDeployment:
    """One replica: a model, a validator and a dynamic batcher."""

    def __init__(self, spec: ServiceSpec, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_S) -> None:
        self.service = build_service(spec)
        # The decorator's values are defaults; each application sets its own.
        self._batched.set_max_batch_size(max_batch_size)
        self._batched.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {**self.service.info(), "replica_pid": os.getpid()}

    @api.get("/stats")
    async def stats(self) -> dict:
        return {**self.service.stats.snapshot(), "replica_pid": os.getpid()}

    @api.post("/recommend")
    async def recommend(self, request: Request):
        try:
            parsed = self.service.parse(await request.body())
        except RequestError as err:  # refused here, before it can join a batch
            return JSONResponse(err.to_json(), status_code=err.status)
        result = await self._batched(parsed)
        if isinstance(result, Exception):
            return JSONResponse({"error": f"internal error: {type(result).__name__}: {result}"},
                                status_code=500)
        return result

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def _batched(self, requests: list) -> list:
        # The forward runs in a worker thread so this replica's event loop keeps accepting
        # and validating requests meanwhile: they form the next batch.
        return await asyncio.to_thread(self.service.recommend_batch_isolated, requests)


def build_app(spec: ServiceSpec | None = None, *, replicas: int = 1,
              max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
              batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_S, num_gpus: float = 0,
              num_cpus: float = 1):
    """The Serve application (unstarted): ``replicas`` replicas of ``num_cpus`` CPUs and
    ``num_gpus`` GPUs each."""
    for name, v in (("replicas", replicas), ("max_batch_size", max_batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if batch_wait_timeout_s < 0 or num_gpus < 0 or num_cpus < 0:
        raise ValueError("batch_wait_timeout_s, num_gpus and num_cpus must be >= 0")
    return RecommenderDeployment.options(
        num_replicas=replicas,
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
        # Serve's default (5 in flight per replica) would cap every batch at 5; admit two
        # batches' worth: one running while the next one gathers.
        max_ongoing_requests=2 * max_batch_size,
    ).bind(spec or ServiceSpec(), max_batch_size, batch_wait_timeout_s)


def app_builder(args: dict[str, str]):
    """For ``serve run l2rec_serving.ray_app:app_builder key=value ...``. Keys: checkpoint,
    backbone, titles, device, dtype, replicas, max_batch_size, batch_wait_ms, num_gpus,
    num_cpus."""
    known = {"checkpoint", "backbone", "titles", "device", "dtype", "replicas", "max_batch_size",
             "batch_wait_ms", "num_gpus", "num_cpus"}
    unknown = set(args) - known
    if unknown:
        raise ValueError(f"unknown arguments {sorted(unknown)}; known: {sorted(known)}")
    spec = ServiceSpec(checkpoint=args.get("checkpoint"), backbone=args.get("backbone"),
                       titles=args.get("titles"), device=args.get("device", "auto"),
                       dtype=args.get("dtype", "auto"))
    return build_app(spec, replicas=int(args.get("replicas", 1)),
                     max_batch_size=int(args.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE)),
                     batch_wait_timeout_s=float(args.get("batch_wait_ms", DEFAULT_BATCH_WAIT_S * 1e3)) / 1e3,
                     num_gpus=float(args.get("num_gpus", 0)), num_cpus=float(args.get("num_cpus", 1)))


def start(spec: ServiceSpec | None = None, *, host: str = "127.0.0.1", port: int = 8000,
          replicas: int = 1, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
          batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_S, num_gpus: float = 0,
          num_cpus: float = 1, ray_address: str | None = None, access_log: bool = False):
    """Start Ray (a small local instance unless ``ray_address``), Serve's HTTP proxy on
    ``host:port`` and the application; returns once every replica is ready."""
    import ray

    if not ray.is_initialized():
        if ray_address:
            ray.init(address=ray_address)
        else:
            # Enough logical CPUs for the replicas even on a 2-core machine; no dashboard.
            cpus = max(os.cpu_count() or 1, int(replicas * num_cpus + 0.999))
            ray.init(num_cpus=cpus, include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    app = build_app(spec, replicas=replicas, max_batch_size=max_batch_size,
                    batch_wait_timeout_s=batch_wait_timeout_s, num_gpus=num_gpus, num_cpus=num_cpus)
    # Per-request access logs cost real CPU at high request rates; opt in with access_log.
    return serve.run(app, name="l2rec", route_prefix="/",
                     logging_config={"enable_access_log": access_log})


def stop() -> None:
    """Shut the application, Serve and (if this process started it) Ray down."""
    import ray

    serve.shutdown()
    ray.shutdown()
