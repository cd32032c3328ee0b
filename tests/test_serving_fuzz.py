"""Fuzz the HTTP API from its own OpenAPI schema (schemathesis): no request may get a 5xx,
and every response must be documented (status code, content type, headers, body schema).

Bounded and reproducible: a fixed number of cases per run, ``derandomize`` (the same cases
every run), no example database, no shrinking-time surprises (``deadline`` off, one phase).

* in-process, without Ray: the FastAPI example's app over the tiny model, through
  schemathesis's ASGI client (part of ``make test``);
* one smaller run against a live Ray Serve server (``python -m l2rec_serving``: conftest's
  ``tiny_ray_server``, shared with test_serving.py), skipped without Ray.
"""

from __future__ import annotations

import collections
import importlib.util
import pathlib

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="the test extra (schemathesis) is not installed")
pytest.importorskip("fastapi", reason="the test extra (fastapi) is not installed")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from l2rec_serving import ServiceSpec, build_service  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_ITEMS = 60
# not_a_server_error fails any 5xx (503 and 504 included: a sequential fuzz never overloads
# the server or makes it time out); the others check each response against the schema.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


def _whole_numbers_as_ints(value):
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole_numbers_as_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: _whole_numbers_as_ints(v) for k, v in value.items()}
    return value


def _json_integers(case):
    """JSON Schema 2020-12 counts 1.0 as an integer, so schemathesis's valid cases spell
    most ids that way; the server takes ids as JSON integers only (1, not 1.0: a 422, see
    test_serving_api). Respelled, the valid cases reach the model instead of that 422."""
    case.body = _whole_numbers_as_ints(case.body)
    return case


def _into_served_ranges(served: dict):
    """The schema holds for every deployment, so its valid cases carry ids and k of any size:
    folded into the ranges of the server that answers (``served``: its GET /healthz), they
    reach the model instead of a 422."""
    n, vocab, limits = served["num_items"], served["vocab_size"], served["limits"]

    def fold(case):
        body = case.body
        if isinstance(body, dict):
            body["history"] = [1 + (i - 1) % n for i in body["history"]][:limits["max_history_items"]]
            if "k" in body:
                body["k"] = 1 + (body["k"] - 1) % limits["max_k"]
            if body.get("prompt_ids"):
                body["prompt_ids"] = [t % vocab for t in body["prompt_ids"]][:limits["max_prompt_tokens"]]
        return case
    return fold


def fuzz(schema, served: dict, max_examples: int) -> collections.Counter:
    """Run ``max_examples`` cases over the schema's operations: valid and invalid
    ``/recommend`` bodies (schemathesis's positive mode, as generated and respelled into the
    ranges of the server whose GET /healthz is ``served``, and its negative mode) and the GET
    routes. Returns how many responses each (path, status) got."""
    recommend = schema["/recommend"]["POST"]
    strategy = st.one_of(recommend.as_strategy(GenerationMode.POSITIVE).map(_json_integers)
                         .map(_into_served_ranges(served)),
                         recommend.as_strategy(GenerationMode.POSITIVE),
                         recommend.as_strategy(GenerationMode.NEGATIVE),
                         schema["/healthz"]["GET"].as_strategy(), schema["/stats"]["GET"].as_strategy())
    seen: collections.Counter = collections.Counter()

    @settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case):
        response = case.call_and_validate(checks=CHECKS, timeout=30)  # a hung server fails, not hangs
        seen[(case.operation.path, response.status_code)] += 1

    run()
    return seen


def _example_app():
    spec = importlib.util.spec_from_file_location("fastapi_embed", ROOT / "examples" / "fastapi_embed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    service = build_service(ServiceSpec(tiny_num_items=NUM_ITEMS, seed=0, device="cpu"))
    # A short batch wait: cases come one at a time, so waiting for a fuller batch only adds time.
    return module.create_app(service=service, max_wait_s=0.001), service.info()


def test_fuzz_in_process():
    app, served = _example_app()
    seen = fuzz(schemathesis.openapi.from_asgi("/openapi.json", app), served, max_examples=300)
    # The run reached the model and the validator, not only one of them.
    recommend = {status: n for (path, status), n in seen.items() if path == "/recommend"}
    assert recommend.get(200, 0) > 0 and recommend.get(422, 0) > 0, seen


def test_fuzz_live_ray_server(tiny_ray_server):
    """conftest's shared server (the tiny model of NUM_ITEMS items), which test_serving.py
    also sends requests to: the cases come one at a time, so they never overload it."""
    import httpx

    served = httpx.get(tiny_ray_server.url + "/healthz", timeout=30).json()
    seen = fuzz(schemathesis.openapi.from_url(tiny_ray_server.url + "/openapi.json"), served, max_examples=80)
    assert any(path == "/recommend" and status == 200 for path, status in seen), seen
