"""Embed an L2Rec recommender in your own FastAPI app, without Ray.

    python examples/fastapi_embed.py --port 8001          # built-in tiny random model
    curl -s localhost:8001/recommend -d '{"history": [3, 17, 42], "k": 5}'

The model is loaded once, when the app starts. Each request is validated on the event
loop (a bad one gets its 4xx at once, and never reaches the model); valid ones go to an
``AsyncBatcher``, which runs the requests that arrive together as one forward in a worker
thread, so the loop keeps serving meanwhile. Without batching the handler would be one line,
``await run_in_threadpool(svc.recommend, parsed)`` (``RecommenderService`` is thread-safe),
but under concurrent load that is several times slower (README, serving section).
For replicas across machines, use the Ray Serve app: ``python -m l2rec_serving``.
"""

from __future__ import annotations

import argparse
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from l2rec_serving import AsyncBatcher, RecommenderService, RequestError, ServiceSpec, build_service


def create_app(spec: ServiceSpec | None = None, service: RecommenderService | None = None,
               max_batch_size: int = 32, max_wait_s: float = 0.02) -> FastAPI:
    """A FastAPI app serving ``service`` (or the one ``spec`` describes, built at startup)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc = service or build_service(spec or ServiceSpec())  # once per process
        app.state.service = svc
        app.state.batcher = AsyncBatcher(svc.recommend_batch_isolated, max_batch_size, max_wait_s)
        yield
        await app.state.batcher.close()

    app = FastAPI(title="L2Rec recommender (embedded)", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz(request: Request) -> dict:
        return request.app.state.service.info()

    @app.get("/stats")
    async def stats(request: Request) -> dict:
        return request.app.state.service.stats.snapshot()

    @app.post("/recommend")
    async def recommend(request: Request):
        try:
            parsed = request.app.state.service.parse(await request.body())
        except RequestError as err:
            return JSONResponse(err.to_json(), status_code=err.status)
        return await request.app.state.batcher.submit(parsed)

    return app


if __name__ == "__main__":
    import uvicorn

    ap = argparse.ArgumentParser(description="Serve the built-in tiny model (or a checkpoint) with FastAPI.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--checkpoint")
    ap.add_argument("--backbone")
    ap.add_argument("--titles")
    args = ap.parse_args()
    uvicorn.run(create_app(ServiceSpec(checkpoint=args.checkpoint, backbone=args.backbone,
                                       titles=args.titles)), host=args.host, port=args.port)
