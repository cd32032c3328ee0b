"""dpmoe_linear: every backend against an independent float64 reference, PEFT as an oracle,
edge shapes, poisoned outputs, validation, gradients, op registration and torch.compile.

Triton runs on CPU tensors through the interpreter (conftest sets TRITON_INTERPRET=1), so
shapes stay small; bf16 needs a GPU (the interpreter has no bf16 arithmetic). On a GPU,
``test_gpu_bench_shapes`` also runs the benchmark's real shapes (bench/kernel_dpmoe_linear.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from bench_modules import bench_module
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from op_cases import make_case
from tolerances import REL_TOL, rel_err

from l2rec_kernels.ops import dpmoe_linear as dpmoe_module
from l2rec_kernels.ops.dpmoe_linear import dpmoe_linear, dpmoe_linear_torch

BACKENDS = ["torch", "triton"]
# For tests on CPU tensors whatever the machine: their triton backend needs the interpreter.
CPU_BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.interpreter)]
CPU = torch.device("cpu")


def reference(x, weight, bias, lora_a, lora_b, gates, seq_view, cu_seqlens, scaling,
              shared_a=None, shared_b=None, per_row_gates=False):
    """float64, written the iLoRA way: per-expert einsums, gate-weighted sum, one sequence at
    a time (independent of the fused formulation under test); the shared experts as their
    own ungated einsums."""
    x, weight, lora_a, lora_b, gates = (t.double() for t in (x, weight, lora_a, lora_b, gates))
    y = x @ weight.T
    if bias is not None:
        y = y + bias.double()
    for s in range(seq_view.shape[0]):
        a, b, v = int(cu_seqlens[s]), int(cu_seqlens[s + 1]), int(seq_view[s])
        h = torch.einsum("md,erd->mer", x[a:b], lora_a[v])
        out = torch.einsum("mer,eor->meo", h, lora_b[v])
        g = gates[a:b] if per_row_gates else gates[s].expand(b - a, -1)
        y[a:b] = y[a:b] + scaling * torch.einsum("meo,me->mo", out, g)
    if shared_a is not None:
        h = torch.einsum("md,frd->mfr", x, shared_a.double())
        y = y + scaling * torch.einsum("mfr,for->mo", h, shared_b.double())
    return y


def check(case, backend, **kw):
    y = dpmoe_linear(**case, backend=backend, **kw)
    M, d_out = case["x"].shape[0], case["weight"].shape[0]
    dtype = case["x"].dtype
    assert y.shape == (M, d_out) and y.dtype == dtype and y.is_contiguous()
    assert y.device == case["x"].device
    err = rel_err(y, reference(**case))
    assert err < REL_TOL[dtype], f"{backend} {dtype}: relative error {err:.3g}"
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
def test_matches_reference(name, dtype, backend, device):
    for bias in (True, False):
        check(make_case(**CASES[name], bias=bias, dtype=dtype, device=device), backend)


# Shared experts and per-row gates on every case: (number of shared experts, per-row gates).
SHARED_AND_ROWS = [(1, False), (0, True), (2, True)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shared, per_row", SHARED_AND_ROWS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_shared_experts_and_per_row_gates(name, shared, per_row, dtype, backend, device):
    check(make_case(**CASES[name], dtype=dtype, shared=shared, per_row=per_row, device=device),
          backend)


@pytest.mark.parametrize("split_views", [True, False])
@pytest.mark.parametrize("shared, per_row", SHARED_AND_ROWS)
def test_torch_paths_shared_and_per_row(shared, per_row, split_views, device):
    for name in ("odd", "trailing_empty", "many_short"):
        case = make_case(**CASES[name], shared=shared, per_row=per_row, device=device)
        y = dpmoe_linear_torch(**case, split_views=split_views)
        assert rel_err(y, reference(**case)) < REL_TOL[torch.float32]


@pytest.mark.parametrize("backend", BACKENDS)
def test_shared_experts_and_row_gates_matter(backend, device):
    """The shared experts add to every row of both views; per-row gates change just their row."""
    case = make_case([10, 12], 24, 20, 2, 3, 2, views=[0, 1], shared=2, per_row=True, device=device)
    y = dpmoe_linear(**case, backend=backend)
    without = {k: v for k, v in case.items() if k not in ("shared_a", "shared_b")}
    y0 = dpmoe_linear(**without, backend=backend)
    assert bool(((y - y0).abs().amax(-1) > 1e-3).all())  # every row moved
    regated = dict(case, gates=case["gates"].index_fill(0, torch.tensor([3], device=device), 0.0))
    y2 = dpmoe_linear(**regated, backend=backend)
    moved = (y2 - y).abs().amax(-1) > 1e-4
    assert moved.nonzero().flatten().tolist() == [3]


@pytest.mark.parametrize("split_views", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("name", sorted(CASES))
def test_torch_paths(name, dtype, split_views, device):
    """Both torch paths on every case: per-view runs (the CPU default for long runs) and the
    sync-free concatenated expand (CUDA, torch.compile, short runs)."""
    for bias in (True, False):
        case = make_case(**CASES[name], bias=bias, dtype=dtype, device=device)
        y = dpmoe_linear_torch(**case, split_views=split_views)
        assert y.is_contiguous() and y.dtype == dtype
        assert rel_err(y, reference(**case)) < REL_TOL[dtype]


@pytest.mark.parametrize("shared, per_row", [(0, False), *SHARED_AND_ROWS])
def test_torch_path_with_given_view_runs(shared, per_row, device, monkeypatch):
    """view_runs given by the caller (FusedL2Rec under torch.compile) = the runs read from
    the metadata: same answer, and the metadata is not read."""
    case = make_case([5, 0, 7, 6, 4], 18, 21, 2, 3, 2, views=[0, 0, 0, 1, 1], shared=shared,
                     per_row=per_row, device=device)
    runs = [(0, 12, 0, 3, 0), (12, 22, 3, 5, 1)]
    assert dpmoe_module._view_runs(case["seq_view"].cpu(), case["cu_seqlens"].cpu(), 1) == runs
    monkeypatch.setattr(dpmoe_module, "_view_runs", lambda *a: pytest.fail("read the metadata"))
    y = dpmoe_linear_torch(**case, view_runs=runs)
    assert rel_err(y, reference(**case)) < REL_TOL[torch.float32]


def test_torch_auto_path_choice(monkeypatch):
    """CPU eager: long same-view runs take the per-view path, short alternating ones do not."""
    seen = []
    real = dpmoe_module._view_runs
    monkeypatch.setattr(dpmoe_module, "_view_runs", lambda *a: seen.append(real(*a)) or seen[-1])
    long_runs = make_case([150, 0, 140, 160], 16, 24, 2, 2, 2, views=[0, 1, 0, 1], device=CPU)
    check(long_runs, "torch")
    assert seen[-1] == [(0, 290, 0, 3, 0), (290, 450, 3, 4, 1)]
    short_runs = make_case([3] * 10, 16, 24, 2, 2, 2, views=[0, 1] * 5, device=CPU)
    check(short_runs, "torch")
    assert seen[-1] is None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_index_dtypes(backend, index_dtype, device):
    check(make_case(**CASES["odd"], index_dtype=index_dtype, device=device), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend, device):
    for lengths in ([0], [0, 0, 0]):
        case = make_case(lengths, 37, 45, 2, 3, 3, device=device)
        y = dpmoe_linear(**case, backend=backend)
        assert y.shape == (0, 45) and y.dtype == torch.float32
    # zero sequences at all: cu_seqlens = [0]
    case = make_case([], 37, 45, 2, 3, 3, device=device)
    assert dpmoe_linear(**case, backend=backend).shape == (0, 45)


@pytest.mark.parametrize("backend", BACKENDS)
def test_views_and_gates_matter(backend, device):
    """Each sequence uses its own view and gate: swapping either changes just its rows."""
    case = make_case([10, 12], 24, 20, 2, 3, 2, views=[0, 1], device=device)
    y = dpmoe_linear(**case, backend=backend)
    changed = 1e-2  # "different": a thousand times the fp32 bound
    flipped = dict(case, seq_view=case["seq_view"].flip(0))
    y2 = dpmoe_linear(**flipped, backend=backend)
    assert rel_err(y2, reference(**flipped)) < REL_TOL[torch.float32]
    assert rel_err(y2, y) > changed
    regated = dict(case, gates=case["gates"].flip(0))
    y3 = dpmoe_linear(**regated, backend=backend)
    assert rel_err(y3, reference(**regated)) < REL_TOL[torch.float32]
    assert rel_err(y3, y) > changed


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend, device):
    """Strided views (transposed x, permuted expert tensors) give the same result."""
    case = make_case([9, 0, 14], 21, 26, 2, 3, 2, device=device)
    strided = dict(case)
    strided["x"] = case["x"].T.contiguous().T
    strided["weight"] = case["weight"].T.contiguous().T
    strided["lora_a"] = case["lora_a"].permute(3, 0, 1, 2).contiguous().permute(1, 2, 3, 0)
    strided["lora_b"] = case["lora_b"].permute(3, 2, 0, 1).contiguous().permute(2, 3, 1, 0)
    strided["gates"] = case["gates"].T.contiguous().T
    assert not strided["lora_b"].is_contiguous()
    check(strided, backend)


def test_triton_small_tiles_poisoned_output(device):
    """16-row tiles: sequences straddle tile edges, several row and column tiles, K and the
    expert dimension masked. The output buffer starts as NaN: every element must be written."""
    from l2rec_kernels.ops._dpmoe_linear_triton import launch_dpmoe_linear

    for lengths in ([5, 0, 25, 1, 39, 3], [1] * 37, [0, 50, 0]):
        case = make_case(lengths, 37, 45, 2, 3, 3, device=device)
        out = torch.full((sum(lengths), 45), float("nan"), device=device)
        blocks = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "BLOCK_J": 16, "SHRINK_N": 16,
                  "GROUP_M": 2}
        with torch.no_grad():
            y = launch_dpmoe_linear(**case, out=out, blocks=blocks)
        assert y.data_ptr() == out.data_ptr()
        assert bool(torch.isfinite(out).all()), "some output elements were never written"
        assert rel_err(out, reference(**case)) < REL_TOL[torch.float32]


def test_triton_small_tiles_shared_and_per_row(device):
    """As above with shared experts and per-row gates; V·E·r = 80 columns is several shrink
    column tiles, of which one stores the shared columns."""
    from l2rec_kernels.ops._dpmoe_linear_triton import launch_dpmoe_linear

    for lengths, E, r, shared in (([5, 0, 25, 1, 39, 3], 3, 3, 1), ([9, 14], 8, 5, 3)):
        for per_row in (False, True):
            case = make_case(lengths, 37, 45, 2, E, r, shared=shared, per_row=per_row,
                             device=device)
            out = torch.full((sum(lengths), 45), float("nan"), device=device)
            blocks = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "BLOCK_J": 16, "SHRINK_N": 16,
                      "GROUP_M": 2}
            with torch.no_grad():
                launch_dpmoe_linear(**case, out=out, blocks=blocks)
            assert bool(torch.isfinite(out).all()), "some output elements were never written"
            assert rel_err(out, reference(**case)) < REL_TOL[torch.float32]


def test_triton_out_must_match(device):
    from l2rec_kernels.ops._dpmoe_linear_triton import launch_dpmoe_linear

    case = make_case([3], 16, 16, 1, 1, 1, device=device)
    with pytest.raises(ValueError, match="out must be"):
        launch_dpmoe_linear(**case, out=torch.empty(3, 15, device=device))


@given(lengths=st.lists(st.integers(0, 12), min_size=1, max_size=6),
       d_in=st.integers(1, 40), d_out=st.integers(1, 40), V=st.integers(1, 3),
       E=st.integers(1, 4), r=st.integers(1, 5), bias=st.booleans(), seed=st.integers(0, 2**16))
# `device` is function-scoped, which hypothesis warns about as it is not reset between
# examples; it only names the (constant) device, so sharing it across examples is safe.
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_random_shapes(lengths, d_in, d_out, V, E, r, bias, seed, device):
    case = make_case(lengths, d_in, d_out, V, E, r, bias=bias, seed=seed, device=device)
    for backend in BACKENDS:
        check(case, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_peft_lora_oracle(backend, device):
    """V = 1, E = 1, gate = 1: a plain LoRA layer, so PEFT's Linear must agree."""
    peft = pytest.importorskip("peft")
    d_in, d_out, r, alpha = 37, 45, 3, 5.0
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(d_in, d_out))
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["0"], lora_dropout=0.0)
    model = peft.inject_adapter_in_model(cfg, model).to(device)
    layer = model[0]
    with torch.no_grad():  # PEFT starts B at zero; make both factors random
        layer.lora_A["default"].weight.normal_(0, d_in ** -0.5)
        layer.lora_B["default"].weight.normal_(0, 1.0)
    assert layer.scaling["default"] == pytest.approx(alpha / r)
    x = torch.randn(29, d_in, device=device)
    with torch.no_grad():
        y_peft = model(x)
        y = dpmoe_linear(
            x, layer.base_layer.weight, layer.base_layer.bias,
            layer.lora_A["default"].weight[None, None], layer.lora_B["default"].weight[None, None],
            torch.ones(3, 1, device=device), torch.zeros(3, dtype=torch.int64, device=device),
            torch.tensor([0, 10, 10, 29], dtype=torch.int32, device=device), alpha / r,
            backend=backend)
    assert rel_err(y, y_peft) < REL_TOL[torch.float32]


