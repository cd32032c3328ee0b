"""batch_metadata: the torch path against a plain Python loop, its validation, and (GPU)
the CUDA extension's single launch against the torch path."""

from __future__ import annotations

import pytest
import torch

from l2rec_kernels.models.inputs import position_ids_from_mask
from l2rec_kernels.ops.batch_metadata import (
    CUDA_MAX_USERS,
    MASK_DTYPES,
    BatchMetadata,
    batch_metadata,
)

FIELDS = BatchMetadata._fields
DTYPES = {"position_ids": torch.int64, "last_index": torch.int64, "cu_seqlens": torch.int32,
          "seq_view": torch.int32, "packed_last_row": torch.int64}


def loop_reference(mask: torch.Tensor, views: int) -> dict[str, list]:
    """The documented semantics, one element at a time (independent of the aten path)."""
    rows = [[int(v) != 0 for v in row] for row in mask.tolist()]
    users = len(rows)
    position_ids, last_index, lengths = [], [], []
    for row in rows:
        seen, pos, last = 0, [], 0
        for t, on in enumerate(row):
            seen += on
            pos.append(max(seen - 1, 0))
            if on:
                last = t
        position_ids.append(pos)
        last_index.append(last)
        lengths.append(seen)
    cu_seqlens, seq_view, packed_last_row = [0], [], []
    for s in range(views * users):
        v, b = divmod(s, users)
        cu_seqlens.append(cu_seqlens[-1] + lengths[b])
        seq_view.append(v)
        packed_last_row.append(max(cu_seqlens[-1] - 1, 0))
    return {"position_ids": position_ids, "last_index": last_index, "cu_seqlens": cu_seqlens,
            "seq_view": seq_view, "packed_last_row": packed_last_row}


def make_mask(users: int, tokens: int, padding: str, *, empty_rows=(), gen=None) -> torch.Tensor:
    """Random lengths in [1, T], padded on the given side ("mixed": each row either side,
    "holes": random gaps inside the row); rows in ``empty_rows`` all padding."""
    lengths = torch.randint(1, max(tokens, 1) + 1, (users,), generator=gen)
    mask = torch.zeros(users, tokens, dtype=torch.bool)
    for b in range(users):
        n = int(lengths[b]) if tokens else 0
        side = padding
        if padding == "mixed":
            side = "left" if torch.rand((), generator=gen) < 0.5 else "right"
        if side == "right":
            mask[b, :n] = True
        elif side == "left":
            mask[b, tokens - n:] = True
        else:  # holes
            mask[b] = torch.rand(tokens, generator=gen) < 0.6
    for b in empty_rows:
        mask[b] = False
    return mask


def assert_matches(meta: BatchMetadata, expected: dict[str, list]) -> None:
    for name in FIELDS:
        got = getattr(meta, name)
        assert got.dtype == DTYPES[name], name
        assert got.tolist() == expected[name], name


CASES = [  # users, tokens, padding, empty rows
    (1, 1, "right", ()),
    (1, 9, "left", ()),
    (1, 7, "right", (0,)),         # one user, all padding
    (3, 5, "mixed", (1,)),
    (5, 13, "holes", ()),
    (7, 33, "left", (0, 6)),
    (37, 17, "mixed", (3, 4, 36)),  # many users
    (4, 1, "right", (2,)),
]


@pytest.mark.parametrize("views", [1, 2, 3])
@pytest.mark.parametrize(("users", "tokens", "padding", "empty"), CASES)
def test_torch_path_matches_loop(users, tokens, padding, empty, views):
    gen = torch.Generator().manual_seed(users * 100 + tokens)
    mask = make_mask(users, tokens, padding, empty_rows=empty, gen=gen)
    meta = batch_metadata(mask, num_views=views, backend="torch")
    assert_matches(meta, loop_reference(mask, views))


@pytest.mark.parametrize("dtype", MASK_DTYPES)
def test_mask_dtypes(dtype):
    mask = make_mask(6, 11, "mixed", empty_rows=(2,))
    meta = batch_metadata(mask.to(dtype), num_views=2)
    assert_matches(meta, loop_reference(mask, 2))


