"""``route``: every backend against a float64 reference written here.

Triton runs on CPU tensors through the interpreter (conftest sets TRITON_INTERPRET=1);
bf16 has no interpreter arithmetic, so its tests need a GPU. On a GPU,
``test_gpu_bench_shapes`` also runs the benchmark's real shapes (bench/kernel_route.py).
"""

import math

import pytest
import torch
from bench_modules import bench_module
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import assert_close_tol

from l2rec_kernels.ops.route import route

BACKENDS = ["torch", "triton"]
# For tests on CPU tensors whatever the machine: their triton backend needs the interpreter.
CPU_BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.interpreter)]


def reference(logits: torch.Tensor, top_k, temperature: float) -> torch.Tensor:
    """float64 gates; top-k by (larger logit, then lower index), then renormalised."""
    x = logits.double().cpu()
    probs = torch.softmax(x / temperature, dim=-1)
    num_experts = x.shape[1]
    if top_k is None or top_k == num_experts:
        return probs
    keep = torch.zeros_like(probs, dtype=torch.bool)
    for s, row in enumerate(x.tolist()):
        for e in sorted(range(num_experts), key=lambda e: (-row[e], e))[:top_k]:
            keep[s, e] = True
    kept = probs * keep
    return kept / kept.sum(-1, keepdim=True)


def check(gates, logits, top_k, temperature):
    assert gates.shape == logits.shape and gates.dtype == logits.dtype
    want = reference(logits, top_k, temperature)
    torch.testing.assert_close(gates.double().cpu(), want, **assert_close_tol(logits.dtype))
    if top_k is not None:
        # The support is a discrete choice: every expert outside the reference's top-k is
        # exactly 0, and every kept one is non-zero unless its true gate underflows the
        # output dtype (fp16 flushes values below ~6e-8 to 0).
        got = gates.cpu() != 0
        assert not (got & (want == 0)).any(), "a dropped expert got a non-zero gate"
        representable = want >= torch.finfo(gates.dtype).tiny
        assert got[representable].all(), "a kept expert got a zero gate"


