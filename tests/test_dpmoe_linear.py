"""dpmoe_linear: every backend against an independent float64 reference, PEFT as an oracle,
edge shapes, poisoned outputs, validation, gradients, op registration and torch.compile.

Triton runs on CPU tensors through the interpreter (conftest sets TRITON_INTERPRET=1), so
shapes stay small; bf16 needs a GPU (the interpreter has no bf16 arithmetic).
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from conftest import DEVICE
from hypothesis import given, settings
from hypothesis import strategies as st

from l2rec_kernels.ops import dpmoe_linear as dpmoe_module
from l2rec_kernels.ops.dpmoe_linear import dpmoe_linear, dpmoe_linear_torch, triton_op

BACKENDS = ["torch", "triton"]
# For tests on CPU tensors whatever the machine: their triton backend needs the interpreter.
CPU_BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.interpreter)]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def reference(x, weight, bias, lora_a, lora_b, gates, seq_view, cu_seqlens, scaling):
    """float64, written the iLoRA way: per-expert einsums, gate-weighted sum, one sequence at
    a time (independent of the fused formulation under test)."""
    x, weight, lora_a, lora_b, gates = (t.double() for t in (x, weight, lora_a, lora_b, gates))
    y = x @ weight.T
    if bias is not None:
        y = y + bias.double()
    for s in range(gates.shape[0]):
        a, b, v = int(cu_seqlens[s]), int(cu_seqlens[s + 1]), int(seq_view[s])
        h = torch.einsum("md,erd->mer", x[a:b], lora_a[v])
        out = torch.einsum("mer,eor->meo", h, lora_b[v])
        y[a:b] = y[a:b] + scaling * torch.einsum("meo,e->mo", out, gates[s])
    return y


def rel_err(y, y_ref) -> float:
    y, y_ref = y.double().cpu(), y_ref.double().cpu()
    if y_ref.numel() == 0:
        return 0.0
    return ((y - y_ref).norm() / y_ref.norm()).item()


def make_case(lengths, d_in, d_out, V, E, r, *, bias=True, dtype=torch.float32, device=DEVICE,
              index_dtype=torch.int32, views=None, seed=0):
    """Random inputs (never zeros). Scaled so the expert term is about as large as x Wᵀ:
    an error in it cannot hide under the base GEMM."""
    g = torch.Generator().manual_seed(seed)
    S = len(lengths)
    M = sum(lengths)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype).to(device)

    cu = torch.zeros(S + 1, dtype=torch.int64)
    cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0)
    if views is None:
        views = torch.randint(0, V, (S,), generator=g).tolist()
    gates = torch.softmax(torch.randn(S, E, generator=g), -1) + 0.1
    scaling = 1.7
    return dict(
        x=rnd(M, d_in), weight=rnd(d_out, d_in, scale=d_in ** -0.5),
        bias=rnd(d_out) if bias else None,
        lora_a=rnd(V, E, r, d_in, scale=d_in ** -0.5),
        lora_b=rnd(V, E, d_out, r, scale=(E * r) ** -0.5 / scaling),
        gates=gates.to(dtype).to(device),
        seq_view=torch.tensor(views, dtype=index_dtype, device=device),
        cu_seqlens=cu.to(index_dtype).to(device), scaling=scaling)


def check(case, backend, dtype=torch.float32, **kw):
    y = dpmoe_linear(**case, backend=backend, **kw)
    M, d_out = case["x"].shape[0], case["weight"].shape[0]
    assert y.shape == (M, d_out) and y.dtype == case["x"].dtype and y.is_contiguous()
    assert y.device == case["x"].device
    err = rel_err(y, reference(**case))
    assert err < TOL[dtype], f"{backend} {dtype}: relative error {err:.3g}"
    return y


CASES = {
    # shapes that are multiples of nothing; sequence lengths with empty ones inside
    "odd": dict(lengths=[5, 0, 25, 1, 39], d_in=37, d_out=45, V=2, E=3, r=3),
    "one_row": dict(lengths=[1], d_in=37, d_out=45, V=2, E=3, r=3),
    "one_sequence": dict(lengths=[70], d_in=19, d_out=33, V=2, E=2, r=5),
    "many_short": dict(lengths=[1, 3, 0, 2, 1, 0, 0, 4, 1, 2, 3, 1, 1, 0, 2, 5, 1, 1, 2, 3],
                       d_in=24, d_out=17, V=2, E=4, r=2),
    "E1_r1": dict(lengths=[7, 9], d_in=20, d_out=21, V=2, E=1, r=1),
    "V1": dict(lengths=[4, 11, 6], d_in=33, d_out=18, V=1, E=3, r=4),
    "trailing_empty": dict(lengths=[0, 6, 9, 0, 0], d_in=16, d_out=16, V=3, E=2, r=2),
    # found by hypothesis: with E = 1 lora_b's transpose-reshape is a strided view, not a copy
    "d_in1_E1": dict(lengths=[1, 2], d_in=1, d_out=2, V=2, E=1, r=2),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference(name, dtype, backend):
    for bias in (True, False):
        check(make_case(**CASES[name], bias=bias, dtype=dtype), backend, dtype)


@pytest.mark.parametrize("split_views", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("name", sorted(CASES))
def test_torch_paths(name, dtype, split_views):
    """Both torch paths on every case: per-view runs (the CPU default for long runs) and the
    sync-free concatenated expand (CUDA, torch.compile, short runs)."""
    for bias in (True, False):
        case = make_case(**CASES[name], bias=bias, dtype=dtype)
        y = dpmoe_linear_torch(**case, split_views=split_views)
        assert y.is_contiguous() and y.dtype == dtype
        assert rel_err(y, reference(**case)) < TOL[dtype]


def test_torch_auto_path_choice(monkeypatch):
    """CPU eager: long same-view runs take the per-view path, short alternating ones do not."""
    seen = []
    real = dpmoe_module._view_runs
    monkeypatch.setattr(dpmoe_module, "_view_runs", lambda *a: seen.append(real(*a)) or seen[-1])
    cpu = torch.device("cpu")
    long_runs = make_case([150, 0, 140, 160], 16, 24, 2, 2, 2, views=[0, 1, 0, 1], device=cpu)
    check(long_runs, "torch")
    assert seen[-1] == [(0, 290, 0, 3, 0), (290, 450, 3, 4, 1)]
    short_runs = make_case([3] * 10, 16, 24, 2, 2, 2, views=[0, 1] * 5, device=cpu)
    check(short_runs, "torch")
    assert seen[-1] is None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_index_dtypes(backend, index_dtype):
    check(make_case(**CASES["odd"], index_dtype=index_dtype), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    for lengths in ([0], [0, 0, 0]):
        case = make_case(lengths, 37, 45, 2, 3, 3)
        y = dpmoe_linear(**case, backend=backend)
        assert y.shape == (0, 45) and y.dtype == torch.float32
    # zero sequences at all: cu_seqlens = [0]
    case = make_case([], 37, 45, 2, 3, 3)
    assert dpmoe_linear(**case, backend=backend).shape == (0, 45)


@pytest.mark.parametrize("backend", BACKENDS)
def test_views_and_gates_matter(backend):
    """Each sequence uses its own view and gate: swapping either changes just its rows."""
    case = make_case([10, 12], 24, 20, 2, 3, 2, views=[0, 1])
    y = dpmoe_linear(**case, backend=backend)
    flipped = dict(case, seq_view=case["seq_view"].flip(0))
    y2 = dpmoe_linear(**flipped, backend=backend)
    assert rel_err(y2, reference(**flipped)) < 1e-5
    assert rel_err(y2, y) > 1e-2
    regated = dict(case, gates=case["gates"].flip(0))
    y3 = dpmoe_linear(**regated, backend=backend)
    assert rel_err(y3, reference(**regated)) < 1e-5
    assert rel_err(y3, y) > 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    """Strided views (transposed x, permuted expert tensors) give the same result."""
    case = make_case([9, 0, 14], 21, 26, 2, 3, 2)
    strided = dict(case)
    strided["x"] = case["x"].T.contiguous().T
    strided["weight"] = case["weight"].T.contiguous().T
    strided["lora_a"] = case["lora_a"].permute(3, 0, 1, 2).contiguous().permute(1, 2, 3, 0)
    strided["lora_b"] = case["lora_b"].permute(3, 2, 0, 1).contiguous().permute(2, 3, 1, 0)
    strided["gates"] = case["gates"].T.contiguous().T
    assert not strided["lora_b"].is_contiguous()
    check(strided, backend)


def test_triton_small_tiles_poisoned_output():
    """16-row tiles: sequences straddle tile edges, several row and column tiles, K and the
    expert dimension masked. The output buffer starts as NaN: every element must be written."""
    from l2rec_kernels.ops._dpmoe_triton import launch_dpmoe_linear

    for lengths in ([5, 0, 25, 1, 39, 3], [1] * 37, [0, 50, 0]):
        case = make_case(lengths, 37, 45, 2, 3, 3)
        out = torch.full((sum(lengths), 45), float("nan"), device=DEVICE)
        blocks = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "BLOCK_J": 16, "SHRINK_N": 16,
                  "GROUP_M": 2}
        with torch.no_grad():
            y = launch_dpmoe_linear(**case, out=out, blocks=blocks)
        assert y.data_ptr() == out.data_ptr()
        assert bool(torch.isfinite(out).all()), "some output elements were never written"
        assert rel_err(out, reference(**case)) < 1e-5


def test_triton_out_must_match():
    from l2rec_kernels.ops._dpmoe_triton import launch_dpmoe_linear

    case = make_case([3], 16, 16, 1, 1, 1)
    with pytest.raises(ValueError, match="out must be"):
        launch_dpmoe_linear(**case, out=torch.empty(3, 15, device=DEVICE))


@given(lengths=st.lists(st.integers(0, 12), min_size=1, max_size=6),
       d_in=st.integers(1, 40), d_out=st.integers(1, 40), V=st.integers(1, 3),
       E=st.integers(1, 4), r=st.integers(1, 5), bias=st.booleans(), seed=st.integers(0, 2**16))
@settings(max_examples=15, deadline=None)
def test_property_random_shapes(lengths, d_in, d_out, V, E, r, bias, seed):
    case = make_case(lengths, d_in, d_out, V, E, r, bias=bias, seed=seed)
    for backend in BACKENDS:
        check(case, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_peft_lora_oracle(backend):
    """V = 1, E = 1, gate = 1: a plain LoRA layer, so PEFT's Linear must agree."""
    peft = pytest.importorskip("peft")
    d_in, d_out, r, alpha = 37, 45, 3, 5.0
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(d_in, d_out))
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["0"], lora_dropout=0.0)
    model = peft.inject_adapter_in_model(cfg, model).to(DEVICE)
    layer = model[0]
    with torch.no_grad():  # PEFT starts B at zero; make both factors random
        layer.lora_A["default"].weight.normal_(0, d_in ** -0.5)
        layer.lora_B["default"].weight.normal_(0, 1.0)
    assert layer.scaling["default"] == pytest.approx(alpha / r)
    x = torch.randn(29, d_in, device=DEVICE)
    with torch.no_grad():
        y_peft = model(x)
        y = dpmoe_linear(
            x, layer.base_layer.weight, layer.base_layer.bias,
            layer.lora_A["default"].weight[None, None], layer.lora_B["default"].weight[None, None],
            torch.ones(3, 1, device=DEVICE), torch.zeros(3, dtype=torch.int64, device=DEVICE),
            torch.tensor([0, 10, 10, 29], dtype=torch.int32, device=DEVICE), alpha / r,
            backend=backend)
    assert rel_err(y, y_peft) < 1e-5


