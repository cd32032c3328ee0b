"""Ranking metrics (l2rec_kernels.metrics) against torchmetrics' retrieval metrics and cases
computed by hand: ties against the model, k beyond the catalogue, one-item histories, chunk
sizes that do not divide the catalogue, empty batches, and the sampled protocol."""

import math

import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMRR, RetrievalNormalizedDCG

from l2rec_kernels.metrics import (
    _ranks_chunked,
    _seen_tensor,
    _targets_tensor,
    popularity_scores,
    ranking_metrics,
    ranks_from_scores,
    sampled_candidates,
    sampled_ranks,
    target_ranks,
)


def _random_case(seed, batch=13, num_items=37, dim=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, dim, generator=g, dtype=dtype)
    item_emb = torch.randn(num_items + 1, dim, generator=g, dtype=dtype)
    targets = torch.randint(1, num_items + 1, (batch,), generator=g)
    seen = []
    for b in range(batch):  # 0..5 seen items, sometimes including the target itself
        s = torch.randint(1, num_items + 1, (b % 6,), generator=g).tolist()
        if b % 4 == 1:
            s.append(int(targets[b]))
        seen.append(s)
    return query, item_emb, targets, seen


def _torchmetrics_reference(scores, targets, seen, ks):
    """Each user's candidates (items 1..N minus seen, target kept) as one retrieval query."""
    preds, target, indexes = [], [], []
    for b in range(scores.shape[0]):
        excluded = set(seen[b]) - {int(targets[b])}
        keep = [i for i in range(1, scores.shape[1]) if i not in excluded]
        preds.append(scores[b, keep])
        target.append(torch.tensor([i == int(targets[b]) for i in keep]))
        indexes.append(torch.full((len(keep),), b))
    preds, target, indexes = torch.cat(preds), torch.cat(target), torch.cat(indexes)
    # torchmetrics' MRR counts a relevant item with a score <= 0 as not retrieved: shift all
    # scores above 0 (an order-preserving shift, exact enough in float64 for these values).
    preds = preds - preds.min() + 1.0
    out = {}
    for k in ks:
        out[f"HR@{k}"] = float(RetrievalHitRate(top_k=k)(preds, target, indexes=indexes))
        out[f"NDCG@{k}"] = float(RetrievalNormalizedDCG(top_k=k)(preds, target, indexes=indexes))
    out["MRR"] = float(RetrievalMRR()(preds, target, indexes=indexes))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_torchmetrics_on_random_scores(seed):
    query, item_emb, targets, seen = _random_case(seed)
    ks = (1, 3, 10, 50)
    ranks = target_ranks(query, item_emb, targets, seen, item_chunk=8)
    ours = ranking_metrics(ranks, ks)
    ref = _torchmetrics_reference(query @ item_emb.T, targets, seen, ks)
    assert ours.keys() == ref.keys()
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-9), key
    assert ours["HR@50"] == 1.0  # 50 > 37 items


