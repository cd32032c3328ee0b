"""Stage 1 of the two-stage recipe (``l2rec_kernels.training.sasrec``): the training windows
cover exactly the training split's targets, the encoder learns the demo set's planted
transitions, it saves and loads as safetensors, and L2Rec keeps it frozen (dropout off)."""

from __future__ import annotations

import pathlib

import pytest
import torch

from l2rec_kernels.data import from_interactions, load_sequences
from l2rec_kernels.metrics import ranking_metrics
from l2rec_kernels.models.config import L2RecConfig
from l2rec_kernels.models.fused import FusedL2Rec
from l2rec_kernels.models.tiny import tiny_backbone
from l2rec_kernels.training.sasrec import (
    SASRecModel,
    SASRecSpec,
    load_into_l2rec,
    load_sasrec,
    sasrec_ranks,
    save_sasrec,
    train_sasrec,
    training_windows,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO = f"movielens:{ROOT / 'tests/data/interactions/ml-demo'}"


def test_windows_cover_each_training_target_once_and_end_with_the_latest_items():
    seqs = [list(range(1, 13)), [5, 6, 7], [9, 8, 7, 6]]   # 12 items, too short, 4 items
    windows = training_windows(seqs, max_len=4)
    pairs = [(i, t) for inp, tgt in windows for i, t in zip(inp, tgt)]
    # user 0 trains on targets s[1..n-3] = 2..10, each predicted from the item before it
    assert sorted(pairs) == sorted([(k, k + 1) for k in range(1, 10)] + [(9, 8)])
    assert windows[0] == ([6, 7, 8, 9], [7, 8, 9, 10])   # the last window: the latest inputs
    assert all(len(i) == len(t) <= 4 for i, t in windows)
    with pytest.raises(ValueError, match="max_len"):
        training_windows(seqs, 0)


def test_last_per_user_keeps_each_users_latest_positions():
    data = from_interactions([0] * 8 + [1] * 5, [1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5],
                             list(range(13)), min_interactions=1)
    train = data.split("train")
    last = train.last_per_user(2)
    assert [(e.user, e.target) for e in last] == [(0, 5), (0, 6), (1, 2), (1, 3)]
    assert list(train.last_per_user(100)) == list(train)
    with pytest.raises(ValueError, match="positive int"):
        train.last_per_user(0)


def test_the_loss_ignores_padding_and_matches_a_float64_reference():
    torch.manual_seed(0)
    enc = SASRecSpec(num_items=30, dim=16, max_len=6, layers=1, heads=2, dropout=0.0).build().double()
    inp = torch.tensor([[3, 4, 5, 0, 0, 0], [7, 8, 9, 10, 11, 12]])
    tgt = torch.tensor([[4, 5, 6, 0, 0, 0], [8, 9, 10, 11, 12, 13]])
    loss = SASRecModel(enc)(inp, tgt)["loss"]
    states = enc.states(inp)
    want = torch.stack([-torch.log_softmax(states[b, t] @ enc.item_emb.weight[1:].T, 0)[tgt[b, t] - 1]
                        for b in range(2) for t in range(6) if tgt[b, t] > 0]).mean()
    assert abs(loss.item() - want.item()) / want.item() < 1e-10


@pytest.fixture(scope="module")
def demo_stage1(tmp_path_factory):
    torch.set_num_threads(1)
    data = load_sequences(DEMO, max_history=10)
    spec = SASRecSpec(data.num_items, dim=32, max_len=10, layers=1, heads=2, dropout=0.1)
    out = tmp_path_factory.mktemp("sasrec")
    encoder, result = train_sasrec(data, spec, str(out), epochs=20, batch_size=32, lr=5e-3, patience=0,
                                   say=lambda *a: None)
    return data, spec, encoder, result, out


def test_stage1_learns_the_planted_transitions(demo_stage1):
    data, spec, encoder, result, _ = demo_stage1
    valid = data.split("valid")
    trained = ranking_metrics(sasrec_ranks(encoder, valid, spec.max_len), ks=(10,))["NDCG@10"]
    torch.manual_seed(0)
    untrained = ranking_metrics(sasrec_ranks(spec.build(), valid, spec.max_len), ks=(10,))["NDCG@10"]
    # the demo's chains make the next item predictable: a first-order model gets ~0.78
    assert trained > 0.3 > untrained, (trained, untrained)
    assert result.best_valid["NDCG@10"] == pytest.approx(trained, abs=1e-6)
    assert result.epochs == pytest.approx(20) and not result.stopped_by_budget


def test_save_load_round_trip_and_freezing_into_l2rec(demo_stage1, tmp_path):
    data, spec, encoder, result, _ = demo_stage1
    save_sasrec(encoder, spec, str(tmp_path / "s1"), result)
    loaded, spec2 = load_sasrec(str(tmp_path / "s1"))
    assert spec2 == spec
    hist = torch.tensor([[1, 2, 3, 0], [5, 6, 0, 0]])
    torch.testing.assert_close(loaded(hist), encoder(hist), rtol=0, atol=0)
    assert not any(p.endswith((".pt", ".bin", ".pth")) for p in map(str, (tmp_path / "s1").iterdir()))

    cfg = L2RecConfig(num_items=data.num_items, behavior_dim=32, max_history=10, sasrec_layers=1,
                      sasrec_heads=2, sasrec_dropout=0.5)
    model = FusedL2Rec(tiny_backbone("llama", hidden=32, heads=2, kv_heads=1), cfg)
    load_into_l2rec(model, loaded, spec)
    model.train()
    assert not model.behavior_encoder.training          # frozen: its dropout stays off
    torch.testing.assert_close(model.behavior_encoder(hist), encoder(hist), rtol=0, atol=0)
    wrong = L2RecConfig(num_items=data.num_items, behavior_dim=32, max_history=12, sasrec_layers=1,
                        sasrec_heads=2)
    with pytest.raises(ValueError, match="max_len=10 but the L2Rec config needs 12"):
        load_into_l2rec(FusedL2Rec(tiny_backbone("llama", hidden=32, heads=2, kv_heads=1), wrong),
                        loaded, spec)
    with pytest.raises(ValueError, match="not a stage-1 SASRec checkpoint"):
        load_sasrec(str(tmp_path))
