"""Tests of ``l2rec_serving``: the request validator, the serving core's batching, a
checkpoint-backed service, and the Ray Serve app started on loopback (valid and bad
requests over HTTP, the error shape, dynamic batching, overload, a clean stop).

The HTTP API in-process (schema, limits, 503/504, the FastAPI example) is tested without
Ray in test_serving_api.py. The Ray tests need the ``serve`` extra and skip without it.
"""

from __future__ import annotations

import concurrent.futures
import json
import time

import pytest
import torch
from l2rec_serving import (
    AsyncBatcher,
    RecommenderService,
    RequestError,
    RequestLimits,
    ServiceSpec,
    build_service,
    build_tiny_model,
)
from l2rec_serving.prompts import TitlePromptBuilder
from l2rec_serving.validation import parse_request
from tolerances import REL_TOL

NUM_ITEMS = 60  # the tiny model the service tests (and the Ray server) serve
LIMITS = RequestLimits(num_items=50, max_history=4, vocab_size=30, max_prompt_tokens=16,
                       max_history_items=100)

# (body, status, field, words the message must contain): wrong whatever the model
GENERIC_BAD = [
    ("", 400, "body", "empty"),
    ("{not json", 400, "body", "not valid JSON"),
    ("[1, 2]", 400, "body", "must be a JSON object"),
    ('{"k": 3}', 422, "history", "history is required"),
    ('{"history": "1 2 3"}', 422, "history", "must be a list of item ids, got str"),
    ('{"history": 7}', 422, "history", "must be a list of item ids, got int"),
    ('{"history": []}', 422, "history", "must not be empty"),
    ('{"history": [1, "2"]}', 422, "history", "history[1] must be an int item id"),
    ('{"history": [1, 2.0]}', 422, "history", "history[1] must be an int item id"),
    ('{"history": [1, true]}', 422, "history", "history[1] must be an int item id"),
    ('{"history": [3, 0]}', 422, "history", "history[1] = 0 is out of range"),
    ('{"history": [-4]}', 422, "history", "out of range"),
    ('{"history": [1], "k": 0}', 422, "k", "k must be in [1, "),
    ('{"history": [1], "k": -2}', 422, "k", "got -2"),
    ('{"history": [1], "k": 2.5}', 422, "k", "k must be an int"),
    ('{"history": [1], "k": "10"}', 422, "k", "k must be an int"),
    ('{"history": [1], "exclude_history": "yes"}', 422, "exclude_history", "true or false"),
    ('{"history": [1], "exclude_history": 1}', 422, "exclude_history", "true or false"),
    ('{"history": [1], "prompt_ids": []}', 422, "prompt_ids", "must not be empty"),
    ('{"history": [1], "prompt_ids": "hi"}', 422, "prompt_ids", "must be a list of token ids"),
    ('{"history": [1], "exclude_histroy": false}', 422, "exclude_histroy", "unknown field"),
]
# ... and wrong for LIMITS (50 items, vocab 30, prompts <= 16 tokens, histories <= 100 items)
LIMITED_BAD = [
    ('{"history": [3, 0]}', 422, "history", "item ids are 1..50"),
    ('{"history": [51]}', 422, "history", "history[0] = 51 is out of range"),
    (json.dumps({"history": [1] * 101}), 422, "history", "at most 100"),
    ('{"history": [1], "k": 51}', 422, "k", "the catalogue has 50 items"),
    ('{"history": [1, 2, 2], "k": 49}', 422, "k", "48 catalogue items left after excluding"),
    ('{"history": [1], "prompt_ids": [1, 30]}', 422, "prompt_ids", "prompt_ids[1] = 30 is out of range"),
    (json.dumps({"history": [1], "prompt_ids": [1] * 17}), 422, "prompt_ids", "at most 16"),
]


# ----------------------------------------------------------------------------- validator
@pytest.mark.parametrize("body,status,field,needle", GENERIC_BAD + LIMITED_BAD)
def test_bad_request_gets_a_4xx_that_says_what_was_wrong(body, status, field, needle):
    with pytest.raises(RequestError) as info:
        parse_request(body, LIMITS)
    err = info.value
    assert err.status == status
    assert needle in str(err)
    payload = err.to_json()
    assert payload["error"] == str(err)
    assert field in [e["field"] for e in payload["errors"]]


