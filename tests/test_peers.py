"""The RecBole peer (l2rec_kernels/peers.py, peers/recbole_runner.py): our split written in
RecBole's format, RecBole's split equal to ours, and RecBole's metric classes equal to ours.

The tests that run RecBole need its environment (``make peers`` builds ``.venv-peers``) and
skip with the reason without it; the others need nothing but our package."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import torch

from l2rec_kernels.data import from_interactions
from l2rec_kernels.metrics import ranking_metrics, ranks_from_scores
from l2rec_kernels.peers import (
    PEER_ROWS,
    RUNNER,
    PeerEnvMissing,
    check_split,
    peer_python,
    run_peer,
    write_split,
)


def _peer_python() -> str:
    try:
        return peer_python()
    except PeerEnvMissing as e:
        pytest.skip(f"RecBole's environment is not built ({e})")


def _synthetic(users: int = 40, items: int = 30, seed: int = 0):
    """Small k-cored data whose raw timestamps tie within users (positions must fix the order)."""
    rng = np.random.default_rng(seed)
    us, its, ts = [], [], []
    for u in range(users):
        n = int(rng.integers(6, 15))
        for i in rng.choice(items, size=n, replace=False):
            us.append(f"u{u}")
            its.append(f"i{i}")
            ts.append(int(rng.integers(0, 4)))
    return from_interactions(us, its, ts, min_interactions=5)


def test_write_split_round_trip(tmp_path):
    data = _synthetic()
    assert write_split(data, tmp_path) == "l2rec"
    lines = (tmp_path / "l2rec.inter").read_text().splitlines()
    assert lines[0] == "user_id:token\titem_id:token\ttimestamp:float"
    rows = np.array([[int(x) for x in line.split("\t")] for line in lines[1:]])
    assert len(rows) == sum(len(s) for s in data.sequences)
    back: dict[int, list[tuple[int, int]]] = {}
    for u, i, t in rows:
        back.setdefault(u, []).append((t, i))
    assert sorted(back) == list(range(data.num_users))
    for u, seq in enumerate(data.sequences):
        pairs = back[u]
        assert [t for t, _ in pairs] == list(range(len(seq)))  # the position is the timestamp
        assert [i for _, i in sorted(pairs)] == list(seq)


def test_check_split_names_the_first_differing_user():
    data = _synthetic()
    n = data.num_users
    split = {"num_users": n, "num_items": data.num_items, "history_kind": "sequence", "max_len": 5,
             "valid_target": [s[-2] for s in data.sequences], "test_target": [s[-1] for s in data.sequences],
             "test_history": [list(s[:-1][-5:]) for s in data.sequences]}
    check_split(data, split)
    split["test_history"][3] = list(reversed(split["test_history"][3]))
    with pytest.raises(ValueError, match="at user 3 \\(test history\\)"):
        check_split(data, split)
    split["valid_target"][1] = split["test_target"][1]
    with pytest.raises(ValueError, match="at user 1 \\(valid target\\)"):
        check_split(data, split)


def test_peer_python_missing_says_how_to_build(tmp_path):
    with pytest.raises(PeerEnvMissing, match="make peers"):
        peer_python(tmp_path / "nowhere")
    assert set(PEER_ROWS.values()) == {"SASRec", "BERT4Rec", "Pop"}


def test_recbole_split_is_ours(tmp_path):
    _peer_python()
    data = _synthetic()
    result = run_peer("recbole-pop", data, budget_s=1, workdir=tmp_path, threads=1)
    assert result.split_matches
    assert result.epochs == 1
    assert len(result.test_ranks) == len(data.split("test")) == data.num_users
    assert len(result.valid_ranks) == len(data.split("valid"))
    scores = np.load(tmp_path / "recbole-pop" / "scores_test.npy")
    assert scores.shape == (data.num_users, data.num_items + 1) and scores.dtype == np.float32
    assert np.isneginf(scores[:, 0]).all() and np.isfinite(scores[:, 1:]).all()
    assert set(result.own_test) == {"hit@10", "ndcg@10", "mrr@10"}


def test_recbole_metrics_equal_ours(tmp_path):
    python = _peer_python()
    rng = np.random.default_rng(1)
    users, items = 40, 50
    scores = rng.permutation(users * (items + 1)).reshape(users, items + 1).astype(np.float32)  # no ties
    targets = rng.integers(1, items + 1, size=users)
    seen = np.full((users, 12), -1, dtype=np.int64)
    seen_lists = []
    for u in range(users):
        others = np.setdiff1d(np.arange(1, items + 1), [targets[u]])
        s = rng.choice(others, size=int(rng.integers(0, 13)), replace=False)
        seen[u, :len(s)] = s
        seen_lists.append(s.tolist())
    # Make a third of the targets score high, so the top 10 holds hits at several ranks.
    scores[: users // 3, 0] = 0
    scores[np.arange(users // 3), targets[: users // 3]] += users * (items + 1) * rng.random(users // 3)
    np.savez(tmp_path / "check.npz", scores=scores, targets=targets, seen=seen)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([python, str(RUNNER), "--metric-check", str(tmp_path / "check.npz"), "--out",
                           str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = json.loads((tmp_path / "metric_check.json").read_text())

    ranks = ranks_from_scores(torch.from_numpy(scores), targets, seen_lists)
    ours = ranking_metrics(ranks, ks=(10,))
    r = ranks.double()
    mrr10 = float(torch.where(r < 10, 1.0 / (r + 1.0), torch.zeros_like(r)).mean())  # RecBole cuts MRR at K
    assert 0 < ours["HR@10"] < 1
    assert theirs["hit@10"] == pytest.approx(ours["HR@10"], abs=1e-6)
    assert theirs["ndcg@10"] == pytest.approx(ours["NDCG@10"], abs=1e-6)
    assert theirs["mrr@10"] == pytest.approx(mrr10, abs=1e-6)
