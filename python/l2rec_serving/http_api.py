"""The HTTP API as a FastAPI app built from a service: one definition for every server.

    app = create_api(lambda: service, batcher.submit, ServerLimits(max_queued=64))

``create_api`` gives the routes (``POST /recommend``, ``GET /healthz``, ``GET /stats``,
``GET /openapi.json``), the error handlers and the admission control; the caller gives
the service and how a validated request is answered (``submit``: an ``AsyncBatcher``, or
a Ray Serve ``@serve.batch`` method). The Ray Serve replica (``ray_app``) and the embedded
FastAPI example (``examples/fastapi_embed.py``) both serve this app, so they answer alike,
and the app can be tested in-process without Ray.

``POST /recommend``, in order:

1. admission: past ``max_queued`` requests held at once, a 503 with ``Retry-After`` at
   once (``admission``);
2. within ``request_timeout_s`` (else a 504): the body is read, refused with a 413 as soon
   as it exceeds ``max_body_bytes`` (the Content-Length is checked before reading), then
   validated (400/422, ``validation``), then answered by ``submit`` (an error in the
   forward is a 500 for that request only).

Every error, including 404 (unknown path) and 405 (wrong method), has one shape:
``{"error": "...", "errors": [{"field": ..., "message": ...}]}`` (``schema.ErrorResponse``).

Why the request body is not a FastAPI ``Body`` parameter: FastAPI would read all of it
before our code runs (no 413 as soon as it is too large, no request timeout while it is
read) and validate it without the served model's limits (pydantic's validation context,
which FastAPI does not pass). So the route reads the body itself and validates it with
``schema.RecommendRequest`` and the service's limits, and declares the model's JSON schema
as its request body (``openapi_extra``: FastAPI's way for a route that reads its own body).
Everything ``/openapi.json`` says comes from these declarations and the models in
``schema``; it is the same for every deployment (its ranges and limits: ``GET /healthz``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .admission import Admission, ServerLimits, request_timed_out
from .limits import FieldError, RequestError, body_too_large
from .schema import ErrorResponse, RecommendRequest, RecommendResponse
from .service import RecommenderService

ROUTES = "POST /recommend, GET /healthz, GET /stats, GET /openapi.json"

_ERROR = {"model": ErrorResponse}
RECOMMEND_RESPONSES: dict = {
    200: {"model": RecommendResponse, "description": "The top k items, best first."},
    400: {**_ERROR, "description": "The body is empty, not JSON, or not a JSON object."},
    413: {**_ERROR, "description": "The body is larger than max_body_bytes (GET /healthz: limits)."},
    422: {**_ERROR, "description": "One or more fields are invalid (unknown, missing, wrong type, out of "
                                   "range for the served model or the server's limits); each is listed."},
    500: {**_ERROR, "description": "The model failed on this request (other requests are unaffected)."},
    503: {**_ERROR, "description": "The server holds max_queued requests already; retry after the "
                                   "Retry-After header's seconds.",
          "headers": {"Retry-After": {"description": "Seconds to wait before retrying.",
                                      "schema": {"type": "integer"}}}},
    504: {**_ERROR, "description": "Not answered within request_timeout_s."},
}
# The body the route reads itself (create_api), declared for the schema.
RECOMMEND_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": RecommendRequest.model_json_schema()}}}}


def error_response(err: RequestError) -> JSONResponse:
    return JSONResponse(err.to_json(), status_code=err.status, headers=err.headers or None)


def install_error_handlers(app: FastAPI) -> None:
    """Make every error response of ``app`` an ``ErrorResponse``: routing errors (404, 405),
    FastAPI's parameter validation (422), ``RequestError`` (any status) and any other
    exception (500)."""

    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        path, method = request.url.path, request.method
        if exc.status_code == 404:
            field, message = "path", f"there is no {path}; this API serves {ROUTES}"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            field, message = "method", f"{method} is not allowed on {path}; allowed: {allowed}"
        else:
            field, message = "request", str(exc.detail)
        # The exception's headers (e.g. 405's Allow) stay on the response.
        return error_response(RequestError(exc.status_code, [FieldError(field, message)], exc.headers))

    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [FieldError(".".join(str(p) for p in e.get("loc", ())[1:]) or "request", e.get("msg", ""))
                  for e in exc.errors()]
        return error_response(RequestError(422, errors or [FieldError("request", "invalid request")]))

    async def on_request_error(request: Request, exc: RequestError) -> JSONResponse:
        return error_response(exc)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error_response(internal_error(exc))

    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(RequestError, on_request_error)
    app.add_exception_handler(Exception, on_unexpected)


def internal_error(exc: BaseException) -> RequestError:
    return RequestError(500, [FieldError("server", f"internal error: {type(exc).__name__}: {exc}")])


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, or a 413 as soon as it is known to exceed ``max_bytes``: from the
    Content-Length header before reading anything, else while reading (a chunked upload)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise body_too_large(int(declared), max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise body_too_large(f"more than {max_bytes}", max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


Submit = Callable[[RecommendRequest], Awaitable]


def create_api(get_service: Callable[[], RecommenderService | None], submit: Submit,
               limits: ServerLimits | None = None, *, title: str = "L2Rec recommender", lifespan=None,
               extra_info: Callable[[], dict] | None = None) -> FastAPI:
    """The API over the service ``get_service()`` returns (None while it is still loading).

    ``submit(request)`` answers one validated request: a ``{"items", "scores"}`` dict, or an
    ``Exception`` (returned or raised) for a failure of that request alone. ``extra_info``
    adds fields to ``GET /healthz`` and ``GET /stats`` (e.g. the Ray replica's pid).
    """
    limits = limits or ServerLimits()
    admission = Admission(limits)
    app = FastAPI(title=title, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.admission = admission
    install_error_handlers(app)
    extra = extra_info or dict

    def service_or_503() -> RecommenderService:
        service = get_service()
        if service is None:
            raise RequestError(503, [FieldError("server", "the model is still loading")],
                               {"Retry-After": limits.retry_after_header})
        return service

    loading = {503: {**_ERROR, "description": "The model is still loading."}}

    @app.get("/healthz", responses=loading)
    async def healthz() -> dict:
        """The model, the limits a request must respect, the load and the batch statistics."""
        info = service_or_503().info()
        return {**info, "limits": {**info["limits"], **limits.to_json()}, "in_flight": admission.in_flight,
                **extra()}

    @app.get("/stats", responses=loading)
    async def stats() -> dict:
        """Batch statistics: forwards, requests, mean batch size (this replica's)."""
        return {**service_or_503().stats.snapshot(), **extra()}

    async def answer(request: Request) -> dict:
        service = service_or_503()
        parsed = service.parse(await read_body(request, service.limits.max_body_bytes))
        try:
            result = await submit(parsed)
        except RequestError:  # e.g. a bounded AsyncBatcher's 503
            raise
        except Exception as exc:  # this request's forward failed: a 500 for it alone
            result = exc
        if isinstance(result, Exception):
            raise internal_error(result)
        return result

    @app.post("/recommend", response_model=None, responses=RECOMMEND_RESPONSES, openapi_extra=RECOMMEND_BODY)
    async def recommend(request: Request) -> JSONResponse:
        """The top k items for one user (the body: RecommendRequest)."""
        admission.enter()  # a 503 before any work when the server is full
        try:
            # wait_for cancels the work on timeout: a request still waiting for its batch
            # leaves it; a forward already running finishes, its answer unread.
            return JSONResponse(await asyncio.wait_for(answer(request), limits.request_timeout_s))
        except asyncio.TimeoutError:
            raise request_timed_out(limits.request_timeout_s) from None
        finally:
            admission.leave()

    return app