def test_every_bad_field_is_reported_at_once():
    with pytest.raises(RequestError) as info:
        parse_request('{"history": [0], "k": "x", "exclude_history": null}', LIMITS)
    assert {e.field for e in info.value.errors} == {"history", "k", "exclude_history"}


def test_body_size_limit_is_413():
    small = RequestLimits(num_items=50, max_history=4, vocab_size=30, max_prompt_tokens=16,
                          max_body_bytes=64)
    with pytest.raises(RequestError) as info:
        parse_request(json.dumps({"history": list(range(1, 40))}), small)
    assert info.value.status == 413


def test_valid_request_defaults_and_history_truncation():
    r = parse_request(b'{"history": [5, 6, 7, 8, 9, 10]}', LIMITS)
    assert (r.k, r.exclude_history, r.prompt_ids) == (10, True, None)
    assert r.history == (5, 6, 7, 8, 9, 10)
    assert r.model_history(LIMITS.max_history) == (7, 8, 9, 10)  # the most recent ones
    r = parse_request('{"history": [1], "k": 50, "exclude_history": false, "prompt_ids": [0, 29]}', LIMITS)
    assert (r.k, r.exclude_history, r.prompt_ids) == (50, False, (0, 29))


def test_prompt_ids_required_without_a_prompt_builder():
    limits = RequestLimits(num_items=50, max_history=4, vocab_size=30, max_prompt_tokens=16,
                           requires_prompt_ids=True)
    with pytest.raises(RequestError, match="prompt_ids is required"):
        parse_request('{"history": [1]}', limits)
    assert parse_request('{"history": [1], "prompt_ids": [3]}', limits).prompt_ids == (3,)


# ----------------------------------------------------------------------------- core
@pytest.fixture(scope="module")
def service() -> RecommenderService:
    return build_service(ServiceSpec(tiny_num_items=NUM_ITEMS, seed=0, device="cpu"))


USERS = [
    {"history": [3, 17, 42], "k": 5},
    {"history": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], "k": 12},  # longer than max_history
    {"history": [50], "k": 3, "exclude_history": False},
    {"history": [7, 7, 8], "k": 1},
    {"history": [20, 30, 40, 59, 60], "k": 55},  # nearly the whole catalogue
]


# A batch changes the order of the model's fp32 sums, and the difference compounds over the
# layers: 10x the fp32 bound (relative, or absolute below 1).
SCORE_TOL = 10 * REL_TOL[torch.float32]


def _close(a: dict, b: dict) -> bool:
    return a["items"] == b["items"] and all(abs(x - y) <= SCORE_TOL * max(1.0, abs(x))
                                            for x, y in zip(a["scores"], b["scores"]))


def test_batch_answers_equal_single_answers(service):
    requests = [service.validate(u) for u in USERS]
    batched = service.recommend_batch(requests)
    alone = [service.recommend(r) for r in requests]
    assert all(_close(a, b) for a, b in zip(alone, batched))
    # Different users get different answers, so the comparison is not vacuous.
    assert len({tuple(b["items"][:3]) for b in batched[:3]}) > 1
    # ... and the order of the batch does not matter either.
    assert all(_close(a, b) for a, b in zip(reversed(alone), service.recommend_batch(requests[::-1])))


def test_compiled_service_answers_as_the_eager_one(service, monkeypatch):
    """compile_mode: the service's forwards run through compile_for_serving (here with
    Dynamo's eager backend, which traces the same graphs fast) with the eager answers."""
    import functools

    from l2rec_kernels.models import compiled

    torch._dynamo.reset()
    monkeypatch.setattr(compiled, "compile_for_serving",
                        functools.partial(compiled.compile_for_serving, backend="eager"))
    fast = build_service(ServiceSpec(tiny_num_items=NUM_ITEMS, seed=0, device="cpu",
                                     compile_mode="reduce-overhead", max_prompt_tokens=64))
    try:
        assert isinstance(fast.recommender, compiled.CompiledRecommender)
        assert fast.recommender.buckets.length == (32, 64)
        assert fast.info()["compile_mode"] == "reduce-overhead"
        requests = [service.validate(u) for u in USERS]
        for got, want in zip(fast.recommend_batch(requests), service.recommend_batch(requests)):
            assert _close(got, want)
        assert _close(fast.recommend(requests[0]), service.recommend(requests[0]))
    finally:
        torch._dynamo.reset()
    with pytest.raises(ValueError, match="compile_mode must be None or one of"):
        ServiceSpec(compile_mode="fastest")


