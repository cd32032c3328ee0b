"""``topk_items``: both backends against ``torch.mm`` + ``torch.topk`` in float64.

Near-equal scores may come in either order, so results are checked by value: the
returned scores equal the reference top-k values, each id really has the score it
claims, ids are distinct, and excluded items never appear. On a GPU,
``test_gpu_bench_shapes`` also runs the benchmark's real sizes (bench/kernel_topk_items.py).
"""

import itertools

import pytest
import torch
from bench_modules import bench_module
from op_cases import make, random_exclude
from tolerances import REL_TOL

from l2rec_kernels.ops.topk_items import topk_items, topk_items_torch

BACKENDS = ["torch", "triton"]
# Scores accumulate in fp32 whatever the input dtype (the float64 reference sees the same
# rounded inputs), so fp32's bound holds for every dtype; x10 for d-long dot products.
# An absolute bound, for scores of order one.
SCORE_TOL = 10 * REL_TOL[torch.float32]


def reference_scores(query, item_emb, exclude=None) -> torch.Tensor:
    """float64 scores on the inputs' device; excluded items at -inf."""
    scores = query.double() @ item_emb.double().T
    if exclude is not None:
        exclude = exclude.to(scores.device).long()
        banned = exclude >= 0
        rows = torch.arange(exclude.shape[0], device=scores.device)[:, None].expand_as(exclude)
        scores[rows[banned], exclude[banned]] = float("-inf")
    return scores


def check_topk(scores, ids, query, item_emb, k, exclude=None):
    batch = query.shape[0]
    assert scores.shape == (batch, k) and ids.shape == (batch, k)
    assert scores.dtype == torch.float32 and ids.dtype == torch.int64
    assert scores.device == query.device and ids.device == query.device
    full = reference_scores(query, item_emb, exclude)
    want = torch.topk(full, k, dim=1).values.cpu()
    largest = float(full.abs().masked_fill(~torch.isfinite(full), 0).max()) if full.numel() else 0.0
    atol = SCORE_TOL * max(1.0, largest)
    # The reference score of each id (clamped so that a bad id fails the range check below).
    claimed_all = full.gather(1, ids.clamp(0, max(full.shape[1] - 1, 0))).cpu()
    scores, ids = scores.double().cpu(), ids.cpu()
    filled = ids >= 0
    # Missing slots (too few candidates after exclusion) are exactly -inf / -1, at the end.
    assert torch.equal(filled, torch.isfinite(want)), "missing slots differ from the reference"
    assert torch.equal(~filled, scores == float("-inf"))
    torch.testing.assert_close(scores[filled], want[filled], rtol=0, atol=atol)
    assert (scores[:, 1:] <= scores[:, :-1]).all(), "scores are not descending"
    for b in range(batch):
        row = ids[b][filled[b]]
        assert row.unique().numel() == row.numel(), f"duplicate ids in row {b}"
        assert ((row >= 0) & (row < item_emb.shape[0])).all()
        claimed = claimed_all[b][filled[b]]
        assert torch.isfinite(claimed).all(), f"row {b} returned an excluded item"
        torch.testing.assert_close(scores[b][filled[b]], claimed, rtol=0, atol=atol)


SHAPES = [  # (B, N, d, k)
    (3, 1237, 40, 10), (2, 1237, 40, 1), (4, 57, 24, 57), (2, 1100, 33, 1024), (1, 1237, 17, 25),
    (37, 300, 16, 5),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_N{}_d{}_k{}".format(*s))
@pytest.mark.parametrize("with_exclude", [False, True], ids=["all", "exclude"])
def test_matches_float64_reference(backend, dtype, shape, with_exclude, device):
    batch, num_items, dim, k = shape
    query, item_emb = make(batch, num_items, dim, dtype, device)
    exclude = random_exclude(batch, 9, num_items, device) if with_exclude else None
    scores, ids = topk_items(query, item_emb, k, exclude=exclude, backend=backend)
    check_topk(scores, ids, query, item_emb, k, exclude)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend, device):
    query, item_emb = make(0, 100, 8, torch.float32, device)
    for exclude in (None, torch.zeros(0, 3, dtype=torch.int64, device=device)):
        scores, ids = topk_items(query, item_emb, 7, exclude=exclude, backend=backend)
        assert scores.shape == (0, 7) and ids.shape == (0, 7)
        assert scores.dtype == torch.float32 and ids.dtype == torch.int64


