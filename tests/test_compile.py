"""torch.compile(model, fullgraph=True): one graph per forward, the eager model's outputs
and errors, a bounded number of graphs over batch sizes and prompt lengths.

Most tests compile with ``backend="eager"``: Dynamo traces the whole forward (what decides
graph breaks, guards and recompiles) and the graph runs with aten's kernels, so a compile
takes seconds. One test compiles with Inductor, the default backend, which also reorders
the graph's work (the value checks must still come before any lookup they protect).
"""


import threading

import pytest
import torch
from model_utils import NUM_ITEMS, batch, make_pair, paper_overrides, repad, run_in_threads
from tolerances import REL_TOL, rel_err
from torch._dynamo.utils import counters

from l2rec_kernels._validation import values_are_free
from l2rec_kernels.models import adapters

TOL = REL_TOL[torch.float32]
MODELS = ("fused", "reference")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test starts with no compiled code and no counts (graphs of earlier tests' models
    would count against the recompile limit of the shared forward)."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def pick(which: str, arch: str = "llama", **cfg):
    ref, fused = make_pair(arch, **cfg)
    return fused if which == "fused" else ref


def bad_inputs(b: dict) -> list[dict]:
    """One input per value check of ``check_forward_inputs``, same shapes and dtypes as ``b``."""
    return [dict(b, history_ids=b["history_ids"] + 100),
            dict(b, input_ids=b["input_ids"] + 1000),
            dict(b, attention_mask=b["attention_mask"].long() * 2),
            dict(b, attention_mask=torch.zeros_like(b["attention_mask"]))]


def error_of(fn, b: dict) -> str:
    try:
        fn(**b)
    except Exception as e:  # the same type and message are expected
        return f"{type(e).__name__}: {e}"
    return "no error"


def assert_no_context_left(model) -> None:
    """Outside a forward the backbone is the plain model: no routing context is active."""
    routing = model.routing
    assert routing.eager == () and routing.traced == () and routing.active() == ()
    wrappers = [m for m in model.backbone.modules() if isinstance(m, adapters.AdaptedLinear)]
    assert {w.base_layer for w in wrappers} == set(model.adapted_linears)


@torch.no_grad()
def test_fused_inductor_parity_and_errors():
    """The default backend: same scores as eager, and bad input raises eager's ValueError
    from the compiled graph, before any embedding lookup could read an out-of-range id."""
    model = pick("fused")
    b = batch(3, 9, 5)
    compiled = torch.compile(model, fullgraph=True)
    assert rel_err(compiled(**b).scores, model(**b).scores) < TOL
    for bad in bad_inputs(b):
        want = error_of(model, bad)
        assert want.startswith("ValueError")
        assert error_of(compiled, bad) == want
    assert counters["stats"]["unique_graphs"] == 1  # the bad inputs reused the graph
    assert_no_context_left(model)


@pytest.mark.parametrize("which", MODELS)
@torch.no_grad()
def test_fullgraph_parity_both_padding_sides(which):
    model = pick(which)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    b = batch(4, 10, 6)  # ragged prompts
    for side in ("right", "left"):
        x = repad(b, side, extra=2)  # the same width on both sides: one graph
        out, want = compiled(**x), model(**x)
        for name in ("scores", "preference", "gates"):
            assert rel_err(getattr(out, name), getattr(want, name)) < TOL, (side, name)
    candidates = torch.arange(1, 8)
    x = dict(b, candidate_ids=candidates, labels=torch.tensor([0, 3, 6, 2]))
    out, want = compiled(**x), model(**x)
    assert rel_err(out.scores, want.scores) < TOL and rel_err(out.loss, want.loss) < TOL
    assert_no_context_left(model)