def test_auto_is_torch_on_cpu():
    case = make_case(**CASES["odd"], device=CPU)
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
    "shared_a_alone": (_mut(shared_a=lambda c: c["lora_a"][0]), ValueError,
                       "shared_a and shared_b must be given together"),
    "shared_b_alone": (_mut(shared_b=lambda c: c["lora_b"][0]), ValueError,
                       "shared_a and shared_b must be given together"),
    "shared_a_4d": (_mut(shared_a=lambda c: c["lora_a"], shared_b=lambda c: c["lora_b"][0]),
                    ValueError, "shared_a must have 3 dimensions"),
    "shared_a_rank": (_mut(shared_a=lambda c: c["lora_a"][0, :, :-1], shared_b=lambda c: c["lora_b"][0]),
                      ValueError, "shared_a must have shape"),
    "shared_b_count": (_mut(shared_a=lambda c: c["lora_a"][0], shared_b=lambda c: c["lora_b"][0, :1]),
                       ValueError, "shared_b must have shape"),
    "shared_b_d_out": (_mut(shared_a=lambda c: c["lora_a"][0], shared_b=lambda c: c["lora_b"][0, :, 1:]),
                       ValueError, "shared_b must have shape"),
    "shared_empty": (_mut(shared_a=lambda c: c["lora_a"][0, :0], shared_b=lambda c: c["lora_b"][0, :0]),
                     ValueError, "Es >= 1"),
    "shared_dtype": (_mut(shared_a=lambda c: c["lora_a"][0].double(), shared_b=lambda c: c["lora_b"][0]),
                     TypeError, "shared_a must have x's dtype"),
    "per_row_not_bool": (_mut(per_row_gates=lambda c: 1), TypeError, "per_row_gates must be a bool"),
    "per_row_gates_shape": (_mut(per_row_gates=lambda c: True), ValueError, "gates must have shape"),
}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input(name, backend):
    mutate, exc, match = BAD_INPUTS[name]
    case = mutate(make_case(**CASES["odd"], device=CPU))
    with pytest.raises(exc, match=match):
        dpmoe_linear(**case, backend=backend)