CASES = [  # (S, E, top_k, temperature)
    (1, 1, None, 1.0), (1, 1, 1, 1.0), (3, 5, 2, 1.0), (7, 7, 3, 0.5), (33, 5, None, 2.0),
    (1000, 7, 2, 1.0), (4, 8, 8, 1.0), (5, 4, 1, 0.3), (9, 16, 4, 1.7), (2, 3, None, 100.0),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", CASES, ids=lambda c: "S{}_E{}_k{}_t{}".format(*c))
def test_matches_float64_reference(backend, dtype, shape, device):
    s, e, top_k, temperature = shape
    logits = (torch.randn(s, e, device=device) * 2).to(dtype)
    gates = route(logits, top_k=top_k, temperature=temperature, backend=backend)
    check(gates, logits, top_k, temperature)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gates_sum_to_one_and_top_k_support(backend, device):
    logits = torch.randn(257, 7, device=device)
    for top_k in (None, 1, 3, 7):
        gates = route(logits, top_k=top_k, backend=backend)
        torch.testing.assert_close(gates.sum(-1), torch.ones(257, device=device))
        assert (gates >= 0).all()
        if top_k is None:
            assert (gates > 0).all()
            continue
        nonzero = gates > 0
        assert (nonzero.sum(-1) == top_k).all()  # random logits: no ties, exactly k
        # Every kept logit is at least every dropped one.
        kept_min = logits.masked_fill(~nonzero, math.inf).min(-1).values
        dropped_max = logits.masked_fill(nonzero, -math.inf).max(-1).values
        assert (kept_min >= dropped_max).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_the_lowest_index(backend, device):
    logits = torch.tensor([[1.0, 1.0, 1.0, 0.5],
                           [2.0, 0.0, 2.0, 2.0],
                           [0.0, 0.0, 0.0, 0.0],
                           [-1.0, 3.0, -1.0, 3.0]], device=device)
    gates = route(logits, top_k=2, backend=backend).cpu()
    support = [torch.nonzero(row).flatten().tolist() for row in gates]
    assert support == [[0, 1], [0, 2], [0, 1], [1, 3]]
    torch.testing.assert_close(gates.sum(-1), torch.ones(4))
    # The same choice on every backend, bit for bit on the support.
    other = route(logits, top_k=2, backend="torch" if backend == "triton" else "triton").cpu()
    assert torch.equal(gates != 0, other != 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_temperature(backend, device):
    logits = torch.randn(6, 5, device=device)
    hot = route(logits, temperature=1e4, backend=backend)
    # A finite temperature is only nearly uniform: the bound is the approximation's, not rounding's.
    torch.testing.assert_close(hot, torch.full_like(hot, 0.2), rtol=0, atol=1e-3)
    cold = route(logits, temperature=1e-3, backend=backend)
    torch.testing.assert_close(cold, torch.nn.functional.one_hot(logits.argmax(-1), 5).float())
    check(route(logits, top_k=3, temperature=0.25, backend=backend), logits, 3, 0.25)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_empty_and_single_rows(backend, dtype, device):
    empty = route(torch.randn(0, 5, device=device, dtype=dtype), top_k=2, backend=backend)
    assert empty.shape == (0, 5) and empty.dtype == dtype
    one = torch.randn(1, 5, device=device, dtype=dtype)
    check(route(one, top_k=2, backend=backend), one, 2, 1.0)
    single_expert = torch.randn(4, 1, device=device, dtype=dtype)
    assert torch.equal(route(single_expert, backend=backend), torch.ones_like(single_expert))


def test_triton_reads_strided_logits(device):
    logits = torch.randn(7, 12, device=device).T  # [12, 7], strides (1, 12)
    check(route(logits, top_k=3, backend="triton"), logits, 3, 1.0)


def test_backends_agree(device):
    logits = torch.randn(100, 6, device=device)
    a = route(logits, top_k=2, temperature=0.7, backend="torch")
    b = route(logits, top_k=2, temperature=0.7, backend="triton")
    assert torch.equal(a != 0, b != 0)
    torch.testing.assert_close(a, b)


def test_auto_is_torch_on_cpu():
    logits = torch.randn(3, 4)
    assert torch.equal(route(logits, top_k=2), route(logits, top_k=2, backend="torch"))


# ----------------------------------------------------------------------------- gradients
def test_torch_backend_is_differentiable():
    logits = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    for top_k in (None, 2):
        assert torch.autograd.gradcheck(lambda x, k=top_k: route(x, top_k=k, temperature=0.8,
                                                                 backend="torch"), (logits,))
    x = torch.randn(4, 5, requires_grad=True)
    route(x, top_k=3, backend="torch")[:, 0].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------- bad input
BAD = [
    (lambda d: dict(logits=[[1.0, 2.0]]), TypeError, "logits"),
    (lambda d: dict(logits=torch.randn(5, device=d)), ValueError, "logits"),
    (lambda d: dict(logits=torch.randn(2, 3, 4, device=d)), ValueError, "logits"),
    (lambda d: dict(logits=torch.ones(2, 3, dtype=torch.int64, device=d)), TypeError, "logits"),
    (lambda d: dict(logits=torch.randn(2, 0, device=d)), ValueError, "logits"),
    (lambda d: dict(logits=torch.randn(2, 3, device=d), top_k=0), ValueError, "top_k"),
    (lambda d: dict(logits=torch.randn(2, 3, device=d), top_k=4), ValueError, "top_k"),
    (lambda d: dict(logits=torch.randn(2, 3, device=d), top_k=-1), ValueError, "top_k"),
    (lambda d: dict(logits=torch.randn(2, 3, device=d), top_k=True), TypeError, "top_k"),
    (lambda d: dict(logits=torch.randn(2, 3, device=d), top_k=1.0), TypeError, "top_k"),
    (lambda d: dict(logits=torch.randn(2, 3, device=d), top_k="2"), TypeError, "top_k"),
    (lambda d: dict(logits=torch.randn(2, 3, device=d), temperature=0.0), ValueError, "temperature"),
    (lambda d: dict(logits=torch.randn(2, 3, device=d), temperature=-1), ValueError, "temperature"),
    (lambda d: dict(logits=torch.randn(2, 3, device=d), temperature=math.inf), ValueError, "temperature"),
    (lambda d: dict(logits=torch.randn(2, 3, device=d), temperature=math.nan), ValueError, "temperature"),
    (lambda d: dict(logits=torch.randn(2, 3, device=d), temperature="1"), TypeError, "temperature"),
    (lambda d: dict(logits=torch.randn(2, 3, device=d), temperature=True), TypeError, "temperature"),
    (lambda d: dict(logits=torch.randn(2, 3, device=d), temperature=None), TypeError, "temperature"),
]


@pytest.mark.parametrize("backend", [*BACKENDS, "auto"])
@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_inputs(backend, case, device):
    make, exc, name = BAD[case]
    with pytest.raises(exc, match=name):
        route(**make(device), backend=backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_logits_rejected_on_cpu(backend, bad):
    logits = torch.randn(3, 4)
    logits[1, 2] = bad
    with pytest.raises(ValueError, match="logits must be finite"):
        route(logits, top_k=2, backend=backend)


def test_bad_backend():
    logits = torch.randn(2, 3)
    with pytest.raises(ValueError, match="backend"):
        route(logits, backend="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            route(logits, backend="cuda")  # explicit backend that cannot run: no fallback


def test_triton_rejects_float64(device):
    with pytest.raises(TypeError, match="logits"):
        route(torch.randn(2, 3, dtype=torch.float64, device=device), backend="triton")


# ----------------------------------------------------------------------------- properties
@pytest.mark.interpreter  # CPU logits through every backend
@settings(max_examples=60, deadline=None)
@given(s=st.integers(0, 40), e=st.integers(1, 12), data=st.data(),
       temperature=st.floats(0.05, 20.0), dtype=st.sampled_from([torch.float32, torch.float16]),
       quantised=st.booleans())
def test_property_every_backend_matches_reference(s, e, data, temperature, dtype, quantised):
    top_k = data.draw(st.one_of(st.none(), st.integers(1, e)))
    seed = data.draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(s, e, generator=g) * 3
    if quantised:  # few distinct values: many ties, to exercise the tie-break
        logits = logits.round()
    logits = logits.to(dtype)
    outs = [route(logits, top_k=top_k, temperature=temperature, backend=b) for b in BACKENDS]
    for gates in outs:
        check(gates, logits, top_k, temperature)
        if s:
            torch.testing.assert_close(gates.double().sum(-1), torch.ones(s, dtype=torch.float64),
                                       **assert_close_tol(dtype))


# ----------------------------------------------------------------------------- training, compiled
class _Router(torch.nn.Module):
    def __init__(self, backend: str):
        super().__init__()
        self.proj = torch.nn.Linear(16, 5)
        self.backend = backend

    def forward(self, x):
        return route(self.proj(x), top_k=2, temperature=0.7, backend=self.backend)


def test_trains_through_a_compiled_router():
    """Inductor, fullgraph, and a backward through the compiled torch path (the contract
    suite compiles every backend forward only)."""
    module = _Router("torch")
    x = torch.randn(6, 16)
    compiled = torch.compile(module, fullgraph=True)  # inductor
    out = compiled(x)
    torch.testing.assert_close(out, module(x))
    out.sum().backward()  # trains through the compiled router
    assert module.proj.weight.grad is not None


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_on_gpu(backend, device):
    logits = torch.randn(300, 8, device=device).bfloat16()
    for top_k in (None, 3):
        check(route(logits, top_k=top_k, temperature=0.9, backend=backend), logits, top_k, 0.9)




def _gpu_bench_shapes() -> list:
    """The shapes ``python bench/latency.py`` times on a GPU (its full CUDA sweep; naming the
    device type only selects the sweep, no CUDA is touched)."""
    bench = bench_module("kernel_route")
    return bench.shapes(bench.RunConfig(device=torch.device("cuda"), dtype=torch.float16))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", _gpu_bench_shapes(),
                         ids=lambda s: f"S{s.seqs}_E{s.experts}_k{s.top_k or 'dense'}")
def test_gpu_bench_shapes(shape, dtype, device):
    """The kernel at the sizes it is benchmarked at, against the float64 reference."""
    g = torch.Generator().manual_seed(shape.seqs)
    logits = (torch.randn(shape.seqs, shape.experts, generator=g) * 2).to(device, dtype)
    gates = route(logits, top_k=shape.top_k, temperature=shape.temperature, backend="triton")
    check(gates, logits, shape.top_k, shape.temperature)