@pytest.mark.parametrize(("users", "tokens"), [(0, 5), (3, 0), (0, 0)])
def test_empty_shapes(users, tokens):
    mask = torch.zeros(users, tokens, dtype=torch.bool)
    meta = batch_metadata(mask, num_views=2)
    assert_matches(meta, loop_reference(mask, 2))
    assert meta.cu_seqlens.tolist() == [0] * (2 * users + 1)


def test_positions_match_reference_model_and_padding_side():
    right = make_mask(9, 14, "right")
    meta = batch_metadata(right)
    assert torch.equal(meta.position_ids, position_ids_from_mask(right))
    # The same prompts padded on the left: attended positions and lengths are unchanged.
    lengths = right.sum(-1)
    left = torch.zeros_like(right)
    for b, n in enumerate(lengths.tolist()):
        left[b, right.shape[1] - n:] = True
    meta_left = batch_metadata(left)
    assert torch.equal(meta_left.position_ids[left], meta.position_ids[right])
    assert torch.equal(meta_left.cu_seqlens, meta.cu_seqlens)
    assert torch.equal(meta_left.last_index, torch.full_like(lengths, right.shape[1] - 1))


def test_packed_layout_gathers_last_tokens():
    """What FusedL2Rec does with it: pack the V·B sequences, take each one's last row."""
    views = 2
    mask = make_mask(6, 10, "mixed")
    tokens = torch.arange(mask.numel()).view(mask.shape)
    meta = batch_metadata(mask, num_views=views)
    packed = tokens.repeat(views, 1)[mask.repeat(views, 1)]
    last_padded = tokens.gather(1, meta.last_index[:, None])[:, 0]
    assert torch.equal(packed[meta.packed_last_row], last_padded.repeat(views))


def test_torch_path_traces_without_host_sync():
    """One dynamo graph (fullgraph), validation included: no op in the path reads a value
    back to the host."""
    torch._dynamo.reset()
    compiled = torch.compile(lambda m: batch_metadata(m, 2, backend="torch"), backend="eager",
                             fullgraph=True)
    mask = make_mask(5, 12, "holes", empty_rows=(1,))
    assert_matches(BatchMetadata(*compiled(mask)), loop_reference(mask, 2))


def test_validation_errors():
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(TypeError, match=r"attention_mask must be a torch\.Tensor"):
        batch_metadata([[1, 1]])
    with pytest.raises(ValueError, match=r"attention_mask must have 2 dimensions, got shape \(3,\)"):
        batch_metadata(torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"attention_mask must have dtype in .*got float32"):
        batch_metadata(torch.ones(2, 3))
    with pytest.raises(ValueError, match="num_views must be >= 1, got 0"):
        batch_metadata(mask, num_views=0)
    with pytest.raises(TypeError, match="num_views must be an int, got float"):
        batch_metadata(mask, num_views=2.0)
    with pytest.raises(TypeError, match="num_views must be an int, got bool"):
        batch_metadata(mask, num_views=True)
    with pytest.raises(ValueError, match=r"attention_mask values must be in \[0, 1\], got min 0 and max 2"):
        batch_metadata(torch.tensor([[1, 2], [0, 1]]))
    with pytest.raises(ValueError, match=r"attention_mask values must be in \[0, 1\], got min -1"):
        batch_metadata(torch.tensor([[1, -1]], dtype=torch.int8))
    with pytest.raises(ValueError, match="backend must be one of"):
        batch_metadata(mask, backend="numpy")
    with pytest.raises(ValueError, match=r"backend='cuda' cannot run batch_metadata here"):
        batch_metadata(mask, backend="cuda")
    with pytest.raises(ValueError, match="not implemented for batch_metadata"):
        batch_metadata(mask, backend="triton")
    # Capacity past int32, without allocating: a stride-0 view of a [1, 1] mask.
    huge = torch.ones(1, 1, dtype=torch.bool).expand(4, 2**29)
    with pytest.raises(ValueError, match=r"num_views \* B \* T must be <= 2147483647"):
        batch_metadata(huge, num_views=2)


# ---- the CUDA extension ----------------------------------------------------------------