@pytest.mark.parametrize("backend", ["cuda", "bogus", 3])
def test_bad_backend(backend, device):
    case = make_case(**CASES["odd"], device=device)
    with pytest.raises(ValueError, match="backend"):
        dpmoe_linear(**case, backend=backend)


def test_bad_validate_flag(device):
    with pytest.raises(TypeError, match="validate"):
        dpmoe_linear(**make_case(**CASES["odd"], device=device), validate="yes")


@pytest.mark.interpreter  # CPU tensors through both backends
def test_validate_false_skips_value_checks():
    """validate=False is the metadata-only path (what CUDA gets by default): no syncing checks."""
    case = make_case(**CASES["odd"], device=CPU)
    case["gates"] = case["gates"].index_fill(0, torch.tensor([0]), float("nan"))
    for backend in BACKENDS:
        y = dpmoe_linear(**case, backend=backend, validate=False)
        assert y.shape == (70, 45)


def test_triton_rejects_float64(device):
    case = make_case(**CASES["odd"], dtype=torch.float64, device=device)
    check(case, "torch")  # fp64 is fine on the torch path
    with pytest.raises(TypeError, match="backend='triton' supports"):
        dpmoe_linear(**case, backend="triton")


# ---------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("split_views", [True, False])
def test_torch_backend_gradients(split_views, device):
    """The torch paths are plain aten ops (the in-place expands included): gradients of every
    float input match the reference's, and gradcheck passes in float64."""
    case = make_case([3, 0, 4, 2], 6, 5, 2, 2, 2, dtype=torch.float64, views=[0, 1, 1, 0],
                     device=device)
    names = ["x", "weight", "bias", "lora_a", "lora_b", "gates"]
    for n in names:
        case[n] = case[n].clone().requires_grad_(True)
    y = dpmoe_linear_torch(**case, split_views=split_views)
    y_ref = reference(**case)
    w = torch.randn_like(y_ref)
    got = torch.autograd.grad((y * w).sum(), [case[n] for n in names])
    want = torch.autograd.grad((y_ref * w).sum(), [case[n] for n in names])
    for n, a, b in zip(names, got, want):
        assert rel_err(a, b) < REL_TOL[torch.float64], n
    rest = {k: v for k, v in case.items() if k not in names}
    fn = lambda *t: dpmoe_linear_torch(**dict(zip(names, t)), **rest, split_views=split_views)
    assert torch.autograd.gradcheck(fn, tuple(case[n] for n in names))


