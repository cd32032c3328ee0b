"""l2rec_serving: serve L2Rec recommenders over HTTP (install with the ``serve`` extra).

* ``RecommenderService`` (``service``): the framework-agnostic core. It owns the model,
  validates requests and answers many users per forward. Embed it in any Python server.
* ``AsyncBatcher`` (``batcher``): dynamic batching for any asyncio server, without Ray.
* ``ray_app``: a Ray Serve deployment over the core with dynamic request batching and an
  HTTP JSON API (``POST /recommend``, ``GET /healthz``, ``GET /stats``). Start it with
  ``python -m l2rec_serving --port 8000``.

Importing this package does not import Ray or FastAPI; ``ray_app`` does.
"""

from .batcher import AsyncBatcher
from .loading import ServiceSpec, build_service, build_tiny_model
from .service import BatchStats, RecommenderService
from .validation import FieldError, RecommendRequest, RequestError, RequestLimits

__all__ = [
    "AsyncBatcher",
    "BatchStats",
    "FieldError",
    "RecommendRequest",
    "RecommenderService",
    "RequestError",
    "RequestLimits",
    "ServiceSpec",
    "build_service",
    "build_tiny_model",
]