@pytest.mark.parametrize("which", MODELS)
@pytest.mark.parametrize("preset", ("top_k=1", "top_k=2", "paper"))
@torch.no_grad()
def test_fullgraph_parity_presets(which, preset):
    cfg = paper_overrides() if preset == "paper" else dict(top_k=int(preset[-1]), num_experts=4)
    model = pick(which, **cfg)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    b = batch(3, 9, 5)
    out, want = compiled(**b), model(**b)
    assert rel_err(out.scores, want.scores) < TOL and rel_err(out.gates, want.gates) < TOL
    for bad in bad_inputs(b)[:2]:
        assert error_of(compiled, bad) == error_of(model, bad)


@torch.no_grad()
def test_batch_sizes_and_lengths_reuse_a_bounded_number_of_graphs():
    """Automatic dynamic shapes: a static graph for the first shape, a dynamic one on the
    first change, and batch size 1 specialised (PyTorch's 0/1 specialisation): at most 4
    graphs for any batch size in 1..64 and any prompt length."""
    model = pick("fused")
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    for n, seq in [(3, 9), (2, 5), (5, 13), (64, 11), (1, 9), (1, 3), (17, 30)]:
        b = batch(n, seq, 5)
        assert rel_err(compiled(**b).scores, model(**b).scores) < TOL, (n, seq)
    assert counters["stats"]["unique_graphs"] <= 4


@torch.no_grad()
def test_eager_threads_ignore_another_threads_compile(monkeypatch):
    """While any thread compiles, ``torch.compiler.is_compiling()`` is true in every thread
    (a process-wide flag), so routing must not take it as "this code is being traced":
    eager forwards from several threads, with the flag set as a compile elsewhere sets it,
    each still get their own answer."""
    model = pick("fused")
    batches = [batch(2, 6 + i, 4, seed=i) for i in range(4)]
    want = [model(**b).scores for b in batches]
    monkeypatch.setattr(torch.compiler, "_is_compiling_flag", True)

    def work(i):
        with torch.no_grad():
            for _ in range(5):
                scores = model(**batches[i]).scores
        return scores

    got = run_in_threads(work, 4)
    for i in range(4):
        assert rel_err(got[i], want[i]) < TOL, i
    # Nor do the eager checks and host-side paths: values are still free to read, and a bad
    # item id is still refused by name (both would be skipped "while compiling").
    assert values_are_free(batches[0]["history_ids"])
    bad = dict(batches[0], history_ids=batches[0]["history_ids"].clone().fill_(NUM_ITEMS + 1))
    with pytest.raises(ValueError, match="history_ids"):
        model(**bad)


@torch.no_grad()
def test_eager_and_compiled_forwards_from_threads_at_once():
    """Threads sharing one model, half calling it eagerly and half through its compiled
    copy, each with its own users, at the same time, while one of them compiles its shape
    (``torch.compiler.is_compiling`` is then true process-wide, in the eager threads too):
    every thread gets its own batch's answer (eager forwards take turns on the model's
    routing; a compiled graph reads none). Only one thread compiles: Dynamo itself fails
    now and then when several compile at once (a guard built from another thread's frame),
    whatever the model; serving compiles its shapes first (``compile_for_serving``)."""
    model = pick("fused")
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    batches = [batch(2, 6 + i, 4, seed=i) for i in range(6)]
    want = [model(**b).scores for b in batches]
    for i in (1, 3):  # compiled ahead; thread 5 compiles its shape while the others run
        compiled(**batches[i])

    compiling_done = threading.Event()

    def work(i):  # (grad mode is per thread)
        with torch.no_grad():
            if i % 2:
                scores = [compiled(**batches[i]).scores for _ in range(3)][-1]
                if i == 5:
                    compiling_done.set()
                return scores
            runs = 0  # eager: keep going until the compile is over, so they overlap
            while runs < 3 or not compiling_done.is_set():
                scores = model(**batches[i]).scores
                runs += 1
            return scores

    got = run_in_threads(work, 6)
    for i in range(6):
        assert rel_err(got[i], want[i]) < TOL, i
    assert_no_context_left(model)


