"""Peer libraries as baselines, fed our exact split and ranked by our evaluator.

RecBole 1.2.1 (the field's most used toolkit) is the peer. It is never imported here: it
lives in its own environment (``.venv-peers``, built by ``make peers``) and runs as a
subprocess, ``peers/recbole_runner.py``. This module imports nothing from it.

Protocol (DESIGN.md section 6):

1. ``write_split`` writes ``SequenceData.sequences`` as a RecBole atomic file whose user
   and item tokens are our user indices and item ids, and whose timestamp is each
   interaction's position in its user's sequence (0, 1, 2, ...). RecBole sorts by a float32
   copy of the timestamp; positions keep our order exact (raw timestamps could tie or round).
2. The runner trains the model with RecBole's own defaults for it (plus full-softmax CE for
   SASRec/BERT4Rec, RecBole's leave-one-out ``LS: valid_and_test`` split in time order, no
   filtering, early stopping on validation NDCG@10 and a wall-clock budget ``budget_s``:
   training stops at the first epoch end after it) and writes the best checkpoint's
   full-catalogue scores for every user's valid and test prediction, in our ids.
3. ``run_peer`` checks that RecBole's split is ours (each user's valid and test targets and
   the test history; ``ValueError`` naming the first user that differs) and ranks the scores
   with OUR evaluator (``metrics.ranks_from_scores``: the user's history excluded, ties
   against the model), so a peer row is comparable with every other row of our tables.
   RecBole's own numbers (its protocol: for sequential models the history is NOT excluded,
   ties broken by ``torch.topk``, MRR cut at 10) are kept beside them as ``own_test`` /
   ``own_valid``.

Rows (``PEER_ROWS``): ``recbole-sasrec``, ``recbole-bert4rec``, ``recbole-pop``. RecBole's
``Pop`` is reported as shipped: it counts an item at most once per training batch (and,
with RecBole's default negative sampling, counts sampled negatives too), so it is not a
true most-popular ranking; ``training.baselines`` has ours.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .metrics import ranks_from_scores

PEER_ROWS = {"recbole-sasrec": "SASRec", "recbole-bert4rec": "BERT4Rec", "recbole-pop": "Pop"}
DATASET_NAME = "l2rec"
RUNNER = Path(__file__).resolve().parent.parent / "peers" / "recbole_runner.py"
_TAIL_CHARS = 4000


class PeerEnvMissing(RuntimeError):
    """The peer environment (its python) does not exist: build it with ``make peers``."""


def peer_python(env: str | os.PathLike = ".venv-peers") -> str:
    """The peer environment's python (``<env>/bin/python``; a relative ``env`` is taken from
    the repository root when it is not found from the working directory). Raises
    ``PeerEnvMissing`` when there is none."""
    env = Path(env)
    candidates = [env] if env.is_absolute() else [env, RUNNER.parent.parent / env]
    for base in candidates:
        for name in ("bin/python", "Scripts/python.exe"):
            if (base / name).exists():
                return str((base / name).absolute())
    looked = " or ".join(str((b / "bin" / "python").absolute()) for b in candidates)
    raise PeerEnvMissing(f"no peer python at {looked}: run `make peers` to build it")


def write_split(data, folder) -> str:
    """Write ``data.sequences`` (a ``SequenceData``) as ``folder/l2rec.inter``, RecBole's
    atomic format: header ``user_id:token item_id:token timestamp:float`` (tab separated),
    one row per interaction, the user index and item id as tokens and the interaction's
    position in its user's sequence as the timestamp. Returns the dataset name (``l2rec``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lengths = np.fromiter((len(s) for s in data.sequences), dtype=np.int64, count=len(data.sequences))
    users = np.repeat(np.arange(len(lengths)), lengths)
    items = np.fromiter((i for s in data.sequences for i in s), dtype=np.int64, count=int(lengths.sum()))
    starts = np.cumsum(lengths) - lengths
    positions = np.arange(len(items)) - np.repeat(starts, lengths)
    path = folder / f"{DATASET_NAME}.inter"
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        np.savetxt(f, np.stack([users, items, positions], axis=1), fmt="%d", delimiter="\t")
    return DATASET_NAME


@dataclass
class PeerResult:
    """One peer row. ``test_ranks`` / ``valid_ranks``: our evaluator's 0-based target ranks
    (int64, one per user of ``data.split("test")`` / ``("valid")``, in that order);
    ``own_test`` / ``own_valid``: RecBole's own ``hit@10``, ``ndcg@10``, ``mrr@10`` (its
    protocol); ``train_seconds``: RecBole's ``fit`` wall time (validation included);
    ``info``: the runner's ``result.json`` and the paths of its files."""

    row: str
    test_ranks: np.ndarray
    valid_ranks: np.ndarray
    own_test: dict
    own_valid: dict
    train_seconds: float
    epochs: int
    best_valid_ndcg10: float
    split_matches: bool
    info: dict = field(default_factory=dict)