@pytest.mark.parametrize("chunk", [1, 5, 7, 37, 38, 39, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_target_ranks_equal_ranks_from_scores_for_any_chunk(chunk, dtype):
    query, item_emb, targets, seen = _random_case(3, dtype=dtype)
    expected = ranks_from_scores(query @ item_emb.T, targets, seen)
    got = target_ranks(query, item_emb, targets, seen, item_chunk=chunk)
    assert got.dtype == torch.int64 and got.shape == (13,)
    assert torch.equal(got, expected)


def test_ranks_by_brute_force_count():
    query, item_emb, targets, seen = _random_case(4)
    scores = query @ item_emb.T
    ranks = target_ranks(query, item_emb, targets, seen, item_chunk=6)
    for b in range(len(targets)):
        t = int(targets[b])
        others = [i for i in range(1, scores.shape[1]) if i != t and i not in seen[b]]
        assert int(ranks[b]) == sum(bool(scores[b, i] >= scores[b, t]) for i in others)


def test_seen_as_padded_tensor_equals_lists():
    query, item_emb, targets, seen = _random_case(5)
    width = max(len(s) for s in seen)
    padded = torch.tensor([s + [0 if b % 2 else -1] * (width - len(s)) for b, s in enumerate(seen)])
    a = target_ranks(query, item_emb, targets, seen, item_chunk=4)
    assert torch.equal(target_ranks(query, item_emb, targets, padded, item_chunk=4), a)
    assert torch.equal(ranks_from_scores(query @ item_emb.T, targets, padded.int()), a)


def _scores_case(values):
    """item_emb as a 1-d embedding with the given scores (query = [1]): exact arithmetic."""
    emb = torch.tensor([0.0, *values], dtype=torch.float32)[:, None]
    return torch.ones(1, 1), emb


def test_ties_count_against_the_model():
    # items 1..6 score 1, 2, 2, 2, 0, 5 -> target 2 ties with 3 and 4 and loses to 6
    query, emb = _scores_case([1, 2, 2, 2, 0, 5])
    for chunk in (1, 2, 3, 100):
        assert target_ranks(query, emb, [2], None, item_chunk=chunk).tolist() == [3]
        assert target_ranks(query, emb, [2], [[3]], item_chunk=chunk).tolist() == [2]  # a tie seen
        assert target_ranks(query, emb, [2], [[2, 6]], item_chunk=chunk).tolist() == [2]  # target kept
        assert target_ranks(query, emb, [6], [[1, 1, 1]], item_chunk=chunk).tolist() == [0]
        assert target_ranks(query, emb, [5], None, item_chunk=chunk).tolist() == [5]  # last
    # A constant scorer ranks every target last among the unseen items.
    _, emb = _scores_case([0.5] * 9)
    assert target_ranks(torch.ones(2, 1), emb, [4, 1], [[1, 2], []], item_chunk=4).tolist() == [6, 8]


def test_padding_row_is_never_ranked_and_nan_counts_as_worst():
    emb = torch.tensor([[100.0], [1.0], [float("nan")], [3.0]])
    q = torch.ones(1, 1)
    for chunk in (1, 2, 10):
        assert target_ranks(q, emb, [1], None, item_chunk=chunk).tolist() == [1]  # only item 3 beats it
        assert target_ranks(q, emb, [2], None, item_chunk=chunk).tolist() == [2]  # NaN target: last
    scores = torch.tensor([[9.0, 1.0, 2.0, float("nan")]])
    assert ranks_from_scores(scores, [1]).tolist() == [1]


def test_one_item_histories_and_single_user():
    query, emb = _scores_case([3, 1, 2])
    assert target_ranks(query, emb, [2], [[1]]).tolist() == [1]
    assert target_ranks(query, emb, [1], [[2]]).tolist() == [0]
    m = ranking_metrics(torch.tensor([1]), ks=(1, 2))
    assert m == {"HR@1": 0.0, "NDCG@1": 0.0, "HR@2": 1.0, "NDCG@2": pytest.approx(1 / math.log2(3)),
                 "MRR": 0.5}


def test_ranking_metrics_by_hand():
    m = ranking_metrics([0, 1, 5], ks=(1, 2, 10))
    assert m["HR@1"] == pytest.approx(1 / 3)
    assert m["HR@2"] == pytest.approx(2 / 3)
    assert m["HR@10"] == 1.0
    assert m["NDCG@2"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(7)) / 3)
    assert m["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 6) / 3)
    assert list(m) == ["HR@1", "NDCG@1", "HR@2", "NDCG@2", "HR@10", "NDCG@10", "MRR"]


def test_k_larger_than_the_catalogue():
    query, item_emb, targets, seen = _random_case(6, num_items=4, batch=5)
    m = ranking_metrics(target_ranks(query, item_emb, targets, seen), ks=(4, 5, 1000))
    assert m["HR@4"] == m["HR@5"] == m["HR@1000"] == 1.0
    assert m["NDCG@1000"] == pytest.approx(m["NDCG@5"])


def test_empty_batch():
    query, item_emb = torch.zeros(0, 6), torch.randn(9, 6)
    for chunk in (2, 100):
        r = target_ranks(query, item_emb, torch.zeros(0, dtype=torch.int64), [], item_chunk=chunk)
        assert r.shape == (0,) and r.dtype == torch.int64
    assert ranks_from_scores(torch.zeros(0, 9), [], []).shape == (0,)
    with pytest.raises(ValueError, match="empty"):
        ranking_metrics(torch.zeros(0, dtype=torch.int64))


def test_bad_inputs():
    query, item_emb, targets, seen = _random_case(7)
    with pytest.raises(ValueError, match="targets"):
        target_ranks(query, item_emb, torch.zeros(13, dtype=torch.int64), seen)  # 0 is padding
    with pytest.raises(ValueError, match="targets"):
        target_ranks(query, item_emb, torch.full((13,), 38), seen)
    with pytest.raises(ValueError, match="targets"):
        target_ranks(query, item_emb, targets[:3], seen)
    with pytest.raises(ValueError, match="seen"):
        target_ranks(query, item_emb, targets, seen[:2])
    with pytest.raises(ValueError, match="seen"):
        target_ranks(query, item_emb, targets, [[99]] * 13)
    with pytest.raises(TypeError, match="dtype"):
        target_ranks(query, item_emb.float(), targets, seen)
    with pytest.raises(ValueError, match="item_chunk"):
        target_ranks(query, item_emb, targets, seen, item_chunk=0)
    with pytest.raises(ValueError, match="ks"):
        ranking_metrics([1, 2], ks=(0,))
    with pytest.raises(ValueError, match="ranks"):
        ranking_metrics([-1])


def test_sampled_candidates_are_unseen_distinct_and_reproducible():
    _, _, targets, seen = _random_case(8, batch=40, num_items=60)
    seen[3], targets[3] = list(range(1, 41)), 50  # 19 items besides the target: the exact path
    cands = sampled_candidates(targets, seen, 60, 19, generator=torch.Generator().manual_seed(0))
    assert cands.shape == (40, 20) and cands.dtype == torch.int64
    assert torch.equal(cands[:, 0], targets)
    for b in range(40):
        negatives = cands[b, 1:].tolist()
        assert len(set(negatives)) == 19
        assert all(1 <= i <= 60 and i not in seen[b] and i != int(targets[b]) for i in negatives)
    again = sampled_candidates(targets, seen, 60, 19, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cands, again)
    assert set(cands[3, 1:].tolist()) == set(range(41, 61)) - {50}  # all 19 allowed items


def test_sampled_candidates_large_catalogue_uses_rejection_and_is_uniform():
    # One user, 1000 items, 10 seen: counts of each allowed item over many draws are flat.
    targets = torch.full((300,), 7)
    seen = [list(range(1, 11))] * 300
    cands = sampled_candidates(targets, seen, 1000, 19, generator=torch.Generator().manual_seed(1))
    negatives = cands[:, 1:]
    assert not torch.isin(negatives, torch.arange(1, 11)).any()
    assert all(len(set(row)) == 19 for row in negatives.tolist())
    counts = torch.bincount(negatives.reshape(-1), minlength=1001)[11:].double()
    # 5700 draws over 990 items: mean 5.76; a flat distribution keeps the max small.
    assert counts.sum() == 5700 and counts.max() < 20 and (counts > 0).sum() > 900


def test_sampled_candidates_too_few_unseen_items():
    with pytest.raises(ValueError, match="user row 1 has only 2 items"):
        sampled_candidates([1, 1], [[], [2, 3, 4]], 6, 3)
    assert sampled_candidates([1], [[2, 3]], 6, 3).shape == (1, 4)  # exactly enough
    assert sampled_candidates([], [], 6, 3).shape == (0, 4)
    assert sampled_candidates([2], [[1]], 6, 0).tolist() == [[2]]


def test_sampled_ranks_ties_count_against():
    scores = torch.tensor([[1.0, 0.5, 1.0, 2.0], [3.0, 1.0, 2.0, 0.0], [float("nan"), 0.0, 0.0, 0.0]])
    assert sampled_ranks(scores).tolist() == [2, 0, 3]


def test_popularity_scores_from_split_and_sequences():
    class Ex:  # an Example-like row (user, history, target, seen)
        def __init__(self, user, target, seen):
            self.user, self.target, self.seen, self.history = user, target, seen, seen

    # user 0: train items [1, 2, 2] (two examples), user 1: [3, 1]
    examples = [Ex(0, 2, [1]), Ex(0, 2, [1, 2]), Ex(1, 1, [3])]
    pop = popularity_scores(examples, 4)
    assert pop.dtype == torch.float32 and pop.shape == (5,)
    assert pop[0] == -math.inf and pop[1:].tolist() == [2.0, 2.0, 1.0, 0.0]
    assert torch.equal(popularity_scores([[1, 2, 2], [3, 1]], 4), pop)
    # As a one-dimensional embedding it ranks like the expanded score matrix.
    targets, seen = [1, 4, 3], [[2], [], [1, 2]]
    by_emb = target_ranks(torch.ones(3, 1), pop[:, None], targets, seen, item_chunk=2)
    assert torch.equal(by_emb, ranks_from_scores(pop.expand(3, -1), targets, seen))
    assert by_emb.tolist() == [0, 3, 0]
    with pytest.raises(ValueError, match="item ids"):
        popularity_scores([[5]], 4)


@pytest.mark.gpu
def test_cuda_ranks_match_cpu_without_syncs_in_the_loop():
    query, item_emb, targets, seen = _random_case(9, batch=64, num_items=1000, dim=16, dtype=torch.float32)
    expected = target_ranks(query, item_emb, targets, seen, item_chunk=96)
    dev = torch.device("cuda")
    q, e = query.to(dev), item_emb.to(dev)
    t = _targets_tensor(targets, 64, 1000, dev)
    s = _seen_tensor(seen, 64, 1000, dev)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = _ranks_chunked(q, e, t, s, 96)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.equal(got.cpu(), expected)
    assert torch.equal(target_ranks(q, e, targets.to(dev), seen, item_chunk=96).cpu(), expected)
