"""FusedL2Rec.recommend: top-k over the catalogue via the cached item table and topk_items,
against the plain oracle L2Rec.recommend (full score matrix + torch.topk)."""

from __future__ import annotations

import pytest
import torch
from model_utils import NUM_ITEMS, batch, make_backbone, randomize_
from tolerances import REL_TOL

from l2rec_kernels.models.config import L2RecConfig
from l2rec_kernels.models.fused import FusedL2Rec
from l2rec_kernels.models.reference import L2Rec


def make_pair(backend="torch", seed=1):
    ref = L2Rec(make_backbone(), L2RecConfig(num_items=NUM_ITEMS, pref_dim=24, behavior_dim=16))
    randomize_(ref, seed=seed)
    return ref, FusedL2Rec.from_reference(ref, backend=backend)


# The models here live on the CPU: their triton backend needs the interpreter.
BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.interpreter)]
# Scores are dot products: near zero they are differences of larger terms, whose rounding is
# relative to the terms, so atol is the whole fp32 bound (not assert_close_tol's tenth).
TOL = {"rtol": REL_TOL[torch.float32], "atol": REL_TOL[torch.float32]}


def check_against_oracle(ref, fused, b, k, exclude_history):
    want_scores, want_ids = ref.recommend(**b, k=k, exclude_history=exclude_history)
    scores, ids = fused.recommend(**b, k=k, exclude_history=exclude_history)
    assert scores.shape == ids.shape == (b["input_ids"].shape[0], k)
    assert ids.dtype == torch.long
    # Scores agree; ids may differ only between (near-)tied scores, so check what they claim.
    torch.testing.assert_close(scores, want_scores, **TOL)
    full = ref(**b).scores
    for row in range(ids.shape[0]):
        real = ids[row] >= 0
        assert torch.equal(real, want_ids[row] >= 0)
        got = ids[row][real]
        assert got.unique().numel() == got.numel(), "duplicate item in a recommendation"
        assert not (got == 0).any(), "the padding item was recommended"
        if exclude_history:
            seen = set(b["history_ids"][row].tolist())
            assert not seen & set(got.tolist()), "a history item was recommended"
        torch.testing.assert_close(full[row, got], scores[row][real], **TOL)
        assert torch.isneginf(scores[row][~real]).all()
    assert (scores[:, :-1] >= scores[:, 1:]).all(), "scores not descending"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 7, NUM_ITEMS])
@pytest.mark.parametrize("exclude_history", [True, False])
def test_recommend_matches_oracle(backend, k, exclude_history):
    ref, fused = make_pair(backend)
    check_against_oracle(ref, fused, batch(4, ragged=True), k, exclude_history)


def test_k_equal_catalogue_returns_every_item_once():
    _ref, fused = make_pair()
    b = batch(2)
    _, ids = fused.recommend(**b, k=NUM_ITEMS, exclude_history=False)
    for row in ids:
        assert sorted(row.tolist()) == list(range(1, NUM_ITEMS + 1))


def test_one_user():
    ref, fused = make_pair()
    check_against_oracle(ref, fused, batch(1), 5, True)


def test_return_preference_gives_the_forwards_preference_too():
    """return_preference=True: the same top k, plus z [B, pref_dim] equal to the forward's
    ``preference``, for the reference, the fused model and the compiled recommender."""
    from l2rec_kernels.models.compiled import compile_for_serving

    ref, fused = make_pair()
    b = batch(3, ragged=True)
    for model in (ref, fused, compile_for_serving(fused, backend="eager")):
        scores, ids, z = model.recommend(**b, k=5, return_preference=True)
        want_scores, want_ids = model.recommend(**b, k=5)
        assert torch.equal(scores, want_scores) and torch.equal(ids, want_ids)
        torch.testing.assert_close(z, ref(**b).preference, **TOL)
        assert z.shape == (3, ref.config.pref_dim)
    with pytest.raises(TypeError, match="return_preference must be a bool"):
        fused.recommend(**b, k=5, return_preference=1)


