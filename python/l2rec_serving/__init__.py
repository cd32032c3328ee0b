"""l2rec_serving: serve L2Rec recommenders over HTTP (install with the ``serve`` extra).

* ``RecommenderService`` (``service``): the framework-agnostic core. It owns the model,
  validates requests and answers many users per forward. Embed it in any Python server.
* ``AsyncBatcher`` (``batcher``): dynamic batching for any asyncio server, without Ray.
* ``http_api``: the HTTP JSON API (``POST /recommend``, ``GET /healthz``, ``GET /stats``,
  ``GET /openapi.json``) as a FastAPI app built from a service, with one error shape,
  request limits, admission control (503 + Retry-After) and a request timeout (504);
  ``schema`` holds its pydantic models (the request's validates requests) and ``admission``
  its ``ServerLimits``.
* ``ray_app``: that API on Ray Serve replicas with dynamic request batching. Start it with
  ``python -m l2rec_serving --port 8000``.

Importing this package does not import Ray, FastAPI or pydantic; ``http_api``, ``schema``
and ``ray_app`` do, and so does the first use of ``RecommendRequest`` (a pydantic model,
``schema.RecommendRequest``), so batch scoring runs without the ``serve`` extra.
"""

from typing import TYPE_CHECKING

from .admission import Overloaded, ServerLimits
from .batcher import AsyncBatcher
from .limits import FieldError, RequestError, RequestLimits
from .loading import ServiceSpec, build_service, build_tiny_model
from .service import BatchStats, RecommenderService

if TYPE_CHECKING:
    from .schema import RecommendRequest


def __getattr__(name: str):
    """``RecommendRequest``, imported from ``schema`` on first use (it needs pydantic)."""
    if name == "RecommendRequest":
        from .schema import RecommendRequest

        return RecommendRequest
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "AsyncBatcher",
    "BatchStats",
    "FieldError",
    "Overloaded",
    "RecommendRequest",
    "RecommenderService",
    "RequestError",
    "RequestLimits",
    "ServerLimits",
    "ServiceSpec",
    "build_service",
    "build_tiny_model",
]