def test_auto_is_torch_on_cpu():
    case = make_case(**CASES["odd"], device=torch.device("cpu"))
    assert torch.equal(dpmoe_linear(**case), dpmoe_linear(**case, backend="torch"))


# ---------------------------------------------------------------------------- validation

def _mut(**changes):
    def apply(case):
        case = dict(case)
        for k, fn in changes.items():
            case[k] = fn(case)
        return case
    return apply


BAD_INPUTS = {
    "x_not_tensor": (_mut(x=lambda c: c["x"].tolist()), TypeError, "x must be a torch.Tensor"),
    "x_3d": (_mut(x=lambda c: c["x"][None]), ValueError, "x must have 2 dimensions"),
    "x_int": (_mut(x=lambda c: c["x"].long()), TypeError, "x must have dtype"),
    "weight_d_in": (_mut(weight=lambda c: c["weight"][:, :-1]), ValueError, "weight must have shape"),
    "weight_dtype": (_mut(weight=lambda c: c["weight"].double()), TypeError, "weight must have x's dtype"),
    "weight_device": (_mut(weight=lambda c: c["weight"].to("meta")), ValueError, "weight must be on"),
    "bias_shape": (_mut(bias=lambda c: c["bias"][:-1]), ValueError, "bias must have shape"),
    "bias_dtype": (_mut(bias=lambda c: c["bias"].half()), TypeError, "bias must have x's dtype"),
    "lora_a_3d": (_mut(lora_a=lambda c: c["lora_a"][0]), ValueError, "lora_a must have 4 dimensions"),
    "lora_a_d_in": (_mut(lora_a=lambda c: c["lora_a"][..., :-1]), ValueError, "lora_a must have shape"),
    "lora_a_empty_E": (_mut(lora_a=lambda c: c["lora_a"][:, :0], lora_b=lambda c: c["lora_b"][:, :0],
                            gates=lambda c: c["gates"][:, :0]), ValueError, "V, E, r >= 1"),
    "lora_b_d_out": (_mut(lora_b=lambda c: c["lora_b"][:, :, :-1]), ValueError, "lora_b must have shape"),
    "lora_b_rank": (_mut(lora_b=lambda c: c["lora_b"][..., :-1]), ValueError, "lora_b must have shape"),
    "lora_b_views": (_mut(lora_b=lambda c: c["lora_b"][:1]), ValueError, "lora_b must have shape"),
    "gates_E": (_mut(gates=lambda c: c["gates"][:, :-1]), ValueError, "gates must have shape"),
    "gates_int": (_mut(gates=lambda c: c["gates"].long()), TypeError, "gates must have dtype"),
    "gates_dtype": (_mut(gates=lambda c: c["gates"].half()), TypeError, "gates must have x's dtype"),
    "gates_nan": (_mut(gates=lambda c: c["gates"].index_fill(0, torch.tensor([1]), float("nan"))),
                  ValueError, "gates must be finite"),
    "seq_view_float": (_mut(seq_view=lambda c: c["seq_view"].float()), TypeError,
                       "seq_view must be an integer"),
    "seq_view_len": (_mut(seq_view=lambda c: c["seq_view"][:-1]), ValueError, "seq_view must have shape"),
    "seq_view_high": (_mut(seq_view=lambda c: c["seq_view"].fill_(2)), ValueError,
                      r"seq_view values must be in \[0, 1\]"),
    "seq_view_negative": (_mut(seq_view=lambda c: c["seq_view"] - 1), ValueError,
                          "seq_view values must be in"),
    "cu_float": (_mut(cu_seqlens=lambda c: c["cu_seqlens"].float()), TypeError,
                 "cu_seqlens must be an integer"),
    "cu_len": (_mut(cu_seqlens=lambda c: c["cu_seqlens"][:-1]), ValueError, "cu_seqlens must have shape"),
    "cu_first": (_mut(cu_seqlens=lambda c: c["cu_seqlens"] + 1), ValueError, r"cu_seqlens\[0\] must be 0"),
    "cu_last": (_mut(cu_seqlens=lambda c: torch.cat([c["cu_seqlens"][:-1], c["cu_seqlens"][-1:] - 1])),
                ValueError, r"cu_seqlens\[-1\] must equal x.shape\[0\] = 70"),
    "cu_decreasing": (_mut(cu_seqlens=lambda c: c["cu_seqlens"][[0, 3, 1, 2, 4, 5]]), ValueError,
                      "cu_seqlens must be non-decreasing"),
    "no_sequences": (_mut(gates=lambda c: c["gates"][:0], seq_view=lambda c: c["seq_view"][:0],
                          cu_seqlens=lambda c: c["cu_seqlens"][:1]), ValueError, "describe 0 sequences"),
    "scaling_bool": (_mut(scaling=lambda c: True), TypeError, "scaling must be a python float"),
    "scaling_tensor": (_mut(scaling=lambda c: torch.tensor(1.0)), TypeError,
                       "scaling must be a python float"),
    "scaling_inf": (_mut(scaling=lambda c: math.inf), ValueError, "scaling must be finite"),
}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input(name, backend):
    mutate, exc, match = BAD_INPUTS[name]
    case = mutate(make_case(**CASES["odd"], device=torch.device("cpu")))
    with pytest.raises(exc, match=match):
        dpmoe_linear(**case, backend=backend)