def test_answers_are_k_sorted_items_without_the_history(service):
    for user, out in zip(USERS, service.recommend_batch([service.validate(u) for u in USERS])):
        assert len(out["items"]) == len(out["scores"]) == user["k"]
        assert out["scores"] == sorted(out["scores"], reverse=True)
        assert all(1 <= i <= NUM_ITEMS for i in out["items"])
        assert len(set(out["items"])) == user["k"]
        if user.get("exclude_history", True):  # all of it, also beyond max_history
            assert not set(out["items"]) & set(user["history"])


def test_exclude_history_false_may_return_history_items(service):
    history = list(range(1, 9))
    seen = service.recommend(service.validate({"history": history, "k": NUM_ITEMS, "exclude_history": False}))
    assert set(history) <= set(seen["items"])  # k = the whole catalogue: every item appears


def test_prompt_ids_are_used_as_given(service):
    history = [4, 9, 11]
    built = service.prompt_builder(history)
    a = service.recommend(service.validate({"history": history}))
    b = service.recommend(service.validate({"history": history, "prompt_ids": built}))
    c = service.recommend(service.validate({"history": history, "prompt_ids": built[:2]}))
    assert _close(a, b)
    assert not _close(a, c)


def test_a_failing_request_does_not_fail_its_batch(service):
    requests = [service.validate(u) for u in USERS[:3]]
    builder = service.prompt_builder

    def flaky(history):
        if list(history) == [50]:
            raise RuntimeError("boom")
        return builder(history)

    service.prompt_builder = flaky
    try:
        out = service.recommend_batch_isolated(requests)
    finally:
        service.prompt_builder = builder
    assert isinstance(out[2], RuntimeError)
    assert all(_close(o, service.recommend(r)) for o, r in zip(out[:2], requests[:2]))