@pytest.mark.parametrize("backend", BACKENDS)
def test_too_few_candidates_fill_with_minus_one(backend, device):
    query, item_emb = make(3, 20, 8, torch.float32, device)
    exclude = torch.tensor([[0, 1, 2, 3, 4, -1],    # 15 left
                            [-1, -1, -1, -1, -1, -1],  # 20 left
                            [5, 5, 6, 19, 0, -1]], device=device)  # duplicates: 16 left
    scores, ids = topk_items(query, item_emb, 20, exclude=exclude, backend=backend)
    check_topk(scores, ids, query, item_emb, 20, exclude)
    assert (ids == -1).sum(1).tolist() == [5, 0, 4]
    everything = torch.arange(20, device=device).expand(3, 20)
    scores, ids = topk_items(query, item_emb, 4, exclude=everything, backend=backend)
    assert (ids == -1).all() and (scores == float("-inf")).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ex_dtype", [torch.int32, torch.int64, torch.int16])
def test_exclude_dtypes_and_strides(backend, ex_dtype, device):
    query, item_emb = make(4, 400, 12, torch.float32, device)
    exclude = random_exclude(12, 4, 400, device).to(ex_dtype).T  # [4, 12], not contiguous
    scores, ids = topk_items(query, item_emb, 30, exclude=exclude, backend=backend)
    check_topk(scores, ids, query, item_emb, 30, exclude)


@pytest.mark.parametrize("backend", BACKENDS)
def test_excludes_the_true_best(backend, device):
    query, item_emb = make(5, 500, 16, torch.float32, device)
    best = reference_scores(query, item_emb).topk(3, dim=1).indices.to(device)
    scores, ids = topk_items(query, item_emb, 10, exclude=best, backend=backend)
    check_topk(scores, ids, query, item_emb, 10, best)
    assert not (ids[:, :, None] == best[:, None, :]).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_tied_scores_give_distinct_ids(backend, device):
    query, base = make(3, 40, 8, torch.float32, device)
    item_emb = base.repeat(5, 1)  # every score appears 5 times
    scores, ids = topk_items(query, item_emb, 23, backend=backend)
    check_topk(scores, ids, query, item_emb, 23)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_inputs(backend, device):
    query, item_emb = make(6, 300, 20, torch.float32, device)
    q_t = query.T.contiguous().T  # same values, column-major
    e_view = torch.cat([item_emb, item_emb], dim=1)[:, ::2]  # row stride 40, column stride 2
    scores, ids = topk_items(q_t, e_view, 9, backend=backend)
    check_topk(scores, ids, q_t, e_view, 9)


def test_torch_chunk_merging(device):
    """Chunks smaller than k, and a catalogue that is not a multiple of the chunk."""
    query, item_emb = make(4, 1237, 16, torch.float32, device)
    exclude = random_exclude(4, 30, 1237, device)
    for chunk in (1, 100, 1237, 5000):
        scores, ids = topk_items_torch(query, item_emb, 150, exclude, chunk_items=chunk)
        check_topk(scores, ids, query, item_emb, 150, exclude)


@pytest.mark.parametrize("tiles", [1, 3])
def test_triton_slices_merge(tiles, device):
    """Many catalogue slices (programs) per query block, merged by the final topk."""
    from l2rec_kernels.ops.topk_items import topk_items_triton

    query, item_emb = make(35, 777, 16, torch.float32, device)
    exclude = random_exclude(35, 6, 777, device)
    for k in (1, 10, 128):
        scores, ids = topk_items_triton(query, item_emb, k, exclude, tiles_per_slice=tiles)
        check_topk(scores, ids, query, item_emb, k, exclude)