GPU_CASES = [
    *CASES,
    (1, 5000, "holes", ()),              # one long row: the per-row warp loop
    (300, 1000, "mixed", (0, 150, 299)),  # > 32 warps of users, several blocks
    (1025, 64, "holes", ()),              # more users than threads in a block
    (CUDA_MAX_USERS, 3, "mixed", (5,)),   # the kernel's user limit
]


def _fill_cache_with_garbage(device):
    # The op allocates its outputs with at::empty; make it likely that they reuse freed
    # memory full of a marker, so an element the kernel forgets to write shows up.
    junk = torch.full((1 << 22,), -7, dtype=torch.int64, device=device)
    del junk


@pytest.mark.gpu
@pytest.mark.parametrize("views", [1, 2, 3])
@pytest.mark.parametrize(("users", "tokens", "padding", "empty"), GPU_CASES)
def test_cuda_matches_torch(users, tokens, padding, empty, views, device):
    gen = torch.Generator().manual_seed(users + tokens)
    mask = make_mask(users, tokens, padding, empty_rows=empty, gen=gen).to(device)
    expected = batch_metadata(mask, num_views=views, backend="torch")
    _fill_cache_with_garbage(mask.device)
    got = batch_metadata(mask, num_views=views, backend="cuda")
    for name in FIELDS:
        a, b = getattr(got, name), getattr(expected, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a, b), name
    if users * tokens <= 4096:
        assert_matches(got, loop_reference(mask.cpu(), views))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", MASK_DTYPES)
def test_cuda_mask_dtypes_and_strides(dtype, device):
    mask = make_mask(7, 19, "holes", empty_rows=(3,)).to(device)
    expected = batch_metadata(mask, backend="torch")
    wide = torch.zeros(19, 14, dtype=dtype, device=device)  # a transposed, strided view
    wide[:, :7] = mask.T.to(dtype)
    got = batch_metadata(wide[:, :7].T, backend="cuda")
    for name in FIELDS:
        assert torch.equal(getattr(got, name), getattr(expected, name)), name


@pytest.mark.gpu
@pytest.mark.parametrize(("users", "tokens"), [(0, 5), (3, 0), (0, 0)])
def test_cuda_empty_shapes(users, tokens, device):
    mask = torch.zeros(users, tokens, dtype=torch.bool, device=device)
    got = batch_metadata(mask, backend="cuda")
    expected = batch_metadata(mask, backend="torch")
    for name in FIELDS:
        assert torch.equal(getattr(got, name), getattr(expected, name)), name


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "cuda"])
def test_no_host_sync_on_gpu(backend, device):
    mask = make_mask(6, 40, "mixed").to(device)
    batch_metadata(mask, backend=backend)  # warm up: imports, extension load
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batch_metadata(mask, backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
def test_cuda_user_limit_and_stream(device):
    mask = make_mask(CUDA_MAX_USERS + 1, 2, "right").to(device)
    with pytest.raises(ValueError, match=f"users <= {CUDA_MAX_USERS}"):
        batch_metadata(mask, backend="cuda")
    auto = batch_metadata(mask, backend="auto")  # falls back to the torch path
    assert torch.equal(auto.cu_seqlens, batch_metadata(mask, backend="torch").cu_seqlens)
    # Runs on the caller's current stream.
    small = make_mask(5, 9, "mixed").to(device)
    expected = batch_metadata(small, backend="torch")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = batch_metadata(small, backend="cuda")
    stream.synchronize()
    for name in FIELDS:
        assert torch.equal(getattr(got, name), getattr(expected, name)), name


@pytest.mark.gpu
def test_cuda_op_compiles_fullgraph(device):
    from l2rec_kernels.ops import _cuda_ext

    torch._dynamo.reset()
    mask = make_mask(4, 10, "holes").to(device)
    compiled = torch.compile(lambda m: _cuda_ext.batch_metadata_cuda(m, 2), fullgraph=True)
    got = compiled(mask)
    expected = batch_metadata(mask, backend="torch")
    for name, tensor in zip(FIELDS, got):
        assert torch.equal(tensor, getattr(expected, name)), name