@pytest.mark.parametrize("split_views", [True, False])
def test_torch_backend_gradients_shared_and_per_row(split_views, device):
    case = make_case([3, 0, 4, 2], 6, 5, 2, 2, 2, dtype=torch.float64, views=[0, 1, 1, 0],
                     shared=2, per_row=True, device=device)
    names = ["x", "lora_a", "lora_b", "gates", "shared_a", "shared_b"]
    for n in names:
        case[n] = case[n].clone().requires_grad_(True)
    rest = {k: v for k, v in case.items() if k not in names}
    fn = lambda *t: dpmoe_linear_torch(**dict(zip(names, t)), **rest, split_views=split_views)
    assert torch.autograd.gradcheck(fn, tuple(case[n] for n in names))
    y, y_ref = fn(*(case[n] for n in names)), reference(**case)
    w = torch.randn_like(y_ref)
    got = torch.autograd.grad((y * w).sum(), [case[n] for n in names])
    want = torch.autograd.grad((y_ref * w).sum(), [case[n] for n in names])
    for n, a, b in zip(names, got, want):
        assert rel_err(a, b) < REL_TOL[torch.float64], n


# ---------------------------------------------------------------------------- GPU only

@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_gpu(backend, device):
    case = make_case([130, 0, 257, 1, 64], 200, 333, 2, 4, 8, dtype=torch.bfloat16, device=device)
    check(case, backend)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_block_heuristics(dtype, device):
    """Compiled Triton with the real block choice (128-row tiles, pipelining) on larger shapes."""
    for lengths, d_in, d_out in (([3000, 1, 0, 1100], 520, 1376), ([7], 896, 130)):
        case = make_case(lengths, d_in, d_out, 2, 4, 8, dtype=dtype, device=device)
        check(case, "triton")




def _gpu_bench_shapes() -> list:
    """The shapes ``python bench/latency.py`` times on a GPU: its base shape, then each axis of
    its sweep varied alone (the sweep's dtypes are the test's business)."""
    bench = bench_module("kernel_dpmoe_linear")
    return [shape for shape, _ in bench.sweep(bench.GPU_SHAPE, bench.GPU_AXES, [None])]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", _gpu_bench_shapes(),
                         ids=lambda s: f"M{s.rows}_{s.d_in}x{s.d_out}_E{s.experts}_r{s.rank}")
def test_gpu_bench_shapes(shape, dtype, device):
    """The kernel at the sizes it is benchmarked (and served) at, against the float64
    reference: view-major sequences of equal length, as FusedL2Rec stacks the two views."""
    lengths = [shape.seq_len] * (shape.views * shape.seqs_per_view)
    views = [v for v in range(shape.views) for _ in range(shape.seqs_per_view)]
    case = make_case(lengths, shape.d_in, shape.d_out, shape.views, shape.experts, shape.rank,
                     views=views, dtype=dtype, device=device)
    check(case, "triton")
