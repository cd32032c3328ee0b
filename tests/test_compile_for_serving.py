"""compile_for_serving: compiled forwards over (batch, length) buckets, padded and sliced.

Most tests compile with ``backend="eager"`` (Dynamo traces the whole forward; aten runs
it), so they check the tracing, bucketing, padding and slicing in seconds; one compiles
with Inductor in mode="reduce-overhead" (on the CPU: no CUDA graphs, the same code path
otherwise); the GPU test captures and replays CUDA graphs.
"""

import pytest
import torch
from model_utils import batch, make_pair, repad
from tolerances import REL_TOL, rel_err
from torch._dynamo.utils import counters

from l2rec_kernels.models.compiled import (
    CompiledRecommender,
    ShapeBuckets,
    compile_for_serving,
    default_length_buckets,
    pad_batch,
)

TOL = REL_TOL[torch.float32]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def pick(which: str, backend: str = "torch", **cfg):
    ref, fused = make_pair(backend=backend, **cfg)
    return fused if which == "fused" else ref


def assert_same_recommendations(runner, model, b: dict, **kw) -> None:
    got, want = runner.recommend(**b, **kw), model.recommend(**b, **kw)
    assert torch.equal(got[1], want[1])
    finite = torch.isfinite(want[0])
    assert torch.equal(torch.isfinite(got[0]), finite)
    assert rel_err(got[0][finite], want[0][finite]) < TOL


def test_buckets_round_up_and_reject_what_they_cannot_hold():
    buckets = ShapeBuckets((1, 4, 16), (8, 32))
    assert [buckets.batch_bucket(n) for n in (1, 2, 4, 5, 16, 40)] == [1, 4, 4, 16, 16, 16]
    assert [buckets.length_bucket(t) for t in (1, 8, 9, 32)] == [8, 8, 32, 32]
    with pytest.raises(ValueError, match="33 columns, more than the largest length bucket 32"):
        buckets.length_bucket(33)
    assert len(buckets) == 6
    assert default_length_buckets(300) == (32, 64, 128, 256, 300)
    assert default_length_buckets(256) == (32, 64, 128, 256)
    assert default_length_buckets(20) == (20,)
    for bad, err, match in [((), TypeError, "non-empty sequence"), ("abc", TypeError, "sequence"),
                            ((4, 2), ValueError, "strictly increasing"),
                            ((1, 1), ValueError, "strictly increasing"),
                            ((0, 2), ValueError, "positive ints"), ((1.5,), ValueError, "positive"),
                            ((True,), ValueError, "positive ints")]:
        with pytest.raises(err, match=match):
            ShapeBuckets(bad, (8,))
        with pytest.raises(err, match="length_buckets"):
            ShapeBuckets((1,), bad)


def test_pad_batch_repeats_row_zero_and_pads_on_the_batch_side():
    b = batch(3, 6, 4)
    for side in ("left", "right"):
        x = repad(b, side, extra=1)
        mask, seq = x["attention_mask"].bool(), x["input_ids"].shape[1]
        ids, m, hist = pad_batch(x["input_ids"], mask, x["history_ids"], rows=5, length=seq + 3,
                                 history=7)
        assert ids.shape == m.shape == (5, seq + 3) and hist.shape == (5, 7)
        # left-padded prompts (all end on the last column) get more on the left
        old, new = (slice(3, None), slice(0, 3)) if side == "left" else (slice(0, seq), slice(seq, None))
        assert torch.equal(ids[:3, old], x["input_ids"]) and torch.equal(m[:3, old], mask)
        assert not m[:, new].any() and not ids[:, new].any()
        assert torch.equal(ids[3:], ids[:1].expand(2, -1)) and torch.equal(hist[3:], hist[:1].expand(2, -1))
        assert torch.equal(hist[:3, :4], x["history_ids"]) and not hist[:, 4:].any()
    # already the bucket's shape: the same tensors back
    x = repad(b, "right")
    ids, m, hist = pad_batch(x["input_ids"], x["attention_mask"].bool(), x["history_ids"], 3,
                             x["input_ids"].shape[1], 4)
    assert ids is x["input_ids"] and hist is x["history_ids"]


@torch.no_grad()
def test_parity_over_shapes_and_padding_sides():
    """Same preference, gates, scores and recommendations as eager for ragged batches
    padded on either side, batch 1, a batch between buckets and one above the largest: the
    bucket path (padding rows and columns, chunks). The compiled graph itself, for both
    models and the routing presets, is checked once, in test_compile.py."""
    model = pick("fused")
    runner = compile_for_serving(model, backend="eager", batch_buckets=(1, 2, 4, 8),
                                 length_buckets=(8, 16, 32))
    for n, seq, hist in [(3, 9, 5), (1, 5, 2), (4, 16, 7), (11, 20, 5)]:
        for side in ("left", "right"):
            b = repad(batch(n, seq, hist, seed=n), side, extra=1)
            out, want = runner(**b), model(**b)
            for name in ("preference", "gates", "scores"):
                assert rel_err(getattr(out, name), getattr(want, name)) < TOL, (n, seq, side, name)
            assert_same_recommendations(runner, model, b, k=5)
    b = batch(3, 9, 5)
    excl = torch.tensor([[3, -1], [-1, -1], [7, 9]])
    assert_same_recommendations(runner, model, b, k=4, exclude_history=False, exclude_ids=excl)
    candidates = torch.arange(1, 9)
    assert rel_err(runner(**b, candidate_ids=candidates).scores,
                   model(**b, candidate_ids=candidates).scores) < TOL


