"""The contract every op keeps, checked once, over all of them:

* its registered ``torch.library`` op passes ``opcheck`` (schema, fake implementation and
  real one agreeing, autograd registration), on inputs with an empty and a one-row case;
* the public function compiles whole (``torch.compile(fullgraph=True)``) on every backend
  and gives the eager answer;
* a backend that cannot carry gradients refuses them with an error that names
  ``backend='torch'`` (and still runs without grad), and a selection op hands back no
  gradient on any backend;
* importing the op's module imports neither its kernels, nor triton, nor torch._dynamo
  (``TRITON_INTERPRET`` must still be settable afterwards);
* bad input names the argument: a list instead of a tensor is a TypeError, an unknown
  backend a ValueError.

Each op's own test file checks its math against float64 references (odd shapes, ties,
limits, dtypes, every bad input).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from op_cases import make, make_case, random_exclude

from l2rec_kernels.ops.batch_metadata import batch_metadata
from l2rec_kernels.ops.dpmoe_linear import dpmoe_linear, triton_op
from l2rec_kernels.ops.route import route
from l2rec_kernels.ops.topk_items import topk_items

_DPMOE_ARGS = ("x", "weight", "bias", "lora_a", "lora_b", "gates", "seq_view", "cu_seqlens", "scaling")


@dataclass(frozen=True)
class Contract:
    """One op as the contract sees it."""

    name: str
    backends: tuple[str, ...]
    inputs: Callable         # (device, grad: bool) -> the inputs of a small call
    apply: Callable          # (backend, inputs) -> the public function's output
    opcheck_cases: Callable  # device -> [(registered op, args), ...]
    first_arg: str           # the name of the first tensor argument
    bad_call: Callable       # (device, **overrides) -> the public call with these arguments
    refuses_grad: tuple[str, ...] = ()   # backends that raise for inputs requiring grad
    selection: bool = False              # outputs never carry a gradient


# ------------------------------------------------------------------------- dpmoe_linear
def _dpmoe_inputs(device, grad=False):
    case = make_case([5, 0, 7, 1], 19, 21, 2, 2, 3, device=device)
    case["lora_a"].requires_grad_(grad)
    return case


def _dpmoe_apply(backend, case):
    return dpmoe_linear(**case, backend=backend)


def _dpmoe_opcheck(device):
    cases = []
    for lengths, bias in (([5, 0, 11], True), ([0], False), ([1], True)):
        case = make_case(lengths, 19, 21, 2, 2, 3, bias=bias, device=device)
        cases.append((triton_op(), (*(case[k] for k in _DPMOE_ARGS), None, None, False)))
    case = make_case([5, 0, 11], 19, 21, 2, 2, 3, shared=2, per_row=True, device=device)
    keys = (*_DPMOE_ARGS, "shared_a", "shared_b", "per_row_gates")
    cases.append((triton_op(), tuple(case[k] for k in keys)))
    return cases


def _dpmoe_bad(device, **kw):
    case = make_case([3, 2], 8, 6, 2, 2, 2, device=device)
    return dpmoe_linear(**{**case, **kw})


# ------------------------------------------------------------------------- route
def _route_logits(device, rows=9, experts=5):
    return torch.randn(rows, experts, generator=torch.Generator().manual_seed(0)).to(device)


def _route_inputs(device, grad=False):
    return _route_logits(device).requires_grad_(grad)


def _route_apply(backend, logits):
    return route(logits, top_k=2, temperature=0.7, backend=backend)


def _route_opcheck(device):
    from l2rec_kernels.ops._route_triton import route_op

    args = [(_route_logits(device), 2, 0.5), (_route_logits(device), 5, 1.0),
            (_route_logits(device, 3, 7).half(), 3, 2.0), (_route_logits(device, 1, 4), 1, 1.0),
            (_route_logits(device, 0, 4), 1, 1.0)]
    return [(route_op, a) for a in args]


def _route_bad(device, **kw):
    return route(**{"logits": _route_logits(device), "top_k": 2, **kw})


# ------------------------------------------------------------------------- topk_items
def _topk_inputs(device, batch=5):
    query, item_emb = make(batch, 300, 24, torch.float32, device)
    return query, item_emb, random_exclude(batch, 4, 300, device)


def _topk_call_inputs(device, grad=False):
    query, item_emb, exclude = _topk_inputs(device)
    return query.requires_grad_(grad), item_emb, exclude


def _topk_apply(backend, inputs):
    query, item_emb, exclude = inputs
    return topk_items(query, item_emb, 7, exclude, backend=backend)


def _topk_opcheck(device):
    from l2rec_kernels.ops._topk_items_triton import topk_items_op

    query, item_emb, exclude = _topk_inputs(device)
    return [(topk_items_op, (query, item_emb, 7, exclude, 0)),
            (topk_items_op, (query, item_emb, 7, exclude[:, :0], 1)),
            (topk_items_op, (query[:1], item_emb, 3, exclude[:1], 0)),
            (topk_items_op, (query[:0], item_emb, 3, exclude[:0], 0))]


def _topk_bad(device, **kw):
    query, item_emb, _ = _topk_inputs(device)
    return topk_items(**{"query": query, "item_emb": item_emb, "k": 3, **kw})


# ------------------------------------------------------------------------- batch_metadata
def _mask(device):
    return torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.bool, device=device)


def _metadata_inputs(device, grad=False):
    return _mask(device)


def _metadata_apply(backend, mask):
    return tuple(batch_metadata(mask, num_views=2, backend=backend))


def _metadata_opcheck(device):
    from l2rec_kernels.ops import _cuda_ext

    op = _cuda_ext.load_ops().batch_metadata
    return [(op, (_mask(device), 2)), (op, (_mask(device)[:1], 2))]


def _metadata_bad(device, **kw):
    return batch_metadata(**{"attention_mask": _mask(device), **kw})


CONTRACTS = {c.name: c for c in (
    Contract("dpmoe_linear", ("torch", "triton"), _dpmoe_inputs, _dpmoe_apply, _dpmoe_opcheck, "x",
             _dpmoe_bad, refuses_grad=("triton",)),
    Contract("route", ("torch", "triton"), _route_inputs, _route_apply, _route_opcheck, "logits",
             _route_bad, refuses_grad=("triton",)),
    Contract("topk_items", ("torch", "triton"), _topk_call_inputs, _topk_apply, _topk_opcheck, "query",
             _topk_bad, selection=True),
    Contract("batch_metadata", ("torch", "cuda"), _metadata_inputs, _metadata_apply, _metadata_opcheck,
             "attention_mask", _metadata_bad),
)}
# (op, backend) pairs; the CUDA extension's only on a GPU with it built.
PAIRS = [pytest.param(c.name, b, id=f"{c.name}-{b}",
                      marks=[pytest.mark.gpu] if b == "cuda" else [])
         for c in CONTRACTS.values() for b in c.backends]


def _skip_unusable(name: str, backend: str) -> None:
    if backend == "cuda":
        from l2rec_kernels._backend import cuda_ext_unavailable_reason

        reason = ("no GPU" if not torch.cuda.is_available()
                  else cuda_ext_unavailable_reason(torch.device("cuda")))
        if reason is not None:
            pytest.skip(f"the CUDA extension cannot run here: {reason}")


def _same(a, b) -> None:
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("name", [n for n in CONTRACTS if n != "batch_metadata"] +
                         [pytest.param("batch_metadata", marks=pytest.mark.gpu)])
def test_registered_op_passes_opcheck(name, device):
    if name == "batch_metadata":
        _skip_unusable(name, "cuda")
    for op, args in CONTRACTS[name].opcheck_cases(device):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("name, backend", PAIRS)
def test_compiles_whole_and_matches_eager(name, backend, device):
    _skip_unusable(name, backend)
    contract = CONTRACTS[name]
    torch._dynamo.reset()
    inputs = contract.inputs(device)
    with torch.no_grad():
        want = contract.apply(backend, inputs)  # (eager first: backend discovery is then cached)
        compiled = torch.compile(lambda x: contract.apply(backend, x), fullgraph=True,
                                 backend="aot_eager")
        got = compiled(inputs)
    _same(got, want)


@pytest.mark.parametrize("name, backend", [p for p in PAIRS if p.values[0] != "batch_metadata"])
def test_gradients_are_refused_clearly_or_never_carried(name, backend, device):
    contract = CONTRACTS[name]
    inputs = contract.inputs(device, grad=True)
    if backend in contract.refuses_grad:
        with pytest.raises(RuntimeError, match="backend='torch'"):
            contract.apply(backend, inputs)
        with torch.no_grad():
            contract.apply(backend, inputs)
        with torch.inference_mode():
            contract.apply(backend, contract.inputs(device))
        return
    out = contract.apply(backend, inputs)
    tensors = out if isinstance(out, tuple) else (out,)
    if contract.selection:
        assert not any(t.requires_grad for t in tensors)
    else:  # the differentiable path: a gradient reaches the input
        assert tensors[0].requires_grad
        tensors[0].float().sum().backward()


_ISOLATED_IMPORT = """
import importlib.util, sys, types
# Stub the parent packages so only this op's module (and what it imports) is imported.
for name in ("l2rec_kernels", "l2rec_kernels.ops"):
    spec = importlib.util.find_spec(name)
    pkg = types.ModuleType(name)
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules[name] = pkg
import l2rec_kernels.ops.{op}
loaded = [m for m in ("triton", "torch._dynamo", "l2rec_kernels.ops._{op}_triton") if m in sys.modules]
assert not loaded, f"importing {op} imported {{loaded}}"
"""


@pytest.mark.parametrize("name", list(CONTRACTS))
def test_importing_the_op_is_lazy(name):
    subprocess.run([sys.executable, "-c", _ISOLATED_IMPORT.format(op=name)], check=True)


@pytest.mark.parametrize("name", list(CONTRACTS))
def test_bad_input_names_the_argument(name, device):
    contract = CONTRACTS[name]
    good = contract.apply("torch", contract.inputs(device))
    first = (good if isinstance(good, tuple) else (good,))[0]
    with pytest.raises(TypeError, match=contract.first_arg):
        contract.bad_call(device, **{contract.first_arg: [[1.0, 2.0]]})
    with pytest.raises(ValueError, match="backend"):
        contract.bad_call(device, backend="gpu")
    assert first.device.type == device.type


# ------------------------------------------------------------------------- the dispatch table
def test_the_dispatch_table_is_what_the_contracts_see():
    """Every op's row in ``_dispatch.TABLE`` lists its backends in auto's order (cuda, triton,
    torch) and ends with torch; the inference-only ones are those that refuse gradients."""
    from l2rec_kernels._dispatch import TABLE

    assert set(TABLE) == set(CONTRACTS)
    for name, row in TABLE.items():
        assert tuple(row) == tuple(b for b in ("cuda", "triton", "torch") if b in row)
        assert not row["torch"].inference_only and row["torch"].dtypes is None
        contract = CONTRACTS[name]
        assert set(contract.backends) <= set(row)
        assert {b for b in contract.backends if row[b].inference_only} == set(contract.refuses_grad)


def test_select_resolves_explicit_auto_and_limits(device):
    """One resolver: ``auto`` on CPU tensors is torch, an inference-only backend drops out of
    ``auto``'s candidates under grad, an explicit one is checked (name, dtype, size limits).
    (test_autotune checks which candidates a measured ``auto`` times.)"""
    from l2rec_kernels._dispatch import select

    assert select("route", "auto", torch.device("cpu"), torch.float32) == "torch"
    assert select("route", "triton", device, torch.float32) == "triton"
    with pytest.raises(ValueError, match="not implemented for dpmoe_linear"):
        select("dpmoe_linear", "cuda", device, torch.float32)
    with pytest.raises(TypeError, match="logits dtypes float32, float16, bfloat16, got float64"):
        select("route", "triton", device, torch.float64)
    with pytest.raises(ValueError, match="k <= 4096, got k=4097"):
        select("topk_items", "triton", device, torch.float32, exact=(("items", 5000), ("k", 4097)))
    wants_grad = torch.zeros(1, requires_grad=True)
    with pytest.raises(RuntimeError, match="inference-only"):
        select("route", "triton", device, torch.float32, grad_inputs=(wants_grad,))
