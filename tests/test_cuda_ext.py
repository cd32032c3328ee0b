"""The compiled extension l2rec_kernels._C (csrc/).

* Without it: importing the package and backend_info() work and warn about nothing.
* With the built library but no GPU (``make cuda-check`` sets L2REC_CUDA_EXT_PATH to the
  library it just linked; elsewhere, where ``l2rec_kernels._C`` is installed): schemas,
  fake impls (tracing with fake tensors), and the C++ argument checks, which run before
  the device check and so surface on CPU tensors too.
* On a GPU (marked ``gpu``): the CUDA route against a float64 reference and the torch path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

EXT = "l2rec_kernels._C"


def test_import_and_backend_info_without_extension():
    """In a fresh interpreter: no warning, the extension not loaded by importing, and
    backend_info() saying why the cuda backend is unavailable."""
    code = textwrap.dedent(f"""
        import json, sys, warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import l2rec_kernels
            import l2rec_kernels.ops._cuda_ext
            import l2rec_kernels.ops.batch_metadata
            loaded_by_import = {EXT!r} in sys.modules
            info = l2rec_kernels.backend_info()
        print(json.dumps({{"info": info, "loaded_by_import": loaded_by_import,
                          "warnings": [f"{{w.filename}}: {{w.message}}" for w in caught]}}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "L2REC_CUDA_EXT_PATH"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # Ours, or about the extension (third-party import noise is not this test's business).
    ours = [w for w in out["warnings"]
            if "l2rec_kernels" in w or "extension" in w.lower() or "_C" in w]
    assert ours == []
    assert not out["loaded_by_import"]
    cuda = out["info"]["cuda"]
    assert isinstance(cuda["available"], bool) and cuda["reason"]
    if importlib.util.find_spec(EXT) is None:
        assert cuda["available"] is False
        if not torch.cuda.is_available():
            assert "needs CUDA tensors" in cuda["reason"]
        else:
            assert "not built" in cuda["reason"]


# ---- with the built library (no GPU needed) ---------------------------------------------


@pytest.fixture(scope="module")
def ext():
    """The extension module: the library named by L2REC_CUDA_EXT_PATH, else the installed
    one; skip where neither exists."""
    from l2rec_kernels import _backend

    path = os.environ.get("L2REC_CUDA_EXT_PATH")
    if path and EXT not in sys.modules:
        spec = importlib.util.spec_from_file_location(EXT, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[EXT] = module
        spec.loader.exec_module(module)
        _backend._cuda_ext_import_error.cache_clear()
    if _backend._cuda_ext_import_error() is not None:
        pytest.skip("the CUDA extension is not built here (make cuda-check tests a fresh build)")
    return _backend.load_cuda_ext()


def test_schemas(ext):
    from l2rec_kernels.ops import _cuda_ext

    ops = _cuda_ext.load_ops()
    assert str(ops.route.default._schema) == (
        "l2rec_cuda::route(Tensor logits, int top_k, float temperature) -> Tensor")
    assert str(ops.batch_metadata.default._schema) == (
        "l2rec_cuda::batch_metadata(Tensor attention_mask, int num_views) -> (Tensor position_ids, "
        "Tensor last_index, Tensor cu_seqlens, Tensor seq_view, Tensor packed_last_row)")


def test_fake_impls_on_meta_tensors(ext):
    from l2rec_kernels.ops import _cuda_ext

    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        gates = _cuda_ext.route_cuda(torch.empty(7, 5, dtype=dtype, device="meta"), 2, 1.5)
        assert gates.shape == (7, 5) and gates.dtype == dtype and gates.device.type == "meta"
    outs = _cuda_ext.batch_metadata_cuda(torch.empty(3, 11, dtype=torch.bool, device="meta"), 2)
    shapes = [(tuple(t.shape), t.dtype) for t in outs]
    assert shapes == [((3, 11), torch.int64), ((3,), torch.int64), ((7,), torch.int32),
                      ((6,), torch.int32), ((6,), torch.int64)]


def test_ops_trace_symbolically(ext):
    """make_fx with symbolic shapes runs only the fake impls: what torch.compile needs."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from l2rec_kernels.ops import _cuda_ext

    def f(logits, mask):
        return _cuda_ext.route_cuda(logits, 2, 0.7), *_cuda_ext.batch_metadata_cuda(mask, 2)

    graph = make_fx(f, tracing_mode="symbolic")(torch.randn(6, 4), torch.ones(3, 9, dtype=torch.bool))
    targets = {str(node.target) for node in graph.graph.nodes if node.op == "call_function"}
    assert {"l2rec_cuda.route.default", "l2rec_cuda.batch_metadata.default"} <= targets


def test_ops_compile_fullgraph(ext):
    """torch.compile traces both wrappers into one graph (extension loading included); the
    graph then runs the CPU registration, which stops at the device check."""
    from l2rec_kernels.ops import _cuda_ext

    torch._dynamo.reset()
    route = torch.compile(lambda x: _cuda_ext.route_cuda(x, 2, 1.3) * 2, backend="eager",
                          fullgraph=True)
    with pytest.raises(RuntimeError, match="l2rec_cuda::route: logits must be a CUDA tensor"):
        route(torch.randn(4, 5))
    meta = torch.compile(lambda m: _cuda_ext.batch_metadata_cuda(m, 2)[2] + 1, backend="eager",
                         fullgraph=True)
    with pytest.raises(RuntimeError, match="l2rec_cuda::batch_metadata: attention_mask must be a CUDA"):
        meta(torch.ones(3, 4, dtype=torch.bool))


ROUTE_ERRORS = [  # (logits, top_k, temperature, message)
    (torch.randn(2, 3, 4), 0, 1.0, r"logits must be 2-D \[S, E\], got 3-D with shape \[2, 3, 4\]"),
    (torch.randn(2, 3, dtype=torch.float64), 0, 1.0,
     "logits must have dtype float32, float16 or bfloat16, got float64"),
    (torch.zeros(2, 3, dtype=torch.int32), 0, 1.0, "logits must have dtype .* got int32"),
    (torch.randn(4, 0), 0, 1.0, r"logits must have E in \[1, 2147483647\] expert columns, got E = 0"),
    (torch.randn(2, 3), 4, 1.0, r"top_k must be <= E = 3 \(or <= 0 for dense gates\), got 4"),
    (torch.randn(2, 3), 1, 0.0, "temperature must be a positive finite number, got 0"),
    (torch.randn(2, 3), 1, -2.0, "temperature must be a positive finite number, got -2"),
    (torch.randn(2, 3), 1, float("nan"), "temperature must be a positive finite number, got nan"),
    (torch.randn(2, 3), 1, 1.0, "logits must be a CUDA tensor, got device cpu"),
]


@pytest.mark.parametrize(("logits", "top_k", "temperature", "message"), ROUTE_ERRORS)
def test_cuda_route_checks(ext, logits, top_k, temperature, message):
    from l2rec_kernels.ops import _cuda_ext

    with pytest.raises(RuntimeError, match=f"l2rec_cuda::route: {message}"):
        _cuda_ext.load_ops().route(logits, top_k, temperature)


METADATA_ERRORS = [  # (mask, num_views, message)
    (torch.ones(5, dtype=torch.bool), 2, r"attention_mask must be 2-D \[B, T\], got 1-D with shape \[5\]"),
    (torch.ones(2, 3), 2, r"attention_mask must have dtype bool or an integer dtype .* got float32"),
    (torch.ones(2, 3, dtype=torch.bool), 0, "num_views must be >= 1, got 0"),
    (torch.ones(8193, 1, dtype=torch.bool), 1,
     "attention_mask must have B <= 8192 rows .* got B = 8193"),
    (torch.ones(1, 1, dtype=torch.bool).expand(4, 2**29), 2,
     r"num_views \* B \* T must be <= 2147483647 .* got num_views = 2, B = 4, T = 536870912"),
    (torch.ones(3, 1, dtype=torch.bool), 2**40,
     r"num_views \* B \* T must be <= 2147483647 .* got num_views = 1099511627776"),
    (torch.ones(2, 3, dtype=torch.int16), 2, "attention_mask must be a CUDA tensor, got device cpu"),
]


@pytest.mark.parametrize(("mask", "num_views", "message"), METADATA_ERRORS)
def test_batch_metadata_checks(ext, mask, num_views, message):
    from l2rec_kernels.ops import _cuda_ext

    with pytest.raises(RuntimeError, match=f"l2rec_cuda::batch_metadata: {message}"):
        _cuda_ext.load_ops().batch_metadata(mask, num_views)


def test_own_namespace_beside_python_ops(ext):
    """The extension's ops live in ``l2rec_cuda`` under the Python ops' names; the Triton
    ``l2rec::route`` (where triton imports here) is a different op."""
    from l2rec_kernels.ops import _cuda_ext

    ops = _cuda_ext.load_ops()
    assert hasattr(ops, "route") and hasattr(ops, "batch_metadata")
    assert str(ops.route.default._schema).startswith("l2rec_cuda::route(")
    try:
        import l2rec_kernels.ops._route_triton  # noqa: F401
    except ImportError:
        pass
    else:
        assert torch.ops.l2rec.route.default is not ops.route.default


# ---- on a GPU -------------------------------------------------------------------------


def route_reference(logits: torch.Tensor, top_k: int | None, temperature: float) -> torch.Tensor:
    """float64 gates: softmax(x / τ); top-k chosen on the fp32 logits, ties to the lower
    index (a stable descending sort), then renormalised."""
    x = logits.float()
    probs = torch.softmax(x.double() / temperature, dim=-1)
    experts = x.shape[-1]
    if top_k is None or top_k >= experts:
        return probs
    order = torch.sort(x, dim=-1, descending=True, stable=True).indices[:, :top_k]
    kept = probs * torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, True)
    return kept / kept.sum(dim=-1, keepdim=True)


TOLERANCES = {torch.float32: (3e-5, 1e-7), torch.float16: (1e-3, 1e-5),
              torch.bfloat16: (8e-3, 1e-6)}  # (rtol, atol): fp32 math, then the output's rounding
ROUTE_SHAPES = [(1, 1), (1, 5), (2, 4), (37, 3), (4099, 7), (129, 17), (8, 129)]


def _top_ks(experts):
    ks = {None, 1, 2, experts - 1, experts}
    return sorted((k for k in ks if k is None or 1 <= k <= experts), key=lambda k: k or 0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize(("rows", "experts"), ROUTE_SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 0.37, 2.5])
def test_cuda_route_matches_float64(dtype, rows, experts, temperature, device):
    from l2rec_kernels.ops import _cuda_ext

    logits = (torch.randn(rows, experts, device=device) * 3).to(dtype)
    rtol, atol = TOLERANCES[dtype]
    for top_k in _top_ks(experts):
        got = _cuda_ext.route_cuda(logits, top_k, temperature)
        assert got.dtype == dtype and got.shape == logits.shape
        expected = route_reference(logits, top_k, temperature)
        torch.testing.assert_close(got.double(), expected, rtol=rtol, atol=atol)
        if dtype == torch.float32:  # the kept set itself (no fp32 gate underflows here)
            assert torch.equal(got != 0, expected != 0)


@pytest.mark.gpu
def test_cuda_route_ties_dense_spellings_and_strides(device):
    from l2rec_kernels.ops import _cuda_ext

    ops = _cuda_ext.load_ops()
    logits = torch.randint(-2, 3, (513, 9), device=device).float()  # many exact ties
    for top_k in (1, 2, 4, 8):
        got = ops.route(logits, top_k, 1.0)
        expected = route_reference(logits, top_k, 1.0)
        assert torch.equal(got != 0, expected != 0), top_k
        torch.testing.assert_close(got.double(), expected, rtol=3e-5, atol=1e-7)
    dense = ops.route(logits, 0, 0.5)
    assert torch.equal(ops.route(logits, -3, 0.5), dense)
    assert torch.equal(ops.route(logits, 9, 0.5), dense)
    # A non-contiguous input is made contiguous by the op.
    wide = torch.randn(40, 14, device=device)
    torch.testing.assert_close(ops.route(wide[:, ::2], 3, 1.0),
                               ops.route(wide[:, ::2].contiguous(), 3, 1.0))
    # Zero rows launch nothing and return an empty [0, E] tensor.
    assert ops.route(torch.empty(0, 4, device=device), 2, 1.0).shape == (0, 4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(TOLERANCES))
def test_route_cuda_backend_matches_torch_backend(dtype, device):
    route_mod = pytest.importorskip("l2rec_kernels.ops.route")
    logits = torch.randn(2 * 21, 5, device=device).to(dtype)
    rtol, atol = TOLERANCES[dtype]
    for top_k in (None, 1, 3, 5):
        got = route_mod.route(logits, top_k=top_k, temperature=0.8, backend="cuda")
        ref = route_mod.route(logits, top_k=top_k, temperature=0.8, backend="torch")
        torch.testing.assert_close(got.double(), ref.double(), rtol=2 * rtol, atol=2 * atol)


@pytest.mark.gpu
def test_cpp_checks_on_cuda_tensors(device):
    from l2rec_kernels.ops import _cuda_ext

    ops = _cuda_ext.load_ops()
    with pytest.raises(RuntimeError, match=r"l2rec_cuda::route: logits must be 2-D"):
        ops.route(torch.randn(3, device=device), 0, 1.0)
    with pytest.raises(RuntimeError, match=r"l2rec_cuda::route: top_k must be <= E = 4"):
        ops.route(torch.randn(3, 4, device=device), 5, 1.0)
    with pytest.raises(RuntimeError, match=r"l2rec_cuda::batch_metadata: attention_mask must have dtype"):
        ops.batch_metadata(torch.ones(2, 3, device=device), 2)


@pytest.mark.gpu
def test_cuda_route_stream_and_compile(device):
    from l2rec_kernels.ops import _cuda_ext

    logits = torch.randn(64, 6, device=device)
    expected = route_reference(logits, 2, 1.3)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = _cuda_ext.route_cuda(logits, 2, 1.3)
    stream.synchronize()
    torch.testing.assert_close(got.double(), expected, rtol=3e-5, atol=1e-7)

    torch._dynamo.reset()
    compiled = torch.compile(lambda x: _cuda_ext.route_cuda(x, 2, 1.3) * 2, fullgraph=True)
    torch.testing.assert_close(compiled(logits).double(), 2 * expected, rtol=3e-5, atol=1e-7)


@pytest.mark.gpu
def test_ops_capture_in_cuda_graph(device):
    """Both ops launch on the current (capturing) stream and never sync, so they record
    into a CUDA graph and replay with new inputs."""
    from l2rec_kernels.ops import _cuda_ext
    from l2rec_kernels.ops.batch_metadata import batch_metadata

    logits = torch.randn(10, 5, device=device)
    mask = torch.rand(5, 13, device=device) < 0.7
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up: extension load, fake registration
        _cuda_ext.route_cuda(logits, 2, 1.0)
        _cuda_ext.batch_metadata_cuda(mask, 2)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        gates = _cuda_ext.route_cuda(logits, 2, 1.0)
        meta = _cuda_ext.batch_metadata_cuda(mask, 2)
    logits.copy_(torch.randn(10, 5, device=device))
    mask.copy_(torch.rand(5, 13, device=device) < 0.3)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(gates.double(), route_reference(logits, 2, 1.0), rtol=3e-5, atol=1e-7)
    expected = batch_metadata(mask, backend="torch")
    for got, want in zip(meta, expected):
        assert torch.equal(got, want)