def _log_tail(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return text[-_TAIL_CHARS:]


def check_split(data, split: dict) -> None:
    """Raise ValueError unless RecBole's split (the runner's ``split.json``) is ours: every
    user's valid and test targets, and the test history (the last ``max_len`` items before
    the test target, in order, for sequential models; the set of items before it for the
    others)."""
    if split["num_users"] != data.num_users or split["num_items"] != data.num_items:
        raise ValueError(f"RecBole saw {split['num_users']} users and {split['num_items']} items, we have "
                         f"{data.num_users} and {data.num_items}")
    max_len = split.get("max_len")
    for u, seq in enumerate(data.sequences):
        n = len(seq)
        want_valid = int(seq[n - 2]) if n >= 3 else None
        want_test = int(seq[n - 1]) if n >= 2 else None
        seen = [int(i) for i in seq[:n - 1]]
        if split["history_kind"] == "sequence":
            want_hist = seen[-max_len:] if want_test is not None else None
        else:
            want_hist = sorted(set(seen) - {want_test}) if want_test is not None else None
        got = (split["valid_target"][u], split["test_target"][u], split["test_history"][u])
        want = (want_valid, want_test, want_hist)
        if got != want:
            differs = [g != w for g, w in zip(got, want)]
            what = ("valid target", "test target", "test history")[differs.index(True)]
            raise ValueError(f"RecBole's split differs from ours at user {u} ({what}): RecBole valid/test "
                             f"targets {got[0]}/{got[1]}, ours {want_valid}/{want_test}; test history "
                             f"RecBole {got[2]}, ours {want_hist}")


def _ranks(scores: np.ndarray, examples) -> np.ndarray:
    users = np.asarray(examples.users, dtype=np.int64)
    if len(users) == 0:
        return np.zeros(0, dtype=np.int64)
    seen = [ex.seen for ex in examples]
    ranks = ranks_from_scores(torch.from_numpy(np.ascontiguousarray(scores[users])), examples.targets, seen)
    return ranks.numpy()


def run_peer(row: str, data, *, budget_s: float, workdir, seed: int = 0, max_len: int = 50,
             threads: int | None = None, env: str | os.PathLike = ".venv-peers",
             log: Callable[[str], None] | None = None) -> PeerResult:
    """Train and evaluate peer ``row`` (a key of ``PEER_ROWS``) on ``data``'s leave-one-out
    split within ``budget_s`` seconds of training, in ``workdir`` (the split, the runner's
    outputs under ``workdir/<row>/`` and its log ``workdir/<row>.log``).

    Raises ``PeerEnvMissing`` without the peer environment, ``RuntimeError`` (with the log's
    tail) when the runner fails, ``ValueError`` when RecBole's split is not ours."""
    if row not in PEER_ROWS:
        raise ValueError(f"row must be one of {sorted(PEER_ROWS)}, got {row!r}")
    python = peer_python(env)
    workdir = Path(workdir).absolute()
    split_dir, out, log_path = workdir / "split", workdir / row, workdir / f"{row}.log"
    write_split(data, split_dir)
    cmd = [python, str(RUNNER), "--split-dir", str(split_dir), "--model", PEER_ROWS[row],
           "--budget-s", str(float(budget_s)), "--out", str(out), "--seed", str(seed),
           "--max-len", str(max_len)]
    if threads:
        cmd += ["--threads", str(threads)]
    child_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    # Only the child: RecBole reloads its own checkpoints (written by that process) with torch.load.
    child_env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    if log:
        log(f"{row}: {' '.join(cmd)} (log: {log_path})")
    with open(log_path, "w", encoding="utf-8") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env, cwd=workdir)
    if proc.returncode != 0:
        raise RuntimeError(f"{row}: the RecBole runner failed (exit {proc.returncode}); "
                           f"{log_path}:\n{_log_tail(log_path)}")
    result = json.loads((out / "result.json").read_text())
    split = json.loads((out / "split.json").read_text())
    check_split(data, split)
    test_ranks = _ranks(np.load(out / "scores_test.npy"), data.split("test"))
    valid_ranks = _ranks(np.load(out / "scores_valid.npy"), data.split("valid"))
    if log:
        log(f"{row}: {result['epochs']} epochs in {result['train_seconds']:.1f} s, RecBole's own test "
            f"{result['own_test']}")
    info = dict(result, out=str(out), log=str(log_path), python=python)
    return PeerResult(row=row, test_ranks=test_ranks, valid_ranks=valid_ranks, own_test=result["own_test"],
                      own_valid=result["own_valid"], train_seconds=float(result["train_seconds"]),
                      epochs=int(result["epochs"]), best_valid_ndcg10=float(result["best_valid_ndcg10"]),
                      split_matches=True, info=info)
