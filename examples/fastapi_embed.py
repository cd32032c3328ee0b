"""Embed an L2Rec recommender in your own FastAPI app, without Ray.

    python examples/fastapi_embed.py --port 8001          # built-in tiny random model
    curl -s localhost:8001/recommend -d '{"history": [3, 17, 42], "k": 5}'

The model is loaded once, when the app starts. The app is ``l2rec_serving.http_api``'s,
the same routes, error shape, limits and OpenAPI schema as the Ray Serve app: each request
is admitted (past ``max_queued`` held at once: a 503 with ``Retry-After``), validated on the
event loop (a bad one gets its 4xx at once and never reaches the model) and handed to an
``AsyncBatcher``, which runs the requests that arrive together as one forward in a worker
thread, so the loop keeps serving meanwhile; one not answered within ``request_timeout_s``
gets a 504. Without batching, ``submit`` would be ``lambda r: run_in_threadpool(svc.recommend, r)``
(``RecommenderService`` is thread-safe), but under concurrent load that is several times
slower (README, serving section). To add routes of your own, add them to the returned app.
For replicas across machines, use the Ray Serve app: ``python -m l2rec_serving``.
"""

from __future__ import annotations

import argparse
from contextlib import asynccontextmanager

from fastapi import FastAPI
from l2rec_serving import AsyncBatcher, RecommenderService, ServiceSpec, build_service
from l2rec_serving.admission import ServerLimits
from l2rec_serving.http_api import create_api


def create_app(spec: ServiceSpec | None = None, service: RecommenderService | None = None,
               max_batch_size: int = 32, max_wait_s: float = 0.02,
               limits: ServerLimits | None = None) -> FastAPI:
    """A FastAPI app serving ``service`` (or the one ``spec`` describes, built at startup)."""
    limits = limits or ServerLimits()
    state: dict = {}  # the service and its batcher, made at startup

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc = service or build_service(spec or ServiceSpec())  # once per process
        # The admission limit already bounds what reaches the batcher; its own bound is
        # for servers that use AsyncBatcher without http_api.
        batcher = AsyncBatcher(svc.recommend_batch_isolated, max_batch_size, max_wait_s,
                               max_queue=limits.max_queued, retry_after_s=limits.retry_after_s)
        state.update(service=svc, batcher=batcher)
        yield
        await batcher.close()

    return create_api(lambda: state.get("service"), lambda request: state["batcher"].submit(request),
                      limits, title="L2Rec recommender (embedded)", lifespan=lifespan)


if __name__ == "__main__":
    import uvicorn

    ap = argparse.ArgumentParser(description="Serve the built-in tiny model (or a checkpoint) with FastAPI.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--checkpoint")
    ap.add_argument("--backbone")
    ap.add_argument("--titles")
    ap.add_argument("--max-queued", type=int, default=ServerLimits.max_queued)
    ap.add_argument("--request-timeout-s", type=float, default=ServerLimits.request_timeout_s)
    args = ap.parse_args()
    spec = ServiceSpec(checkpoint=args.checkpoint, backbone=args.backbone, titles=args.titles)
    limits = ServerLimits(max_queued=args.max_queued, request_timeout_s=args.request_timeout_s)
    uvicorn.run(create_app(spec, limits=limits), host=args.host, port=args.port)
