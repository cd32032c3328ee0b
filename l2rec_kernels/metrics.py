"""Ranking metrics for next-item recommendation: full ranking (the default) and the sampled
protocol of iLoRA / LLaRA (an option, labelled as such: sampled metrics can reorder models).

Full ranking. The target's 0-based rank among all items 1..N that are not excluded (the
user's ``seen`` items, never the target itself; item 0 is padding and never ranked)::

    rank = #{items scoring strictly higher} + #{other items scoring the same}

so ties count against the model (a constant scorer ranks every target last). NaN scores
count as -inf. From the ranks (``ranking_metrics``)::

    HR@K   = mean(rank < K)
    NDCG@K = mean(1 / log2(rank + 2) if rank < K else 0)     (one relevant item: IDCG = 1)
    MRR    = mean(1 / (rank + 1))

``target_ranks`` computes ranks from a query and the item embeddings chunk by chunk, so
memory is O(B · item_chunk), never [B, N]; it issues no host synchronisation inside its
loop (the inputs are checked once before it). A target's score is read from the same
chunk product as its competitors' (a second pass over the chunks when there is more than
one), so exact ties are detected even where a separately computed dot product would round
differently.

Sampled protocol: ``sampled_candidates`` draws, per user, the target plus n distinct random
items that are neither seen nor the target; score those candidates and rank column 0 with
``sampled_ranks`` (HR@1 over 1 + 19 candidates is the number iLoRA and LLaRA report).

Baselines: ``popularity_scores`` (training counts) ranks every user's candidates by
popularity; pass it as a one-dimensional embedding, ``target_ranks(torch.ones(B, 1),
pop[:, None], ...)``, or to ``ranks_from_scores`` expanded to [B, N + 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ._validation import check_float, check_int, check_range

DEFAULT_KS = (1, 5, 10, 20)


# ------------------------------------------------------------------------ inputs

def _targets_tensor(targets, batch: int, num_items: int, device: torch.device) -> torch.Tensor:
    if not isinstance(targets, torch.Tensor):
        targets = torch.as_tensor(np.asarray(targets, dtype=np.int64).reshape(-1))
    check_int("targets", targets, ndim=1)
    if targets.shape[0] != batch:
        raise ValueError(f"targets must have one entry per query ({batch}), got {targets.shape[0]}")
    targets = targets.to(device=device, dtype=torch.int64)
    check_range("targets", targets, 1, num_items)  # one sync, before any chunk
    return targets


def _seen_tensor(seen, batch: int, num_items: int, device: torch.device) -> torch.Tensor:
    """Per-user seen items as a padded int64 [B, S] tensor (padding -1; 0 is also ignored)."""
    if seen is None:
        return torch.full((batch, 0), -1, dtype=torch.int64, device=device)
    if isinstance(seen, torch.Tensor):
        check_int("seen", seen, ndim=2)
        if seen.shape[0] != batch:
            raise ValueError(f"seen must have one row per query ({batch}), got shape {tuple(seen.shape)}")
        seen = seen.to(device=device, dtype=torch.int64)
        check_range("seen", seen, -1, num_items)
        return seen
    if not isinstance(seen, Sequence) or isinstance(seen, (str, bytes)):
        raise TypeError(f"seen must be a list of per-user item lists or an int tensor [B, S], got "
                        f"{type(seen).__name__}")
    if len(seen) != batch:
        raise ValueError(f"seen must have one list per query ({batch}), got {len(seen)}")
    # Built on the host with numpy, then moved once: no per-user device copies.
    lengths = np.fromiter((len(s) for s in seen), dtype=np.int64, count=batch)
    width = int(lengths.max()) if batch else 0
    flat = np.fromiter((int(i) for s in seen for i in s), dtype=np.int64, count=int(lengths.sum()))
    if flat.size and (flat.min() < 0 or flat.max() > num_items):
        raise ValueError(f"seen item ids must be in [0, {num_items}], got min {flat.min()} and max "
                         f"{flat.max()}")
    padded = np.full((batch, width), -1, dtype=np.int64)
    padded[np.arange(width)[None, :] < lengths[:, None]] = flat
    return torch.from_numpy(padded).to(device)


# ------------------------------------------------------------------------ full ranking

def _no_nan(scores: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isnan(scores), torch.full_like(scores, -math.inf), scores)


def _count_chunk(scores: torch.Tensor, start: int, target_score: torch.Tensor, targets: torch.Tensor,
                 seen: torch.Tensor) -> torch.Tensor:
    """For items start..start+C-1 (``scores`` [B, C]): how many beat or tie the target,
    leaving out padding item 0, the target itself and the seen items."""
    b, c = scores.shape
    counted = _no_nan(scores) >= target_score[:, None]
    # Items not competing get a mark in column j of a [B, C + 1] mask; column C takes
    # whatever falls outside this chunk, so the scatter needs no data-dependent indexing.
    out = torch.zeros(b, c + 1, dtype=torch.bool, device=scores.device)
    local = torch.cat([seen, targets[:, None]], dim=1) - start
    valid = (local >= 0) & (local < c)
    out.scatter_(1, torch.where(valid, local, torch.full_like(local, c)), True)
    counted &= ~out[:, :c]
    if start == 0:
        counted[:, 0] = False  # padding
    return counted.sum(dim=1)


def target_ranks(query: torch.Tensor, item_emb: torch.Tensor, targets, seen=None, *,
                 item_chunk: int = 65536) -> torch.Tensor:
    """0-based rank of each target among all items, by the scores ``query @ item_emb.T``.

    Args:
        query: [B, d] float.
        item_emb: [N + 1, d] float, same dtype and device; row 0 is the padding item, never
            ranked.
        targets: [B] item ids in 1..N (tensor, list or array).
        seen: per-user items excluded from the ranking: a list of B item-id lists, or an
            int tensor [B, S] padded with 0 or -1; the target is never excluded. None: none.
        item_chunk: items scored per step; memory is O(B · item_chunk).

    Returns:
        int64 [B] on the query's device: #items scoring strictly higher than the target +
        #other items scoring the same (ties count against the model).
    """
    check_float("query", query, ndim=2)
    check_float("item_emb", item_emb, ndim=2, device=query.device)
    if item_emb.dtype != query.dtype:
        raise TypeError(f"item_emb must have the query's dtype ({query.dtype}), got {item_emb.dtype}")
    if item_emb.shape[1] != query.shape[1]:
        raise ValueError(f"item_emb must have {query.shape[1]} columns like query, got shape "
                         f"{tuple(item_emb.shape)}")
    if item_emb.shape[0] < 2:
        raise ValueError(f"item_emb must have N + 1 >= 2 rows (row 0 = padding), got {item_emb.shape[0]}")
    if not isinstance(item_chunk, int) or item_chunk < 1:
        raise ValueError(f"item_chunk must be a positive int, got {item_chunk!r}")
    batch, rows = query.shape[0], item_emb.shape[0]
    num_items = rows - 1
    targets = _targets_tensor(targets, batch, num_items, query.device)
    seen = _seen_tensor(seen, batch, num_items, query.device)
    if batch == 0:
        return torch.zeros(0, dtype=torch.int64, device=query.device)
    with torch.no_grad():
        if rows <= item_chunk:
            return ranks_from_scores(query @ item_emb.T, targets, seen)
        return _ranks_chunked(query, item_emb, targets, seen, item_chunk)


def _ranks_chunked(query: torch.Tensor, item_emb: torch.Tensor, targets: torch.Tensor, seen: torch.Tensor,
                   item_chunk: int) -> torch.Tensor:
    """The chunk loops of ``target_ranks`` on checked inputs: device work only, no host
    synchronisation (the loop bounds are Python ints)."""
    batch, rows = query.shape[0], item_emb.shape[0]
    starts = range(0, rows, item_chunk)
    # Pass 1: each target's score, taken from its own chunk's product (see the module doc).
    target_score = torch.empty(batch, dtype=query.dtype, device=query.device)
    for start in starts:
        scores = query @ item_emb[start:start + item_chunk].T
        local = targets - start
        inside = (local >= 0) & (local < scores.shape[1])
        picked = scores.gather(1, local.clamp(0, scores.shape[1] - 1)[:, None])[:, 0]
        target_score = torch.where(inside, picked, target_score)
    target_score = _no_nan(target_score)
    # Pass 2: count the competitors chunk by chunk.
    ranks = torch.zeros(batch, dtype=torch.int64, device=query.device)
    for start in starts:
        scores = query @ item_emb[start:start + item_chunk].T
        ranks += _count_chunk(scores, start, target_score, targets, seen)
    return ranks


def ranks_from_scores(scores: torch.Tensor, targets, seen=None) -> torch.Tensor:
    """The ranks of ``target_ranks`` from a full score matrix ``scores`` [B, N + 1] (column 0
    = padding, never ranked), for callers that already have it."""
    check_float("scores", scores, ndim=2)
    if scores.shape[1] < 2:
        raise ValueError(f"scores must have N + 1 >= 2 columns (column 0 = padding), got {scores.shape[1]}")
    batch, num_items = scores.shape[0], scores.shape[1] - 1
    targets = _targets_tensor(targets, batch, num_items, scores.device)
    seen = _seen_tensor(seen, batch, num_items, scores.device)
    if batch == 0:
        return torch.zeros(0, dtype=torch.int64, device=scores.device)
    with torch.no_grad():
        target_score = _no_nan(scores.gather(1, targets[:, None])[:, 0])
        return _count_chunk(scores, 0, target_score, targets, seen)


def sampled_ranks(candidate_scores: torch.Tensor) -> torch.Tensor:
    """Rank of column 0 (the target) among the candidates of ``sampled_candidates``:
    ``candidate_scores`` [B, 1 + n] -> int64 [B], ties against the model."""
    check_float("candidate_scores", candidate_scores, ndim=2)
    if candidate_scores.shape[1] < 1:
        raise ValueError("candidate_scores must have at least the target column")
    s = _no_nan(candidate_scores.detach())
    return (s[:, 1:] >= s[:, :1]).sum(dim=1)


def ranking_metrics(ranks, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """HR@K and NDCG@K for each K in ``ks``, and MRR, averaged over ``ranks`` (0-based
    target ranks; a tensor, list or array). Keys ``"HR@K"``, ``"NDCG@K"``, ``"MRR"``.
    A K beyond the catalogue is fine (every rank is below it: HR@K = 1)."""
    if isinstance(ranks, torch.Tensor):
        r = ranks.detach().to("cpu", torch.float64).reshape(-1)
    else:
        r = torch.as_tensor(np.asarray(ranks, dtype=np.float64).reshape(-1))
    if r.numel() == 0:
        raise ValueError("ranks is empty: metrics over no users are undefined")
    if bool((r < 0).any()) or not bool(torch.isfinite(r).all()):
        raise ValueError("ranks must be finite and >= 0")
    ks = tuple(ks)
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive ints, got {ks!r}")
    out: dict[str, float] = {}
    gain = 1.0 / torch.log2(r + 2.0)
    for k in ks:
        hit = r < k
        out[f"HR@{k}"] = float(hit.double().mean())
        out[f"NDCG@{k}"] = float(torch.where(hit, gain, torch.zeros_like(gain)).mean())
    out["MRR"] = float((1.0 / (r + 1.0)).mean())
    return out


# ------------------------------------------------------------------------ sampled protocol

def sampled_candidates(targets, seen, num_items: int, num_negatives: int = 19,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Candidates of the sampled protocol: [B, 1 + num_negatives] int64, the target in
    column 0, then ``num_negatives`` distinct items drawn uniformly from 1..num_items that
    are neither in the user's ``seen`` nor the target.

    Sampling is rejection sampling over all rows at once (draw, drop seen and repeated
    items, keep the first n), redrawing only the rows still short; a row whose allowed items
    are too few for that to be quick takes an exact permutation of its allowed items.
    Deterministic for a given ``generator`` (a CPU ``torch.Generator``). The result is on
    ``targets``' device when it is a tensor, else the CPU.

    Raises ValueError when a user has fewer than ``num_negatives`` unseen items other than
    the target.
    """
    if not isinstance(num_items, int) or num_items < 1:
        raise ValueError(f"num_items must be a positive int, got {num_items!r}")
    if not isinstance(num_negatives, int) or num_negatives < 0:
        raise ValueError(f"num_negatives must be a non-negative int, got {num_negatives!r}")
    device = targets.device if isinstance(targets, torch.Tensor) else torch.device("cpu")
    t = targets.detach().to("cpu") if isinstance(targets, torch.Tensor) else targets
    batch = len(t)
    t = _targets_tensor(t, batch, num_items, torch.device("cpu"))
    s = _seen_tensor(seen, batch, num_items, torch.device("cpu"))
    n = num_negatives
    # Excluded per row: seen (valid ids only), the target; count the distinct ones.
    banned = torch.cat([s.clamp(min=0), t[:, None]], dim=1)
    banned, _ = torch.sort(banned, dim=1)
    distinct = (banned > 0) & torch.cat([torch.ones(batch, 1, dtype=torch.bool),
                                         banned[:, 1:] != banned[:, :-1]], dim=1)
    allowed = num_items - distinct.sum(dim=1)
    short = torch.nonzero(allowed < n)
    if short.numel():
        u = int(short[0, 0])
        raise ValueError(f"user row {u} has only {int(allowed[u])} items outside seen and the target, fewer "
                         f"than num_negatives={n}")
    out = torch.empty(batch, 1 + n, dtype=torch.int64)
    out[:, 0] = t
    if n == 0 or batch == 0:
        return out.to(device)
    todo = torch.arange(batch)
    # Rows where few items are allowed (in number, or as a share of the catalogue) would need
    # many draws: they take an exact permutation of their allowed items instead.
    dense = (allowed < 4 * n) | (2 * allowed < num_items)
    for row in todo[dense].tolist():
        mask = torch.ones(num_items + 1, dtype=torch.bool)
        mask[0] = False
        mask[banned[row]] = False
        pool = torch.nonzero(mask)[:, 0]
        out[row, 1:] = pool[torch.randperm(len(pool), generator=generator)[:n]]
    todo = todo[~dense]
    while todo.numel():
        draws = 2 * n + 8  # at least half the items are allowed here: a few rounds at most
        cand = torch.randint(1, num_items + 1, (todo.numel(), draws), generator=generator)
        ok = ~_isin_rows(cand, banned[todo])
        # Keep each item's first draw only.
        order = torch.sort(cand, dim=1, stable=True)
        first = torch.ones_like(ok)
        first_sorted = torch.cat([torch.ones(todo.numel(), 1, dtype=torch.bool),
                                  order.values[:, 1:] != order.values[:, :-1]], dim=1)
        first.scatter_(1, order.indices, first_sorted)
        ok &= first
        take = ok & (torch.cumsum(ok.long(), dim=1) <= n)
        done = take.sum(dim=1) == n
        rows = todo[done]
        out[rows, 1:] = cand[done][take[done]].view(-1, n)
        todo = todo[~done]
    return out.to(device)


