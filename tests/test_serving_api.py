"""The HTTP API (``l2rec_serving.http_api``) in-process, without Ray: the OpenAPI schema, one
error shape for every error status, each limit, overload (503 + Retry-After), the request
timeout (504) and the FastAPI embedding example.

Needs only fastapi and httpx (the ``test`` extra); requests go through httpx's ASGI
transport or FastAPI's TestClient, so no port is opened.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import pathlib
import re
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the test extra (fastapi) is not installed")
httpx = pytest.importorskip("httpx", reason="the test extra (httpx) is not installed")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from l2rec_serving import AsyncBatcher, RecommenderService, RequestLimits, ServiceSpec, build_tiny_model  # noqa: E402
from l2rec_serving.admission import (  # noqa: E402
    DEFAULT_MAX_QUEUED,
    DEFAULT_REQUEST_TIMEOUT_S,
    DEFAULT_RETRY_AFTER_S,
    Overloaded,
    ServerLimits,
)
from l2rec_serving.http_api import create_api  # noqa: E402
from l2rec_serving.limits import (  # noqa: E402
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_HISTORY_ITEMS,
    DEFAULT_MAX_K,
    RequestError,
)
from l2rec_serving.prompts import SyntheticPromptBuilder  # noqa: E402
from l2rec_serving.schema import ErrorResponse, RecommendRequest, RecommendResponse  # noqa: E402
from l2rec_serving.service import max_prompt_tokens  # noqa: E402
from l2rec_serving.validation import validate_request  # noqa: E402
from pydantic import ValidationError  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_ITEMS = 60
USER = {"history": [3, 17, 42], "k": 5}
# Bounds every wait in these tests, so a broken server fails a test instead of hanging it.
WAIT_S = 10.0


@pytest.fixture(scope="module")
def tiny():
    """(model, catalogue) of the tiny model, built once; services over it are cheap."""
    return build_tiny_model(NUM_ITEMS, seed=0)


def make_service(tiny, **limits) -> RecommenderService:
    model, cat = tiny
    return RecommenderService(model, SyntheticPromptBuilder(cat, max_prompt_tokens(model)), name="tiny",
                              **limits)


@pytest.fixture(scope="module")
def service(tiny) -> RecommenderService:
    return make_service(tiny)


def direct(service):
    """A ``submit`` that answers at once, without batching."""
    async def submit(request):
        return service.recommend_batch_isolated([request])[0]
    return submit


@contextlib.asynccontextmanager
async def client(app, raise_app_exceptions: bool = True):
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=WAIT_S) as c:
        yield c


def call(app, method: str, path: str, **kwargs) -> httpx.Response:
    async def main():
        async with client(app, raise_app_exceptions=False) as c:
            return await c.request(method, path, **kwargs)
    return asyncio.run(main())


def assert_error(r: httpx.Response, status: int, field: str, needle: str) -> dict:
    """``r`` is an error response of ``status`` in the one error shape, about ``field``."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = ErrorResponse.model_validate(r.json()).model_dump()
    assert body["errors"], "an error response lists at least one problem"
    assert body["error"] == "; ".join(e["message"] for e in body["errors"])
    assert field in [e["field"] for e in body["errors"]], body
    assert needle in body["error"], body
    return body


# ----------------------------------------------------------------------------- schema
def request_body_schema(openapi: dict) -> dict:
    """The JSON schema that ``/openapi.json`` gives for the ``POST /recommend`` body, checked
    to be ``RecommendRequest``'s (as FastAPI writes it: without null defaults)."""
    body = openapi["paths"]["/recommend"]["post"]["requestBody"]
    assert body["required"]
    schema, model = body["content"]["application/json"]["schema"], RecommendRequest.model_json_schema()
    for key in ("title", "description", "required", "additionalProperties"):
        assert schema[key] == model[key], key
    assert {name: p["description"] for name, p in schema["properties"].items()} == {
        name: p["description"] for name, p in model["properties"].items()}
    return schema