@pytest.mark.parametrize("k", [0, NUM_ITEMS + 1, 2.0, True])
def test_bad_k(k):
    _, fused = make_pair()
    with pytest.raises(ValueError, match="k must be"):
        fused.recommend(**batch(2), k=k)


def test_item_table_cached_until_weights_change():
    _ref, fused = make_pair()
    b = batch(3)
    first = fused.item_table()
    assert fused.item_table() is first, "the item table was recomputed without a change"
    before = fused.recommend(**b, k=5)
    # load_state_dict copies in place: the cache must notice.
    other, _ = make_pair(seed=7)
    fused.load_state_dict(other.state_dict())
    assert fused.item_table() is not first
    torch.testing.assert_close(fused.item_table(), other.item_embeddings())
    after = fused.recommend(**b, k=5)
    torch.testing.assert_close(after[0], other.recommend(**b, k=5)[0], **TOL)
    assert not torch.equal(after[0], before[0])


@pytest.mark.parametrize("edit", ["text_table", "via_reference", "projection", "clear"])
def test_item_table_invalidation(edit):
    ref, fused = make_pair()
    stale = fused.item_table().clone()
    if edit == "text_table":
        fused.set_item_text_table(torch.randn_like(fused.item_text_table))
    elif edit == "via_reference":  # ref and fused share tensors
        with torch.no_grad():
            ref.behavior_encoder.item_emb.weight.mul_(2)
    elif edit == "projection":
        with torch.no_grad():
            fused.scorer.id_proj.weight.add_(1)
    else:
        fused.clear_item_cache()
        assert fused._item_cache is None
        torch.testing.assert_close(fused.item_table(), stale)
        return
    fresh = fused.item_table()
    torch.testing.assert_close(fresh, fused.item_embeddings())
    assert not torch.equal(fresh, stale)


def test_a_fused_optimiser_step_then_eval_scores_with_the_new_weights():
    # torch.optim.AdamW(fused=True) (Hugging Face Trainer's default) updates the weights
    # without bumping their version counters; eval() must still drop the cached table, or
    # every validation after the first scores with the first one's item table.
    _ref, fused = make_pair()
    fused.eval()
    stale = fused.item_table().clone()
    fused.train()
    opt = torch.optim.AdamW([p for p in fused.parameters() if p.requires_grad], lr=1e-2, fused=True)
    b = batch(3)
    fused(**b, labels=torch.tensor([1, 2, 3])).loss.backward()
    version = fused.scorer.id_proj.weight._version
    opt.step()
    assert fused.scorer.id_proj.weight._version == version  # the trap itself
    fused.eval()
    fresh = fused.item_table()
    torch.testing.assert_close(fresh, fused.item_embeddings(), rtol=0, atol=0)
    assert not torch.equal(fresh, stale)


@pytest.mark.parametrize("backend", BACKENDS)
def test_extra_exclusions(backend):
    ref, fused = make_pair(backend)
    b = batch(3)
    extra = torch.tensor([[5, 6, -1, 7], [-1, -1, -1, -1], [1, 2, 3, 4]])
    want = ref.recommend(**b, k=NUM_ITEMS, exclude_history=False, exclude_ids=extra)
    got = fused.recommend(**b, k=NUM_ITEMS, exclude_history=False, exclude_ids=extra)
    torch.testing.assert_close(got[0], want[0], **TOL)
    for row, ids in enumerate(got[1].tolist()):
        assert not set(ids) & (set(extra[row].tolist()) - {-1})
        assert (got[1][row] == -1).sum() == len(set(extra[row].tolist()) - {-1})


@pytest.mark.parametrize("bad, err, needle", [
    (torch.zeros(2, 3, dtype=torch.long), ValueError, "one row per user"),
    (torch.zeros(3, dtype=torch.long), ValueError, "dimensions"),
    (torch.zeros(3, 2), TypeError, "integer"),
    (torch.full((3, 2), NUM_ITEMS + 1), ValueError, "exclude_ids"),
    (torch.full((3, 2), -2), ValueError, "exclude_ids"),
])
def test_bad_exclude_ids(bad, err, needle):
    _, fused = make_pair()
    with pytest.raises(err, match=needle):
        fused.recommend(**batch(3), k=3, exclude_ids=bad)
