"""Triton kernel for ``topk_items``: catalogue scoring with a running top-k kept on chip.

Grid (⌈B / BLOCK_B⌉, n_slices). Program (r, s) takes queries r·BLOCK_B … and the
contiguous item slice s, walks it in tiles of BLOCK_N items and, per tile::

    S = Q Eᵀ                                   [BLOCK_B, BLOCK_N], fp32 via tl.dot
    key(s, i) = (ord(s) << 32) | (2³¹ - 1 - i)    one int64 per (score, item) pair
    ord(s) = b if b ≥ 0 else b ^ 0x7FFFFFFF,  b = the fp32 bits of s as int32

``ord`` is monotone in the float (it flips the magnitude bits of negatives), so int64
order of keys is score order, then lower item id first: sorting moves the pair as one
number, so an id can never be separated from its score. Excluded items and padding
lanes get the key INT64_MIN (decoded as score -inf, id -1); real keys are larger because
their low half is 2³¹-1-i ≥ 1 (N ≤ 2³¹-2).

Running top-k (K = next_power_of_2(k) keys per query, kept sorted descending):

    skip the tile unless some row's tile maximum beats that row's K-th best;
    top  = the K largest keys of each tile row, sorted ascending   (bitonic top-k)
    best = bitonic_merge_descending(max(best, top))

The tile width (TILE_ITEMS) does not depend on k. K ≤ TILE_ITEMS: ``best`` lives in
registers. K > TILE_ITEMS: ``best`` waits in this program's slot of the partials and a
merge takes one query row at a time, the sorted tile standing in for the last block of
an otherwise empty K-row. Why ``max`` then one bitonic merge keeps exactly the K best:
docs/design.md section 6. The skip test uses keys before exclusion, an upper bound, so it
never skips a tile that could change the result.

Each program writes its K keys to partials [B, n_slices·K]; one ``torch.topk`` over those
keys (B·n_slices·K int64, tiny next to B·N) then gives the global k, since each slice's
share of the global top-k lies within that slice's top K ≥ k.

Imported only when the triton backend is asked for (TRITON_INTERPRET must be set before
triton is imported). Importing it registers ``torch.ops.l2rec.topk_items`` (see
``_triton_util.register_triton_op``); ``topk_items.topk_items_triton`` checks the
arguments against the kernel's limits (``TRITON_MAX_K``, ``TRITON_MAX_ITEMS``) and calls it.
This module imports nothing from ``topk_items``: the dependency runs one way.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._triton_util import launch, register_triton_op

_LOW_MASK = 0xFFFFFFFF
_ID_BASE = 0x7FFFFFFF
_EMPTY = -(2**63)


# ---------------------------------------------------------------- bitonic network on chip
# A [2^R, 2^W] tile is viewed as a hypercube [2]*(R+W): the last W axes are the position
# in a row (axis "inner j" is bit j of that position). A compare-and-swap along inner
# axis j is a min and a max over that size-2 axis; the pair's right element takes the
# max in ascending blocks and the min in descending ones. Using min/max (native
# reductions) instead of a custom combine keeps the network cheap in the interpreter too.


@triton.jit
def _empty_keys(SHAPE: tl.constexpr):
    """A tensor of the empty key INT64_MIN, built from an int32 so that no 64-bit literal has
    to be typed by the frontend."""
    return tl.full(SHAPE, -2147483648, tl.int32).to(tl.int64) << 32


@triton.jit
def _bit(ND: tl.constexpr, J: tl.constexpr):
    """0/1 along inner axis J of an ND-dim hypercube (broadcasts over the other axes)."""
    return tl.reshape(tl.arange(0, 2), [1] * (ND - J - 1) + [2] + [1] * J)


@triton.jit
def _compare_swap(h, desc, ND: tl.constexpr, J: tl.constexpr):
    lo = tl.min(h, axis=ND - 1 - J, keep_dims=True)
    hi = tl.max(h, axis=ND - 1 - J, keep_dims=True)
    return tl.where((_bit(ND, J) ^ desc) != 0, hi, lo)


@triton.jit
def _bitonic_merge(h, desc, ND: tl.constexpr, LOG_BLOCK: tl.constexpr):
    """Sort every bitonic block of 2^LOG_BLOCK along the inner axes (direction ``desc``)."""
    for i in tl.static_range(LOG_BLOCK):
        h = _compare_swap(h, desc, ND, LOG_BLOCK - 1 - i)
    return h


@triton.jit
def _row_top(x, LOG_R: tl.constexpr, LOG_W: tl.constexpr, LOG_K: tl.constexpr,
             DESC: tl.constexpr):
    """The 2^LOG_K largest of each row of x [2^LOG_R, 2^LOG_W], sorted (DESC or ascending).

    Sort blocks of K with alternating directions (block parity = bit LOG_K), then halve
    the row LOG_W - LOG_K times: the max of an ascending and a descending K-block is the
    K largest of both (a bitonic block), which one merge sorts again.
    """
    h = tl.reshape(x, [2] * (LOG_R + LOG_W))
    for s in tl.static_range(1, LOG_K + 1):
        if s == LOG_W:
            h = _bitonic_merge(h, DESC, LOG_R + LOG_W, s)
        else:
            h = _bitonic_merge(h, _bit(LOG_R + LOG_W, s), LOG_R + LOG_W, s)
    for t in tl.static_range(LOG_W - LOG_K):
        h = tl.max(h, axis=LOG_R + LOG_W - t - 1 - LOG_K)  # pairs of K-blocks -> one
        if t == LOG_W - LOG_K - 1:
            h = _bitonic_merge(h, DESC, LOG_R + LOG_W - t - 1, LOG_K)
        else:
            h = _bitonic_merge(h, _bit(LOG_R + LOG_W - t - 1, LOG_K), LOG_R + LOG_W - t - 1, LOG_K)
    return tl.reshape(h, [2**LOG_R, 2**LOG_K])


# The exclusion list's width and strides vary per call (a batch's longest history) and
# never shape the code, so they are not specialised on: one binary serves every list.
@triton.jit(do_not_specialize=["num_ex", "stride_eb", "stride_ex"])
def _topk_slice_kernel(q_ptr, item_ptr, ex_ptr, part_ptr,
                       num_q, num_items, dim, num_ex, slice_items, part_stride,
                       stride_qb, stride_qd, stride_in, stride_id, stride_eb, stride_ex,
                       LOG_B: tl.constexpr, LOG_N: tl.constexpr, LOG_K: tl.constexpr,
                       BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    BLOCK_B: tl.constexpr = 2**LOG_B
    BLOCK_N: tl.constexpr = 2**LOG_N
    K_PAD: tl.constexpr = 2**LOG_K
    ON_CHIP: tl.constexpr = LOG_K <= LOG_N
    pid_b = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_b.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < num_q
    # This program's K keys per query in the partials: the result, and for K wider than a
    # tile also the running best between merges.
    slot = part_ptr + rows[:, None] * part_stride + pid_s * K_PAD + tl.arange(0, K_PAD)[None, :]
    empty = _empty_keys([BLOCK_B, BLOCK_N])
    empty_best = _empty_keys([BLOCK_B, K_PAD])
    if ON_CHIP:
        best = empty_best
    else:
        tl.store(slot, empty_best, mask=row_ok[:, None])
        kth = _empty_keys([BLOCK_B])
    start = pid_s.to(tl.int64) * slice_items
    end = tl.minimum(start + slice_items, num_items)
    for n0 in range(start, end, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < end
        acc = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
        for d0 in range(0, dim, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            d_ok = dd < dim
            q = tl.load(q_ptr + rows[:, None] * stride_qb + dd[None, :] * stride_qd,
                        mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            e = tl.load(item_ptr + cols[None, :] * stride_in + dd[:, None] * stride_id,
                        mask=col_ok[None, :] & d_ok[:, None], other=0.0)
            # fp32 inputs: full fp32 products, not TF32 (scores must be exact). A constexpr
            # if, so only one dot is ever compiled.
            if IEEE:  # noqa: SIM108
                acc = tl.dot(q, e, acc, input_precision="ieee")
            else:
                acc = tl.dot(q, e, acc)
        bits = acc.to(tl.int32, bitcast=True)
        order = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
        keys = (order.to(tl.int64) << 32) | (0x7FFFFFFF - cols)[None, :]
        keys = tl.where(col_ok[None, :], keys, empty)
        if ON_CHIP:
            kth = tl.min(best, axis=1)
        # Rows past the batch never count, so a short last row block does not force merges.
        wins = ((tl.max(keys, axis=1) > kth) & row_ok).to(tl.int32)
        if tl.max(wins, axis=0) > 0:  # most tiles lose everywhere once best fills up
            for x in range(0, num_ex):
                banned = tl.load(ex_ptr + rows * stride_eb + x * stride_ex, mask=row_ok,
                                 other=-1).to(tl.int64)
                keys = tl.where(cols[None, :] == banned[:, None], empty, keys)
            if ON_CHIP:
                top = _row_top(keys, LOG_B, LOG_N, LOG_K, 0)  # the tile's K best, ascending
                merged = tl.reshape(tl.maximum(best, top), [2] * (LOG_B + LOG_K))
                best = tl.reshape(_bitonic_merge(merged, 1, LOG_B + LOG_K, LOG_K), [BLOCK_B, K_PAD])
            else:
                # best waits in the partials between merges (registers carry only each row's
                # K-th best), and a merge takes one query row at a time, so a wide K costs
                # K / threads registers. The sorted tile is the last tile-wide block of an
                # ascending K-row of empty keys; its max with the descending best is bitonic.
                top = _row_top(keys, LOG_B, LOG_N, LOG_N, 0)  # the whole tile, ascending
                row_ids = tl.arange(0, BLOCK_B)
                last = (tl.arange(0, K_PAD // BLOCK_N) == K_PAD // BLOCK_N - 1)[:, None]
                empty_row = _empty_keys([BLOCK_B])
                empty_blocks = _empty_keys([K_PAD // BLOCK_N, BLOCK_N])
                tl.debug_barrier()  # the previous merge's stores are visible to every thread
                for r in range(0, BLOCK_B):
                    r_kth = tl.max(tl.where(row_ids == r, kth, empty_row), axis=0)
                    r_top = tl.max(tl.where((row_ids == r)[:, None], top, empty), axis=0)
                    if (pid_b * BLOCK_B + r < num_q) & (tl.max(r_top, axis=0) > r_kth):
                        r_slot = (part_ptr + (pid_b.to(tl.int64) * BLOCK_B + r) * part_stride
                                  + pid_s * K_PAD + tl.arange(0, K_PAD))
                        wide = tl.where(last, r_top[None, :], empty_blocks)
                        merged = tl.maximum(tl.load(r_slot), tl.reshape(wide, [K_PAD]))
                        new = _bitonic_merge(tl.reshape(merged, [2] * LOG_K), 1, LOG_K, LOG_K)
                        new = tl.reshape(new, [K_PAD])
                        tl.debug_barrier()  # every thread has read the row before it changes
                        tl.store(r_slot, new)
                        kth = tl.where(row_ids == r, tl.min(new, axis=0), kth)
    if ON_CHIP:
        tl.store(slot, best, mask=row_ok[:, None])


@functools.lru_cache(maxsize=8)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _log2(n: int) -> int:
    return n.bit_length() - 1


# Items per tile: the [BLOCK_B, TILE_ITEMS] key tile and its sorting network stay in
# registers whatever k is; a larger k only widens the running best, not the tile.
TILE_ITEMS = 128


def _blocks(k: int, dim: int, dtype: torch.dtype) -> dict[str, int]:
    """Block sizes and warps for a launch (powers of two; a pure function of k, d, dtype)."""
    k_pad = triton.next_power_of_2(k)
    return {"block_b": 16,  # tl.dot's smallest M; fewer rows keep the key tiles in registers
            "block_n": TILE_ITEMS,
            "block_d": max(16, min(64, triton.next_power_of_2(dim))),
            "k_pad": k_pad,
            # A wide running best, or fp32's FMA dot (no tensor cores), needs more threads
            # to stay in registers.
            "num_warps": 8 if k_pad > 64 or dtype == torch.float32 else 4}


def _tiles_per_slice(device: torch.device, row_blocks: int, num_tiles: int) -> int:
    """Tiles per program so the grid fills the GPU about four times over."""
    if device.type == "cuda":
        target = 4 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    else:
        target = 4  # the interpreter runs programs one after another: few, large ones
    slices = max(1, min(num_tiles, triton.cdiv(target, row_blocks)))
    return triton.cdiv(num_tiles, slices)


def decode_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 keys -> (fp32 scores, int64 ids); the empty key gives (-inf, -1)."""
    order = (keys >> 32).to(torch.int32)
    bits = torch.where(order >= 0, order, order ^ 0x7FFFFFFF)
    scores = bits.view(torch.float32)
    ids = _ID_BASE - (keys & _LOW_MASK)
    empty = keys == _EMPTY
    return scores.masked_fill(empty, float("-inf")), ids.masked_fill(empty, -1)