@torch.no_grad()
def test_a_bounded_number_of_graphs_over_many_shapes():
    """Dynamic shapes: buckets share compiled code. Batch 1 is its own graph (PyTorch
    specialises sizes 0/1), every other bucket shares one."""
    model = pick("fused")
    runner = compile_for_serving(model, backend="eager")
    assert len(runner.buckets) > 20
    for n, seq in [(3, 9), (2, 50), (5, 100), (64, 11), (1, 9), (1, 200), (17, 30), (33, 64)]:
        b = batch(n, seq, 5)
        assert rel_err(runner(**b).scores, model(**b).scores) < TOL, (n, seq)
    assert counters["stats"]["unique_graphs"] <= 2


@torch.no_grad()
def test_bad_input_gets_the_eager_error_before_the_graph():
    model = pick("fused")
    runner = compile_for_serving(model, backend="eager", batch_buckets=(4,), length_buckets=(16,))
    b = batch(3, 9, 5)
    runner(**b)
    for bad in [dict(b, history_ids=b["history_ids"] + 100), dict(b, input_ids=b["input_ids"] + 1000),
                dict(b, attention_mask=torch.zeros_like(b["attention_mask"]))]:
        with pytest.raises(ValueError) as got:
            runner(**bad)
        with pytest.raises(ValueError) as want:
            model(**bad)
        assert str(got.value) == str(want.value)
    with pytest.raises(ValueError, match="more than the largest length bucket 16"):
        runner(**batch(2, 17, 5))
    with pytest.raises(ValueError, match="at least one row"):
        runner(input_ids=b["input_ids"][:0], attention_mask=b["attention_mask"][:0],
               history_ids=b["history_ids"][:0])
    with pytest.raises(ValueError, match="k must be an int"):
        runner.recommend(**b, k=0)
    with pytest.raises(TypeError, match="input_ids"):
        runner(input_ids=b["input_ids"].float(), attention_mask=b["attention_mask"],
               history_ids=b["history_ids"])
    assert counters["stats"]["unique_graphs"] == 1  # no bad input reached a graph


def test_configuration_errors():
    model = pick("fused")
    with pytest.raises(TypeError, match="model must be an L2Rec or FusedL2Rec"):
        compile_for_serving(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="mode must be one of"):
        compile_for_serving(model, mode="fast")
    with pytest.raises(TypeError, match="backend"):
        compile_for_serving(model, backend=None)
    limit = model.backbone.config.max_position_embeddings
    with pytest.raises(ValueError, match="max_position_embeddings"):
        compile_for_serving(model, length_buckets=(8, limit + 1))
    assert compile_for_serving(model).buckets.length[-1] == limit
    assert isinstance(compile_for_serving(model), CompiledRecommender)


@torch.no_grad()
def test_warmup_compiles_the_buckets_it_is_given():
    model = pick("fused")
    runner = compile_for_serving(model, backend="eager", batch_buckets=(1, 2, 4), length_buckets=(8, 16))
    assert runner.warmup(batch_buckets=(2, 4)) == 4
    graphs = counters["stats"]["unique_graphs"]
    b = batch(3, 12, 5)  # bucket (4, 16): warmed, so no new graph
    assert rel_err(runner(**b).scores, model(**b).scores) < TOL
    assert counters["stats"]["unique_graphs"] == graphs
    with pytest.raises(ValueError, match="batch_buckets must be strictly increasing"):
        runner.warmup(batch_buckets=(4, 2))


@pytest.mark.interpreter
@torch.no_grad()
def test_triton_backend_through_the_interpreter(device):
    """backend="triton" inside the traced graph: its ops are opaque custom ops to Dynamo."""
    model = pick("fused", backend="triton")
    runner = compile_for_serving(model, backend="eager", batch_buckets=(4,), length_buckets=(16,))
    b = batch(3, 9, 5)
    assert rel_err(runner(**b).scores, model(**b).scores) < TOL
    assert_same_recommendations(runner, model, b, k=5)


@pytest.mark.slow
@torch.no_grad()
def test_inductor_reduce_overhead_on_the_cpu():
    """The serving mode end to end through Inductor (on the CPU there is no CUDA graph to
    capture; everything else is the same path)."""
    model = pick("fused")
    runner = compile_for_serving(model, mode="reduce-overhead", batch_buckets=(2, 4),
                                 length_buckets=(16,))
    for n in (3, 2, 4):
        b = batch(n, 9, 5, seed=n)
        assert rel_err(runner(**b).scores, model(**b).scores) < TOL
        assert_same_recommendations(runner, model, b, k=5)


@pytest.mark.gpu
@torch.no_grad()
def test_cuda_graph_replay_matches_eager():
    """mode="reduce-overhead" on CUDA: each bucket is captured once and replayed; a
    result handed out earlier is not overwritten by a later replay."""
    model = pick("fused", backend="triton").cuda()
    runner = compile_for_serving(model, mode="reduce-overhead", batch_buckets=(2, 4),
                                 length_buckets=(16, 32))
    runner.warmup()
    first_b = {k: v.cuda() for k, v in batch(3, 9, 5, seed=1).items()}
    first = runner(**first_b).preference
    kept = first.clone()
    for n, seq in [(2, 12), (4, 30), (1, 16), (3, 9)]:
        b = {k: v.cuda() for k, v in batch(n, seq, 5, seed=n).items()}
        assert rel_err(runner(**b).scores, model(**b).scores) < 1e-4, (n, seq)
        assert_same_recommendations(runner, model, b, k=5)
    assert torch.equal(first, kept)