@pytest.mark.parametrize("backend", ["cuda", "bogus", 3])
def test_bad_backend(backend):
    case = make_case(**CASES["odd"])
    with pytest.raises(ValueError, match="backend"):
        dpmoe_linear(**case, backend=backend)


def test_bad_validate_flag():
    with pytest.raises(TypeError, match="validate"):
        dpmoe_linear(**make_case(**CASES["odd"]), validate="yes")


@pytest.mark.interpreter  # CPU tensors through both backends
def test_validate_false_skips_value_checks():
    """validate=False is the metadata-only path (what CUDA gets by default): no syncing checks."""
    case = make_case(**CASES["odd"], device=torch.device("cpu"))
    case["gates"] = case["gates"].index_fill(0, torch.tensor([0]), float("nan"))
    for backend in BACKENDS:
        y = dpmoe_linear(**case, backend=backend, validate=False)
        assert y.shape == (70, 45)


def test_triton_rejects_float64():
    case = make_case(**CASES["odd"], dtype=torch.float64)
    check(case, "torch", torch.float32)  # fp64 is fine on the torch path
    with pytest.raises(TypeError, match="backend='triton' supports"):
        dpmoe_linear(**case, backend="triton")


# ---------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("split_views", [True, False])
def test_torch_backend_gradients(split_views):
    """The torch paths are plain aten ops (the in-place expands included): gradients of every
    float input match the reference's, and gradcheck passes in float64."""
    case = make_case([3, 0, 4, 2], 6, 5, 2, 2, 2, dtype=torch.float64, views=[0, 1, 1, 0])
    names = ["x", "weight", "bias", "lora_a", "lora_b", "gates"]
    for n in names:
        case[n] = case[n].clone().requires_grad_(True)
    y = dpmoe_linear_torch(**case, split_views=split_views)
    y_ref = reference(**case)
    w = torch.randn_like(y_ref)
    got = torch.autograd.grad((y * w).sum(), [case[n] for n in names])
    want = torch.autograd.grad((y_ref * w).sum(), [case[n] for n in names])
    for n, a, b in zip(names, got, want):
        assert rel_err(a, b) < 1e-10, n
    rest = {k: v for k, v in case.items() if k not in names}
    fn = lambda *t: dpmoe_linear_torch(**dict(zip(names, t)), **rest, split_views=split_views)
    assert torch.autograd.gradcheck(fn, tuple(case[n] for n in names))