def test_batch_stats_count_forwards(service):
    before = service.stats.snapshot()
    service.recommend_batch([service.validate(u) for u in USERS])
    after = service.stats.snapshot()
    assert after["batches"] == before["batches"] + 1
    assert after["requests"] == before["requests"] + len(USERS)
    assert after["max_batch_size"] >= len(USERS)
    assert service.recommend_batch([]) == []


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A saved tiny model: (L2Rec checkpoint dir, backbone dir, catalogue)."""
    root = tmp_path_factory.mktemp("l2rec")
    model, cat = build_tiny_model(NUM_ITEMS, seed=0)
    model.backbone.save_pretrained(root / "backbone")  # safetensors, no tokenizer files
    model.save_pretrained(root / "ckpt")
    return root / "ckpt", root / "backbone", cat


def test_checkpoint_service_serves_the_saved_model(checkpoint, service):
    ckpt, backbone, cat = checkpoint
    loaded = build_service(ServiceSpec(checkpoint=str(ckpt), backbone=str(backbone), device="cpu",
                                       dtype="float32"))
    assert loaded.limits.requires_prompt_ids  # no tokenizer, no titles: no prompt builder
    with pytest.raises(RequestError, match="prompt_ids is required"):
        loaded.parse('{"history": [1, 2]}')
    history = [5, 6, 7]
    got = loaded.recommend(loaded.validate({"history": history, "prompt_ids": cat.prompt_tokens(history)}))
    assert _close(got, service.recommend(service.validate({"history": history})))


def test_checkpoint_service_builds_prompts_from_titles(checkpoint, tmp_path):
    """--titles with a backbone directory that has a Hugging Face tokenizer."""
    from l2rec_kernels.word_tokenizer import fixed_word_tokenizer

    ckpt, backbone, cat = checkpoint
    # A word-level tokenizer over the catalogue's own words, at the catalogue's ids (after
    # three specials), with ";" as the separator token.
    tokenizer = fixed_word_tokenizer(cat.words, ("[PAD]", "[UNK]", ";"), unk="[UNK]")
    with_tokenizer = tmp_path / "backbone"
    with_tokenizer.mkdir()
    for f in backbone.iterdir():
        (with_tokenizer / f.name).write_bytes(f.read_bytes())
    tokenizer.save_pretrained(with_tokenizer)
    titles = tmp_path / "titles.json"
    titles.write_text(json.dumps(cat.titles))
    svc = build_service(ServiceSpec(checkpoint=str(ckpt), backbone=str(with_tokenizer), titles=str(titles),
                                    prompt_template="{titles} ;", device="cpu", dtype="float32"))
    assert not svc.limits.requires_prompt_ids
    history = [5, 6, 7]
    expected = [t for i in history for t in (*cat.encode(cat.titles[i - 1]), 2)]
    assert svc.prompt_builder(history) == expected
    got = svc.recommend(svc.parse(json.dumps({"history": history})))
    assert _close(got, svc.recommend(svc.validate({"history": history, "prompt_ids": expected})))


def test_title_prompt_builder_fills_the_template():
    seen = []

    def tokenizer(text):  # one token per word: its position in the text
        seen.append(text)
        return {"input_ids": list(range(len(text.split())))}

    build = TitlePromptBuilder(["a b", "ccc", "dd"], tokenizer, max_tokens=4, template="x {titles} yy")
    assert build([1, 3]) == [1, 2, 3, 4]  # 5 tokens clipped to the last (most recent) 4
    assert seen == ["x a b; dd yy"]
    with pytest.raises(ValueError, match="titles"):
        TitlePromptBuilder(["a"], tokenizer, 4, template="no placeholder")


def test_cli_checks_its_arguments():
    from l2rec_serving.__main__ import parse_args

    args = parse_args(["--port", "9000"])
    assert (args.host, args.replicas, args.max_batch_size, args.num_gpus) == ("127.0.0.1", 1, 32, 0)
    assert args.spec == ServiceSpec()
    # ServiceSpec's own checks are argument errors, before anything starts.
    for bad in (["--checkpoint", "/x"], ["--dtype", "float8"], ["--tiny-items", "0"]):
        with pytest.raises(SystemExit) as info:
            parse_args(["--port", "9000", *bad])
        assert info.value.code == 2


def test_importing_the_package_does_not_import_pydantic():
    """Batch scoring runs without the serve extra: ``RecommendRequest`` (a pydantic model) is
    imported on first use only."""
    import subprocess
    import sys

    code = ("import sys, l2rec_serving; assert 'pydantic' not in sys.modules; "
            "from l2rec_serving import RecommendRequest; print(RecommendRequest.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "l2rec_serving.schema"


# ----------------------------------------------------------------------------- AsyncBatcher
def test_async_batcher_batches_concurrent_submissions():
    import asyncio

    sizes = []

    def fn(items):
        sizes.append(len(items))
        return [ValueError(f"bad {x}") if x == 13 else x * 10 for x in items]

    async def main():
        batcher = AsyncBatcher(fn, max_batch_size=8, max_wait_s=0.05)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(20)), return_exceptions=True)
        await batcher.close()
        return results

    results = asyncio.run(main())
    assert [r for i, r in enumerate(results) if i != 13] == [i * 10 for i in range(20) if i != 13]
    assert isinstance(results[13], ValueError)  # only the failing item's caller sees the error
    assert sum(sizes) == 20 and max(sizes) == 8 and len(sizes) == 3  # full batches of 8, 8, 4


def test_async_batcher_does_not_wait_when_alone_forever():
    import asyncio
    import time

    async def main():
        batcher = AsyncBatcher(lambda items: list(items), max_batch_size=64, max_wait_s=0.01)
        t0 = time.perf_counter()
        assert await batcher.submit("x") == "x"
        elapsed = time.perf_counter() - t0
        await batcher.close()
        return elapsed

    assert asyncio.run(main()) < 2.0  # one lone request waits max_wait_s, not for a full batch
    with pytest.raises(ValueError, match="max_batch_size"):
        AsyncBatcher(list, max_batch_size=0)


# ----------------------------------------------------------------------------- Ray Serve app
@pytest.fixture
def ray_server(tiny_ray_server):
    """``python -m l2rec_serving`` on a free 127.0.0.1 port over the tiny model of NUM_ITEMS
    items, batches of up to 8: conftest's one shared server (the fuzz tests use it too), so
    these tests only send it requests (test_ray_server_health checks it serves NUM_ITEMS)."""
    return tiny_ray_server


@pytest.fixture(scope="module")
def overload_server(free_loopback_port):
    """A second server that admits one request at a time and holds it ~300 ms waiting for a
    batch (the overload test), stopped by test_ray_server_stops_cleanly."""
    pytest.importorskip("ray.serve", reason="the serve extra (ray[serve]) is not installed")
    from l2rec_serving.launch import ServerProcess

    with ServerProcess(["--tiny-items", str(NUM_ITEMS), "--max-batch-size", "4", "--batch-wait-ms", "300",
                        "--max-queued", "1", "--retry-after-s", "2"], port=free_loopback_port()) as server:
        yield server


def test_ray_server_health(ray_server):
    import httpx

    info = httpx.get(ray_server.url + "/healthz", timeout=30).json()
    assert info["status"] == "ok" and info["num_items"] == NUM_ITEMS and info["builds_prompts"]


def test_ray_server_recommends_what_the_core_does(ray_server, service):
    import httpx

    for user in USERS:
        r = httpx.post(ray_server.url + "/recommend", json=user, timeout=30)
        assert r.status_code == 200, r.text
        assert _close(r.json(), service.recommend(service.validate(user)))  # same seed, same model


@pytest.mark.parametrize("body,status,field,needle", GENERIC_BAD)
def test_ray_server_rejects_bad_requests_and_keeps_serving(ray_server, body, status, field, needle):
    import httpx

    r = httpx.post(ray_server.url + "/recommend", content=body,
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]
    assert field in [e["field"] for e in r.json()["errors"]]
    assert httpx.post(ray_server.url + "/recommend", json=USERS[0], timeout=30).status_code == 200


def test_ray_server_range_errors_follow_the_served_model(ray_server):
    import httpx

    for body, needle in [({"history": [NUM_ITEMS + 1]}, f"item ids are 1..{NUM_ITEMS}"),
                         ({"history": [1], "k": NUM_ITEMS + 1}, f"k must be in [1, {NUM_ITEMS}]"),
                         ({"history": [1], "prompt_ids": [10**6]}, "token ids are 0..")]:
        r = httpx.post(ray_server.url + "/recommend", json=body, timeout=30)
        assert r.status_code == 422 and needle in r.json()["error"], r.text


def test_ray_server_batches_concurrent_requests(ray_server):
    import httpx

    before = httpx.get(ray_server.url + "/stats", timeout=30).json()
    users = [{"history": [1 + (i * 7) % NUM_ITEMS, 1 + (i * 13) % NUM_ITEMS], "k": 5} for i in range(32)]
    with httpx.Client(timeout=60) as client, concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda u: client.post(ray_server.url + "/recommend", json=u), users))
    assert [a.status_code for a in answers] == [200] * len(users)
    after = httpx.get(ray_server.url + "/stats", timeout=30).json()
    assert after["requests"] - before["requests"] == len(users)
    assert after["batches"] - before["batches"] < len(users)  # some forwards carried several users
    assert after["max_batch_size"] <= 8


def test_ray_server_errors_have_the_one_shape(ray_server):
    """Routing errors come from our app too (route_prefix "/"), not from Ray's proxy."""
    import httpx

    r = httpx.get(ray_server.url + "/nowhere", timeout=30)
    assert r.status_code == 404 and r.json()["errors"][0]["field"] == "path", r.text
    r = httpx.get(ray_server.url + "/recommend", timeout=30)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["errors"][0]["field"] == "method"