@pytest.mark.parametrize("tiles", [1, 4])
def test_triton_k_wider_than_a_tile(tiles, device):
    """K above TILE_ITEMS: the running best waits in the partials between merges. A short
    last row block (17 queries), several slices, exclusions, up to k = MAX_K."""
    from l2rec_kernels.ops._topk_items_triton import TILE_ITEMS
    from l2rec_kernels.ops.topk_items import TRITON_MAX_K as MAX_K
    from l2rec_kernels.ops.topk_items import topk_items_triton

    query, item_emb = make(17, 1500, 20, torch.float32, device)
    exclude = random_exclude(17, 40, item_emb.shape[0], device)
    for k in (TILE_ITEMS + 1, 3 * TILE_ITEMS - 5, 1024):
        scores, ids = topk_items_triton(query, item_emb, k, exclude, tiles_per_slice=tiles)
        check_topk(scores, ids, query, item_emb, k, exclude)
    if tiles == 1:  # the largest k, on a few queries (each merge sorts K keys per query)
        query, item_emb = make(3, MAX_K + 77, 20, torch.float32, device)
        scores, ids = topk_items_triton(query, item_emb, MAX_K, exclude[:3], tiles_per_slice=tiles)
        check_topk(scores, ids, query, item_emb, MAX_K, exclude[:3])


def test_backends_agree(device):
    query, item_emb = make(8, 999, 32, torch.float32, device)
    a = topk_items(query, item_emb, 16, backend="torch")
    b = topk_items(query, item_emb, 16, backend="triton")
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=SCORE_TOL)
    assert (a[1] == b[1]).float().mean() > 0.95  # only near-ties may swap


def test_auto_is_torch_on_cpu():
    query, item_emb = make(2, 50, 4, torch.float32, "cpu")
    a, b = topk_items(query, item_emb, 5), topk_items(query, item_emb, 5, backend="torch")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ----------------------------------------------------------------------------- bad input
def _bad_cases(d):
    q, e = make(3, 20, 8, torch.float32, d)
    return [
        (dict(query=q.tolist(), item_emb=e, k=2), TypeError, "query"),
        (dict(query=q[0], item_emb=e, k=2), ValueError, "query"),
        (dict(query=q, item_emb=e[None], k=2), ValueError, "item_emb"),
        (dict(query=q, item_emb=e[:, :5], k=2), ValueError, "item_emb"),
        (dict(query=q[:, :0], item_emb=e[:, :0], k=2), ValueError, "query"),
        (dict(query=q, item_emb=e.half(), k=2), TypeError, "item_emb"),
        (dict(query=q.double(), item_emb=e.double(), k=2), TypeError, "query"),
        (dict(query=q.long(), item_emb=e, k=2), TypeError, "query"),
        (dict(query=q, item_emb=e.to("meta"), k=2), ValueError, "item_emb"),
        (dict(query=q, item_emb=e, k=0), ValueError, "k"),
        (dict(query=q, item_emb=e, k=21), ValueError, "k"),
        (dict(query=q, item_emb=e[:0], k=1), ValueError, "k"),
        (dict(query=q, item_emb=e, k=2.0), TypeError, "k"),
        (dict(query=q, item_emb=e, k=True), TypeError, "k"),
        (dict(query=q, item_emb=e, k=torch.tensor(2)), TypeError, "k"),
        (dict(query=q, item_emb=e, k=2, exclude=torch.zeros(3, 2)), TypeError, "exclude"),
        (dict(query=q, item_emb=e, k=2, exclude=torch.zeros(3, 2, dtype=torch.bool)), TypeError, "exclude"),
        (dict(query=q, item_emb=e, k=2, exclude=[[1, 2]] * 3), TypeError, "exclude"),
        (dict(query=q, item_emb=e, k=2, exclude=torch.zeros(3, dtype=torch.long)), ValueError, "exclude"),
        (dict(query=q, item_emb=e, k=2, exclude=torch.zeros(2, 4, dtype=torch.long)), ValueError, "exclude"),
        (dict(query=q, item_emb=e, k=2, exclude=torch.full((3, 2), 20)), ValueError, "exclude"),
        (dict(query=q, item_emb=e, k=2, exclude=torch.full((3, 2), -2)), ValueError, "exclude"),
        (dict(query=q, item_emb=e, k=2, backend="cuda"), ValueError, "backend"),
        (dict(query=q, item_emb=e, k=2, backend="gpu"), ValueError, "backend"),
    ]