def test_triton_refuses_grad():
    case = make_case(**CASES["odd"])
    case["lora_a"] = case["lora_a"].requires_grad_(True)
    with pytest.raises(RuntimeError, match="backend='torch' for training"):
        dpmoe_linear(**case, backend="triton")
    with torch.no_grad():
        check(case, "triton")
    with torch.inference_mode():
        check(case, "triton")


# ---------------------------------------------------------------------------- registration

_ISOLATED_IMPORT = """
import importlib.util, sys, types
# Stub the parent packages so only this op's module (and _backend/_validation) is imported:
# what the package __init__ or other ops import is their own test's business.
for name in ("l2rec_kernels", "l2rec_kernels.ops"):
    spec = importlib.util.find_spec(name)
    pkg = types.ModuleType(name)
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules[name] = pkg
import l2rec_kernels.ops.dpmoe_linear
loaded = [m for m in ("triton", "torch._dynamo", "l2rec_kernels.ops._dpmoe_triton") if m in sys.modules]
assert not loaded, f"importing dpmoe_linear imported {loaded}"
"""


def test_op_import_is_lazy():
    """Importing the op loads neither its kernels, triton, nor torch._dynamo (which imports
    triton): TRITON_INTERPRET must still be settable after the import."""
    subprocess.run([sys.executable, "-c", _ISOLATED_IMPORT], check=True)