def test_ray_server_publishes_its_schema_and_limits(ray_server):
    import httpx

    schema = httpx.get(ray_server.url + "/openapi.json", timeout=30).json()
    operation = schema["paths"]["/recommend"]["post"]
    request = operation["requestBody"]["content"]["application/json"]["schema"]
    assert request["title"] == "RecommendRequest" and request["required"] == ["history"]
    assert set(operation["responses"]) >= {"200", "400", "413", "422", "503"}
    info = httpx.get(ray_server.url + "/healthz", timeout=30).json()  # the served ranges and limits
    limits = info["limits"]
    assert info["num_items"] == NUM_ITEMS
    assert (limits["max_queued"], limits["request_timeout_s"], limits["max_k"]) == (128, 30.0, NUM_ITEMS)


def test_app_builder_keys_set_the_limits_and_ray_limits_sit_above_ours():
    pytest.importorskip("ray.serve", reason="the serve extra (ray[serve]) is not installed")
    from l2rec_serving.admission import ServerLimits
    from l2rec_serving.ray_app import app_builder, ray_max_ongoing

    app = app_builder({"tiny_items": "30", "max_queued": "5", "retry_after_s": "2", "request_timeout_s": "3",
                       "max_k": "7", "max_body_bytes": "4096"})
    deployment = app._bound_deployment  # (Ray has no public accessor for a bound app's options)
    cfg = deployment._deployment_config
    spec, _, _, limits = deployment.init_args
    assert limits == ServerLimits(max_queued=5, request_timeout_s=3.0, retry_after_s=2.0)
    assert (spec.tiny_num_items, spec.max_k, spec.max_body_bytes) == (30, 7, 4096)
    # Ray lets more requests into a replica than we admit, so the excess meets our 503.
    assert cfg.max_ongoing_requests == ray_max_ongoing(5) == 5 + 64
    assert cfg.max_queued_requests == ray_max_ongoing(5)  # one replica
    assert cfg.backpressure_config.retry_after_s == 2.0
    with pytest.raises(ValueError, match="max_queued='many': expected an int"):
        app_builder({"max_queued": "many"})
    with pytest.raises(ValueError, match=r"unknown arguments \['max_queue'\]"):
        app_builder({"max_queue": "3"})
    with pytest.raises(ValueError, match="max_queued must be a positive int"):
        app_builder({"max_queued": "0"})