def _plan(query: torch.Tensor, item_emb: torch.Tensor, k: int, tiles_per_slice: int) -> dict:
    """Block sizes and grid for a call (a pure function of shapes and device)."""
    plan = _blocks(k, query.shape[1], query.dtype)
    row_blocks = triton.cdiv(query.shape[0], plan["block_b"])
    num_tiles = triton.cdiv(item_emb.shape[0], plan["block_n"])
    tiles = tiles_per_slice or _tiles_per_slice(query.device, row_blocks, num_tiles)
    return {**plan, "row_blocks": row_blocks, "tiles": tiles,
            "n_slices": triton.cdiv(num_tiles, tiles)}


def _topk_items_impl(query: torch.Tensor, item_emb: torch.Tensor, k: int, exclude: torch.Tensor,
                     tiles_per_slice: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``l2rec::topk_items``. ``exclude`` [B, X] (X may be 0); ``tiles_per_slice`` 0 = automatic."""
    num_q, dim = query.shape
    if num_q == 0:
        return (query.new_empty((0, k), dtype=torch.float32),
                query.new_empty((0, k), dtype=torch.int64))
    plan = _plan(query, item_emb, k, tiles_per_slice)
    partial = torch.empty((num_q, plan["n_slices"] * plan["k_pad"]), dtype=torch.int64,
                          device=query.device)
    launch(_topk_slice_kernel, (plan["row_blocks"], plan["n_slices"]),
           query, item_emb, exclude, partial,
           num_q, item_emb.shape[0], dim, exclude.shape[1], plan["tiles"] * plan["block_n"],
           partial.stride(0), query.stride(0), query.stride(1), item_emb.stride(0),
           item_emb.stride(1), exclude.stride(0), exclude.stride(1),
           LOG_B=_log2(plan["block_b"]), LOG_N=_log2(plan["block_n"]), LOG_K=_log2(plan["k_pad"]),
           BLOCK_D=plan["block_d"], IEEE=query.dtype == torch.float32,
           num_warps=plan["num_warps"])
    # The merge: n_slices·K keys per query, against N scores per query for a dense topk.
    keys = torch.topk(partial, k, dim=1).values
    return decode_keys(keys)


def _topk_items_fake(query, item_emb, k, exclude, tiles_per_slice):
    return (query.new_empty((query.shape[0], k), dtype=torch.float32),
            query.new_empty((query.shape[0], k), dtype=torch.int64))


topk_items_op = register_triton_op("topk_items", _topk_items_impl, _topk_items_fake)

