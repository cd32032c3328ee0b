"""Kernel micro-benchmarks as pytest-benchmark tests, small shapes (about a minute on a CPU):

    python -m pytest bench/ --benchmark-only          # the timings, grouped per kernel/shape
    python -m pytest bench/                           # also the peers' correctness checks

The providers are the ones bench/latency.py times (kernel_dpmoe_linear, kernel_route,
kernel_topk_items); on CUDA every call is followed by a synchronize so the time is the kernel's,
not the launch's. Not part of ``make test`` (which runs ``pytest tests``).
"""

from __future__ import annotations

import kernel_dpmoe_linear
import kernel_route
import kernel_topk_items
import model_bench
import pytest
import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32

DPMOE_SHAPE = kernel_dpmoe_linear.DpmoeShape(seqs_per_view=4, seq_len=64, d_in=256, d_out=688)
DPMOE_PROVIDERS = ["plain_linear", "dpmoe_linear[torch]", "dpmoe_linear[torch_concat]",
                   "dpmoe_linear[triton]", "peft_loop", "reference_einsum"]
ROUTE_SHAPES = [kernel_route.RouteShape(256, 4, None), kernel_route.RouteShape(256, 4, 2)]
TOPK_ITEMS, TOPK_DIM, TOPK_K = 50_000, 64, 10
TOPK_PROVIDERS = ["mm_topk", "mm_only", "topk_items[torch]", "topk_items[triton]"]


def _synced(fn):
    if DEVICE.type != "cuda":
        return fn
    return lambda: (fn(), torch.cuda.synchronize())


def _bench(benchmark, providers: dict, name: str, group: str) -> None:
    if name not in providers:
        pytest.skip(f"{name} does not run on {DEVICE.type}")
    benchmark.group = group
    fn = _synced(providers[name])
    with torch.inference_mode():
        benchmark(fn)


@pytest.fixture(scope="module")
def dpmoe_providers():
    return kernel_dpmoe_linear.providers([kernel_dpmoe_linear.make_inputs(DPMOE_SHAPE, DEVICE, DTYPE, seed=s)
                                   for s in range(2)])


@pytest.mark.parametrize("name", DPMOE_PROVIDERS)
def test_dpmoe_linear(benchmark, dpmoe_providers, name):
    _bench(benchmark, dpmoe_providers, name, f"dpmoe_linear {DPMOE_SHAPE.label()}")


@pytest.mark.parametrize("shape", ROUTE_SHAPES, ids=lambda s: s.label().replace(" ", "_"))
@pytest.mark.parametrize("backend", ["torch_softmax_topk", "torch", "triton", "cuda"])
def test_route(benchmark, shape, backend):
    logits = torch.randn(shape.seqs, shape.experts, device=DEVICE, dtype=DTYPE)
    providers = {"torch_softmax_topk": lambda: kernel_route.torch_softmax_topk(logits, shape.top_k, 1.0)}
    for b in kernel_route.backends(DEVICE):
        providers[b] = lambda b=b: kernel_route.route(logits, shape.top_k, 1.0, backend=b)
    _bench(benchmark, providers, backend, f"route {shape.label()}")


@pytest.fixture(scope="module")
def catalogue():
    return kernel_topk_items.make_inputs(0, TOPK_ITEMS, TOPK_DIM, DEVICE, DTYPE)[1]


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("name", TOPK_PROVIDERS)
def test_topk_items(benchmark, catalogue, batch, name):
    query = kernel_topk_items.make_inputs(batch, 1, TOPK_DIM, DEVICE, DTYPE, seed=batch)[0]
    backends = tuple(b for b in ("torch", "triton") if b == "torch" or DEVICE.type == "cuda")
    providers = kernel_topk_items.providers([query], catalogue, TOPK_K, backends)
    _bench(benchmark, providers, name, f"topk_items N={TOPK_ITEMS} d={TOPK_DIM} k={TOPK_K} B={batch}")


# ----------------------------------------------------------------- the peers compute the same thing
def test_dpmoe_providers_agree_with_reference():
    inp = kernel_dpmoe_linear.make_inputs(kernel_dpmoe_linear.DpmoeShape(seqs_per_view=3, seq_len=17, d_in=40,
                                                           d_out=56, experts=3, rank=4),
                                   dtype=torch.float64)
    errs = kernel_dpmoe_linear.check_agreement(inp, kernel_dpmoe_linear.providers([inp]))
    assert set(errs) >= {"dpmoe_linear[torch]", "peft_loop"}
    assert max(errs.values()) < 1e-10, errs


def test_peft_peer_matches_l2rec_top1():
    """The PEFT mixed-batch peer scores exactly what L2Rec does with top-1 routing."""
    shape = model_bench.ModelShape("tiny", 64, 2, 4, 2, 96, 256, 16, num_items=50)
    ref, _, peft_model = model_bench.build_models(shape, torch.device("cpu"), torch.float32, (),
                                                  peft=True)
    batch = model_bench.synthetic_batch(3, 16, 5, vocab=256, num_items=50, ragged=True, seed=1)
    with torch.inference_mode():
        got = model_bench.peft_forward(ref, peft_model, batch)
        dense = ref(**batch).scores
        ref.config.top_k = 1
        want = ref(**batch).scores
    assert torch.allclose(got[:, 1:], want[:, 1:], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(dense[:, 1:], want[:, 1:], atol=1e-3)  # top-1 is a real change