def test_start_without_an_address_never_joins_a_running_cluster(monkeypatch):
    """``ray.init()`` alone would join a cluster that ``ray start`` runs on this machine;
    start() asks for a new local instance (and joins one only when given an address)."""
    ray = pytest.importorskip("ray", reason="the serve extra (ray[serve]) is not installed")
    from l2rec_serving import ray_app

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(ray_app.serve, "start", lambda **kw: calls.append(kw))
    monkeypatch.setattr(ray_app.serve, "run", lambda app, **kw: None)
    ray_app.start(port=1234)
    assert calls[0]["address"] == "local"
    assert calls[1]["http_options"]["request_timeout_s"] > 30.0  # Ray's timeout is a backstop behind ours
    calls.clear()
    ray_app.start(port=1234, ray_address="auto")
    assert calls[0] == {"address": "auto"}


@pytest.mark.xdist_group("ray-serve")  # starts a server of its own (conftest: groups)
def test_ray_server_overload_is_a_fast_503_with_retry_after(overload_server):
    """A second server that admits one request at a time and holds it ~300 ms waiting for a
    batch: of 12 concurrent requests the first is admitted and the rest, arriving while
    it waits, are refused at once with our 503 (not queued in Ray's proxy)."""
    import httpx

    server = overload_server
    with httpx.Client(timeout=60) as client, concurrent.futures.ThreadPoolExecutor(12) as pool:
        assert client.post(server.url + "/recommend", json=USERS[0]).status_code == 200  # warm

        def post(user):
            t0 = time.perf_counter()
            r = client.post(server.url + "/recommend", json=user)
            return r, time.perf_counter() - t0

        answers = list(pool.map(post, USERS * 3))
        codes = [r.status_code for r, _ in answers]
        assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
        for r, seconds in answers:
            if r.status_code == 503:
                assert r.headers["retry-after"] == "2"
                assert r.json()["errors"][0]["field"] == "server" and "max_queued = 1" in r.json()["error"]
                assert seconds < 0.3 + 1.0  # refused, not made to wait for the admitted one's batch
        # and it serves again once the burst is over
        assert client.post(server.url + "/recommend", json=USERS[1]).status_code == 200


@pytest.mark.xdist_group("ray-serve")  # starts a server of its own (conftest: groups)
def test_ray_server_stops_cleanly(overload_server):
    """SIGTERM: Serve and its local Ray shut down, the process exits 0 and the port stops
    answering (the overload test's server, after its burst; the shared one stays up)."""
    import httpx

    assert overload_server.stop() == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(overload_server.url + "/healthz", timeout=5)