def test_openapi_describes_recommend(service):
    schema = call(create_api(lambda: service, direct(service)), "GET", "/openapi.json").json()
    op = schema["paths"]["/recommend"]["post"]
    request = request_body_schema(schema)  # the model's own declarations, unpatched
    assert request["title"] == "RecommendRequest"
    assert request["additionalProperties"] is False and request["required"] == ["history"]
    props = request["properties"]
    assert set(props) == {"history", "k", "exclude_history", "prompt_ids"}
    # The bounds that hold for every deployment, and a description of each field.
    assert props["history"]["minItems"] == 1 and props["history"]["items"]["minimum"] == 1
    assert props["k"]["minimum"] == 1 and props["k"]["default"] == 10
    assert props["exclude_history"]["type"] == "boolean"
    assert all(p["description"] for p in props.values())
    assert props["history"]["examples"] == [[3, 17, 42]]

    responses = op["responses"]
    assert set(responses) == {"200", "400", "413", "422", "500", "503", "504"}
    ok = responses["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ok.endswith("/RecommendResponse")
    assert schema["components"]["schemas"]["RecommendResponse"]["required"] == ["items", "scores"]
    for status in ("400", "413", "422", "500", "503", "504"):
        assert responses[status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert "Retry-After" in responses["503"]["headers"]


def test_openapi_is_the_same_for_every_deployment(tiny, service):
    """The schema is the models': the same while the model loads and whatever the served
    model's ranges and the server's limits, which GET /healthz gives."""
    small = make_service(tiny, max_history_items=5, max_k=4, max_prompt_tokens=3)
    apps = [create_api(lambda: None, direct(service)), create_api(lambda: service, direct(service)),
            create_api(lambda: small, direct(small))]
    first, *others = [call(app, "GET", "/openapi.json").json() for app in apps]
    assert all(other == first for other in others)
    assert_error(call(apps[0], "POST", "/recommend", json=USER), 503, "server", "still loading")


_LIMITS = RequestLimits(num_items=50, max_history=4, vocab_size=30, max_prompt_tokens=16,
                        max_history_items=20, max_k=40)
# Values of each JSON type, in and out of range (floats only non-integral: JSON Schema counts
# 2.0 as an integer, while the server, like most JSON clients, takes it for a float): the
# payloads made of them are mostly refused for a type or a static bound ...
_values = st.one_of(st.none(), st.booleans(), st.integers(-5, 70), st.just(2.5), st.text(max_size=3))
_history = st.one_of(st.lists(st.integers(1, 50), min_size=1, max_size=20),
                     st.lists(st.integers(-2, 55), max_size=22), st.lists(_values, max_size=3), _values)
_fields = {"k": st.one_of(st.integers(1, 45), _values),
           "exclude_history": st.one_of(st.booleans(), _values),
           "prompt_ids": st.one_of(st.lists(st.integers(0, 29), min_size=1, max_size=16), st.none(),
                                   st.lists(st.integers(-1, 31), max_size=18), _values),
           "extra": _values}
# ... and payloads of the right types throughout, some of them past _LIMITS (ids, lengths, k),
# so that the schema often accepts what the deployment refuses.
_typed = st.fixed_dictionaries(
    {"history": st.lists(st.integers(1, 51), min_size=1, max_size=22)},
    optional={"k": st.integers(1, 45), "exclude_history": st.booleans(),
              "prompt_ids": st.one_of(st.none(), st.lists(st.integers(0, 30), min_size=1, max_size=18))})
_payloads = st.one_of(_typed, st.fixed_dictionaries({"history": _history}, optional=_fields),
                      st.fixed_dictionaries({}, optional=_fields))


# The messages of the rules that depend on the deployment (RequestLimits), which the schema
# cannot state: the id ranges, the list lengths, k's top and the items left after exclusion.
_DEPLOYMENT_RULES = re.compile(r"is out of range|entries; at most|k must be in \[1, |catalogue items left")


@pytest.mark.skipif(importlib.util.find_spec("jsonschema") is None, reason="jsonschema is not installed")
@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(payload=_payloads)
def test_the_schema_and_the_validator_agree(payload):
    """The published schema accepts exactly what the model accepts without a deployment's
    limits, and so every request valid under _LIMITS; of what it accepts, _LIMITS refuses
    only for the deployment's own rules."""
    import jsonschema

    schema_ok = jsonschema.Draft202012Validator(RecommendRequest.model_json_schema()).is_valid(payload)
    try:
        RecommendRequest.model_validate(payload)
        static_ok = True
    except ValidationError:
        static_ok = False
    assert schema_ok == static_ok
    try:
        validate_request(payload, _LIMITS)
        valid, errors = True, []
    except RequestError as err:
        valid, errors = False, err.errors
    if valid:
        assert schema_ok
    elif schema_ok:
        assert all(_DEPLOYMENT_RULES.search(e.message) for e in errors), errors


# ----------------------------------------------------------------------------- one error shape
def test_every_error_status_has_the_error_shape(tiny):
    small = make_service(tiny, max_body_bytes=64)
    app = create_api(lambda: small, direct(small))
    assert_error(call(app, "POST", "/recommend", content=b""), 400, "body", "empty")
    assert_error(call(app, "POST", "/recommend", content=b"{nope"), 400, "body", "not valid JSON")
    assert_error(call(app, "POST", "/recommend", content=b"[1]"), 400, "body", "JSON object")
    assert_error(call(app, "GET", "/nowhere"), 404, "path", "there is no /nowhere")
    r = call(app, "GET", "/recommend")
    assert_error(r, 405, "method", "GET is not allowed on /recommend")
    assert r.headers["allow"] == "POST"
    assert_error(call(app, "DELETE", "/healthz"), 405, "method", "allowed: GET")
    assert_error(call(app, "POST", "/recommend", json={"history": list(range(1, 40))}), 413, "body",
                 "at most 64 are accepted")
    body = assert_error(call(app, "POST", "/recommend", json={"history": [0], "k": "x", "typo": 1}), 422,
                        "history", "out of range")
    assert {e["field"] for e in body["errors"]} == {"history", "k", "typo"}  # all at once


def test_a_failed_forward_is_a_500_for_that_request_only(service):
    async def failing(request):
        if request.history == (13,):
            raise RuntimeError("boom")
        return RuntimeError("returned, not raised") if request.history == (14,) else {"items": [1],
                                                                                       "scores": [0.5]}
    app = create_api(lambda: service, failing)
    assert_error(call(app, "POST", "/recommend", json={"history": [13]}), 500, "server", "RuntimeError: boom")
    assert_error(call(app, "POST", "/recommend", json={"history": [14]}), 500, "server",
                 "returned, not raised")
    assert call(app, "POST", "/recommend", json={"history": [15]}).json() == {"items": [1], "scores": [0.5]}


def test_routes_added_to_the_app_get_the_error_shape_too(service):
    """A user's own routes (the example invites them): FastAPI's parameter validation (422)
    and an unexpected exception (500) answer in the same shape."""
    app = create_api(lambda: service, direct(service))

    @app.get("/square")
    async def square(n: int) -> dict:
        return {"n2": n * n}

    @app.get("/crash")
    async def crash() -> dict:
        raise KeyError("oops")

    assert call(app, "GET", "/square", params={"n": 3}).json() == {"n2": 9}
    assert_error(call(app, "GET", "/square", params={"n": "x"}), 422, "n", "integer")
    assert_error(call(app, "GET", "/crash"), 500, "server", "KeyError")


# ----------------------------------------------------------------------------- limits
def test_default_limits_and_healthz_shows_them(service):
    info = call(create_api(lambda: service, direct(service)), "GET", "/healthz").json()
    assert info["limits"] == {
        "max_body_bytes": DEFAULT_MAX_BODY_BYTES, "max_history_items": DEFAULT_MAX_HISTORY_ITEMS,
        "max_k": min(NUM_ITEMS, DEFAULT_MAX_K), "max_prompt_tokens": max_prompt_tokens(service.model),
        "max_queued": DEFAULT_MAX_QUEUED, "request_timeout_s": DEFAULT_REQUEST_TIMEOUT_S,
        "retry_after_s": DEFAULT_RETRY_AFTER_S}
    assert info["in_flight"] == 0 and info["num_items"] == NUM_ITEMS
    spec = ServiceSpec()
    assert (spec.max_body_bytes, spec.max_history_items, spec.max_k, spec.max_prompt_tokens) == (
        DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HISTORY_ITEMS, DEFAULT_MAX_K, None)


def test_configured_limits_are_enforced_and_shown(tiny):
    svc = make_service(tiny, max_body_bytes=200, max_history_items=5, max_k=4, max_prompt_tokens=3)
    app = create_api(lambda: svc, direct(svc), ServerLimits(max_queued=7, request_timeout_s=2.5,
                                                            retry_after_s=0.5))
    limits = call(app, "GET", "/healthz").json()["limits"]
    assert limits == {"max_body_bytes": 200, "max_history_items": 5, "max_k": 4, "max_prompt_tokens": 3,
                      "max_queued": 7, "request_timeout_s": 2.5, "retry_after_s": 0.5}
    post = lambda body: call(app, "POST", "/recommend", json=body)
    # Each limit: its edge is accepted, one past it refused with a message that names it.
    assert post({"history": [1, 2, 3, 4, 5], "k": 4}).status_code == 200
    assert_error(post({"history": [1, 2, 3, 4, 5, 6]}), 422, "history", "at most 5 are accepted")
    assert_error(post({"history": [1], "k": 5}), 422, "k", "this server's max_k is 4")
    assert len(post({"history": [1]}).json()["items"]) == 4  # the default k (10) capped at max_k
    assert post({"history": [1], "prompt_ids": [1, 2, 3]}).status_code == 200
    assert_error(post({"history": [1], "prompt_ids": [1, 2, 3, 4]}), 422, "prompt_ids", "at most 3")
    assert_error(call(app, "POST", "/recommend", content=b" " * 201), 413, "body", "201 bytes")


def test_a_body_without_content_length_is_cut_off_at_the_limit(tiny):
    """A chunked upload has no Content-Length: the body is counted while it is read, and
    the reading stops at the limit instead of buffering all of it."""
    svc = make_service(tiny, max_body_bytes=100)
    app = create_api(lambda: svc, direct(svc))
    sent = []

    async def chunks():
        for _ in range(1000):  # would be 64 kB
            sent.append(1)
            yield b" " * 64

    async def main():
        async with client(app) as c:
            return await c.post("/recommend", content=chunks())
    assert_error(asyncio.run(main()), 413, "body", "more than 100 bytes")
    assert len(sent) < 1000


def test_bad_limit_values_are_refused_by_name(tiny):
    model, _ = tiny
    for kwargs, name in [({"max_queued": 0}, "max_queued"), ({"request_timeout_s": 0}, "request_timeout_s"),
                         ({"retry_after_s": -1}, "retry_after_s"), ({"max_queued": 2.5}, "max_queued"),
                         ({"request_timeout_s": float("inf")}, "request_timeout_s")]:
        with pytest.raises(ValueError, match=name):
            ServerLimits(**kwargs)
    for kwargs, name in [({"max_body_bytes": 0}, "max_body_bytes"), ({"max_k": -1}, "max_k"),
                         ({"max_history_items": True}, "max_history_items"),
                         ({"max_prompt_tokens": 0}, "max_prompt_tokens")]:
        with pytest.raises(ValueError, match=name):
            ServiceSpec(**kwargs)
    with pytest.raises(ValueError, match="max_prompt_tokens must be at most"):
        make_service(tiny, max_prompt_tokens=max_prompt_tokens(model) + 1)
    with pytest.raises(ValueError, match="max_queue"):
        AsyncBatcher(list, max_queue=0)


def test_cli_limit_flags():
    from l2rec_serving.__main__ import parse_args

    args = parse_args(["--port", "9000"])
    assert args.limits == ServerLimits()
    assert (args.max_body_bytes, args.max_history_items, args.max_k, args.max_prompt_tokens) == (
        DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HISTORY_ITEMS, DEFAULT_MAX_K, None)
    args = parse_args(["--port", "9000", "--max-queued", "3", "--request-timeout-s", "1.5",
                       "--retry-after-s", "4", "--max-body-bytes", "999", "--max-history-items", "7",
                       "--max-k", "5", "--max-prompt-tokens", "9"])
    assert args.limits == ServerLimits(max_queued=3, request_timeout_s=1.5, retry_after_s=4)
    assert (args.max_body_bytes, args.max_history_items, args.max_k, args.max_prompt_tokens) == (999, 7, 5, 9)
    for bad in (["--max-queued", "0"], ["--request-timeout-s", "-1"], ["--max-k", "0"]):
        with pytest.raises(SystemExit):
            parse_args(["--port", "9000", *bad])


def test_serving_docs_document_each_limit_and_its_default():
    """docs/serving.md (the README's serving section moved there): every limit with its
    default, and the error shape, schema and status codes it leads to."""
    text = (ROOT / "docs" / "serving.md").read_text()
    section = re.search(r"^## The API\n(.*?)(?=^## Compiled forwards|\Z)", text, re.S | re.M).group(1)
    for flag, default in [("--max-body-bytes", "1 MiB"), ("--max-history-items", "10,000"),
                          ("--max-k", "1000"), ("--max-prompt-tokens", "8192"),
                          ("--max-queued", str(DEFAULT_MAX_QUEUED)), ("--request-timeout-s", "30 s"),
                          ("--retry-after-s", "1 s")]:
        line = next((ln for ln in section.splitlines() if f"`{flag}" in ln), "")
        assert default in line, f"docs/serving.md should give {flag} with its default {default}"
    for needle in ("/openapi.json", "Retry-After", "504", '"errors"'):
        assert needle in section


# ----------------------------------------------------------------------------- overload
async def _until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def test_overload_gets_a_fast_503_and_the_admitted_requests_succeed(service):
    gate = threading.Event()

    def forward(requests):  # the model is busy until the test opens the gate
        gate.wait(WAIT_S)
        return service.recommend_batch_isolated(requests)

    async def main():
        batcher = AsyncBatcher(forward, max_batch_size=2, max_wait_s=0)
        app = create_api(lambda: service, batcher.submit, ServerLimits(max_queued=3, retry_after_s=2.5))
        async with client(app) as c:
            users = [{"history": [i + 1, i + 2], "k": 3} for i in range(3)]
            admitted = [asyncio.create_task(c.post("/recommend", json=u)) for u in users]
            await _until(lambda: app.state.admission.in_flight == 3, "3 admitted requests")
            t0 = time.perf_counter()
            refused = await c.post("/recommend", json=USER)
            refused_s = time.perf_counter() - t0
            health = (await c.get("/healthz")).json()  # still answers while full
            gate.set()
            answers = await asyncio.gather(*admitted)
            after = await c.post("/recommend", json=USER)  # room again
        await batcher.close()
        return refused, refused_s, health, answers, after

    refused, refused_s, health, answers, after = asyncio.run(main())
    assert_error(refused, 503, "server", "max_queued = 3")
    assert refused.headers["retry-after"] == "3"  # whole seconds, rounded up
    assert refused_s < 2.0  # refused at once, not after the busy forward
    assert health["in_flight"] == 3
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert all(len(RecommendResponse.model_validate(a.json()).items) == 3 for a in answers)
    assert after.status_code == 200


def test_async_batcher_queue_is_bounded():
    entered, gate = threading.Event(), threading.Event()

    def fn(items):
        entered.set()
        gate.wait(WAIT_S)
        return list(items)

    async def main():
        batcher = AsyncBatcher(fn, max_batch_size=1, max_wait_s=0, max_queue=2, retry_after_s=3)
        running = asyncio.create_task(batcher.submit("a"))
        await _until(entered.is_set, "the first batch to start")
        waiting = [asyncio.create_task(batcher.submit(x)) for x in "bc"]  # the queue's 2 places
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as info:
            await batcher.submit("d")
        gate.set()
        results = await asyncio.gather(running, *waiting)
        await batcher.close()
        return info.value, results

    err, results = asyncio.run(main())
    assert err.status == 503 and err.headers == {"Retry-After": "3"} and "max_queue = 2" in str(err)
    assert results == ["a", "b", "c"]


# ----------------------------------------------------------------------------- timeout
def test_a_request_not_answered_in_time_gets_a_504(service):
    async def never(request):
        await asyncio.Event().wait()

    async def main():
        app = create_api(lambda: service, never, ServerLimits(request_timeout_s=0.2))
        async with client(app) as c:
            t0 = time.perf_counter()
            r = await c.post("/recommend", json=USER)
            return r, time.perf_counter() - t0, app.state.admission.in_flight

    r, elapsed, in_flight = asyncio.run(main())
    assert_error(r, 504, "server", "not answered within 0.2 s")
    assert 0.2 <= elapsed < 5.0
    assert in_flight == 0  # the abandoned request no longer counts against max_queued


def test_a_caller_that_gave_up_is_dropped_from_its_batch():
    """A request cancelled while it waits for a batch (what the 504's timeout does to it) is
    never computed."""
    entered, gate, seen = threading.Event(), threading.Event(), []

    def fn(items):
        entered.set()
        gate.wait(WAIT_S)
        seen.extend(items)
        return list(items)

    async def main():
        batcher = AsyncBatcher(fn, max_batch_size=1, max_wait_s=0)
        first = asyncio.create_task(batcher.submit("a"))
        await _until(entered.is_set, "the first batch to start")
        late = asyncio.create_task(batcher.submit("b"))  # waits behind it ...
        await asyncio.sleep(0.01)
        late.cancel()  # ... and gives up
        gate.set()
        results = [await first, await batcher.submit("c")]
        await batcher.close()
        return results, late.cancelled()

    results, late_cancelled = asyncio.run(main())
    assert results == ["a", "c"] and late_cancelled
    assert seen == ["a", "c"]


# ----------------------------------------------------------------------------- FastAPI example
def _load_example():
    spec = importlib.util.spec_from_file_location("fastapi_embed", ROOT / "examples" / "fastapi_embed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fastapi_example(service):
    from fastapi.testclient import TestClient

    users = [USER, {"history": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "k": 12}, {"history": [50], "k": 3},
             {"history": [7, 7, 8], "k": 1, "exclude_history": False}]
    app = _load_example().create_app(service=service, limits=ServerLimits(max_queued=64))
    with TestClient(app) as c:
        info = c.get("/healthz").json()
        assert info["num_items"] == NUM_ITEMS and info["limits"]["max_queued"] == 64
        r = c.post("/recommend", json=USER)
        assert r.status_code == 200
        assert r.json()["items"] == service.recommend(service.validate(USER))["items"]
        assert_error(c.post("/recommend", content="{"), 400, "body", "not valid JSON")
        assert_error(c.post("/recommend", json={"history": [0]}), 422, "history", "out of range")
        assert_error(c.get("/missing"), 404, "path", "there is no /missing")
        request_body_schema(c.get("/openapi.json").json())
        # Concurrent callers share the one model, batched.
        before = c.get("/stats").json()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda u: c.post("/recommend", json=u).status_code, users * 2))
        assert codes == [200] * len(users) * 2
        after = c.get("/stats").json()
        assert after["requests"] - before["requests"] == len(users) * 2
        assert after["batches"] - before["batches"] <= len(users) * 2



def test_a_spec_carries_its_limits_into_the_service():
    """ServiceSpec (what the CLI flags and app_builder keys fill in) -> the built service."""
    from l2rec_serving import build_service

    svc = build_service(ServiceSpec(tiny_num_items=20, device="cpu", max_body_bytes=300, max_history_items=4,
                                    max_k=3, max_prompt_tokens=5))
    assert svc.limits.to_json() == {"max_body_bytes": 300, "max_history_items": 4, "max_k": 3,
                                    "max_prompt_tokens": 5}
    # A built prompt keeps the end of what the history gives, within the same limit.
    full = svc.prompt_builder.catalogue.prompt_tokens([1, 2, 3])
    assert len(full) > 5 and svc.prompt_builder([1, 2, 3]) == full[-5:]