@torch.no_grad()
def test_validate_inputs_off_compiles_too():
    model = pick("fused")
    model.validate_inputs = False
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    b = batch(3, 9, 5)
    assert rel_err(compiled(**b).scores, model(**b).scores) < TOL


@torch.no_grad()
def test_a_graph_break_inside_the_forward_still_routes(monkeypatch):
    """Without fullgraph, a break inside the routed region (here forced in every adapted
    linear) splits the forward; the pieces still find the routing (slowly: one graph per
    linear, up to the recompile limit, then eager)."""
    model = pick("reference")
    linear = adapters.ReferenceContext.linear

    def breaking(self, module, experts, x):
        torch._dynamo.graph_break()
        return linear(self, module, experts, x)

    monkeypatch.setattr(adapters.ReferenceContext, "linear", breaking)
    b = batch(3, 9, 5)
    compiled = torch.compile(model, backend="eager")
    assert rel_err(compiled(**b).scores, model(**b).scores) < TOL
    assert_no_context_left(model)


@pytest.mark.parametrize("arch, packing", [("qwen3", "auto"), ("mistral", "auto"),
                                           ("llama", "packed")])
@torch.no_grad()
def test_fullgraph_parity_other_backbones_and_packing(arch, packing):
    """Packed input has data-dependent shapes: compiled, the model runs it padded."""
    model = pick("fused", arch=arch)
    model.packing = packing
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    b = batch(3, 9, 5)
    assert rel_err(compiled(**b).scores, model(**b).scores) < TOL


@pytest.mark.parametrize("which", MODELS)
@torch.no_grad()
def test_dynamic_true_compiles_one_graph(which):
    """dynamic=True from the first call: the config's floats (gate temperature, scaling)
    become symbolic, which the ops' checks must take (comparisons, not math.isfinite)."""
    model = pick(which)
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend="eager")
    for n, seq in [(3, 9), (5, 13), (2, 30)]:
        b = batch(n, seq, 5)
        out, want = compiled(**b), model(**b)
        assert rel_err(out.scores, want.scores) < TOL and rel_err(out.gates, want.gates) < TOL
    assert counters["stats"]["unique_graphs"] == 1


@torch.no_grad()
def test_the_plain_backbone_compiles_with_adapters_installed():
    """Outside a forward the backbone is the plain model, compiled too (fullgraph): its
    wrappers find no routing context."""
    model = pick("fused")
    base = model.backbone.base_model
    b = batch(3, 9, 5)
    kw = dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)
    compiled = torch.compile(base, fullgraph=True, backend="eager")
    want = base(**kw).last_hidden_state
    assert rel_err(compiled(**kw).last_hidden_state, want) < TOL
    model.remove_adapters()
    assert rel_err(base(**kw).last_hidden_state, want) < TOL  # it was the plain model


@torch.no_grad()
def test_compiled_torch_path_runs_each_view_with_its_own_experts(monkeypatch):
    """Compiled, the torch path cannot read the metadata on the host to find the two view
    runs (eager on the CPU does); FusedL2Rec gives them from shapes, so every adapted linear
    still skips the other view's (zero-weighted) experts."""
    from l2rec_kernels.models import fused as fused_module

    model = pick("fused")
    seen = []
    real = fused_module.dpmoe_linear_torch

    def spy(*args, view_runs=None, **kw):
        seen.append(view_runs)
        return real(*args, view_runs=view_runs, **kw)

    monkeypatch.setattr(fused_module, "dpmoe_linear_torch", spy)
    b = batch(3, 9, 5)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    got = compiled(**b).scores
    assert len(seen) == len(model.adapted_linears) and all(seen)
    assert {tuple(r[0][:2]) for r in seen} == {(0, 3 * 9), (0, 3)}  # padded rows; last rows
    assert rel_err(got, model(**b).scores) < TOL