_HOST_CHECKED = (20, 21)  # the exclude range cases


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(24))
def test_bad_inputs(backend, case, device):
    kwargs, exc, name = _bad_cases(device)[case]
    if device.type != "cpu" and case in _HOST_CHECKED:
        pytest.skip("exclude values are range-checked on the host only (no sync on CUDA)")
    kwargs.setdefault("backend", backend)
    if isinstance(kwargs.get("exclude"), torch.Tensor):
        kwargs["exclude"] = kwargs["exclude"].to(device)
    with pytest.raises(exc, match=name):
        topk_items(**kwargs)


def test_triton_limits(device):
    query, item_emb = make(2, 5000, 1, torch.float32, device)
    for k in (4097, 5000):
        with pytest.raises(ValueError, match=f"k <= 4096, got k={k}"):
            topk_items(query, item_emb, k, backend="triton")
    scores, ids = topk_items(query, item_emb, 4500, backend="torch")  # the torch path has no cap
    check_topk(scores, ids, query, item_emb, 4500)


# ----------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_on_gpu(backend, device):
    query, item_emb = make(70, 5000, 64, torch.bfloat16, device)
    exclude = random_exclude(70, 20, 5000, device)
    for k in (1, 10, 1024):
        scores, ids = topk_items(query, item_emb, k, exclude=exclude, backend=backend)
        check_topk(scores, ids, query, item_emb, k, exclude)


@pytest.mark.gpu
def test_auto_serves_k_above_the_triton_limit(device):
    """On CUDA "auto" takes the faster of triton and torch (measured) up to TRITON_MAX_K and
    the torch path above it; right either way."""
    from l2rec_kernels.ops.topk_items import TRITON_MAX_K

    query, item_emb = make(3, TRITON_MAX_K + 500, 32, torch.float16, device)
    for k in (TRITON_MAX_K, TRITON_MAX_K + 1):
        scores, ids = topk_items(query, item_emb, k)
        check_topk(scores, ids, query, item_emb, k)


@pytest.mark.gpu
def test_large_catalogue_on_gpu(device):
    query, item_emb = make(300, 200_003, 128, torch.float16, device)
    scores, ids = topk_items(query, item_emb, 100, backend="triton")
    ref_scores, _ = topk_items(query, item_emb, 100, backend="torch")
    atol = 10 * SCORE_TOL  # d = 128: scores an order of magnitude above one
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=atol)
    claimed = (query[:, None, :].float() * item_emb[ids].float()).sum(-1)
    torch.testing.assert_close(scores, claimed, rtol=0, atol=atol)




def _gpu_bench_shapes() -> list[tuple[int, int, int, int]]:
    """(B, N, d, k) as ``python bench/latency.py`` times them on a GPU (its full sweep; naming
    the device type only selects the sweep, no CUDA is touched)."""
    bench = bench_module("kernel_topk_items")
    sizes = bench.default_sizes(bench.RunConfig(device=torch.device("cuda"), dtype=torch.float16))
    return list(itertools.product(sizes["batch"], sizes["items"], sizes["dim"], sizes["k"]))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", _gpu_bench_shapes(), ids=lambda s: "B{}_N{}_d{}_k{}".format(*s))
def test_gpu_bench_shapes(shape, dtype, device):
    """The kernel at the sizes it is benchmarked at, against the float64 reference (with
    some exclusions, as recommend() passes the users' histories)."""
    batch, num_items, dim, k = shape
    query, item_emb = make(batch, num_items, dim, dtype, device)
    exclude = random_exclude(batch, 20, num_items, device)
    scores, ids = topk_items(query, item_emb, k, exclude=exclude, backend="triton")
    check_topk(scores, ids, query, item_emb, k, exclude)