def _isin_rows(values: torch.Tensor, sets: torch.Tensor) -> torch.Tensor:
    """values [R, M] in sets [R, S] (each row sorted ascending), row by row."""
    if sets.shape[1] == 0:
        return torch.zeros_like(values, dtype=torch.bool)
    pos = torch.searchsorted(sets, values).clamp(max=sets.shape[1] - 1)
    return sets.gather(1, pos) == values


# ------------------------------------------------------------------------ baselines

def popularity_scores(train, num_items: int) -> torch.Tensor:
    """Popularity baseline scores: float32 [N + 1], the number of training interactions of
    each item, column 0 (padding) = -inf.

    ``train`` is either a list of ``Example`` (e.g. ``data.split("train")``; each user's
    training interactions are counted once: the longest ``seen`` among their examples plus
    that example's target, i.e. ``s[0..n-3]`` for the leave-one-out split) or a list of item
    sequences (every item counted, so pass only training items, e.g.
    ``[s[:-2] for s in data.sequences]``).
    """
    if not isinstance(num_items, int) or num_items < 1:
        raise ValueError(f"num_items must be a positive int, got {num_items!r}")
    if hasattr(train, "user_items"):  # a data split: its users' items, without building examples
        train = train.user_items()
    items: list[np.ndarray] = []
    best: dict[int, tuple[int, int]] = {}  # user -> (len(seen), index) of their longest example
    examples = []
    for j, row in enumerate(train):
        if hasattr(row, "target") and hasattr(row, "seen"):
            examples.append(row)
            key = (len(row.seen), j)
            if row.user not in best or key > best[row.user]:
                best[row.user] = (key[0], len(examples) - 1)
        else:
            items.append(np.asarray(row, dtype=np.int64).reshape(-1))
    if examples and items:
        raise TypeError("train must be all Examples or all item sequences, not a mix")
    for _, k in best.values():
        ex = examples[k]
        items.append(np.asarray([*ex.seen, ex.target], dtype=np.int64))
    flat = np.concatenate(items) if items else np.zeros(0, dtype=np.int64)
    if flat.size and (flat.min() < 1 or flat.max() > num_items):
        raise ValueError(f"item ids must be in [1, {num_items}], got min {flat.min()} and max {flat.max()}")
    counts = torch.from_numpy(np.bincount(flat, minlength=num_items + 1).astype(np.float32))
    counts[0] = -math.inf
    return counts