def test_opcheck():
    op = triton_op()
    assert op is torch.ops.l2rec.dpmoe_linear
    for lengths, bias in (([5, 0, 11], True), ([0], False)):
        case = make_case(lengths, 19, 21, 2, 2, 3, bias=bias)
        args = tuple(case[k] for k in ("x", "weight", "bias", "lora_a", "lora_b", "gates",
                                       "seq_view", "cu_seqlens", "scaling"))
        torch.library.opcheck(op, args)


class _Block(torch.nn.Module):
    """What the fused model does: a linear with experts, then an elementwise op."""

    def __init__(self, case, backend):
        super().__init__()
        self.case, self.backend = case, backend

    def forward(self, x):
        c = self.case
        y = dpmoe_linear(x, c["weight"], c["bias"], c["lora_a"], c["lora_b"], c["gates"],
                         c["seq_view"], c["cu_seqlens"], c["scaling"], backend=self.backend)
        return torch.nn.functional.silu(y)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    """fullgraph=True: no graph break in validation, backend choice or the op.

    Under TRITON_INTERPRET=1 the op is an opaque custom op (interpreted kernels cannot be
    traced), so inductor calls it at run time; with a GPU it is a triton_op and inductor
    sees the kernels themselves.
    """
    torch._dynamo.reset()
    case = make_case(**CASES["odd"])
    model = _Block(case, backend)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        got = compiled(case["x"])
        want = torch.nn.functional.silu(reference(**case))
    assert rel_err(got, want) < 1e-5


# ---------------------------------------------------------------------------- GPU only

@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_gpu(backend):
    case = make_case([130, 0, 257, 1, 64], 200, 333, 2, 4, 8, dtype=torch.bfloat16)
    check(case, backend, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_block_heuristics(dtype):
    """Compiled Triton with the real block choice (128-row tiles, pipelining) on larger shapes."""
    for lengths, d_in, d_out in (([3000, 1, 0, 1100], 520, 1376), ([7], 896, 130)):
        case = make_case(lengths, d_in, d_out, 2, 4, 8, dtype=dtype)
        check(case, "triton", dtype)
